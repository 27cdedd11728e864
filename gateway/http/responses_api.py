"""The OpenAI Responses API on the same port (agents-api.md §3–4): `POST /v1/responses` for Codex.

Translated onto the routed upstream's Chat Completions (translators/responses.py) through the
route map, auth, limits, retries, fallbacks and request log line of `/api/chat`, stateless:
`previous_response_id` is a 400 saying the gateway keeps no conversation state. An upstream
marked `responses_api: true` (one with its own Responses API) gets the request passed through
instead: only `model` rewritten, the query string kept, its answer and errors relayed. Errors are in
OpenAI's shape (openai_api.py); after the first streamed event a failure is `response.failed`.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway.errors import JSON_MEDIA_TYPE, BadRequest
from gateway.http.body import error_shaped_route, read_json_object, validate
from gateway.http.context import context_of
from gateway.http.openai_api import SSEFraming, openai_error
from gateway.http.streaming import StreamedResponse
from gateway.translators.responses import ResponsesTranslator
from gateway.translators.responses_items import ResponsesRequest
from gateway.upstream.calls import Relay
from gateway.upstream.exchange import OpenedStream, TranslatedCall
from gateway.upstream.relaying import NativeOrTranslated, RelayCall

router = APIRouter(route_class=error_shaped_route(lambda: openai_error))
_SSE_HEADERS = {"Cache-Control": "no-cache"}


@router.post("/v1/responses")
async def responses(request: Request) -> Response:
    context = context_of(request)
    body = await read_json_object(request, zstd=True)
    responses_request: ResponsesRequest = validate(ResponsesRequest, body)
    if not responses_request.model:
        raise BadRequest("model is required")
    if responses_request.background:
        raise BadRequest("background responses are not supported: the gateway keeps no response state")
    target = context.route(responses_request.model, balanced=True)
    translator = ResponsesTranslator(responses_request, target, context.clock)
    exchange = context.exchange()
    # An upstream with `responses_api: true` (OpenAI itself) gets the request passed through.
    call = NativeOrTranslated(TranslatedCall(exchange, translator, responses_request, context.clock),
                              RelayCall(exchange, body, "/responses", responses_request.model, None, request.url.query),
                              "responses_api")
    answer = await exchange.run_translated(target, call, translator)
    context.state.catalog.mark_used(target, responses_request.model, None)
    if isinstance(answer, OpenedStream):
        return StreamedResponse(answer, headers=_SSE_HEADERS)
    if isinstance(answer, Relay):
        if answer.is_event_stream:
            framing = SSEFraming(answer.content_type, context.state.clients.secrets)
            return StreamedResponse(await call.relay.stream(answer, framing), headers=_SSE_HEADERS)
        return Response(await call.relay.read(answer), media_type=answer.content_type)
    return Response(answer, media_type=JSON_MEDIA_TYPE)
