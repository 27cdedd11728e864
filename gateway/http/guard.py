"""Per request: body size and time limits, cancellation when the client leaves or stops reading,
and the shutdown drain.

`RequestGuard.serve` runs inside the front layer (`front.py`), around the app. For every HTTP request:

- a declared `Content-Length` over `GATEWAY_MAX_BODY_BYTES` gets 413 before the body is read; a
  chunked body is counted as it arrives and stops with 413 at the limit;
- a body that ends before it is complete is a 400: Granian says `http.disconnect` both for a
  malformed chunked body (the 400 reaches the client) and for a client that left mid-upload (the
  400 goes nowhere, and the request is one log line);
- a body that is not whole `GATEWAY_BODY_TIMEOUT` seconds after the handler began to read it
  gets 408 and `Connection: close` (a client trickling its body cannot hold a connection and a
  handler for ever);
- a stream write that waits `GATEWAY_SEND_TIMEOUT` seconds ends the request (Granian's `send`
  blocks once the socket's buffers are full of what a client does not read): its upstream
  request is cancelled, its slot freed, and the request's log line says why;
- once the handler has read the whole body, a callback on the server's next `receive()` hears
  `http.disconnect` and cancels the handler at once (no task: Granian's `receive()` is a future), so a client that leaves cancels the upstream request, `stream: false`
  included (Granian does not cancel handlers itself; vLLM `with_cancellation` is the same idea).
  The handler's own later `receive()` calls see the same disconnect;
- while the worker drains after SIGTERM (`Drain`), a new request on a kept-alive connection gets
  503 and `Connection: close`; when the grace period ends, a request with no response yet gets
  503 and an NDJSON stream one final `{"error": ...}` line, never a `done` chunk (an SSE relay
  its error event: the response says how, `StreamedResponse.error_chunk`).

Nothing of the guard's runs per streamed chunk: a stream sets `open_stream` once when its body
starts, and notes when each write starts and ends (`sending_since`); `Deadlines` checks those
times, and when each body began, a few times a second for every request in flight.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable
from typing import Any, Protocol

import anyio
import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.logs import RequestRecord
from gateway.master import LEAVING_SIGNAL
from gateway.errors import (
    SHUTTING_DOWN,
    BadRequest,
    GatewayError,
    PayloadTooLarge,
    ServerBusy,
    error_response,
)

log = structlog.get_logger()


class OpenStream(Protocol):
    def error_chunk(self, error: GatewayError) -> bytes: ...

GUARD_SCOPE_KEY = "gateway.http.guard"
BODY_INCOMPLETE = "request body incomplete: malformed chunked encoding, or the client closed the connection"
_CLOSE = {"Connection": "close"}


class Drain:
    """A worker's requests in flight, and what happens to them after SIGTERM.

    Granian stops accepting connections on SIGTERM, lets requests in flight finish, and only
    then runs the lifespan shutdown (checked with Granian 2.8.7); `cli.serve` makes it kill a
    worker that is still busy a few seconds after the grace period. `begin()` runs when the
    worker gets the signal; `grace` seconds later `expire()` ends whatever is still running,
    cleanly, before that kill.
    """

    def __init__(self, grace: float) -> None:
        self.grace = grace
        self.closing = False
        # Shutting down soon (GATEWAY_SHUTDOWN_DELAY): readiness fails, requests are still served.
        self.leaving = False
        self.active: set[GuardedRequest] = set()

    @property
    def ready(self) -> bool:
        """What /health/ready says: false from the moment a shutdown begins."""
        return not (self.closing or self.leaving)

    def leave(self) -> None:
        if not self.leaving and not self.closing:
            self.leaving = True
            log.info("leaving", in_flight=len(self.active), detail="readiness fails; requests still served until SIGTERM")

    def begin(self) -> None:
        if self.closing:
            return
        self.closing = True
        log.info("draining", in_flight=len(self.active), grace_s=self.grace)
        asyncio.get_running_loop().call_later(self.grace, self.expire)

    def expire(self) -> None:
        if self.active:
            log.warning("grace_period_over", stopped=len(self.active))
        for request in list(self.active):
            request.stop()


class Deadlines:
    """A worker's timers on the client's side of its requests: the body's arrival and each write.

    One timer for the worker, ticking a few times per the shorter timeout (at most once a second)
    over the requests in flight (`Drain.active`), instead of a timer per request or per chunk.
    `start` and `stop` run in the lifespan; without them (an app run in-process by tests) nothing
    is timed.
    """

    def __init__(self, active: set[GuardedRequest], body_timeout: float, send_timeout: float) -> None:
        self.active = active
        self.body_timeout = body_timeout
        self.send_timeout = send_timeout
        self.tick = min(max(min(body_timeout, send_timeout) / 4, 0.05), 1.0)
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self._timer = asyncio.get_running_loop().call_later(self.tick, self._check)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _check(self) -> None:
        now = time.monotonic()
        for request in list(self.active):
            request.check(now, self.body_timeout, self.send_timeout)
        self.start()


def follow_server_signals(drain: Drain) -> Callable[[], None]:
    """Start the drain when the server (Granian) gets SIGTERM or SIGINT; returns an undo.

    The server's own handler keeps running (it is called from ours). Where no Python handler is
    installed, nothing is done: there is no server to follow (an app run in-process by tests).
    """
    loop = asyncio.get_running_loop()
    replaced: dict[int, Any] = {}
    try:
        loop.add_signal_handler(LEAVING_SIGNAL, drain.leave)
    except (NotImplementedError, RuntimeError, ValueError):  # not the main thread
        pass
    for sig in (signal.SIGTERM, signal.SIGINT):
        previous = signal.getsignal(sig)
        if not callable(previous):
            continue

        def chained(signum: int, frame: Any, previous: Callable[..., Any] = previous) -> None:
            loop.call_soon_threadsafe(drain.begin)
            previous(signum, frame)

        try:
            signal.signal(sig, chained)
        except ValueError:  # not the main thread
            break
        replaced[sig] = previous

    def undo() -> None:
        for sig, previous in replaced.items():
            signal.signal(sig, previous)
        try:
            loop.remove_signal_handler(LEAVING_SIGNAL)
        except (NotImplementedError, RuntimeError, ValueError):
            pass

    return undo


class RequestGuard:
    """Run by the front layer (`front.py`) inside it; one `GuardedRequest` per HTTP request."""

    def __init__(self, app: ASGIApp, *, drain: Drain, max_body_bytes: int) -> None:
        self.app = app
        self.drain = drain
        self.max_body_bytes = max_body_bytes

    async def serve(self, scope: Scope, receive: Receive, send: Send, record: RequestRecord) -> None:
        if self.drain.closing:
            await _answer(scope, receive, send, record, ServerBusy(SHUTTING_DOWN, headers=_CLOSE))
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_body_bytes:
            await _answer(scope, receive, send, record, body_too_large(self.max_body_bytes))
            return
        request = GuardedRequest(self, scope, receive, send, record)
        scope[GUARD_SCOPE_KEY] = request
        self.drain.active.add(request)
        try:
            await request.run()
        finally:
            self.drain.active.discard(request)
            # The scope and the request refer to each other: a cycle that would leave the whole
            # request to the cyclic garbage collector (measured: about 30 µs a request in collections).
            del scope[GUARD_SCOPE_KEY]


def body_too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"request body too large (limit {limit} bytes)", headers=dict(_CLOSE))


def body_too_slow(timeout: float) -> GatewayError:
    return GatewayError(f"request body not received in time (limit {timeout:g} s)", status_code=408, headers=dict(_CLOSE))


def client_not_reading(timeout: float) -> GatewayError:
    """For the log only: the client is not reading, so nothing more is sent to it."""
    return GatewayError(f"client stopped reading: a write waited more than {timeout:g} s")


class GuardedRequest:
    """One request's state: body bytes seen, the disconnect, its deadlines, and whether the drain
    or a deadline stopped it."""

    __slots__ = (
        "_guard", "_scope", "_receive", "_send", "_record", "_received", "_body_done", "_disconnected",
        "_cancel", "_waiter", "stopped", "open_stream", "_body_since", "sending_since", "timed_out",
    )

    def __init__(self, guard: RequestGuard, scope: Scope, receive: Receive, send: Send, record: RequestRecord) -> None:
        self._guard = guard
        self._record = record
        self._scope = scope
        self._receive = receive
        self._send = send
        self._received = 0
        self._body_done = False
        self._disconnected: asyncio.Event | None = None
        # The handler's cancel scope while it runs (a disconnect, the drain or a deadline cancels
        # it), and the server's pending `receive()` that hears the disconnect once the body is read.
        self._cancel: anyio.CancelScope | None = None
        self._waiter: asyncio.Future[Message] | None = None
        self.stopped = False
        # Set by StreamedResponse between its first and last write: a stream the drain stops is
        # then ended with its error chunk.
        self.open_stream: OpenStream | None = None
        # Monotonic times for `Deadlines` (0: not yet, not now): the handler's first read of the
        # body, and the start of the stream write in progress (set by StreamedResponse, which
        # is where a client that stops reading holds an upstream request).
        self._body_since = 0.0
        self.sending_since = 0.0
        self.timed_out: GatewayError | None = None

    async def run(self) -> None:
        # A plain cancel scope and a callback on the server's pending `receive()`, not a task
        # group nor a watcher task: the benchmark measured an anyio task group with a child task
        # at about 60 µs a request, and a watcher task (created, stepped, cancelled) at about 6.
        try:
            with anyio.CancelScope() as cancel:
                self._cancel = cancel
                await self._guard.app(self._scope, self.receive, self._send)
        finally:
            self._cancel = None
            self._stop_watching()
        if self.timed_out is not None:
            await self._end_timed_out(self.timed_out)
        elif self.stopped:
            await self._end_stopped()

    async def receive(self) -> Message:
        if self._body_done:
            # The watcher owns the connection's receive channel now.
            await self._disconnect_event().wait()
            return {"type": "http.disconnect"}
        if not self._body_since:
            self._body_since = time.monotonic()
        message = await self._receive()
        if message["type"] == "http.request":
            self._received += len(message.get("body", b""))
            if self._received > self._guard.max_body_bytes:
                raise body_too_large(self._guard.max_body_bytes)
            if not message.get("more_body", False):
                self._body_done = True
                self._watch()
        elif message["type"] == "http.disconnect":
            raise BadRequest(BODY_INCOMPLETE, headers=dict(_CLOSE))
        return message

    def _watch(self) -> None:
        """Listen for `http.disconnect`: the server's next `receive()` with a callback on it.

        Granian's `receive()` returns a future; another server's may return a coroutine, which
        gets a task. Either way nothing runs until a message (or a failure) comes."""
        waiter = self._receive()
        if not asyncio.isfuture(waiter):
            waiter = asyncio.ensure_future(waiter)
        self._waiter = waiter
        waiter.add_done_callback(self._heard)

    def _heard(self, waiter: asyncio.Future[Message]) -> None:
        self._waiter = None
        if waiter.cancelled():
            return
        failure = waiter.exception()
        if failure is None and waiter.result()["type"] != "http.disconnect":
            self._watch()  # not the end yet: keep listening
            return
        # A disconnect, or the server could not read the connection any more: it is gone too.
        self._client_left()

    def _stop_watching(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            waiter.remove_done_callback(self._heard)  # the request is over: a later disconnect is not its
            waiter.cancel()

    def _disconnect_event(self) -> asyncio.Event:
        if self._disconnected is None:
            self._disconnected = asyncio.Event()
        return self._disconnected

    def _client_left(self) -> None:
        self._disconnect_event().set()
        self._record.outcome = "client_disconnected"
        if self._cancel is not None:
            self._cancel.cancel()

    def check(self, now: float, body_timeout: float, send_timeout: float) -> None:
        """End this request if its body or its current write is overdue (called by `Deadlines`)."""
        if self.timed_out is not None or self._cancel is None:
            return
        if self._body_since and not self._body_done and now - self._body_since > body_timeout:
            self.timed_out = body_too_slow(body_timeout)
        elif self.sending_since and now - self.sending_since > send_timeout:
            self.timed_out = client_not_reading(send_timeout)
        else:
            return
        self._cancel.cancel()

    def stop(self) -> None:
        """The grace period is over: end this request now (called by `Drain.expire`)."""
        self.stopped = True
        if self._cancel is not None:
            self._cancel.cancel()

    async def _end_stopped(self) -> None:
        error = ServerBusy(SHUTTING_DOWN, headers=_CLOSE)
        record = self._record
        stream, self.open_stream = self.open_stream, None
        record.fail(error, after_first_byte=stream is not None)
        if stream is not None:
            await self._send({"type": "http.response.body", "body": stream.error_chunk(error), "more_body": True})
            await self._send({"type": "http.response.body", "body": b"", "more_body": False})
        elif not record.status:
            await error_response(error)(self._scope, self._receive, self._send)

    async def _end_timed_out(self, error: GatewayError) -> None:
        record = self._record
        self.open_stream = None
        started = bool(record.status)
        record.fail(error, after_first_byte=started)
        if self._body_done or started:
            return  # a client that stopped reading is sent nothing more
        await error_response(error)(self._scope, self._receive, self._send)


async def _answer(scope: Scope, receive: Receive, send: Send, record: RequestRecord, error: GatewayError) -> None:
    record.fail(error)
    await error_response(error)(scope, receive, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
