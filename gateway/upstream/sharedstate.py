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
after an answer); `take(key, 0, limit, window)` asks whether the window is already full.

Cooldowns: `failed(key, after, seconds)` counts one failure in a row and, at `after` of them,
cools the key down for `seconds`; `succeeded(key)` ends the row and any cooldown.
`cooling(key)` answers the seconds left, 0.0 when the key may be used; once a cooldown has
run out, exactly one caller (across all processes) gets 0.0 from `cooling` until that probe
reports `failed` (cooled again at once) or `succeeded`, or `probe_ttl` seconds pass.

A store call may cost a network round trip (Redis): the callers keep the no-fault path free of
them where the contract allows (a key with no limit is never asked; a worker that has seen no
failure of an upstream lately need not ask `cooling` on every request).
"""

from __future__ import annotations

from typing import Protocol


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
