"""`/api/tags/` is served as `/api/tags`: one trailing slash is dropped before routing.

Ollama's gin router redirects such a path (301 for GET, 307 otherwise) with a relative Location.
Starlette's own `redirect_slashes` builds an absolute Location from the request's `Host` header,
which a client chooses (`Host: evil.example` got a 307 to `http://evil.example/api/tags`), so the
app turns it off (app.py) and serves both spellings here instead: no redirect, nothing built from
the Host. A path ending in `//` is left alone (404, as gin).
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send


class TrailingSlash:
    """Pure ASGI: strips one trailing `/` from the path (never from `/` itself)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        if scope["type"] == "http" and path.endswith("/") and len(path) > 1 and not path.endswith("//"):
            scope = {**scope, "path": path[:-1]}
            raw: bytes | None = scope.get("raw_path")
            if raw is not None and raw.endswith(b"/"):
                scope["raw_path"] = raw[:-1]
        await self.app(scope, receive, send)
