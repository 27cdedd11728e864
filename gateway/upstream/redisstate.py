"""`RedisState`: the `SharedState` of every worker of every replica, in Redis or Valkey.

One Lua script per operation, registered once (`EVALSHA`, loaded again if the server lost it),
each atomic on the server, each on the server's clock (`TIME`, one clock for every replica;
what was written before that clock stepped back, a window's slot past the current one or a
lease ending later than a renewal could set it, is dropped rather than counted for the step),
and every key written with an expiry: a window's hash of slots expires one slot after its
window, a lease set (a sorted set of lease ids scored by their expiry, expired ones dropped by
the script that next touches it) with its last lease, a cooldown `COOLDOWN_MARGIN` after it
ends. A replica that crashes holds nothing for longer than a lease's ttl. Keys are
`ollama-gateway:` + the caller's key.

Redis unreachable: every operation fails open (sharedstate.py); a call waits at most
`timeout` seconds for the server, and none is tried for a second after one failed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateway.upstream.sharedstate import COOLDOWN_MARGIN, SLOTS, HeldLeases, Lease, Outage, StoredLease

PREFIX = "ollama-gateway:"
_T = TypeVar("_T")

# Milliseconds on the server's clock.
_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS[1] window; ARGV amount, limit, window ms, slots. -1: taken; else ms until it would fit.
_TAKE = _NOW + """
local amount, limit, window, n = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local width = window / n
local current = math.floor(now / width)
local oldest = current - n
local flat = redis.call('HGETALL', KEYS[1])
local total, slots = 0, {}
for i = 1, #flat, 2 do
  local slot, count = tonumber(flat[i]), tonumber(flat[i + 1])
  if slot < oldest or slot > current then  -- past the window, or from a clock since stepped back
    redis.call('HDEL', KEYS[1], flat[i])
  else
    total = total + count
    slots[#slots + 1] = {slot, count}
  end
end
local need = total + math.max(amount, 1) - limit
if need <= 0 then
  if amount > 0 then
    redis.call('HINCRBY', KEYS[1], current, amount)
    redis.call('PEXPIRE', KEYS[1], math.ceil(window + width))
  end
  return -1
end
if amount > limit then return window end
table.sort(slots, function(a, b) return a[1] < b[1] end)
for _, entry in ipairs(slots) do
  need = need - entry[2]
  if need <= 0 then return math.max(1, math.ceil((entry[1] + n + 1) * width - now)) end
end
return window
"""

# KEYS[1] window; ARGV amount, window ms, slots.
_ADD = _NOW + """
local window, n = tonumber(ARGV[2]), tonumber(ARGV[3])
local width = window / n
redis.call('HINCRBY', KEYS[1], math.floor(now / width), tonumber(ARGV[1]))
redis.call('PEXPIRE', KEYS[1], math.ceil(window + width))
return 0
"""

# Keep a lease set's key as long as its last lease: PEXPIRE only ever lengthens it.
_KEEP = """
local pttl = redis.call('PTTL', KEYS[1])
if pttl < ttl then redis.call('PEXPIRE', KEYS[1], ttl) end
"""

# KEYS[1] lease set; ARGV id, limit, ttl ms. 1: acquired, 0: all taken.
_ACQUIRE = _NOW + """
local ttl = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
-- A lease ending later than a renewal now could set it: written before the clock stepped back.
redis.call('ZREMRANGEBYSCORE', KEYS[1], '(' .. (now + ttl), '+inf')
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
""" + _KEEP + "return 1\n"

# KEYS[1] lease set; ARGV ttl ms, ids... (a lease already dropped stays dropped: XX).
_RENEW = _NOW + """
local ttl = tonumber(ARGV[1])
local renewed = 0
for i = 2, #ARGV do renewed = renewed + redis.call('ZADD', KEYS[1], 'XX', 'CH', now + ttl, ARGV[i]) end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
""" + _KEEP + "return renewed\n"

# KEYS[1] cooldown hash (fails, until, probe); ARGV after, seconds ms, margin ms.
_FAILED = _NOW + """
local after, seconds, margin = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local cooled = tonumber(redis.call('HGET', KEYS[1], 'until') or '0')
if cooled > 0 then
  if now < cooled then return 0 end
  redis.call('HSET', KEYS[1], 'until', now + seconds, 'probe', 0, 'fails', 0)
elseif redis.call('HINCRBY', KEYS[1], 'fails', 1) >= after then
  redis.call('HSET', KEYS[1], 'until', now + seconds, 'fails', 0)
end
redis.call('PEXPIRE', KEYS[1], seconds + margin)
return 0
"""

# KEYS[1] cooldown hash; ARGV probe ttl ms, margin ms. ms left; 0: use it (the probe, if cooled).
_COOLING = _NOW + """
local values = redis.call('HMGET', KEYS[1], 'until', 'probe')
local cooled, probe = tonumber(values[1] or '0'), tonumber(values[2] or '0')
if cooled == 0 then return 0 end
if now < cooled then return cooled - now end
if probe > now then return probe - now end
redis.call('HSET', KEYS[1], 'probe', now + tonumber(ARGV[1]))
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[1]) + tonumber(ARGV[2]))
return 0
"""


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


class RedisState:
    """The `SharedState` contract over one Redis connection pool per worker."""

    def __init__(self, url: str, timeout: float = 1.0) -> None:
        self._redis = aioredis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout, retry_on_timeout=False,
        )
        self._outage = Outage("redis")
        self._take = self._redis.register_script(_TAKE)
        self._add = self._redis.register_script(_ADD)
        self._acquire = self._redis.register_script(_ACQUIRE)
        self._renew = self._redis.register_script(_RENEW)
        self._release = self._redis.register_script("return redis.call('ZREM', KEYS[1], ARGV[1])")
        self._failed = self._redis.register_script(_FAILED)
        self._succeeded = self._redis.register_script("return redis.call('DEL', KEYS[1])")
        self._cooling = self._redis.register_script(_COOLING)
        self._held = HeldLeases(self._renew_all)

    async def _run(self, call: Callable[[], Awaitable[_T]], open_answer: _T) -> _T:
        """`call`, or `open_answer` when Redis cannot be reached (fail open, sharedstate.py)."""
        if self._outage.skipping():
            return open_answer
        try:
            answer = await call()
        except (RedisError, OSError) as exc:
            self._outage.failed(exc)
            return open_answer
        self._outage.worked()
        return answer

    async def take(self, key: str, amount: int, limit: int, window: float) -> float | None:
        waited = await self._run(lambda: self._take(keys=[PREFIX + key], args=[amount, limit, _ms(window), SLOTS]), -1)
        return None if int(waited) < 0 else int(waited) / 1000

    async def add(self, key: str, amount: int, window: float) -> None:
        await self._run(lambda: self._add(keys=[PREFIX + key], args=[amount, _ms(window), SLOTS]), 0)

    async def acquire(self, key: str, limit: int, ttl: float) -> Lease | None:
        lease = StoredLease(key, ttl)
        got = await self._run(lambda: self._acquire(keys=[PREFIX + key], args=[lease.id, limit, _ms(ttl)]), None)
        return self._held.settle(lease, None if got is None else bool(int(got)))  # None: unreachable

    async def release(self, lease: Lease) -> None:
        assert isinstance(lease, StoredLease)
        if lease.backed and self._held.discard(lease):
            await self._run(lambda: self._release(keys=[PREFIX + lease.key], args=[lease.id]), 0)

    async def _renew_all(self, leases: list[StoredLease]) -> None:
        async def renew() -> None:
            async with self._redis.pipeline(transaction=False) as pipe:
                for lease in leases:
                    await self._renew(keys=[PREFIX + lease.key], args=[_ms(lease.ttl), lease.id], client=pipe)
                await pipe.execute()

        await self._run(renew, None)

    async def failed(self, key: str, after: int, seconds: float) -> None:
        await self._run(lambda: self._failed(keys=[PREFIX + key], args=[after, _ms(seconds), _ms(COOLDOWN_MARGIN)]), 0)

    async def succeeded(self, key: str) -> None:
        await self._run(lambda: self._succeeded(keys=[PREFIX + key]), 0)

    async def cooling(self, key: str, probe_ttl: float) -> float:
        left = await self._run(lambda: self._cooling(keys=[PREFIX + key], args=[_ms(probe_ttl), _ms(COOLDOWN_MARGIN)]), 0)
        return int(left) / 1000

    async def close(self) -> None:
        """Stop renewing, hand back what this process still holds, close the pool."""
        await self._held.stop()
        for lease in self._held.all():
            await self.release(lease)
        await self._redis.aclose()
