"""Loading routes.yaml: read the file, parse it, expand `${VAR}`, validate, fail fast with a precise message.

`${VAR}` and `${VAR:-default}` expand from the environment in every string. An unset variable
without a default is an error naming it, except in an upstream's `api_key` (the upstream is left
without a key, so only requests routed to it fail) and in an `auth` key (that key is disabled,
so it lets nobody in). Every failure is a `RouteMapError` naming the file, the entry and what is
wrong; YAML errors give a position, never a line of the file (`yamlload.py`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from gateway.routing import yamlload
from gateway.routing.resolver import RouteMap

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class RouteMapError(ValueError):
    """routes.yaml cannot be used; the message names the file, the entry and what is wrong."""


def load_route_map(path: Path | str, environ: Mapping[str, str] | None = None, text: str | None = None) -> RouteMap:
    """Read, expand and validate a routes.yaml file; raise RouteMapError with a precise message.

    `text`, when given, is the file's content already read (`path` then only names it).
    """
    path = Path(path)
    environ = os.environ if environ is None else environ
    if text is None:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise RouteMapError(f"{path}: cannot read the route map: {exc.strerror or exc}") from exc
        except UnicodeDecodeError as exc:
            raise RouteMapError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    try:
        raw = yamlload.load(text)
    except yamlload.YamlError as exc:
        # The position only: the file's lines can hold literal keys (yamlload.py).
        raise RouteMapError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise RouteMapError(f"{path}: expected a mapping with 'upstreams' and 'models' at the top level")
    missing_keys: dict[tuple[Any, ...], str] = {}
    try:
        expanded = _expand(raw, environ, (), missing_keys)
    except _UnsetVariable as exc:
        raise RouteMapError(f"{path}: {exc.location}: environment variable {exc.variable} is not set") from exc
    try:
        route_map = RouteMap.model_validate(expanded)
    except ValidationError as exc:
        raise RouteMapError(f"{path}: {_describe(exc, expanded)}") from exc
    for loc, variable in missing_keys.items():
        if loc[0] == "upstreams":
            route_map.upstreams[str(loc[1])]._missing_key_variable = variable
        elif route_map.auth is not None:
            route_map.auth.keys[int(loc[2])]._missing_variable = variable
    return route_map


class _UnsetVariable(Exception):
    def __init__(self, variable: str, location: str) -> None:
        super().__init__(variable)
        self.variable = variable
        self.location = location


def _expand(node: Any, environ: Mapping[str, str], loc: tuple[Any, ...], missing_keys: dict[tuple[Any, ...], str]) -> Any:
    if isinstance(node, dict):
        return {key: _expand(value, environ, (*loc, key), missing_keys) for key, value in node.items()}
    if isinstance(node, list):
        return [_expand(value, environ, (*loc, index), missing_keys) for index, value in enumerate(node)]
    if not isinstance(node, str) or "${" not in node:
        return node

    def substitute(match: re.Match[str]) -> str:
        variable, default = match.group(1), match.group(2)
        value = environ.get(variable)
        if value is None or (value == "" and default is not None):
            if default is not None:
                return default
            raise _UnsetVariable(variable, _format_loc(loc))
        return value

    try:
        return _ENV_REF.sub(substitute, node)
    except _UnsetVariable as exc:
        is_api_key = len(loc) == 3 and loc[0] == "upstreams" and loc[2] == "api_key"
        is_auth_key = len(loc) == 4 and loc[:2] == ("auth", "keys") and isinstance(loc[2], int) and loc[3] == "key"
        if not (is_api_key or is_auth_key):
            raise
        missing_keys[loc] = exc.variable
        return None


def _format_loc(loc: tuple[Any, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def _describe(exc: ValidationError, data: Any) -> str:
    """One line per problem, each naming the entry (`models[2] ('gpt-4o')`) and the field."""
    lines = []
    for error in exc.errors():
        loc = tuple(error["loc"])
        where = _format_loc(loc)
        if len(loc) >= 2 and loc[0] == "models" and isinstance(loc[1], int):
            try:
                name = data["models"][loc[1]].get("name")
            except (AttributeError, IndexError, KeyError, TypeError):
                name = None
            if name:
                rest = _format_loc(loc[2:]) if len(loc) > 2 else ""
                where = f"models[{loc[1]}] ({name!r})" + (f".{rest}" if rest else "")
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            message = "unknown key (not part of the routes.yaml format)"
        elif error["type"] == "missing":
            message = "required key is missing"
        elif message.startswith("Value error, "):
            message = message[len("Value error, ") :]
        lines.append(f"{where}: {message}" if loc else message)
    return "; ".join(lines)
