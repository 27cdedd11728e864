"""Anthropic's Messages API on the same port (agents-api.md §1–2): `/v1/messages` for Claude Code.

`POST /v1/messages` (any query string: Claude Code adds `?beta=true`) goes through the route map,
auth, limits, retries and fallbacks as `/api/chat` does, translated onto the routed upstream's Chat
Completions (translators/anthropic.py); the answer is Anthropic's message, or its event stream.
`POST /v1/messages/count_tokens` answers `{"input_tokens": N}` from the gateway's estimate (the
characters of the prompt and tools over four, as Ollama's own estimate), without an upstream call.

Errors are in Anthropic's shape, `{"type": "error", "error": {"type", "message"}, "request_id"}`,
with Anthropic's statuses and types (404 `not_found_error` for an unknown model, 429
`rate_limit_error`, 529 `overloaded_error` where the gateway would say 503); before the first
streamed byte as a status, after it as an `error` event.
"""

from __future__ import annotations


import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway.errors import JSON_MEDIA_TYPE, BadRequest, GatewayError
from gateway.http.body import error_shaped_route, json_response, read_json_object, validate
from gateway.http.context import context_in, context_of
from gateway.http.streaming import StreamedResponse
from gateway.translators.anthropic import MessagesTranslator
from gateway.translators.anthropic_wire import AnthropicSSE, anthropic_status, error_object
from gateway.translators.anthropic_messages import MessagesRequest, estimate_input_tokens
from gateway.upstream.calls import Relay
from gateway.upstream.exchange import OpenedStream, TranslatedCall
from gateway.upstream.relaying import NativeOrTranslated, RelayCall

_SSE_HEADERS = {"Cache-Control": "no-cache"}


router = APIRouter(route_class=error_shaped_route(lambda: anthropic_error))


@router.post("/v1/messages")
async def messages(request: Request) -> Response:
    context = context_of(request)
    body = await read_json_object(request, zstd=True)
    messages_request: MessagesRequest = validate(MessagesRequest, body)
    _require(messages_request)
    if messages_request.max_tokens is None:
        raise BadRequest("max_tokens: Field required")
    target = context.route(messages_request.model, balanced=True)
    translator = MessagesTranslator(messages_request, target, context.clock)
    translator.local_reply()  # the capability checks
    exchange = context.exchange()
    passed = {name: value for name, value in request.headers.items() if name.startswith("anthropic-")}
    # An upstream with `messages_api: true` gets the request passed through: only `model` rewritten,
    # the query string and `anthropic-*` headers forwarded, its answer and errors relayed.
    call = NativeOrTranslated(TranslatedCall(exchange, translator, messages_request, context.clock),
                              RelayCall(exchange, body, "/messages", messages_request.model, passed, request.url.query),
                              "messages_api")
    answer = await exchange.run_translated(target, call, translator)
    context.state.catalog.mark_used(target, messages_request.model, None)
    if isinstance(answer, OpenedStream):
        return StreamedResponse(answer, headers=_SSE_HEADERS)
    if isinstance(answer, Relay):
        return await _relayed(call.relay, answer)
    return Response(answer, media_type=JSON_MEDIA_TYPE)


async def _relayed(call: RelayCall, relay: Relay) -> Response:
    if relay.is_event_stream:
        return StreamedResponse(await call.stream(relay, _RelayedSSE(relay.content_type)), headers=_SSE_HEADERS)
    return Response(await call.read(relay), media_type=relay.content_type)


class _RelayedSSE(AnthropicSSE):
    """A native upstream's event stream: its own content type; a failure after it began is an `error` event."""

    def __init__(self, media_type: str) -> None:
        self.media_type = media_type


@router.post("/v1/messages/count_tokens")
async def count_tokens(request: Request) -> Response:
    context = context_of(request)
    count_request: MessagesRequest = validate(MessagesRequest, await read_json_object(request, zstd=True))
    _require(count_request)
    context.route(count_request.model)
    return json_response({"input_tokens": estimate_input_tokens(count_request)})


def _require(request: MessagesRequest) -> None:
    if not request.model:
        raise BadRequest("model: Field required")
    if not request.messages:
        raise BadRequest("messages: at least one message is required")


async def anthropic_error(request: Request, exc: Exception) -> Response:
    """A GatewayError in Anthropic's shape and status, scrubbed once more and recorded."""
    assert isinstance(exc, GatewayError)
    context = context_in(request.scope)
    request_id = ""
    if context is not None:
        exc.message = context.state.clients.scrub(exc.message)
        context.record.fail(exc)
        request_id = "req_" + context.record.request_id
    status, _ = anthropic_status(exc)
    body = {**error_object(exc), "request_id": request_id}
    return Response(orjson.dumps(body), status_code=status, headers=exc.headers, media_type=JSON_MEDIA_TYPE)
