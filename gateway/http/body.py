"""Request bodies in and JSON out: JSON whatever the Content-Type, checked, then validated.

curl's `-d` sends a form content type and Ollama reads JSON anyway (ollama-api.md §1.2). A body
that is empty, not JSON, not an object, too deep or too big for the caps (`upstream.limiter`
`check_body`, before pydantic builds anything) is a 400/413 in Ollama's shape, never a 422.
The `/v1` surfaces answer in their own error shapes through `error_shaped_route`.
"""

from __future__ import annotations

import io
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import orjson
from fastapi.routing import APIRoute
import zstandard
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response

from gateway.errors import JSON_MEDIA_TYPE, BadRequest, GatewayError, PayloadTooLarge
from gateway.http.context import context_of
from gateway.ollama import ModelRequest, describe_validation_error
from gateway.upstream.limiter import check_body

ZSTD_MAX_WINDOW = 8 * 1024 * 1024
ZSTD_MAX_DECODED = 20 * 1024 * 1024


def json_response(content: Any, status_code: int = 200) -> Response:
    return Response(orjson.dumps(content), status_code=status_code, media_type=JSON_MEDIA_TYPE)


async def read_json_object(request: Request, *, zstd: bool = False) -> dict[str, Any]:
    """The body as a JSON object, whatever the Content-Type, within the request caps.

    `zstd`: a body sent with `Content-Encoding: zstd` (exactly; Codex ≥ 0.98 compresses its
    bodies) is decoded first, within Ollama's limits: a frame window of at most 8 MiB, at most
    20 MiB decoded (and never more than GATEWAY_MAX_BODY_BYTES). Only the agents' surfaces ask.
    """
    raw = await request.body()
    if zstd and request.headers.get("content-encoding") == "zstd":
        raw = _zstd_decoded(raw, min(ZSTD_MAX_DECODED, context_of(request).state.settings.max_body_bytes))
    if not raw.strip():
        raise BadRequest("missing request body")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"invalid JSON in request body: {exc}") from exc
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    check_body(body, context_of(request).state.settings)
    return body


def _zstd_decoded(raw: bytes, limit: int) -> bytes:
    try:
        with zstandard.ZstdDecompressor(max_window_size=ZSTD_MAX_WINDOW).stream_reader(io.BytesIO(raw)) as reader:
            decoded = reader.read(limit + 1)
    except zstandard.ZstdError as exc:
        raise BadRequest(f"failed to decompress request body: {exc}") from exc
    if len(decoded) > limit:
        raise PayloadTooLarge(f"request body is over {limit} bytes once decompressed")
    return decoded


def validate(request_type: type[ModelRequest], body: dict[str, Any]) -> Any:
    try:
        return request_type.model_validate(body)
    except ValidationError as exc:
        raise BadRequest(describe_validation_error(exc)) from exc


ErrorAnswer = Callable[[Request, Exception], Awaitable[Response]]


def error_shaped_route(answer: Callable[[], ErrorAnswer]) -> type[APIRoute]:
    """A FastAPI route class whose GatewayErrors are answered by `answer()` (the `/v1` surfaces
    answer in OpenAI's or Anthropic's error shape, not Ollama's); `answer` is looked up at the
    first error, so a module can name a function it defines further down."""

    class ErrorShapedRoute(APIRoute):
        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            handler = super().get_route_handler()

            async def handle(request: Request) -> Response:
                try:
                    return await handler(request)
                except GatewayError as exc:
                    return await answer()(request, exc)

            return handle

    return ErrorShapedRoute
