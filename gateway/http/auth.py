"""Inbound auth on the wire: the bearer token a request presents, and the 401 it gets without one.

With an `auth` section in routes.yaml, every request but `GET`/`HEAD /` (Ollama's liveness
probe) needs `Authorization: Bearer <key>` (or `X-Api-Key: <key>`, as Anthropic clients send it)
with one of its keys (`routing.keys.KeyChecker`), or it gets 401 `{"error": "unauthorized"}`
(Anthropic's error shape on `/v1/messages`). Without one, nothing is checked, and the client's bearer
token is kept in `redact.CLIENT_KEY` for the upstreams that say `pass_client_key: true`; an
upstream never sees a client's key otherwise.
"""

from __future__ import annotations

from starlette.types import Send

UNAUTHORIZED_BODY = b'{"error":"unauthorized"}'
ANTHROPIC_PREFIX = "/v1/messages"
ANTHROPIC_UNAUTHORIZED_BODY = b'{"type":"error","error":{"type":"authentication_error","message":"unauthorized"}}'
_OPEN_PATHS = {("GET", "/"), ("HEAD", "/")}
_UNAUTHORIZED_HEADERS = [(b"content-type", b"application/json; charset=utf-8"), (b"www-authenticate", b"Bearer")]


def is_open(method: str, path: str) -> bool:
    return (method, path) in _OPEN_PATHS


def bearer_value(header: bytes | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header value, if that is what it is."""
    if not header:
        return None
    scheme, _, token = header.decode("latin-1").partition(" ")
    return (token.strip() or None) if scheme.lower() == "bearer" else None


async def unauthorized(send: Send, path: str = "") -> None:
    """The 401, in Anthropic's error shape on its surface (`/v1/messages...`), else in Ollama's."""
    anthropic = path.startswith(ANTHROPIC_PREFIX)
    body = ANTHROPIC_UNAUTHORIZED_BODY if anthropic else UNAUTHORIZED_BODY
    headers = [*_UNAUTHORIZED_HEADERS, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 401, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})
