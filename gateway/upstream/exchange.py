"""One request's exchange with the upstreams: attempts, retries and fallbacks, and deadlines.

    Exchange.run(primary, call)         call.attempt(target) on the primary, then as failover.py
                                        says: the same target again, then each fallback
    TranslatedCall                      a translator's request: one JSON answer, or its NDJSON
                                        stream opened up to the first line (streams.open_stream,
                                        the first-byte rule)
    RelayCall                           `/v1`: the body with the target's model id, the answer as is

Deadlines per attempt (routes.yaml): `first_token_timeout` abandons an attempt whose first chunk
has not come (and falls back), `total_timeout` bounds the whole request, stream included. Every
failed attempt is logged (`upstream_attempt`, with its target and outcome), and so is the
success that follows one; a request answered at the first try is only in its summary line.
Each upstream request holds a slot of the worker's limiter until its answer is closed. Every
attempt is counted (gateway_upstream_attempts_total), and the time spent waiting on the upstream
is added to the request's record (`upstream_ns`, for gateway_overhead_seconds).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Callable
from typing import Any, Generic, Protocol, TypeVar

import orjson
import structlog
from tenacity import RetryCallState

from gateway.errors import BadRequest, GatewayError, Unsuitable, UpstreamTimeout
from gateway.logs import RequestRecord
from gateway.ollama import ModelRequest
from gateway.routing.resolver import RouteMap, Target
from gateway.translators.base import StreamingTranslator, Translator
from gateway.translators.clock import RequestClock
from gateway.upstream import failover
from gateway.upstream.calls import Relay, open_events, open_relay, post_json
from gateway.upstream.clients import UpstreamClients
from gateway.upstream.faults import fault
from gateway.upstream.streams import NDJSON_FRAMING, Framing, OpenedStream, open_stream

log = structlog.get_logger()

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)
_dumps: Callable[[Any], bytes] = orjson.dumps
_now_ns = time.perf_counter_ns


class Call(Protocol[T_co]):
    """What one request sends: `attempt(target, first)` tries it on one target."""

    async def attempt(self, target: Target, first: bool) -> T_co: ...


class Exchange:
    """The attempts of one request: on the primary target, then as `failover` says."""

    __slots__ = ("clients", "route_map", "record")

    def __init__(self, clients: UpstreamClients, route_map: RouteMap, record: RequestRecord) -> None:
        self.clients = clients
        self.route_map = route_map
        self.record = record

    async def run(self, primary: Target, call: Call[T]) -> T:
        try:
            result = await call.attempt(primary, True)  # the no-fault path: one call, nothing else
        except GatewayError as exc:
            exc.message = self.clients.scrub(exc.message)  # before anything logs it
            _count_attempt(primary, exc)
            _log_failure(primary, 1, exc)
            if failover.gives_up_at_once(exc, primary):
                raise
            first_error = exc
        else:
            _count_attempt(primary, None)
            return result
        return await self._fail_over(primary, call, first_error)

    async def _fail_over(self, primary: Target, call: Call[T], first_error: GatewayError) -> T:
        errors: list[GatewayError] = []
        pending: GatewayError | None = first_error
        for position, target in enumerate(failover.targets(primary, self.route_map)):
            if position:
                self.record.upstream = target.upstream_name
                self.record.upstream_model = target.upstream_model
            count = 1 if pending is not None else 0
            try:
                async for state in failover.retrying(target, _log_wait(target)):
                    with state:
                        if pending is not None:
                            # The primary's first try already failed (in `run`): let tenacity
                            # decide on it, so its wait and its count are the library's.
                            error, pending = pending, None
                            raise error
                        count += 1
                        try:
                            result = await call.attempt(target, False)
                        except GatewayError as exc:
                            exc.message = self.clients.scrub(exc.message)
                            _count_attempt(target, exc)
                            _log_failure(target, count, exc, fallback=position > 0)
                            raise
                        _count_attempt(target, None)
                        log.info("upstream_attempt", upstream=target.upstream_name, upstream_model=target.upstream_model,
                                 attempt=count, fallback=position > 0, outcome="ok")
                        return result
            except GatewayError as exc:
                if exc.verdict == "stop":
                    raise
                errors.append(exc)
        raise failover.final_error(errors)


def _count_attempt(target: Target, error: GatewayError | None) -> None:
    """gateway_upstream_attempts_total: ok, timeout, skipped (a fallback that cannot take the
    request, never sent) or error."""
    from gateway import metrics  # loaded in the workers only

    if error is None:
        outcome = "ok"
    else:
        outcome = "timeout" if isinstance(error, UpstreamTimeout) else "skipped" if isinstance(error, Unsuitable) else "error"
    metrics.attempt(target.upstream_name, outcome)


def _log_failure(target: Target, attempt: int, exc: GatewayError, fallback: bool = False) -> None:
    log.warning(
        "upstream_attempt", upstream=target.upstream_name, upstream_model=target.upstream_model, attempt=attempt,
        fallback=fallback, outcome="failed", status=exc.status_code, error=exc.message,
        then={"retry": "retry", "next": "fall back", "stop": "give up"}[exc.verdict],
    )


def _log_wait(target: Target) -> Callable[[RetryCallState], None]:
    def logged(state: RetryCallState) -> None:
        wait = state.next_action.sleep if state.next_action is not None else 0.0
        log.info("upstream_retry", upstream=target.upstream_name, upstream_model=target.upstream_model, wait_s=round(wait, 3))

    return logged


def _total_timeout(target: Target) -> Callable[[], UpstreamTimeout]:
    def error() -> UpstreamTimeout:
        return UpstreamTimeout(
            f"upstream '{target.upstream_name}' did not finish within total_timeout ({target.upstream.total_timeout:g} s)"
        )

    return error


def _first_token_timeout(target: Target) -> Callable[[], UpstreamTimeout]:
    def error() -> UpstreamTimeout:
        return UpstreamTimeout(
            f"upstream '{target.upstream_name}' sent nothing within first_token_timeout "
            f"({target.upstream.first_token_timeout:g} s)"
        )

    return error


RequestT = TypeVar("RequestT", bound=ModelRequest)


class TranslatedCall(Generic[RequestT]):
    """An Ollama endpoint served by a translator: the JSON reply's bytes, or an NDJSON stream.

    The first attempt uses the translator the handler made; every retry and fallback gets a fresh
    one of the same class for its target (the body depends on the target's model id and quirks,
    and a stream's translator has state). A fallback that cannot take the request is `Unsuitable`.
    """

    __slots__ = ("exchange", "translator", "_request", "_clock")

    def __init__(self, exchange: Exchange, translator: Translator[RequestT], request: RequestT, clock: RequestClock) -> None:
        self.exchange = exchange
        self.translator = translator
        self._request = request
        self._clock = clock

    async def attempt(self, target: Target, first: bool) -> bytes | OpenedStream:
        translator = self.translator if first else self._fresh(target)
        body = _dumps(translator.upstream_body())
        dropped = getattr(translator, "dropped_options", None)
        if dropped:
            log.debug("options_dropped", options=dropped, upstream=target.upstream_name)
        if first:
            self._clock.mark_upstream_called()
        if isinstance(translator, StreamingTranslator) and translator.streams:
            return await self._stream(translator, target, body)
        return await self._json(translator, target, body)

    def _fresh(self, target: Target) -> Translator[RequestT]:
        is_primary = target is self.translator.target
        try:
            fresh = type(self.translator)(self._request, target, self._clock)
            if not is_primary:
                fresh.local_reply()  # runs the capability checks for this target
            return fresh
        except BadRequest as exc:
            if is_primary:
                raise
            raise Unsuitable(f"fallback '{target.route.name}' cannot take this request: {exc.message}") from exc

    async def _json(self, translator: Translator[RequestT], target: Target, body: bytes) -> bytes:
        exchange = self.exchange
        clients = exchange.clients
        client = clients.of(target)
        total = target.upstream.total_timeout
        record = exchange.record
        try:
            async with clients.limiter.slot(), asyncio.timeout(total):
                waited_from = _now_ns()
                try:
                    answer = await post_json(client, translator.upstream_path, body, self._request.model, clients.max_answer_bytes)
                finally:
                    record.upstream_ns += _now_ns() - waited_from
        except TimeoutError as exc:
            raise _total_timeout(target)() from exc
        reply = _dumps(translator.from_response(answer))
        exchange.record.tokens(translator.prompt_tokens, translator.completion_tokens)
        return reply

    async def _stream(self, translator: StreamingTranslator[RequestT], target: Target, body: bytes) -> OpenedStream:
        upstream = target.upstream
        total = upstream.total_timeout
        exchange = self.exchange
        return await open_stream(
            self._ndjson(translator, target, body), NDJSON_FRAMING, exchange.record, exchange.clients.secrets,
            first_within=upstream.first_token_timeout, on_first_timeout=_first_token_timeout(target),
            deadline=asyncio.get_running_loop().time() + total if total is not None else None,
            on_deadline=_total_timeout(target),
        )

    async def _ndjson(self, translator: StreamingTranslator[RequestT], target: Target, body: bytes) -> AsyncGenerator[bytes, None]:
        """The NDJSON body: one write per upstream network read, each line ending in a newline."""
        clients = self.exchange.clients
        record = self.exchange.record
        async with clients.limiter.slot():
            # The time waiting on the upstream (status line, each read), for gateway_overhead_seconds.
            waited_from = _now_ns()
            try:
                events = await open_events(clients.of(target), translator.upstream_path, body, self._request.model)
            finally:
                record.upstream_ns += _now_ns() - waited_from
            try:
                started = False
                waited_from = _now_ns()
                async for read in events.reads():
                    record.upstream_ns += _now_ns() - waited_from
                    lines: list[bytes] = []
                    try:
                        for event in read:
                            lines.extend(_dumps(chunk) for chunk in translator.feed(event))
                            if lines and not started:
                                # The first line leaves at once; later ones go one write per read.
                                started = True
                                record.chunks += len(lines)
                                yield b"\n".join(lines) + b"\n"
                                lines = []
                    except GatewayError:
                        if lines:  # the lines before a failure in this read are still the client's
                            record.chunks += len(lines)
                            yield b"\n".join(lines) + b"\n"
                        raise
                    if lines:
                        record.chunks += len(lines)
                        yield b"\n".join(lines) + b"\n"
                    waited_from = _now_ns()
                record.upstream_ns += _now_ns() - waited_from
                if not events.saw_done and not translator.saw_finish_reason:
                    # Without [DONE] a stream is complete only if it said why it finished: a stream
                    # cut short is never answered with a made-up `done` chunk.
                    raise fault("incomplete", clients.of(target).origin)
                final = translator.finish()
                record.chunks += len(final)
                record.tokens(translator.prompt_tokens, translator.completion_tokens)
                yield b"".join(_dumps(chunk) + b"\n" for chunk in final)
            finally:
                events.close()


class RelayCall:
    """`/v1`: the client's body with the target's upstream model id; the answer unread (`Relay`)."""

    __slots__ = ("exchange", "_body", "_path", "_name")

    def __init__(self, exchange: Exchange, body: dict[str, Any], path: str, name: str) -> None:
        self.exchange = exchange
        self._body = body
        self._path = path
        self._name = name

    async def attempt(self, target: Target, first: bool) -> Relay:
        clients = self.exchange.clients
        content = _dumps({**self._body, "model": target.upstream_model})
        await clients.limiter.acquire()
        record = self.exchange.record
        waited_from = _now_ns()
        try:
            return await open_relay(
                clients.of(target), self._path, content, self._name, clients.max_answer_bytes, on_close=clients.limiter.release
            )
        except BaseException:
            clients.limiter.release()
            raise
        finally:
            record.upstream_ns += _now_ns() - waited_from

    async def stream(self, relay: Relay, framing: Framing) -> OpenedStream:
        """The upstream's SSE bytes as they arrive, run to the first read (the first-byte rule)."""
        exchange = self.exchange
        return await open_stream(_relayed(relay, exchange.record), framing, exchange.record, exchange.clients.secrets,
                                 allow_empty=True)


async def _relayed(relay: Relay, record: RequestRecord) -> AsyncGenerator[bytes, None]:
    try:
        waited_from = _now_ns()
        async for data in relay.chunks():
            record.upstream_ns += _now_ns() - waited_from
            record.chunks += 1
            yield data
            waited_from = _now_ns()
        record.upstream_ns += _now_ns() - waited_from
    finally:
        relay.close()
