"""The routes.yaml schema: the pydantic models of the file, each forbidding unknown keys.

Shape (the user-facing contract; docs/routes.md documents every key)::

    upstreams: {NAME: {base_url, api_key, provider, headers, query, timeouts, retries, discover, ...}}
    models:    [{name, aliases, upstream | targets, model, balance, fallbacks, capabilities, context_length}, ...]
    auth:      {keys: [{key, models}, ...]}                                      # optional
    endpoints: {"/api/chat": "package.module:Class", ...}                      # optional

Validation here covers one file as written: every field, every `upstream` a model names is
defined, and no two entries share a name or alias. What a name resolves to, and the check that
each fallback resolves, belong to `resolver.py`; reading the file and `${VAR}` to `loader.py`.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from typing import Any, Literal
from urllib.parse import SplitResult, unquote, urlsplit, urlunsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    field_validator,
    model_validator,
)

from gateway.routing.authschema import AuthConfig, empty_is_none
from gateway.routing.deployments import Balance, CooldownSettings, TargetSettings, cooldown_or_off
from gateway.routing.names import canonical_name, tagged
from gateway.routing.presets import ProviderName, ReasoningInput, ReasoningKnob
from gateway.upstream.redact import MASK, Secrets

Capability = Literal["completion", "tools", "insert", "vision", "embedding", "thinking", "image", "audio"]

# Header and query parameter names whose values are credentials, whatever their length.
_CREDENTIAL_NAME = re.compile(r"auth|key|token|secret|pass|cookie|session|signature|credential|^sig$|^code$", re.IGNORECASE)


class QuirkSettings(BaseModel):
    """Provider quirks settable on an upstream and overridable per model (see `presets.py`)."""

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
    messages_api: bool | None = None
    merge_system: bool | None = None
    responses_api: bool | None = None

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
    # Requests in flight to this upstream across the workers (routing/deployments.py); and the
    # cooldown after failures in a row (on by default; `cooldown: false` turns it off).
    max_concurrent: int | None = Field(default=None, gt=0)
    cooldown: CooldownSettings | None = CooldownSettings()

    _empty_key_is_no_key = field_validator("api_key", mode="before")(empty_is_none)
    _cooldown_or_off = field_validator("cooldown", mode="before")(cooldown_or_off)

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
    """One entry of `models`: an exact Ollama name (with aliases), or a pattern with one `*`.

    Served by one `upstream`, or by several deployments (`targets`, chosen by `balance`)."""

    name: str = Field(min_length=1)
    aliases: tuple[str, ...] = ()
    upstream: str | None = None
    targets: tuple[TargetSettings, ...] | None = Field(default=None, min_length=1)
    balance: Balance = "least_busy"
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

    @model_validator(mode="after")
    def _upstream_or_targets(self) -> ModelRoute:
        if (self.upstream is None) == (self.targets is None):
            raise ValueError("give exactly one of 'upstream' (one deployment) and 'targets' (several)")
        if self.targets is None and "balance" in self.model_fields_set:
            raise ValueError("'balance' needs 'targets'")
        return self

    @property
    def deployments(self) -> tuple[TargetSettings, ...]:
        """Every deployment of the entry: its `targets`, or its one `upstream` (weight 1)."""
        if self.targets is not None:
            return self.targets
        assert self.upstream is not None
        return (TargetSettings(upstream=self.upstream),)

    @property
    def first_upstream(self) -> str:
        """The upstream of the entry's first deployment (what its listing details come from)."""
        return self.upstream if self.upstream is not None else self.deployments[0].upstream

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


class RouteFile(BaseModel):
    """The whole file, validated; `resolver.RouteMap` adds name resolution on top."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    upstreams: dict[str, UpstreamConfig]
    models: tuple[ModelRoute, ...] = ()
    auth: AuthConfig | None = None
    endpoints: dict[str, str] = Field(default_factory=dict)

    _secrets: Secrets = PrivateAttr(default_factory=Secrets)

    @model_validator(mode="after")
    def _collect_secrets(self) -> RouteFile:
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
    def _check_references(self) -> RouteFile:
        """Every entry's upstream is defined, and each name or alias belongs to one entry only."""
        owners: dict[str, int] = {}
        for index, route in enumerate(self.models):
            for position, deployment in enumerate(route.deployments):
                if deployment.upstream not in self.upstreams:
                    known = ", ".join(sorted(self.upstreams)) or "none"
                    where = f"targets[{position}].upstream" if route.targets is not None else "upstream"
                    raise ValueError(
                        f"models[{index}] ({route.name!r}): {where} {deployment.upstream!r} is not defined "
                        f"under upstreams (defined: {known})"
                    )
            if route.is_pattern:
                continue
            for name in (route.name, *route.aliases):
                key = canonical_name(name)
                if key in owners:
                    first = owners[key]
                    raise ValueError(
                        f"models[{index}] ({route.name!r}): {name!r} is already a name of models[{first}] "
                        f"({self.models[first].name!r})"
                    )
                owners[key] = index
        return self

    def warnings(self) -> list[str]:
        """Keys left unset or empty: problems that do not stop the gateway."""
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
        return warnings


def _host_port(parts: SplitResult) -> str:
    return parts.netloc.rpartition("@")[2]


def _query_pairs(url: str) -> Iterator[tuple[str, str]]:
    """The parameters written in a URL, each value as written and percent-decoded."""
    for pair in urlsplit(url).query.split("&"):
        name, _, value = pair.partition("=")
        if value:
            yield from ((unquote(name), value), (unquote(name), unquote(value)))

