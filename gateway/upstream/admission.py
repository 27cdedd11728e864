"""Whether a request may go to an upstream now: its cooldown, its `max_concurrent` leases, and
this worker's count of requests in flight to it.

Both rules are shared by every worker (with GATEWAY_REDIS_URL, every replica) through the store
on `UpstreamClients.shared` (`sharedstate.SharedState`, keys `cooldown:upstream:NAME` and
`lease:upstream:NAME`):

Cooldowns. An attempt that fails by the upstream's fault (a verdict of `retry`: connection
errors, timeouts, 429, 5xx, a broken stream before its first byte) is reported (`failed`); a
400 of a bad request, a missing key or a client that hung up is not. At `after_failures` in a
row the store cools the upstream down for `seconds`, then grants one probe. Each worker keeps
what the store said for at most STALE_S (1 s): a worker that has seen no failure of an upstream
lately asks the store at most once a second per upstream, not per request, so the no-fault path
makes no store call; the price is that a worker may send to an upstream up to a second after
another worker's failures cooled it down. A worker that saw a failure in the last second asks
before each request. A success is reported (`succeeded`, ending the row) only by a worker that
saw a failure or a cooldown, or has asked the store since its last report (the answer it got
may have been the probe after a cooldown, which only a report ends): at most two store calls a
second per healthy upstream per worker.

Leases. An upstream with `max_concurrent: N` takes one of N leases per attempt (`hold`), held
until the answer is closed (a stream: its last chunk); `wait_for_any` polls, with jittered
backoff, for the first of some full upstreams to free a lease, up to GATEWAY_QUEUE_TIMEOUT,
then answers Ollama's 503 "server busy".
"""

from __future__ import annotations

import asyncio
import random
import time

import anyio
from collections.abc import Sequence

from gateway.errors import SERVER_BUSY, GatewayError, ServerBusy
from gateway.routing.resolver import Target
from gateway.upstream.sharedstate import LEASE_TTL, Lease, SharedState

STALE_S = 1.0  # the longest a worker trusts what the store said about a cooldown
_POLL_S = (0.01, 0.2)  # first and longest wait between polls for a free lease


class _View:
    """What this worker knows of one upstream's cooldown (monotonic times)."""

    __slots__ = ("clear_until", "cooling_until", "probe_until", "failed_at", "cooled", "report")

    def __init__(self) -> None:
        self.clear_until = 0.0  # usable without asking until then
        self.cooling_until = 0.0  # known cooling until then
        self.probe_until = 0.0  # this worker's probe is in flight: no other request until it ends
        self.failed_at = -STALE_S  # this worker's last counted failure
        self.cooled = False  # the store said it was cooling: the next "usable" answer is the probe
        self.report = False  # the next success is reported to the store


class Hold:
    """One attempt's place on an upstream: its in-flight count, and its lease if it has a limit."""

    __slots__ = ("_admission", "_name", "_lease")

    def __init__(self, admission: Admission, name: str, lease: Lease | None) -> None:
        self._admission = admission
        self._name = name
        self._lease = lease
        admission.in_flight[name] = admission.in_flight.get(name, 0) + 1

    async def release(self) -> None:
        """Give the place back (exactly once; later calls do nothing)."""
        admission, name = self._admission, self._name
        if not name:
            return
        self._name = ""
        admission.in_flight[name] -= 1
        lease, self._lease = self._lease, None
        if lease is not None:
            # Shielded: a request cancelled (its client left) must still give its lease back, or
            # the store would renew it for as long as this process lives.
            with anyio.CancelScope(shield=True):
                await admission.store.release(lease)

    def release_soon(self) -> None:
        """`release` from synchronous code (a relay's close): the lease goes back in a task."""
        task = asyncio.get_running_loop().create_task(self.release())
        self._admission.tasks.add(task)
        task.add_done_callback(self._admission.tasks.discard)


class Admission:
    """Per worker, kept across reloads: cooldown views and in-flight counts per upstream name."""

    __slots__ = ("store", "queue_timeout", "in_flight", "_views", "tasks")

    def __init__(self, store: SharedState, queue_timeout: float) -> None:
        self.store = store  # `UpstreamClients.shared`
        self.queue_timeout = queue_timeout
        self.in_flight: dict[str, int] = {}
        self._views: dict[str, _View] = {}
        self.tasks: set[asyncio.Task[None]] = set()

    # Cooldowns.

    def known_clear(self, target: Target) -> bool:
        """No store call needed: cooldowns are off for it, or the store said "usable" lately."""
        if target.upstream.cooldown is None:
            return True
        view = self._views.get(target.upstream_name)
        return view is not None and not view.report and view.clear_until > time.monotonic()

    def known_cooling(self, name: str) -> bool:
        view = self._views.get(name)
        return view is not None and max(view.cooling_until, view.probe_until) > time.monotonic()

    async def cooling(self, target: Target) -> float:
        """Seconds the target's upstream is still cooling down (0.0: it may be tried now)."""
        settings = target.upstream.cooldown
        shared = self.store
        if settings is None:
            return 0.0
        name = target.upstream_name
        view = self._views.get(name)
        if view is None:
            view = self._views[name] = _View()
        now = time.monotonic()
        if now < view.clear_until:
            return 0.0
        known = max(view.cooling_until, view.probe_until)
        if now < known:
            return known - now
        left = await shared.cooling(f"cooldown:upstream:{name}", settings.seconds)
        now = time.monotonic()
        if left > 0:
            view.cooling_until = now + min(left, STALE_S)
            view.cooled = True
            return left
        view.report = True
        if view.cooled:  # the store granted this worker the one probe after a cooldown
            view.cooled = False
            view.probe_until = now + settings.seconds
        elif now - view.failed_at >= STALE_S:
            view.clear_until = now + STALE_S
        return 0.0

    def needs_report(self, target: Target) -> bool:
        view = self._views.get(target.upstream_name)
        return view is not None and view.report

    async def succeeded(self, target: Target) -> None:
        """The attempt got its answer (or first byte): end the upstream's row of failures."""
        view = self._views.get(target.upstream_name)
        shared = self.store
        if view is None or not view.report:
            return
        view.report = False
        view.probe_until = 0.0
        await shared.succeeded(f"cooldown:upstream:{target.upstream_name}")

    async def failed(self, target: Target, error: GatewayError) -> None:
        """Count a failure that was the upstream's fault (see the module docstring)."""
        settings = target.upstream.cooldown
        shared = self.store
        if settings is None or error.verdict != "retry" or isinstance(error, ServerBusy):
            return
        name = target.upstream_name
        view = self._views.get(name)
        if view is None:
            view = self._views[name] = _View()
        view.failed_at = time.monotonic()
        view.clear_until = view.probe_until = 0.0
        view.report = True  # the next success ends the row
        await shared.failed(f"cooldown:upstream:{name}", settings.after_failures, settings.seconds)

    # Leases.

    async def hold(self, target: Target) -> Hold | None:
        """A place on the target's upstream now, or None when its `max_concurrent` leases are taken."""
        limit = target.upstream.max_concurrent
        name = target.upstream_name
        if limit is None:
            return Hold(self, name, None)
        lease = await self.store.acquire(f"lease:upstream:{name}", limit, LEASE_TTL)
        return Hold(self, name, lease) if lease is not None else None

    async def wait_for_any(self, targets: Sequence[Target]) -> tuple[Target, Hold]:
        """The first of `targets` to free a lease within the queue timeout; else 503 server busy."""
        deadline = time.monotonic() + self.queue_timeout
        pause = _POLL_S[0]
        while True:
            for target in targets:
                hold = await self.hold(target)
                if hold is not None:
                    return target, hold
            left = deadline - time.monotonic()
            if left <= 0:
                raise ServerBusy(SERVER_BUSY)
            await asyncio.sleep(min(left, pause * random.uniform(0.5, 1.5)))
            pause = min(pause * 2, _POLL_S[1])
