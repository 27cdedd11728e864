"""What every worker of a replica (with `GATEWAY_REDIS_URL`: every worker of every replica) must
agree on: request and token windows, concurrency leases, and upstream cooldowns.

`SharedState` is the contract; its stores implement it with the same meaning:

    RedisState    GATEWAY_REDIS_URL set: Redis or Valkey, one atomic script per operation,
                  every key with an expiry (a replica that crashes frees what it held)
    LocalState    no Redis: the workers of one machine, through a state directory the serving
                  process creates for the run

Every operation is atomic across the processes sharing the store. Times are seconds. The
callers (per-key limits on the wire, `max_concurrent` and cooldowns in the exchange) decide
what a key names; a store never interprets one.

Leases: `acquire(key, limit, ttl)` takes one of `limit` leases or answers None. A lease
lives `ttl` seconds unless renewed; the store renews the leases its process holds in the
background (every ttl / 3), so a lease outlives a long stream but not its process.

Windows: `take(key, amount, limit, window)` adds `amount` to the key's count over the last
`window` seconds if the total stays within `limit` (answer None), else adds nothing and answers
the seconds until it would fit. `add(key, amount, window)` adds unconditionally (tokens learnt
after an answer); `take(key, 0, limit, window)` asks whether the window is already full (its
count has reached `limit`). A window is kept as 60 slots of `window / 60` seconds: an amount
counts for at least `window` seconds and at most one slot longer (never less, so a limit is
never exceeded over any `window`-long stretch).

Cooldowns: `failed(key, after, seconds)` counts one failure in a row and, at `after` of them,
cools the key down for `seconds`; `succeeded(key)` ends the row and any cooldown.
`cooling(key)` answers the seconds left, 0.0 when the key may be used; once a cooldown has
run out, exactly one caller (across all processes) gets 0.0 from `cooling` until that probe
reports `failed` (cooled again at once) or `succeeded`, or `probe_ttl` seconds pass.

A store call may cost a network round trip (Redis): the callers keep the no-fault path free of
them where the contract allows (a key with no limit is never asked; a worker that has seen no
failure of an upstream lately need not ask `cooling` on every request).

A store that cannot be reached (Redis down, the state file locked for too long) **fails open**:
`take` answers None, `acquire` an unbacked lease (its `release` does nothing), `cooling` 0.0,
and the writes are dropped, so requests are served without the shared limits rather than
refused. Each outage is logged as one `shared_state_unreachable` warning (again every minute
while it lasts) and one `shared_state_reachable_again` when a call works again; for a second
after a failure the store is not even tried, so an outage costs no time per request
(`Outage`). `open_state(settings)` picks the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import structlog

if TYPE_CHECKING:
    from gateway.settings import Settings

log = structlog.get_logger()

SLOTS = 60  # a window's slots (see "Windows" above)
LEASE_TTL = 30.0  # the ttl the callers give a lease: how long a crashed process's leases stay taken
COOLDOWN_MARGIN = 60.0  # seconds a cooldown's key outlives the cooldown (and a probe's claim)
_RETRY_DOWN = 1.0  # seconds a store that failed is not tried again
_REWARN = 60.0  # seconds between warnings while an outage lasts


class Lease(Protocol):
    """One held lease; `release` it exactly once."""

    key: str


class SharedState(Protocol):
    async def take(self, key: str, amount: int, limit: int, window: float) -> float | None: ...

    async def add(self, key: str, amount: int, window: float) -> None: ...

    async def acquire(self, key: str, limit: int, ttl: float) -> Lease | None: ...

    async def release(self, lease: Lease) -> None: ...

    async def failed(self, key: str, after: int, seconds: float) -> None: ...

    async def succeeded(self, key: str) -> None: ...

    async def cooling(self, key: str, probe_ttl: float) -> float: ...

    async def close(self) -> None: ...


@dataclass(eq=False)
class StoredLease:
    """A lease of one of the stores: `id` is unique across processes; `backed` is False for the
    lease a store that could not be reached hands out (fail open)."""

    key: str
    ttl: float
    id: str = field(default_factory=lambda: secrets.token_hex(12))
    backed: bool = True


class Outage:
    """Fail-open bookkeeping for one store: whether to try it now, and the warning per outage."""

    __slots__ = ("store", "_retry_at", "_down_since", "_warned_at", "_failures")

    def __init__(self, store: str) -> None:
        self.store = store
        self._retry_at = 0.0
        self._down_since: float | None = None
        self._warned_at = 0.0
        self._failures = 0

    def skipping(self) -> bool:
        """True for a second after a failure: answer as if open, without trying the store."""
        if self._retry_at and time.monotonic() < self._retry_at:
            self._failures += 1
            return True
        return False

    def failed(self, exc: BaseException) -> None:
        now = time.monotonic()
        self._retry_at = now + _RETRY_DOWN
        self._failures += 1
        if self._down_since is None or now - self._warned_at >= _REWARN:
            if self._down_since is None:
                self._down_since = now
            self._warned_at = now
            log.warning(
                "shared_state_unreachable", store=self.store, error=f"{type(exc).__name__}: {exc}",
                failing="open", calls_failed=self._failures, down_seconds=round(now - self._down_since, 1),
                meaning="limits, leases and cooldowns are not enforced across workers and replicas until it is back",
            )

    def worked(self) -> None:
        if self._down_since is not None:
            log.warning("shared_state_reachable_again", store=self.store, calls_failed=self._failures,
                        down_seconds=round(time.monotonic() - self._down_since, 1))
            self._down_since = None
            self._failures = 0
        self._retry_at = 0.0


class HeldLeases:
    """The leases one process holds, renewed in the background every `ttl / 3` (the smallest
    ttl held) so they outlive a long stream but not the process."""

    __slots__ = ("_held", "_renew", "_task")

    def __init__(self, renew: Callable[[list[StoredLease]], Awaitable[None]]) -> None:
        self._held: dict[str, StoredLease] = {}
        self._renew = renew
        self._task: asyncio.Task[None] | None = None

    def add(self, lease: StoredLease) -> None:
        self._held[lease.id] = lease
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._renewing())

    def settle(self, lease: StoredLease, granted: bool | None) -> StoredLease | None:
        """What an acquire answers once the store replied: the lease, held and renewed, when it
        was granted; None when every lease was taken; when the store could not answer (None),
        the lease unbacked: the request goes on (fail open) and its release asks nothing."""
        if granted is None:
            lease.backed = False
            return lease
        if not granted:
            return None
        self.add(lease)
        return lease

    def discard(self, lease: StoredLease) -> bool:
        """True if the lease was held (a second release of it finds it gone)."""
        return self._held.pop(lease.id, None) is not None

    def all(self) -> list[StoredLease]:
        return list(self._held.values())

    async def _renewing(self) -> None:
        while self._held:
            await asyncio.sleep(min(lease.ttl for lease in self._held.values()) / 3)
            if self._held:
                await self._renew(list(self._held.values()))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


def open_state(settings: Settings) -> SharedState:
    """Redis when `GATEWAY_REDIS_URL` is set, else the machine's state directory (made by
    `serve` for the run; without one, this process alone)."""
    if settings.redis_url:
        from gateway.upstream.redisstate import RedisState

        return RedisState(settings.redis_url)
    from gateway.upstream.localstate import LocalState

    return LocalState(settings.state_dir)
