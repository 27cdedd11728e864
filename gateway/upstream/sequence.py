"""Running the attempts of a request past its no-fault path: tier by tier as `failover.tiers` says.

    fail_over(exchange, primary, call, pending)   each target of a tier that is not cooling
                                                  down and has a lease free, tried as its
                                                  retries allow; then, if some were full, the
                                                  first of them to free one (admission.py);
                                                  then the next tier (a fallback)

`pending`: the primary's first try, already failed on the no-fault path (Exchange.run).
Every try holds a place on its upstream (`admission.Hold`: its in-flight count, its lease)
until its answer is closed; a failure the upstream caused is counted towards its cooldown, and
a success after failures ends the row.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

import structlog

from gateway.errors import SERVER_BUSY, GatewayError, ServerBusy, UpstreamCooling
from gateway.routing.resolver import Target
from gateway.upstream import balance, failover
from gateway.upstream.admission import Hold
from gateway.upstream.attempts import log_failure, log_wait
from gateway.upstream.calls import Relay
from gateway.upstream.streams import OpenedStream

if TYPE_CHECKING:
    from gateway.upstream.exchange import Call, Exchange

log = structlog.get_logger()

T = TypeVar("T")


async def fail_over(exchange: Exchange, primary: Target, call: Call[T], pending: GatewayError | None) -> T:
    """Tier by tier (failover.tiers): each target not cooling down and with a lease free, tried
    as its retries allow; then, if some were full, the first of those to free a lease."""
    admission = exchange.clients.admission
    errors: list[GatewayError] = []

    def order(target: Target) -> list[Target]:
        assert target.group is not None
        return balance.order(target.group, admission.in_flight, admission.known_cooling)

    for tier, targets in enumerate(failover.tiers(primary, exchange.route_map, order)):
        full: list[Target] = []
        for target in targets:
            if pending is None:
                left = await admission.cooling(target)
                if left > 0:
                    log.info("upstream_skipped", upstream=target.upstream_name, reason="cooling", left_s=round(left, 1))
                    cooldown = target.upstream.cooldown
                    errors.append(UpstreamCooling(target.upstream_name, cooldown.after_failures if cooldown else 0, left))
                    continue
            try:
                return await _tries(exchange, call, target, pending, None, primary, tier > 0)
            except _Full:
                log.info("upstream_skipped", upstream=target.upstream_name, reason="max_concurrent")
                full.append(target)
            except GatewayError as exc:
                if exc.verdict == "stop":
                    raise
                errors.append(exc)
            pending = None
        if full:
            target, hold = await admission.wait_for_any(full)
            try:
                return await _tries(exchange, call, target, None, hold, primary, tier > 0)
            except _Full:
                errors.append(ServerBusy(SERVER_BUSY))
            except GatewayError as exc:
                if exc.verdict == "stop":
                    raise
                errors.append(exc)
    raise failover.final_error(errors)


async def _tries(exchange: Exchange, call: Call[T], target: Target, pending: GatewayError | None, hold: Hold | None,
                 primary: Target, fallback: bool) -> T:
    """The tries of one target (failover.retrying), each holding a place on its upstream until
    its answer is closed (admission.Hold); `_Full` when its leases are all taken."""
    admission = exchange.clients.admission
    record = exchange.record
    count = 1 if pending is not None else 0
    async for state in failover.retrying(target, log_wait(target)):
        with state:
            if pending is not None:
                # The primary's first try already failed (in `run`): let tenacity
                # decide on it, so its wait and its count are the library's.
                error, pending = pending, None
                raise error
            if hold is None:
                hold = await admission.hold(target)
                if hold is None:
                    raise _Full()
            count += 1
            record.upstream = target.upstream_name
            record.upstream_model = target.upstream_model
            first = exchange.fresh and target is primary
            exchange.fresh = False
            try:
                result = await exchange.attempt(call, target, first)
            except BaseException as exc:
                await hold.release()
                hold = None
                if isinstance(exc, GatewayError):
                    log_failure(target, count, exc, fallback=fallback)
                    await admission.failed(target, exc)
                raise
            if admission.needs_report(target):
                await admission.succeeded(target)
            if count > 1 or fallback or target is not primary:
                log.info("upstream_attempt", upstream=target.upstream_name, upstream_model=target.upstream_model,
                         attempt=count, fallback=fallback, outcome="ok")
            return await _held(result, hold)
    raise AssertionError("tenacity ends with a result or an exception")  # pragma: no cover


class _Full(Exception):
    """The target's `max_concurrent` leases are all taken: pass it over, maybe wait for it later."""


async def _held(result: T, hold: Hold) -> T:
    """`result` with its hold given back when the answer is closed: a whole answer at once, a
    stream when it ends (`OpenedStream.on_close`), a relay when it is closed."""
    if isinstance(result, OpenedStream):
        result.on_close = hold.release
    elif isinstance(result, Relay):
        result.also_on_close(hold.release_soon)
    else:
        await hold.release()
    return result
