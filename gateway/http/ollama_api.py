"""The HTTP surface: Ollama's endpoints, each a thin handler over the translators and catalog.

A translated endpoint goes: parse the body (JSON whatever the content type) -> validate the Ollama
shape -> route the model -> translator -> local reply, or upstream call -> Ollama JSON or NDJSON.
"""

from __future__ import annotations

from typing import Annotated, Any

import orjson
import structlog
from fastapi import APIRouter, Depends, Request
from pydantic import ValidationError
from starlette.responses import Response

from gateway.routing.keys import GRANT, ModelForbidden
from gateway.translators.clock import RequestClock
from gateway.errors import JSON_MEDIA_TYPE, BadRequest, GatewayError, ModelNotFound
from gateway.upstream.exchange import Exchange, OpenedStream, TranslatedCall
from gateway.http.streaming import StreamedResponse
from gateway.upstream.limiter import check_body
from gateway.logs import RequestRecord
from gateway.ollama import ModelRequest, ShowRequest, describe_validation_error
from gateway.routing.names import has_tag
from gateway.routing.resolver import Target
from gateway.routing.state import GatewayState

router = APIRouter()
log = structlog.get_logger()


# Dependencies are `async def`: FastAPI runs a plain `def` dependency on a thread pool, a thread
# hand-off per request (the benchmark profile showed it, issue 3).
def state_of(request: Request) -> GatewayState:
    # The state in force when the request started (reload.LiveStateMiddleware): a reload
    # meanwhile does not change the map a request is served with.
    state: GatewayState = request.scope["state"]["gateway"]
    return state


async def _state(request: Request) -> GatewayState:
    return state_of(request)


async def _record(request: Request) -> RequestRecord:
    record: RequestRecord = request.scope["state"]["record"]
    return record


State = Annotated[GatewayState, Depends(_state)]
Record = Annotated[RequestRecord, Depends(_record)]


def json_response(content: Any, status_code: int = 200) -> Response:
    return Response(orjson.dumps(content), status_code=status_code, media_type=JSON_MEDIA_TYPE)


async def read_json_object(request: Request) -> dict[str, Any]:
    """The body as a JSON object, whatever the Content-Type (curl -d sends a form type)."""
    raw = await request.body()
    if not raw.strip():
        raise BadRequest("missing request body")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"invalid JSON in request body: {exc}") from exc
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    check_body(body, state_of(request).settings)
    return body


def validate(request_type: type[ModelRequest], body: dict[str, Any]) -> Any:
    try:
        return request_type.model_validate(body)
    except ValidationError as exc:
        raise BadRequest(describe_validation_error(exc)) from exc


@router.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
async def root() -> Response:
    return Response("Ollama is running", media_type="text/plain; charset=utf-8")


@router.api_route("/api/version", methods=["GET", "HEAD"])
async def version(state: State) -> Response:
    return json_response({"version": state.settings.ollama_version})


@router.api_route("/api/tags", methods=["GET", "HEAD"])
async def tags(state: State) -> Response:
    return json_response(state.catalog.tags())


@router.api_route("/api/ps", methods=["GET", "HEAD"])
async def ps(state: State) -> Response:
    return json_response(state.catalog.ps())


@router.post("/api/show")
async def show(request: Request, state: State, record: Record) -> Response:
    show_request: ShowRequest = validate(ShowRequest, await read_json_object(request))
    if not show_request.model:
        raise BadRequest("model is required")
    target = _route(state, record, show_request.model, shown_name=_with_tag(show_request.model))
    return json_response(state.catalog.show(target, show_request.model))


@router.post("/api/chat")
async def chat(request: Request, state: State, record: Record) -> Response:
    return await translated(request, state, record, "/api/chat")


@router.post("/api/generate")
async def generate(request: Request, state: State, record: Record) -> Response:
    return await translated(request, state, record, "/api/generate")


@router.post("/api/embed")
async def embed(request: Request, state: State, record: Record) -> Response:
    return await translated(request, state, record, "/api/embed")


@router.post("/api/embeddings")
async def embeddings(request: Request, state: State, record: Record) -> Response:
    return await translated(request, state, record, "/api/embeddings")


async def translated(request: Request, state: GatewayState, record: RequestRecord, endpoint: str) -> Response:
    """Serve an endpoint through the translator routes.yaml binds to it."""
    clock = RequestClock()
    translator_class = state.bindings[endpoint]
    ollama_request = validate(translator_class.request_type, await read_json_object(request))
    name = ollama_request.model
    if not name and endpoint == "/api/chat":
        raise BadRequest("model is required")
    target = _route(state, record, name)
    translator = translator_class(ollama_request, target, clock)
    keep_alive = getattr(ollama_request, "keep_alive", None)
    reply = translator.local_reply()
    if reply is not None:
        state.catalog.mark_used(target, name, keep_alive)
        return json_response(reply)
    call = TranslatedCall(Exchange(state.clients, state.route_map, record), translator, ollama_request, clock)
    try:
        # Retries and fallbacks (routes.yaml `max_retries`, `fallbacks`), before the first byte.
        answer = await call.exchange.run(target, call)
    except GatewayError as exc:
        mapped = translator.map_error(exc)
        if mapped is exc:
            raise
        raise mapped from exc
    response = StreamedResponse(answer) if isinstance(answer, OpenedStream) else Response(answer, media_type=JSON_MEDIA_TYPE)
    state.catalog.mark_used(target, name, keep_alive)
    return response


def _route(state: GatewayState, record: RequestRecord, name: str, shown_name: str | None = None) -> Target:
    record.model = name
    target = state.route_map.resolve(name)
    if target is None:
        raise ModelNotFound(shown_name if shown_name is not None else name)
    grant = GRANT.get()
    if grant is not None and not grant.allows(name, target.listed_name, None if target.route.is_pattern else target.route.name):
        raise ModelForbidden(name)
    record.upstream = target.upstream_name
    record.upstream_model = target.upstream_model
    return target


def _with_tag(name: str) -> str:
    return name if has_tag(name) else f"{name}:latest"
