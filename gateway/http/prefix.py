"""`GATEWAY_ROOT_PATH`: the whole API served under a path prefix as well as at the root.

Behind a reverse proxy that forwards `https://host/ollama/api/tags` without stripping `/ollama`,
set `GATEWAY_ROOT_PATH=/ollama`: the front layer drops the prefix before anything that looks at
the path (auth's open paths, the trailing slash, dispatch), so `/ollama/api/tags` and `/api/tags`
are the same endpoint. `/ollama` alone is `/`; `/ollamax` is not under the prefix. The request's
log line keeps the path as the client sent it.
"""

from __future__ import annotations

from starlette.types import Scope


def without_root_path(scope: Scope, root_path: str) -> Scope:
    """The scope with `root_path` (`/x`, no trailing slash) dropped from the front of its path."""
    path: str = scope["path"]
    if not path.startswith(root_path) or (len(path) > len(root_path) and path[len(root_path)] != "/"):
        return scope
    scope = {**scope, "path": path[len(root_path):] or "/"}
    raw: bytes | None = scope.get("raw_path")
    prefix = root_path.encode("latin-1")
    if raw is not None and raw.startswith(prefix):
        scope["raw_path"] = raw[len(prefix):] or b"/"
    return scope
