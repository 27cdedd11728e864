"""Inbound auth: bearer keys from routes.yaml `auth`, each optionally limited to some models.

With an `auth` section, every request but `GET`/`HEAD /` (Ollama's liveness probe) needs
`Authorization: Bearer <key>` with one of the keys, or it gets 401 `{"error": "unauthorized"}`.
Keys are compared as SHA-256 digests with `hmac.compare_digest`, so neither the time taken nor
the length of a wrong key tells anything about a right one. A key limited to some model names
sees only those in `/api/tags` and gets 403 for any other model.

Without an `auth` section nothing is checked. The client's bearer token is then kept in
`CLIENT_KEY` for the upstreams that say `pass_client_key: true` (upstream.py); an upstream never
sees a client's key otherwise.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable
from contextvars import ContextVar

from gateway.errors import GatewayError
from gateway.upstream.redact import CLIENT_KEY as CLIENT_KEY  # defined there: every scrub masks it too
from gateway.routing.names import canonical_name
from gateway.routing.schema import AuthConfig

# The grant of the key the current request presented (set only when auth is on).
GRANT: ContextVar[Grant | None] = ContextVar("grant", default=None)

UNAUTHORIZED_BODY = b'{"error":"unauthorized"}'
_OPEN_PATHS = {("GET", "/"), ("HEAD", "/")}


class ModelForbidden(GatewayError):
    status_code = 403

    def __init__(self, name: str) -> None:
        super().__init__(f"this key may not use model '{name}'")


class Grant:
    """What one accepted key may use: model names or patterns (`*` matches any run of characters),
    matched as Ollama matches names (any case, `x` = `x:latest`)."""

    __slots__ = ("everything", "_pattern")

    def __init__(self, patterns: Iterable[str]) -> None:
        canonical = [canonical_name(pattern) for pattern in patterns]
        self.everything = "*" in canonical
        self._pattern = re.compile("|".join(".*".join(map(re.escape, p.split("*"))) for p in canonical))

    def allows(self, *names: str | None) -> bool:
        """True if any of `names` (the requested name, the entry's own name) is allowed."""
        if self.everything:
            return True
        return any(name is not None and self._pattern.fullmatch(canonical_name(name)) for name in names)


ALL_MODELS = Grant(["*"])


class KeyChecker:
    """The keys of one route map, ready for checking."""

    __slots__ = ("_keys",)

    def __init__(self, config: AuthConfig) -> None:
        self._keys = [
            (hashlib.sha256(entry.key.get_secret_value().encode()).digest(), Grant(entry.models))
            for entry in config.keys
            if entry.key is not None
        ]

    def check(self, authorization: bytes | None) -> Grant | None:
        """The grant of the presented `Authorization` header value, or None (answer 401)."""
        if not authorization:
            return None
        scheme, _, token = authorization.decode("latin-1").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return None
        digest = hashlib.sha256(token.encode()).digest()
        granted = None
        for key_digest, grant in self._keys:
            # Every key is compared, so the time taken does not say which one matched.
            if hmac.compare_digest(digest, key_digest) and granted is None:
                granted = grant
        return granted


def is_open(method: str, path: str) -> bool:
    return (method, path) in _OPEN_PATHS


def bearer_token(headers: Iterable[tuple[bytes, bytes]]) -> bytes | None:
    for name, value in headers:
        if name == b"authorization":
            return value
    return None
