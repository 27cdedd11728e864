"""routes.yaml `auth`: the inbound keys, the models each may use, and each key's limits.

What a key grants at run time is `keys.py`; the limits are enforced on the wire (http/keylimits.py).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, SecretStr, field_validator


def empty_is_none(value: Any) -> Any:
    """`${KEY:-}` for an optional key: an empty key is no key (the SDK refuses "")."""
    return None if value == "" else value


class KeyLimits(BaseModel):
    """What one key may use per minute and at once, across every worker and replica (any subset):
    requests per minute, prompt+completion tokens per minute, requests in flight."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rpm: int | None = Field(default=None, gt=0)
    tpm: int | None = Field(default=None, gt=0)
    max_parallel: int | None = Field(default=None, gt=0)

    def describe(self) -> str:
        parts = [f"{value} {unit}" for value, unit in (
            (self.rpm, "requests/min"), (self.tpm, "tokens/min"), (self.max_parallel, "at once"),
        ) if value is not None]
        return ", ".join(parts) or "none"


class AuthKey(BaseModel):
    """One inbound key, optionally limited to some model names or patterns (`*` matches any run),
    and optionally with `limits`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key: SecretStr | None
    models: tuple[str, ...] = ("*",)
    limits: KeyLimits | None = None

    _missing_variable: str | None = PrivateAttr(default=None)

    _empty_key_is_no_key = field_validator("key", mode="before")(empty_is_none)

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
