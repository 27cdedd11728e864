"""The inbound keys of a route map (routes.yaml `auth`), each optionally limited to some models.

`http/auth.py` and the front layer enforce them on the wire; here is what a key grants. Keys
are compared as SHA-256 digests with `hmac.compare_digest`, so neither the time taken nor
the length of a wrong key tells anything about a right one. A key limited to some model names
sees only those in `/api/tags` and gets 403 for any other model.

A key with `limits` (rpm, tpm, max_parallel) has them on its grant, with `key_id`: what the
shared-state store counts it under (http/keylimits.py). The id is the same for the same key on
every worker and replica and across reloads, and it is not the key: 12 hex characters of a
salted PBKDF2 of it (computed once per map load), so a store's keys do not reveal the keys nor
make guessing them cheap.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable

from gateway.routing.names import canonical_name
from gateway.routing.authschema import AuthConfig, KeyLimits

_ID_SALT = b"ollama-gateway key limits"
_ID_ROUNDS = 20_000


class Grant:
    """What one accepted key may use: model names or patterns (`*` matches any run of characters),
    matched as Ollama matches names (any case, `x` = `x:latest`)."""

    __slots__ = ("everything", "_pattern", "limits", "key_id")

    def __init__(self, patterns: Iterable[str], limits: KeyLimits | None = None, key_id: str = "") -> None:
        # None unless the key has at least one limit: the front layer asks nothing of the store then.
        self.limits = limits if limits is not None and limits != KeyLimits() else None
        self.key_id = key_id
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
            (hashlib.sha256(entry.key.get_secret_value().encode()).digest(), _grant(entry.models, entry.limits, entry.key.get_secret_value()))
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



def key_id(key: str) -> str:
    """A key's stable, non-secret name in the shared-state store."""
    return hashlib.pbkdf2_hmac("sha256", key.encode(), _ID_SALT, _ID_ROUNDS).hex()[:12]


def _grant(models: Iterable[str], limits: KeyLimits | None, key: str) -> Grant:
    limited = limits is not None and limits != KeyLimits()
    return Grant(models, limits, key_id(key) if limited else "")
