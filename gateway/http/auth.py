"""Inbound auth on the wire: the bearer token a request presents, and the 401 it gets without one.

With an `auth` section in routes.yaml, every request but `GET`/`HEAD /` (Ollama's liveness
probe) needs `Authorization: Bearer <key>` with one of its keys (`routing.keys.KeyChecker`), or
it gets 401 `{"error": "unauthorized"}`. Without one, nothing is checked, and the client's bearer
token is kept in `redact.CLIENT_KEY` for the upstreams that say `pass_client_key: true`; an
upstream never sees a client's key otherwise.
"""

from __future__ import annotations

from starlette.types import Send

UNAUTHORIZED_BODY = b'{"error":"unauthorized"}'
_OPEN_PATHS = {("GET", "/"), ("HEAD", "/")}
_UNAUTHORIZED_HEADERS = [
    (b"content-type", b"application/json; charset=utf-8"),
    (b"content-length", str(len(UNAUTHORIZED_BODY)).encode()),
    (b"www-authenticate", b"Bearer"),
]


def is_open(method: str, path: str) -> bool:
    return (method, path) in _OPEN_PATHS


def bearer_value(header: bytes | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header value, if that is what it is."""
    if not header:
        return None
    scheme, _, token = header.decode("latin-1").partition(" ")
    return (token.strip() or None) if scheme.lower() == "bearer" else None


async def unauthorized(send: Send) -> None:
    await send({"type": "http.response.start", "status": 401, "headers": _UNAUTHORIZED_HEADERS})
    await send({"type": "http.response.body", "body": UNAUTHORIZED_BODY, "more_body": False})
