"""`/api/tags/` is served as `/api/tags`: one trailing slash is dropped before routing.

Ollama's gin router redirects such a path (301 for GET, 307 otherwise) with a relative Location.
Starlette's own `redirect_slashes` builds an absolute Location from the request's `Host` header,
which a client chooses (`Host: evil.example` got a 307 to `http://evil.example/api/tags`), so the
app turns it off (app.py) and serves both spellings here instead: no redirect, nothing built from
the Host. A path ending in `//` is left alone (404, as gin).
"""

from __future__ import annotations

from starlette.types import Scope


def without_trailing_slash(scope: Scope) -> Scope:
    """The scope with one trailing `/` dropped from its path (never from `/` itself, nor `//`)."""
    path: str = scope["path"]
    if not path.endswith("/") or len(path) == 1 or path.endswith("//"):
        return scope
    scope = {**scope, "path": path[:-1]}
    raw: bytes | None = scope.get("raw_path")
    if raw is not None and raw.endswith(b"/"):
        scope["raw_path"] = raw[:-1]
    return scope
