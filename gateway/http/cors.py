"""CORS as Ollama answers it (ollama-api.md §1.1): browser clients on localhost, apps, extensions.

Ollama runs gin-contrib/cors with its own allow-list (`server/routes.go` `GenerateRoutes`,
`envconfig.AllowedOrigins`): `http(s)://localhost`, `127.0.0.1` and `0.0.0.0` with any port,
`app://*`, `file://*`, `tauri://*`, `vscode-webview://*`, `vscode-file://*`, plus the comma-separated
`OLLAMA_ORIGINS` (here `GATEWAY_ORIGINS` first, then `OLLAMA_ORIGINS`; `*` allows every origin).

    no Origin, or Origin is this server itself   not CORS: passed through untouched (only when
                                                 the Host is one of ours, hosts.py: never on the
                                                 strength of the client's Host alone)
    Origin not allowed                           403, empty body (any method, as gin-contrib/cors)
    OPTIONS from an allowed Origin               204 preflight: methods, headers, max-age
    any other request from an allowed Origin     passed through, Access-Control-Allow-Origin added

One deliberate difference: gin-contrib/cors turns `http://localhost:*` into the prefix
`http://localhost`, which also admits `http://localhost.evil.example`. Here a `*` right after a
`:` at the end of an entry matches a port (digits) only; any other `*` matches any text.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from gateway.http.hosts import HostPolicy

_DEFAULT_HOSTS = ("localhost", "127.0.0.1", "0.0.0.0")
_DEFAULT_SCHEMES = ("app://*", "file://*", "tauri://*", "vscode-webview://*", "vscode-file://*")

# gin-contrib/cors DefaultConfig, as Ollama uses it: header names in Go's canonical spelling.
_ALLOW_METHODS = "GET,POST,PUT,PATCH,DELETE,HEAD"
_ALLOW_HEADERS = (
    "Authorization,Content-Type,User-Agent,Accept,X-Requested-With,"
    # What the OpenAI SDKs send (Ollama's list, server/routes.go).
    "Openai-Beta,X-Stainless-Arch,X-Stainless-Async,X-Stainless-Custom-Poll-Interval,X-Stainless-Helper-Method,"
    "X-Stainless-Lang,X-Stainless-Os,X-Stainless-Package-Version,X-Stainless-Poll-Helper,X-Stainless-Retry-Count,"
    "X-Stainless-Runtime,X-Stainless-Runtime-Version,X-Stainless-Timeout"
)
_MAX_AGE = str(12 * 3600)


def allowed_origins(configured: str) -> list[str]:
    """The allow-list: the configured entries (comma-separated), then Ollama's defaults."""
    entries = [entry.strip() for entry in configured.strip().strip("\"'").split(",")]
    origins = [entry for entry in entries if entry]
    for host in _DEFAULT_HOSTS:
        origins += [f"http://{host}", f"https://{host}", f"http://{host}:*", f"https://{host}:*"]
    origins += _DEFAULT_SCHEMES
    return origins


class OriginPolicy:
    """Which origins may call the gateway from a browser."""

    def __init__(self, origins: Iterable[str]) -> None:
        entries = [origin.strip().lower() for origin in origins]
        self.allow_all = "*" in entries
        self._exact = frozenset(entry for entry in entries if "*" not in entry)
        patterns = [_pattern(entry) for entry in entries if "*" in entry and entry != "*"]
        self._wildcards = re.compile("|".join(patterns)) if patterns else None

    def allows(self, origin: str) -> bool:
        origin = origin.lower()
        if self.allow_all or origin in self._exact:
            return True
        return self._wildcards is not None and self._wildcards.fullmatch(origin) is not None


def _pattern(entry: str) -> str:
    parts = [re.escape(part) for part in entry.split("*")]
    text = parts[0]
    for index, part in enumerate(parts[1:], start=1):
        is_port = index == len(parts) - 1 and not part and text.endswith(":")
        text += (r"\d+" if is_port else ".*") + part
    return f"(?:{text})"


Headers = list[tuple[bytes, bytes]]
_PREFLIGHT = [
    (b"access-control-allow-methods", _ALLOW_METHODS.encode()),
    (b"access-control-allow-headers", _ALLOW_HEADERS.encode()),
    (b"access-control-max-age", _MAX_AGE.encode()),
]
_PREFLIGHT_VARY = [(b"vary", b"Origin"), (b"vary", b"Access-Control-Request-Method"), (b"vary", b"Access-Control-Request-Headers")]


class Cors:
    """`OriginPolicy` applied the way Ollama's gin stack does, for the front layer.

    `hosts` says which `Host` headers are this gateway's own: a request whose Origin equals its
    Host is same-origin only then. Otherwise a DNS-rebinding page (Origin and Host both
    `attacker.example`) would pass as same-origin.
    """

    __slots__ = ("policy", "hosts")

    def __init__(self, policy: OriginPolicy, hosts: HostPolicy) -> None:
        self.policy = policy
        self.hosts = hosts

    def check(self, origin: str | None, host: str, method: str) -> tuple[int | None, Headers]:
        """What a request gets: (a status to answer with now, or None to serve it; the headers of
        that answer, or those to add to the response)."""
        if not origin or self._is_same_origin(origin, host):
            return None, []
        policy = self.policy
        if not policy.allows(origin):
            return 403, []
        allow = [(b"access-control-allow-origin", b"*" if policy.allow_all else origin.encode("latin-1"))]
        if method == "OPTIONS":
            return 204, [*_PREFLIGHT, *([] if policy.allow_all else _PREFLIGHT_VARY), *allow]
        if not policy.allow_all:
            allow.append((b"vary", b"Origin"))
        return None, allow

    def _is_same_origin(self, origin: str, host: str) -> bool:
        # gin-contrib/cors: a page served by this server (fetch sends Origin anyway) is not CORS.
        # The Host is the client's word, so it counts only when it names this gateway.
        return origin.lower() in (f"http://{host.lower()}", f"https://{host.lower()}") and self.hosts.vouches_for(host)
