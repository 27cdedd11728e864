"""The routes.yaml keys of several deployments of one model (issue 12 point 3).

    models[].targets     [{upstream, model?, weight?}, ...] instead of one `upstream`
    models[].balance     least_busy (default) | weighted
    upstreams.X.max_concurrent   requests in flight to that upstream, across every worker
                                 (and, with GATEWAY_REDIS_URL, every replica)
    upstreams.X.cooldown         {after_failures: 3, seconds: 30} (the default), or false

What they do at run time: `upstream/balance.py` (the choice), `upstream/admission.py` (leases
and cooldowns), `upstream/exchange.py` (the order of attempts).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Balance = Literal["least_busy", "weighted"]


class TargetSettings(BaseModel):
    """One deployment of an entry: its upstream, its model id there (default: the entry's), its weight."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    upstream: str = Field(min_length=1)
    model: str | None = Field(default=None, min_length=1)
    weight: int = Field(default=1, gt=0, le=1000)

    @field_validator("weight", mode="before")
    @classmethod
    def _whole_number(cls, value: Any) -> Any:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError("weight must be a positive whole number")
        return value


class CooldownSettings(BaseModel):
    """An upstream that failed `after_failures` times in a row is skipped for `seconds`, then
    tried again with one request (the probe). `cooldown: false` turns it off."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    after_failures: int = Field(default=3, ge=1, le=1000)
    seconds: float = Field(default=30.0, gt=0, le=86400)


def cooldown_or_off(value: Any) -> Any:
    """`cooldown: false` is off (None), `cooldown: true` the defaults; a mapping as written."""
    if value is False:
        return None
    if value is True:
        return CooldownSettings()
    return value
