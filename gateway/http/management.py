"""Model management endpoints (ollama-api.md §12) on a gateway that stores no models.

routes.yaml is the gateway's truth and the gateway is stateless, so nothing here writes anything:

    POST   /api/pull         routed name: Ollama's status lines, ending in `success` (nothing to
                             download); unknown: Ollama's failure (a 200 stream whose last line is
                             the error, or 500 with `stream: false`)
    POST   /api/push         404 unknown; 400 routed (there are no model files to push)
    POST   /api/create       400: models are defined in routes.yaml (the error names the entry to add)
    POST   /api/copy         404 unknown source (Ollama's `model "x" not found`); 400 otherwise, naming
                             the routes.yaml entry that would make the copy
    DELETE /api/delete       404 unknown; 400 routed: remove its entry from routes.yaml
    HEAD   /api/blobs/D      400 bad digest; 404 (there are no blobs)
    POST   /api/blobs/D      400 bad digest; 400 (blobs only feed /api/create)

What the gateway cannot do is a 400, not a 5xx or a 405: the request is understood but this
server will never perform it, so it must not look like an outage (clients such as Home Assistant
retry any 5xx, and monitoring counts them) nor like a wrong HTTP method (Ollama's 405 is plain
text). Ollama uses 400 the same way ("does not support thinking"). Clients show `error` as is.
Bodies are JSON whatever the content type; a bad one is a 400, never FastAPI's 422.
"""

from __future__ import annotations

import re
from typing import Any, TypeVar

import orjson
from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, StrictBool, ValidationError
from starlette.responses import Response

from gateway.http.body import json_response, read_json_object
from gateway.http.context import RequestContext, context_of
from gateway.errors import BadRequest, GatewayError, ModelNotFound
from gateway.ollama import ModelRequest, describe_validation_error
from gateway.routing.resolver import Target
from gateway.upstream.streams import NDJSON_MEDIA_TYPE

router = APIRouter()

_PULL_STEPS = ("pulling manifest", "verifying sha256 digest", "writing manifest", "success")
# Ollama's words when the registry has no such model (server/images.go PullModel).
_PULL_MISSING = "pull model manifest: file does not exist"
_DIGEST = re.compile(r"sha256[:-][0-9a-fA-F]{64}")
_NO_STORE = "the gateway keeps no models of its own"

BodyT = TypeVar("BodyT", bound=BaseModel)


class TransferRequest(ModelRequest):
    """/api/pull, /api/push, /api/create, /api/delete: `model` or `name`, and `stream`."""

    stream: StrictBool | None = None


class CopyRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    source: str = ""
    destination: str = ""


@router.post("/api/pull")
async def pull(request: Request) -> Response:
    context = context_of(request)
    body = await _parse(request, TransferRequest)
    if not body.model:
        raise BadRequest("model is required")
    streams = body.stream is not False
    if _resolve(context, body.model) is None:
        if not streams:
            raise GatewayError(_PULL_MISSING)
        # Ollama starts the stream before it finds out: a 200 whose last line is the error.
        context.record.fail(GatewayError(_PULL_MISSING), after_first_byte=True)
        return _ndjson([{"status": "pulling manifest"}, {"error": _PULL_MISSING}])
    if not streams:
        return json_response({"status": "success"})
    return _ndjson([{"status": step} for step in _PULL_STEPS])


@router.post("/api/push")
async def push(request: Request) -> Response:
    context = context_of(request)
    body = await _parse(request, TransferRequest)
    if not body.model:
        raise BadRequest("model is required")
    target = context.route(body.model)
    raise BadRequest(
        f"cannot push '{body.model}': {_NO_STORE}, it is served by upstream '{target.upstream_name}' as "
        f"'{target.upstream_model}'"
    )


@router.post("/api/create")
async def create(request: Request) -> Response:
    context = context_of(request)
    raw = await read_json_object(request)
    body = _validate(TransferRequest, raw)
    if not body.model:
        raise BadRequest("model is required")
    source = raw.get("from")
    target = None
    if isinstance(source, str) and source:
        try:
            target = _resolve(context, source)
        except GatewayError:  # a model this key may not use: no hint about it
            target = None
    context.record.model = body.model
    hint = f": {_entry_hint(body.model, target)}" if target is not None else ""
    raise BadRequest(f"cannot create '{body.model}': {_NO_STORE}; define models in routes.yaml{hint}")


@router.post("/api/copy")
async def copy(request: Request) -> Response:
    context = context_of(request)
    body = await _parse(request, CopyRequest)
    if not body.source.strip():
        raise BadRequest(f"source {_quoted(body.source)} is invalid")
    if not body.destination.strip():
        raise BadRequest(f"destination {_quoted(body.destination)} is invalid")
    target = _resolve(context, body.source)
    if target is None:
        raise GatewayError(f"model {_quoted(body.source)} not found", status_code=404)
    raise BadRequest(
        f"cannot copy '{body.source}' to '{body.destination}': {_NO_STORE}; "
        f"add this entry to routes.yaml: {_entry_hint(body.destination, target)}"
    )


@router.delete("/api/delete")
async def delete(request: Request) -> Response:
    context = context_of(request)
    body = await _parse(request, TransferRequest)
    if not body.model:
        raise BadRequest("model is required")
    target = context.route(body.model)
    raise BadRequest(
        f"cannot delete '{body.model}': it comes from the routes.yaml entry '{target.route.name}' and "
        f"{_NO_STORE}; remove or change that entry to delete it"
    )


@router.head("/api/blobs/{digest}")
async def head_blob(digest: str) -> Response:
    _check_digest(digest)
    raise GatewayError(f"blob {_quoted(digest)} not found", status_code=404)


@router.post("/api/blobs/{digest}")
async def create_blob(digest: str) -> Response:
    # The body is not read: it is a model file (gigabytes) that nothing here could use.
    _check_digest(digest)
    raise BadRequest(f"cannot store blob {_quoted(digest)}: {_NO_STORE} (blobs only feed /api/create); define models in routes.yaml")


async def _parse(request: Request, model: type[BodyT]) -> BodyT:
    return _validate(model, await read_json_object(request))


def _validate(model: type[BodyT], raw: dict[str, Any]) -> BodyT:
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise BadRequest(describe_validation_error(exc)) from exc


def _resolve(context: RequestContext, name: str) -> Target | None:
    """The route for `name`, or None; a model the request's key may not use is a 403 (context.py)."""
    try:
        return context.route(name)
    except ModelNotFound:
        return None


def _check_digest(digest: str) -> None:
    if not _DIGEST.fullmatch(digest):
        raise BadRequest("invalid digest format")


def _entry_hint(name: str, target: Target) -> str:
    """The routes.yaml entry (YAML flow style) that would serve `name` like `target`."""
    return f"{{name: {_quoted(name)}, upstream: {_quoted(target.upstream_name)}, model: {_quoted(target.upstream_model)}}}"


def _quoted(text: str) -> str:
    """Double-quoted with escapes, like Go's %q that Ollama uses in these messages."""
    return orjson.dumps(text).decode()


def _ndjson(lines: list[dict[str, Any]]) -> Response:
    return Response(b"".join(orjson.dumps(line) + b"\n" for line in lines), media_type=NDJSON_MEDIA_TYPE)
