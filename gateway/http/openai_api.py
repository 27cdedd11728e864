"""Ollama's OpenAI-compatible surface on the same port (openai-mapping.md §9): `/v1/*`.

VS Code Copilot's Ollama provider lists models over `/api/*` but chats over
`/v1/chat/completions`; Open WebUI proxies `/v1/*` to its Ollama URL. A POST goes through the
same route map to the routed upstream with only `model` rewritten to the upstream's id, and the
answer comes back as the upstream sent it: JSON as one body, SSE byte for byte as it arrives,
the upstream request closed the moment the client leaves (`streaming.StreamedResponse`). Nothing
is parsed per chunk but the usage the answer reports (upstream/usage.py: only a read holding
`"usage"`), which goes on the request's record for its log line, the metrics and the key's tpm. Retries and fallbacks are the same as on `/api` (`failover.with_failover`),
up to the upstream's answer status; a fallback gets its own upstream model id.

Errors are in OpenAI's shape, as Ollama's `/v1` middleware writes them (`openai.NewError`):
`{"error": {"message", "type", "param": null, "code": null}}`, with type `invalid_request_error`
for 400, `not_found_error` for 404 (an unknown model: `model 'x' not found`), else `api_error`.
An upstream's own error status is relayed with its status and error object, except credential
failures (502, as on `/api`). After the first SSE byte a failure becomes one last
`data: {"error": ...}` event, which the OpenAI SDKs raise as an `APIError`.

Secrets (the route map's, `redact.Secrets`) are scrubbed out of everything relayed that is not
the healthy part of a stream: every field of an error object (where it is built and again
here, where it is rendered), every body that is not an event stream (read whole), and every
network read of a stream from the first one that mentions `error` on (an error event,
`data: {"error": ...}` or `event: error`; `upstream.Relay`). The other reads of an event stream
are relayed unparsed and unscrubbed, as they arrive: a model that writes a secret into a
streamed completion is not masked.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway.http.body import error_shaped_route, json_response, read_json_object
from gateway.http.context import context_in, context_of
from gateway.errors import JSON_MEDIA_TYPE, BadRequest, GatewayError, UpstreamRelayed
from gateway.upstream.redact import Secrets
from gateway.http.streaming import StreamedResponse
from gateway.upstream.relaying import RelayCall
from gateway.upstream.forms import MultipartForm

# Ollama's openai.NewError: the error type by status.
_ERROR_TYPES = {400: "invalid_request_error", 404: "not_found_error"}
_NO_SECRETS = Secrets()


async def openai_error(request: Request, exc: Exception) -> Response:
    """A GatewayError in OpenAI's shape, scrubbed once more (as `ollama_error`) and recorded."""
    assert isinstance(exc, GatewayError)
    context = context_in(request.scope)
    secrets = context.state.clients.secrets if context is not None else _NO_SECRETS
    exc.message = secrets.scrub(exc.message)
    if context is not None:
        context.record.fail(exc)
    return openai_error_response(exc, secrets)


router = APIRouter(route_class=error_shaped_route(lambda: openai_error))


@router.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Response:
    return await _relay(request, "/chat/completions")


@router.post("/v1/completions")
async def completions(request: Request) -> Response:
    return await _relay(request, "/completions")


@router.post("/v1/embeddings")
async def embeddings(request: Request) -> Response:
    return await _relay(request, "/embeddings")


# The form as OpenAI documents it (the SDK's `audio.transcriptions.create`); only `model` is read.
_TRANSCRIPTION_FORM: dict[str, Any] = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file", "model"],
    "properties": {"file": {"type": "string", "format": "binary"}, "model": {"type": "string"},
                   "language": {"type": "string"}, "prompt": {"type": "string"}, "response_format": {"type": "string"},
                   "temperature": {"type": "number"}},
    "description": "A transcription request, passed to the routed upstream with its model id",
}}}}}


@router.post("/v1/audio/transcriptions", openapi_extra=_TRANSCRIPTION_FORM)
async def audio_transcriptions(request: Request) -> Response:
    """The client's multipart form to the routed upstream's `/audio/transcriptions`, byte for byte
    but for the `model` field's value; the answer (JSON, text, SRT/VTT or SSE) relayed as is."""
    context = context_of(request)
    form = MultipartForm.parse(request.headers.get("content-type", ""), await request.body())
    name = form.field("model")
    if not name:
        raise BadRequest("model is required")
    return await _answer(request, RelayCall(context.exchange(), form, "/audio/transcriptions", name))


@router.get("/v1/models")
async def list_models(request: Request) -> Response:
    context = context_of(request)
    names = [entry["name"] for entry in context.state.catalog.tags(context.grant)["models"]]
    created = context.state.catalog.modified_epoch
    return json_response({
        "object": "list", "data": [_model(name, created) for name in names],
        # Anthropic's list (ModelInfo pages), read by its SDK and Claude Code's model discovery.
        "has_more": False, "first_id": names[0] if names else None, "last_id": names[-1] if names else None,
    })


@router.get("/v1/models/{model_id:path}")
async def retrieve_model(model_id: str, request: Request) -> Response:
    context = context_of(request)
    context.route(model_id)
    return json_response(_model(model_id, context.state.catalog.modified_epoch))


async def _relay(request: Request, path: str) -> Response:
    """Pass the body to the routed upstream with the upstream's model id; pass its answer back."""
    context = context_of(request)
    body = await read_json_object(request)
    name = body.get("model")
    if not isinstance(name, str) or not name:
        raise BadRequest("model is required")
    return await _answer(request, RelayCall(context.exchange(), body, path, name))


async def _answer(request: Request, call: RelayCall) -> Response:
    """Run the relay on the routed target (and its fallbacks); the answer whole, or streamed."""
    context = context_of(request)
    primary = context.route(call.name, balanced=True)
    reply = await call.exchange.run(primary, call)
    if reply.is_event_stream:
        return StreamedResponse(await call.stream(reply, SSEFraming(reply.content_type, context.state.clients.secrets)))
    return Response(await call.read(reply), media_type=reply.content_type)


class SSEFraming:
    """The relayed event stream: its own content type; an error after the first byte is a last
    `data: {"error": ...}` event, which the OpenAI SDKs raise as an `APIError`."""

    __slots__ = ("media_type", "_secrets")

    def __init__(self, media_type: str, secrets: Secrets) -> None:
        self.media_type = media_type
        self._secrets = secrets

    def error_chunk(self, error: GatewayError) -> bytes:
        return b"data: " + orjson.dumps({"error": _error_object(error, self._secrets)}) + b"\n\n"


def openai_error_response(error: GatewayError, secrets: Secrets) -> Response:
    return Response(
        orjson.dumps({"error": _error_object(error, secrets)}),
        status_code=error.status_code,
        headers=error.headers,
        media_type=JSON_MEDIA_TYPE,
    )


def _error_object(error: GatewayError, secrets: Secrets) -> dict[str, Any]:
    """OpenAI's error object, every field scrubbed (a relayed one was when it was built: again here)."""
    relayed: dict[str, Any] = dict(error.error) if isinstance(error, UpstreamRelayed) else {}
    rendered: dict[str, Any] = secrets.scrub_json({
        **relayed,
        "message": error.message,
        "type": relayed.get("type") or _ERROR_TYPES.get(error.status_code, "api_error"),
        "param": relayed.get("param"),
        "code": relayed.get("code"),
    })
    return rendered


def _model(name: str, created: int) -> dict[str, Any]:
    """One model in both SDKs' shapes (agents-api.md §1.9): OpenAI's (Ollama's `openai.ToModel`:
    `owned_by` is the name's namespace, `library` by default) and Anthropic's ModelInfo."""
    parts = name.split("/")
    return {
        "id": name, "object": "model", "created": created, "owned_by": parts[-2] if len(parts) > 1 else "library",
        "type": "model", "display_name": name,
        "created_at": datetime.fromtimestamp(created, UTC).isoformat().replace("+00:00", "Z"),
    }
