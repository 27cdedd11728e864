"""The route map: `routes.yaml` read, expanded, validated, and asked which upstream serves a name.

Shape (the user-facing contract; see the README's routes.yaml reference)::

    upstreams: {NAME: {base_url, api_key, timeout, headers}}
    models:    [{name, upstream, model, capabilities, context_length}, ...]   # first match wins
    endpoints: {"/api/chat": "package.module:Class", ...}                      # optional

`${VAR}` and `${VAR:-default}` expand from the environment in every string. An unset variable
without a default is an error naming it, except in an upstream's `api_key`: there it leaves the
upstream without a key, so the gateway still starts and only requests routed to it fail.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, SecretStr, ValidationError, field_validator, model_validator

from gateway.providers import PRESETS, ProviderName, Quirks, ReasoningInput, ReasoningKnob

Capability = Literal["completion", "tools", "insert", "vision", "embedding", "thinking", "image", "audio"]

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_CACHE_LIMIT = 4096


class RouteMapError(ValueError):
    """routes.yaml cannot be used; the message names the file, the entry and what is wrong."""


class QuirkSettings(BaseModel):
    """Provider quirks settable on an upstream and overridable per model (see `providers.py`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_tokens_field: Literal["max_tokens", "max_completion_tokens"] | None = None
    reasoning: ReasoningKnob | None = None
    reasoning_input: ReasoningInput | None = None
    think_tags: bool | None = None
    extra_options: dict[str, str] | None = None
    completions: bool | None = None
    stop_limit: int | None = Field(default=None, gt=0)
    json_schema: bool | None = None
    dimensions: bool | None = None
    tool_result_name: bool | None = None

    @field_validator("extra_options", mode="before")
    @classmethod
    def _list_means_same_names(cls, value: Any) -> Any:
        if isinstance(value, list):
            return {str(name): str(name) for name in value}
        return value

    def quirk_overrides(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in QuirkSettings.model_fields}


class UpstreamConfig(QuirkSettings):
    """One OpenAI-compatible target."""

    base_url: str = Field(pattern=r"^https?://\S+$")
    api_key: SecretStr | None = None
    timeout: float = Field(default=600.0, gt=0)
    headers: dict[str, str] = Field(default_factory=dict)
    max_retries: int = Field(default=2, ge=0, le=10)
    provider: ProviderName = "generic"

    # Name of the `${VAR}` the api_key needed but the environment lacked (set by the loader).
    _missing_key_variable: str | None = PrivateAttr(default=None)

    @property
    def missing_key_variable(self) -> str | None:
        return self._missing_key_variable


class ModelRoute(QuirkSettings):
    """One entry of `models`: an exact Ollama name, or a pattern with one `*`."""

    name: str = Field(min_length=1)
    upstream: str
    model: str | None = Field(default=None, min_length=1)
    capabilities: tuple[Capability, ...] | None = None
    context_length: int | None = Field(default=None, gt=0)

    @field_validator("name")
    @classmethod
    def _one_wildcard(cls, name: str) -> str:
        if name.count("*") > 1:
            raise ValueError("a pattern may hold only one '*'")
        if name != name.strip():
            raise ValueError("name has leading or trailing spaces")
        return name

    @property
    def is_pattern(self) -> bool:
        return "*" in self.name

    @property
    def listed_name(self) -> str:
        """The name `/api/tags` shows: always with a tag, as Ollama lists names."""
        return self.name if has_tag(self.name) else f"{self.name}:latest"

    @property
    def capability_list(self) -> list[str]:
        return list(self.capabilities) if self.capabilities else ["completion"]


class RouteMap(BaseModel):
    """The whole file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    upstreams: dict[str, UpstreamConfig]
    models: tuple[ModelRoute, ...] = ()
    endpoints: dict[str, str] = Field(default_factory=dict)

    _exact: dict[str, int] = PrivateAttr(default_factory=dict)
    _patterns: list[tuple[int, str, str]] = PrivateAttr(default_factory=list)
    _cache: dict[str, Target | None] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _check_references(self) -> RouteMap:
        for index, route in enumerate(self.models):
            if route.upstream not in self.upstreams:
                known = ", ".join(sorted(self.upstreams)) or "none"
                raise ValueError(
                    f"models[{index}] ({route.name!r}): upstream {route.upstream!r} is not defined "
                    f"under upstreams (defined: {known})"
                )
            if route.is_pattern:
                prefix, suffix = route.name.lower().split("*")
                self._patterns.append((index, prefix, suffix))
                continue
            key = canonical_name(route.name)
            if key in self._exact:
                first = self._exact[key]
                raise ValueError(
                    f"models[{index}] ({route.name!r}): same name as models[{first}] "
                    f"({self.models[first].name!r})"
                )
            self._exact[key] = index
        return self

    def resolve(self, name: str) -> Target | None:
        """The target serving an Ollama model name (any case, with or without `:latest`)."""
        key = canonical_name(name)
        try:
            return self._cache[key]
        except KeyError:
            pass
        target = self._match(name, key)
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[key] = target
        return target

    def _match(self, name: str, key: str) -> Target | None:
        exact = self._exact.get(key)
        for index, prefix, suffix in self._patterns:
            if exact is not None and index > exact:
                break
            if len(key) >= len(prefix) + len(suffix) and key.startswith(prefix) and key.endswith(suffix):
                stem = strip_latest(name.strip())
                captured = stem[len(prefix) : len(stem) - len(suffix)]
                if not captured:
                    continue
                return self._target(index, captured)
        if exact is not None:
            return self._target(exact, None)
        return None

    def _target(self, index: int, captured: str | None) -> Target:
        route = self.models[index]
        if route.model is not None:
            upstream_model = route.model.replace("*", captured) if captured is not None else route.model
        else:
            upstream_model = captured if captured is not None else strip_latest(route.name)
        upstream = self.upstreams[route.upstream]
        quirks = PRESETS[upstream.provider].merged(upstream.quirk_overrides()).merged(route.quirk_overrides())
        return Target(route=route, upstream_name=route.upstream, upstream=upstream, upstream_model=upstream_model, quirks=quirks)

    def listed_targets(self) -> list[Target]:
        """Exact entries, in file order, with their targets: what `/api/tags` lists."""
        return [self._target(index, None) for index, route in enumerate(self.models) if not route.is_pattern]

    def warnings(self) -> list[str]:
        """Problems that do not stop the gateway (shown by `check` and logged at start)."""
        return [
            f"upstream {name!r}: api_key needs ${{{upstream.missing_key_variable}}}, which is not set; "
            "requests routed to it will fail until it is"
            for name, upstream in self.upstreams.items()
            if upstream.missing_key_variable
        ]


@dataclass(frozen=True, slots=True)
class Target:
    """Where one request goes: the matched entry, its upstream, and the upstream's model id."""

    route: ModelRoute
    upstream_name: str
    upstream: UpstreamConfig
    upstream_model: str
    quirks: Quirks


def has_tag(name: str) -> bool:
    return ":" in name.rsplit("/", 1)[-1]


def strip_latest(name: str) -> str:
    return name[: -len(":latest")] if name.lower().endswith(":latest") else name


def canonical_name(name: str) -> str:
    """Ollama matches names case-insensitively, and `x` and `x:latest` are one model."""
    return strip_latest(name.strip().lower())


def load_route_map(path: Path | str, environ: Mapping[str, str] | None = None) -> RouteMap:
    """Read, expand and validate a routes.yaml file; raise RouteMapError with a precise message."""
    path = Path(path)
    environ = os.environ if environ is None else environ
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RouteMapError(f"{path}: cannot read the route map: {exc.strerror or exc}") from exc
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RouteMapError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise RouteMapError(f"{path}: expected a mapping with 'upstreams' and 'models' at the top level")
    missing_keys: dict[str, str] = {}
    try:
        expanded = _expand(raw, environ, (), missing_keys)
    except _UnsetVariable as exc:
        raise RouteMapError(f"{path}: {exc.location}: environment variable {exc.variable} is not set") from exc
    try:
        route_map = RouteMap.model_validate(expanded)
    except ValidationError as exc:
        raise RouteMapError(f"{path}: {_describe(exc, expanded)}") from exc
    for name, variable in missing_keys.items():
        route_map.upstreams[name]._missing_key_variable = variable
    return route_map


class _UnsetVariable(Exception):
    def __init__(self, variable: str, location: str) -> None:
        super().__init__(variable)
        self.variable = variable
        self.location = location


def _expand(node: Any, environ: Mapping[str, str], loc: tuple[Any, ...], missing_keys: dict[str, str]) -> Any:
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
        if not is_api_key:
            raise
        missing_keys[str(loc[1])] = exc.variable
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
