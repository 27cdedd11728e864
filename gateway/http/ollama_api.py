"""Ollama's endpoints: thin handlers over the translators, the exchange and the catalog.

A translated endpoint goes: the body (JSON whatever the content type, within the caps) ->
validated as the translator's Ollama request -> routed (404, 403) -> the translator's local reply
(load, unload, empty input), or the exchange with the upstreams -> Ollama JSON or NDJSON. The
request's context (`context_of`) holds the map in force, the record and the clock; no handler
takes injected dependencies.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway.errors import JSON_MEDIA_TYPE, BadRequest, GatewayError, error_response
from gateway.http.body import json_response, read_json_object, validate
from gateway.http.context import context_in, context_of
from gateway.http.streaming import StreamedResponse
from gateway.ollama import ShowRequest
from gateway.routing.names import has_tag
from gateway.upstream.exchange import TranslatedCall
from gateway.upstream.streams import OpenedStream

router = APIRouter()


@router.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
async def root() -> Response:
    return Response("Ollama is running", media_type="text/plain; charset=utf-8")


@router.api_route("/api/version", methods=["GET", "HEAD"])
async def version(request: Request) -> Response:
    return json_response({"version": context_of(request).state.settings.ollama_version})


@router.api_route("/api/tags", methods=["GET", "HEAD"])
async def tags(request: Request) -> Response:
    context = context_of(request)
    return json_response(context.state.catalog.tags(context.grant))


@router.api_route("/api/ps", methods=["GET", "HEAD"])
async def ps(request: Request) -> Response:
    context = context_of(request)
    return json_response(context.state.catalog.ps(context.grant))


@router.post("/api/show")
async def show(request: Request) -> Response:
    context = context_of(request)
    show_request: ShowRequest = validate(ShowRequest, await read_json_object(request))
    if not show_request.model:
        raise BadRequest("model is required")
    target = context.route(show_request.model, shown_name=_with_tag(show_request.model))
    return json_response(context.state.catalog.show(target, show_request.model))


@router.post("/api/chat")
async def chat(request: Request) -> Response:
    return await translated(request, "/api/chat")


@router.post("/api/generate")
async def generate(request: Request) -> Response:
    return await translated(request, "/api/generate")


@router.post("/api/embed")
async def embed(request: Request) -> Response:
    return await translated(request, "/api/embed")


@router.post("/api/embeddings")
async def embeddings(request: Request) -> Response:
    return await translated(request, "/api/embeddings")


async def translated(request: Request, endpoint: str) -> Response:
    """Serve an endpoint through the translator routes.yaml binds to it."""
    context = context_of(request)
    state = context.state
    translator_class = state.bindings[endpoint]
    ollama_request = validate(translator_class.request_type, await read_json_object(request))
    name = ollama_request.model
    if not name and endpoint == "/api/chat":
        raise BadRequest("model is required")
    target = context.route(name, balanced=True)
    translator = translator_class(ollama_request, target, context.clock)
    keep_alive = getattr(ollama_request, "keep_alive", None)
    reply = translator.local_reply()
    if reply is None:
        call = TranslatedCall(context.exchange(), translator, ollama_request, context.clock)
        # Retries and fallbacks (routes.yaml `max_retries`, `fallbacks`), before the first byte.
        answer = await call.exchange.run_translated(target, call, translator)
    state.catalog.mark_used(target, name, keep_alive)
    if reply is not None:
        return json_response(reply)
    return StreamedResponse(answer) if isinstance(answer, OpenedStream) else Response(answer, media_type=JSON_MEDIA_TYPE)


async def ollama_error(request: Request, exc: Exception) -> Response:
    """A GatewayError in Ollama's shape, scrubbed once more (belt and braces) and recorded."""
    assert isinstance(exc, GatewayError)
    context = context_in(request.scope)
    if context is not None:
        exc.message = context.state.clients.scrub(exc.message)
        context.record.fail(exc)
    return error_response(exc)


def _with_tag(name: str) -> str:
    return name if has_tag(name) else f"{name}:latest"
