"""The route map: `routes.yaml` read, expanded, validated, and asked which upstream serves a name.

Shape (the user-facing contract; docs/routes.md documents every key)::

    upstreams: {NAME: {base_url, api_key, provider, headers, query, timeouts, retries, discover, ...}}
    models:    [{name, aliases, upstream, model, fallbacks, capabilities, context_length}, ...]
    auth:      {keys: [{key, models}, ...]}                                      # optional
    endpoints: {"/api/chat": "package.module:Class", ...}                      # optional

`${VAR}` and `${VAR:-default}` expand from the environment in every string. An unset variable
without a default is an error naming it, except in an upstream's `api_key` (the upstream is left
without a key, so only requests routed to it fail) and in an `auth` key (that key is disabled,
so it lets nobody in).

Name resolution (`RouteMap.resolve`), case-insensitive and with `x` = `x:latest` as in Ollama:
an exact name or alias; else a discovered name (`prefix` + an id from the upstream's
`/v1/models`); else the first pattern that matches. A pattern listed *before* an exact entry
wins over it: among the entries of `models`, the first match wins.
"""

from __future__ import annotations

import base64
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import SplitResult, unquote, urlsplit, urlunsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from gateway.routing import yamlload
from gateway.routing.presets import (
    PRESETS,
    ProviderName,
    Quirks,
    ReasoningInput,
    ReasoningKnob,
)
from gateway.upstream.redact import MASK, Secrets

Capability = Literal["completion", "tools", "insert", "vision", "embedding", "thinking", "image", "audio"]

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_CACHE_LIMIT = 4096
# Header and query parameter names whose values are credentials, whatever their length.
_CREDENTIAL_NAME = re.compile(r"auth|key|token|secret|pass|cookie|session|signature|credential|^sig$|^code$", re.IGNORECASE)


def _empty_is_none(value: Any) -> Any:
    """`${KEY:-}` for an optional key: an empty key is no key (the SDK refuses "")."""
    return None if value == "" else value


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
    # The header that carries api_key: `Authorization` (as `Bearer KEY`), or e.g. Azure's `api-key`.
    auth_header: str = Field(default="Authorization", pattern=r"^[A-Za-z0-9-]+$")
    # Send the client's own `Authorization: Bearer` token upstream instead of api_key (when it sent one).
    pass_client_key: bool = False
    headers: dict[str, str] = Field(default_factory=dict)
    query: dict[str, str] = Field(default_factory=dict)  # added to every URL (Azure's api-version)
    provider: ProviderName = "generic"
    # Seconds. `timeout`: the SDK's read timeout (a stream silent this long mid-way is abandoned);
    # connect: TCP+TLS; first_token: a request whose first byte for the client has not come by
    # then is abandoned and falls back; total: the whole request, stream included.
    timeout: float = Field(default=600.0, gt=0)
    connect_timeout: float = Field(default=10.0, gt=0)
    first_token_timeout: float | None = Field(default=None, gt=0)
    total_timeout: float | None = Field(default=None, gt=0)
    # Retries of this upstream before falling back (connection failures, timeouts, 429, 5xx),
    # waiting retry_backoff * 2^n plus jitter, at most retry_backoff_max; a 429's Retry-After is
    # honoured up to retry_after_max (a longer one falls back at once).
    max_retries: int = Field(default=2, ge=0, le=10)
    retry_backoff: float = Field(default=0.5, ge=0)
    retry_backoff_max: float = Field(default=8.0, ge=0)
    retry_after_max: float = Field(default=30.0, ge=0)
    # Discovery: list the upstream's /v1/models in /api/tags as `prefix` + id, and route those names.
    discover: bool = False
    prefix: str = ""
    discover_interval: float = Field(default=300.0, ge=1)
    discover_timeout: float = Field(default=10.0, gt=0)

    _empty_key_is_no_key = field_validator("api_key", mode="before")(_empty_is_none)

    @field_validator("prefix")
    @classmethod
    def _prefix_is_a_name_start(cls, prefix: str) -> str:
        if "*" in prefix or prefix != prefix.strip():
            raise ValueError("prefix may not hold '*' or spaces at either end")
        return prefix

    @model_validator(mode="after")
    def _basic_auth_fits(self) -> UpstreamConfig:
        """A user and password in base_url go as HTTP basic auth, in `Authorization`: nothing else may."""
        if self.basic_credentials is None:
            return self
        clash = ""
        if self.api_key is not None and self.auth_header.lower() == "authorization":
            clash = "api_key, which is sent in Authorization too (set auth_header to send it in another header)"
        elif any(name.lower() == "authorization" for name in self.headers):
            clash = "an Authorization header in headers"
        elif self.pass_client_key:
            clash = "pass_client_key, which sends the client's key in Authorization"
        if clash:
            raise ValueError(
                "base_url holds a user and password, which are sent as HTTP basic auth in the Authorization header; "
                f"that cannot be combined with {clash}"
            )
        return self

    # Name of the `${VAR}` the api_key needed but the environment lacked (set by the loader).
    _missing_key_variable: str | None = PrivateAttr(default=None)

    @property
    def missing_key_variable(self) -> str | None:
        return self._missing_key_variable

    @property
    def basic_credentials(self) -> tuple[str, str] | None:
        """The user and password written in base_url (percent-decoded), if it holds any."""
        parts = urlsplit(self.base_url)
        if parts.username is None and parts.password is None:
            return None
        return unquote(parts.username or ""), unquote(parts.password or "")

    @property
    def basic_authorization(self) -> str | None:
        """The `Authorization` header value for base_url's user and password (HTTP basic auth)."""
        credentials = self.basic_credentials
        if credentials is None:
            return None
        return "Basic " + base64.b64encode(":".join(credentials).encode()).decode("ascii")

    @property
    def request_url(self) -> str:
        """base_url without its user and password: what requests go to."""
        parts = urlsplit(self.base_url)
        return self.base_url if self.basic_credentials is None else urlunsplit(parts._replace(netloc=_host_port(parts)))

    @property
    def display_url(self) -> str:
        """base_url as `check` and error messages show it: its password (or a lone user, a token)
        and its credential-like query parameters masked."""
        parts = urlsplit(self.base_url)
        if self.basic_credentials is not None:
            user = f"{parts.username}:{MASK}" if parts.password is not None else MASK
            parts = parts._replace(netloc=f"{user}@{_host_port(parts)}")
        if parts.query:
            pairs = [pair.partition("=") for pair in parts.query.split("&")]
            masked = [f"{name}={MASK}" if value and _CREDENTIAL_NAME.search(unquote(name)) else name + sep + value
                      for name, sep, value in pairs]
            parts = parts._replace(query="&".join(masked))
        return urlunsplit(parts)

    def configured_secrets(self) -> Iterator[tuple[str, bool]]:
        """Every secret this upstream is configured with, as `(value, strong)` (see `redact.Secrets`).

        All header values count: a header is configured because the upstream wants it, and its
        value is often a token. Those whose names say credential are strong; the others (a
        Referer, a title) are weak and count only from 8 characters. Query parameters count when
        their names say credential (`api-version` is no secret).
        """
        if self.api_key is not None:
            yield self.api_key.get_secret_value(), True
        for name, value in self.headers.items():
            strong = bool(_CREDENTIAL_NAME.search(name))
            yield value, strong
            scheme, _, token = value.partition(" ")
            if token and scheme.isalpha():
                yield token.strip(), strong  # `Bearer <token>`: the token alone is a secret too
        query = [*self.query.items(), *_query_pairs(self.base_url)]
        yield from ((value, True) for name, value in query if _CREDENTIAL_NAME.search(name))
        credentials = self.basic_credentials
        if credentials is not None:
            parts = urlsplit(self.base_url)
            if parts.password is not None:
                yield from ((parts.password, True), (credentials[1], True))
            else:
                yield from ((parts.username or "", True), (credentials[0], True))
            authorization = self.basic_authorization or ""
            yield authorization.removeprefix("Basic "), True


class ModelRoute(QuirkSettings):
    """One entry of `models`: an exact Ollama name (with aliases), or a pattern with one `*`."""

    name: str = Field(min_length=1)
    aliases: tuple[str, ...] = ()
    upstream: str
    model: str | None = Field(default=None, min_length=1)
    fallbacks: tuple[str, ...] = ()
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

    @field_validator("aliases", "fallbacks")
    @classmethod
    def _plain_names(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        for name in names:
            if not name or name != name.strip() or "*" in name:
                raise ValueError(f"{name!r} is not a model name (no '*', no spaces at either end)")
        return names

    @model_validator(mode="after")
    def _aliases_need_an_exact_name(self) -> ModelRoute:
        if self.aliases and self.is_pattern:
            raise ValueError("aliases need an exact name, not a pattern")
        return self

    @property
    def is_pattern(self) -> bool:
        return "*" in self.name

    @property
    def listed_name(self) -> str:
        """The name `/api/tags` shows: always with a tag, as Ollama lists names."""
        return tagged(self.name)

    @property
    def capability_list(self) -> list[str]:
        return list(self.capabilities) if self.capabilities else ["completion"]


class AuthKey(BaseModel):
    """One inbound key, optionally limited to some model names or patterns (`*` matches any run)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key: SecretStr | None
    models: tuple[str, ...] = ("*",)

    _missing_variable: str | None = PrivateAttr(default=None)

    _empty_key_is_no_key = field_validator("key", mode="before")(_empty_is_none)

    @field_validator("key")
    @classmethod
    def _long_enough(cls, key: SecretStr | None) -> SecretStr | None:
        if key is not None and len(key.get_secret_value()) < 8:
            raise ValueError("an auth key must be at least 8 characters long")
        return key


class AuthConfig(BaseModel):
    """Inbound bearer-key checks: on for every endpoint but `GET/HEAD /` once this is present."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    keys: tuple[AuthKey, ...] = Field(min_length=1)


class RouteMap(BaseModel):
    """The whole file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    upstreams: dict[str, UpstreamConfig]
    models: tuple[ModelRoute, ...] = ()
    auth: AuthConfig | None = None
    endpoints: dict[str, str] = Field(default_factory=dict)

    _exact: dict[str, int] = PrivateAttr(default_factory=dict)
    _patterns: list[tuple[int, str, str]] = PrivateAttr(default_factory=list)
    _cache: dict[str, Target | None] = PrivateAttr(default_factory=dict)
    # Discovered names (canonical) -> their targets; replaced as a whole by `with_discovered`.
    _discovered: dict[str, Target] = PrivateAttr(default_factory=dict)
    _warnings: list[str] = PrivateAttr(default_factory=list)
    _secrets: Secrets = PrivateAttr(default_factory=Secrets)

    @model_validator(mode="after")
    def _collect_secrets(self) -> RouteMap:
        """One `Secrets` for the whole map: every upstream's, and the inbound auth keys."""
        found = [secret for upstream in self.upstreams.values() for secret in upstream.configured_secrets()]
        if self.auth is not None:
            found += [(entry.key.get_secret_value(), True) for entry in self.auth.keys if entry.key is not None]
        self._secrets = Secrets(found)
        return self

    @property
    def secrets(self) -> Secrets:
        """What every error, log line and relayed body is scrubbed of (built once per loaded map)."""
        return self._secrets

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
            for name in (route.name, *route.aliases):
                key = canonical_name(name)
                if key in self._exact:
                    first = self._exact[key]
                    raise ValueError(
                        f"models[{index}] ({route.name!r}): {name!r} is already a name of models[{first}] "
                        f"({self.models[first].name!r})"
                    )
                self._exact[key] = index
        self._check_fallbacks()
        return self

    def _check_fallbacks(self) -> None:
        discovering = any(upstream.discover for upstream in self.upstreams.values())
        for index, route in enumerate(self.models):
            for fallback in route.fallbacks:
                target = self._match(fallback, canonical_name(fallback))
                if target is None and not discovering:
                    raise ValueError(
                        f"models[{index}] ({route.name!r}): fallback {fallback!r} matches no entry of models"
                    )
                if target is None:
                    self._warnings.append(
                        f"models[{index}] ({route.name!r}): fallback {fallback!r} matches no entry of models; "
                        "it is used only if a discovered list holds it"
                    )
                elif target.route is route and not route.is_pattern:
                    raise ValueError(f"models[{index}] ({route.name!r}): fallback {fallback!r} is this same entry")

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
        if exact is None:
            discovered = self._discovered.get(key)
            if discovered is not None:
                return discovered
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
            route = self.models[exact]
            listed = route.listed_name
            if key != canonical_name(route.name):
                listed = next(tagged(alias) for alias in route.aliases if canonical_name(alias) == key)
            return self._target(exact, None, listed)
        return None

    def _target(self, index: int, captured: str | None, listed_name: str | None = None) -> Target:
        route = self.models[index]
        if route.model is not None:
            upstream_model = route.model.replace("*", captured) if captured is not None else route.model
        else:
            upstream_model = captured if captured is not None else strip_latest(route.name)
        if captured is None and listed_name is None:
            listed_name = route.listed_name
        return self.target_for(route, upstream_model, listed_name)

    def target_for(self, route: ModelRoute, upstream_model: str, listed_name: str | None) -> Target:
        upstream = self.upstreams[route.upstream]
        quirks = PRESETS[upstream.provider].merged(upstream.quirk_overrides()).merged(route.quirk_overrides())
        return Target(
            route=route, upstream_name=route.upstream, upstream=upstream, upstream_model=upstream_model,
            quirks=quirks, listed_name=listed_name,
        )

    def fallback_targets(self, primary: Target) -> list[Target]:
        """The targets of the primary's `fallbacks`, in order (names that match nothing are left out)."""
        targets = []
        for name in primary.route.fallbacks:
            target = self.resolve(name)
            if target is not None:
                targets.append(target)
        return targets

    def listed_targets(self) -> list[Target]:
        """Exact entries and their aliases in file order, then discovered names: what `/api/tags` lists."""
        listed = []
        for index, route in enumerate(self.models):
            if route.is_pattern:
                continue
            listed.append(self._target(index, None))
            listed += [self._target(index, None, tagged(alias)) for alias in route.aliases]
        listed += [target for key, target in self._discovered.items() if key not in self._exact]
        return listed

    def with_discovered(self, discovered: Mapping[str, list[ModelRoute]]) -> RouteMap:
        """A copy of this map that also routes discovered models (upstream name -> its entries)."""
        copy = self.model_copy()
        copy._cache = {}
        copy._discovered = {}
        for routes in discovered.values():
            for route in routes:
                key = canonical_name(route.name)
                if key not in copy._discovered and route.upstream in self.upstreams:
                    copy._discovered[key] = self.target_for(route, route.model or route.name, route.listed_name)
        return copy

    @property
    def discovered_count(self) -> int:
        return len(self._discovered)

    def warnings(self) -> list[str]:
        """Problems that do not stop the gateway (shown by `check` and logged at start)."""
        warnings = [
            f"upstream {name!r}: api_key needs ${{{upstream.missing_key_variable}}}, which is not set; "
            "requests routed to it will fail until it is"
            for name, upstream in self.upstreams.items()
            if upstream.missing_key_variable
        ]
        if self.auth is not None:
            warnings += [
                f"auth.keys[{index}]: key needs ${{{entry._missing_variable}}}, which is not set; that key lets nobody in"
                if entry._missing_variable
                else f"auth.keys[{index}]: key is empty; that key lets nobody in"
                for index, entry in enumerate(self.auth.keys)
                if entry.key is None
            ]
        return warnings + self._warnings


@dataclass(frozen=True, slots=True)
class Target:
    """Where one request goes: the matched entry, its upstream, and the upstream's model id.

    `listed_name` is the `/api/tags` name that matched (an exact name, alias or discovered
    name, with its tag); None when a pattern matched.
    """

    route: ModelRoute
    upstream_name: str
    upstream: UpstreamConfig
    upstream_model: str
    quirks: Quirks
    listed_name: str | None = None


def _host_port(parts: SplitResult) -> str:
    return parts.netloc.rpartition("@")[2]


def _query_pairs(url: str) -> Iterator[tuple[str, str]]:
    """The parameters written in a URL, each value as written and percent-decoded."""
    for pair in urlsplit(url).query.split("&"):
        name, _, value = pair.partition("=")
        if value:
            yield from ((unquote(name), value), (unquote(name), unquote(value)))


def has_tag(name: str) -> bool:
    return ":" in name.rsplit("/", 1)[-1]


def tagged(name: str) -> str:
    """The name as `/api/tags` lists it: with `:latest` when it has no tag."""
    return name if has_tag(name) else f"{name}:latest"


def strip_latest(name: str) -> str:
    return name[: -len(":latest")] if name.lower().endswith(":latest") else name


def canonical_name(name: str) -> str:
    """Ollama matches names case-insensitively, and `x` and `x:latest` are one model."""
    return strip_latest(name.strip().lower())


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
