"""One request's exchange with the upstreams: attempts, retries and fallbacks, deadlines, and the
first-byte rule.

    Exchange.run(primary, call)         call.attempt(target) on the primary, then as failover.py
                                        says (sequence.py): the same target again, the entry's
                                        other targets, then each fallback
    TranslatedCall                      a translator's request: one JSON answer, or its stream
                                        (NDJSON, or the translator's own `framing`: the Anthropic
                                        Messages events) opened up to the first chunk
    RelayCall, NativeOrTranslated       `/v1`: the body relayed with the target's model id, or
                                        translated where the upstream lacks the API (relaying.py)

The first-byte rule (streams.py `open_stream`, re-exported here with `OpenedStream`, `Framing`
and the NDJSON framing): a stream is run to its first chunk before the response starts, so a
failure until then still gets a real status and failover; after it, one last error chunk.

Deadlines per attempt (routes.yaml): `first_token_timeout` abandons an attempt whose first chunk
has not come (and falls back), `total_timeout` bounds the whole request, stream included. Each
attempt is timed, logged and traced by attempts.py (a failed one always logged, and the success
after one). An upstream request holds a slot of the worker's limiter until its answer is closed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable
from typing import Any, Generic, Protocol, TypeVar

import orjson
import structlog

from gateway.errors import BadRequest, GatewayError, Unsuitable, UpstreamTimeout
from gateway.logs import RequestRecord
from gateway.ollama import ModelRequest
from gateway.routing.resolver import RouteMap, Target
from gateway.translators.base import ChunkFraming, StreamingTranslator, Translator
from gateway.translators.clock import RequestClock
from gateway.upstream import failover, sequence
from gateway.upstream.attempts import Attempts, log_failure
from gateway.upstream.calls import Relay, open_events, post_json
from gateway.upstream.clients import UpstreamClients
from gateway.upstream.faults import fault
from gateway.upstream.streams import NDJSON_FRAMING, NDJSON_MEDIA_TYPE, Framing, OpenedStream, open_stream

__all__ = ["NDJSON_FRAMING", "NDJSON_MEDIA_TYPE", "Call", "Exchange", "Framing", "OpenedStream", "TranslatedCall",
           "open_stream"]

log = structlog.get_logger()

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)
_dumps: Callable[[Any], bytes] = orjson.dumps


class Call(Protocol[T_co]):
    """What one request sends: `attempt(target, first)` tries it on one target."""

    async def attempt(self, target: Target, first: bool) -> T_co: ...


class Exchange:
    """The attempts of one request: on the primary target, then as `failover` says (run by
    `sequence.fail_over`); each one timed, logged and traced by `attempts.Attempts`.

    The no-fault path of an entry with one `upstream`, no `max_concurrent`, and a cooldown this
    worker knows to be clear makes one call and nothing else: no store call, no lease."""

    __slots__ = ("clients", "route_map", "record", "attempts", "fresh")

    def __init__(self, clients: UpstreamClients, route_map: RouteMap, record: RequestRecord) -> None:
        self.clients = clients
        self.route_map = route_map
        self.record = record
        self.attempts = Attempts(record)
        self.fresh = True  # the call's first attempt (on the primary, with the handler's translator) is to come

    async def run(self, primary: Target, call: Call[T]) -> T:
        admission = self.clients.admission
        if primary.group is not None or primary.upstream.max_concurrent is not None or not admission.known_clear(primary):
            return await sequence.fail_over(self, primary, call, None)
        self.fresh = False
        try:
            return await self.attempt(call, primary, True)  # the no-fault path: one call, nothing else
        except GatewayError as exc:
            log_failure(primary, 1, exc)
            await admission.failed(primary, exc)
            if failover.gives_up_at_once(exc, primary):
                raise
            first_error = exc
        return await sequence.fail_over(self, primary, call, first_error)

    async def run_translated(self, primary: Target, call: Call[T], translator: Translator[Any]) -> T:
        """`run`, a failure said in the translator's endpoint's words (`Translator.map_error`)."""
        try:
            return await self.run(primary, call)
        except GatewayError as exc:
            mapped = translator.map_error(exc)
            if mapped is exc:
                raise
            raise mapped from exc

    async def attempt(self, call: Call[T], target: Target, first: bool) -> T:
        """One attempt, timed from its call to its first byte, answer or failure."""
        attempts = self.attempts
        attempts.begin()
        try:
            result = await call.attempt(target, first)
        except BaseException as exc:
            error = exc if isinstance(exc, GatewayError) else None
            if error is not None:
                error.message = self.clients.scrub(error.message)  # before anything logs it
            attempts.ended(error, failed=True)
            if error is not None:  # a cancelled attempt (the client left) has no outcome to count
                _count_attempt(target, error)
            raise
        _count_attempt(target, None)
        status = result.status if isinstance(result, Relay) else 200
        self.record.answered = attempts.ended(None, failed=False, streamed=isinstance(result, OpenedStream), status=status)
        return result

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


def _count_attempt(target: Target, error: GatewayError | None) -> None:
    """gateway_upstream_attempts_total: ok, timeout, skipped (a fallback that cannot take the
    request, never sent) or error."""
    from gateway import metrics  # loaded in the workers only

    if error is None:
        outcome = "ok"
    else:
        outcome = "timeout" if isinstance(error, UpstreamTimeout) else "skipped" if isinstance(error, Unsuitable) else "error"
    metrics.attempt(target.upstream_name, outcome)


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
        self.exchange.attempts.calling(target, translator.upstream_path, getattr(translator, "dropped_options", None))
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
        try:
            async with clients.limiter.slot(), asyncio.timeout(total):
                answer = await post_json(client, translator.upstream_path, body, self._request.model, clients.max_answer_bytes)
        except TimeoutError as exc:
            raise _total_timeout(target)() from exc
        reply = _dumps(translator.from_response(answer))
        record = exchange.record
        record.tokens(translator.prompt_tokens, translator.completion_tokens)
        record.done_reason = getattr(translator, "done_reason", None)
        return reply

    async def _stream(self, translator: StreamingTranslator[RequestT], target: Target, body: bytes) -> OpenedStream:
        upstream = target.upstream
        total = upstream.total_timeout
        exchange = self.exchange
        framing = translator.framing
        chunks = self._ndjson(translator, target, body) if framing is None else self._framed(translator, target, body, framing)
        return await open_stream(
            chunks, framing or NDJSON_FRAMING, exchange.record, exchange.clients.secrets,
            first_within=upstream.first_token_timeout, on_first_timeout=_first_token_timeout(target),
            deadline=asyncio.get_running_loop().time() + total if total is not None else None,
            on_deadline=_total_timeout(target),
        )

    async def _ndjson(self, translator: StreamingTranslator[RequestT], target: Target, body: bytes) -> AsyncGenerator[bytes, None]:
        """The NDJSON body: one write per upstream network read, each line ending in a newline;
        the final `done` line goes in the same write as the read that ended the stream."""
        clients = self.exchange.clients
        record = self.exchange.record
        async with clients.limiter.slot():
            events = await open_events(clients.of(target), translator.upstream_path, body, self._request.model)
            finished = started = False
            try:
                async for read in events.reads():
                    lines: list[bytes] = []
                    try:
                        for event in read:
                            for chunk in translator.feed(event):
                                lines.append(_dumps(chunk))
                            if lines and not started:
                                # The first line leaves at once; later ones go one write per read.
                                started = events.started = True
                                record.chunks += len(lines)
                                yield b"\n".join(lines) + b"\n"
                                lines = []
                    except GatewayError:
                        if lines:  # the lines before a failure in this read are still the client's
                            record.chunks += len(lines)
                            yield b"\n".join(lines) + b"\n"
                        raise
                    if events.saw_done:  # the last read: the final line goes with it
                        finished = True
                        lines.extend(_dumps(chunk) for chunk in self._finish(translator))
                    if lines:
                        record.chunks += len(lines)
                        yield b"\n".join(lines) + b"\n"
                if not finished:
                    if not translator.saw_finish_reason:  # without [DONE], complete only if it said why it
                        raise fault("incomplete", clients.of(target).origin)  # ended: no made-up `done`
                    final = self._finish(translator)
                    finished = True
                    record.chunks += len(final)
                    yield b"".join(_dumps(chunk) + b"\n" for chunk in final)
            finally:
                events.close()
                if started and not finished:
                    _cut_short(translator, record)

    def _finish(self, translator: StreamingTranslator[RequestT]) -> list[dict[str, Any]]:
        """The translator's last chunks; the request's tokens and done reason recorded."""
        record = self.exchange.record
        final = translator.finish()
        record.tokens(translator.prompt_tokens, translator.completion_tokens)
        record.done_reason = getattr(translator, "done_reason", None)
        return final

    async def _framed(
        self, translator: StreamingTranslator[RequestT], target: Target, body: bytes, framing: ChunkFraming,
    ) -> AsyncGenerator[bytes, None]:
        """Another surface's stream (`translator.framing`), written as `_ndjson`'s."""
        clients = self.exchange.clients
        record = self.exchange.record
        async with clients.limiter.slot():
            events = await open_events(clients.of(target), translator.upstream_path, body, self._request.model)
            finished = False
            sent = record.chunks
            try:
                async for read in events.reads():
                    chunks: list[dict[str, Any]] = []
                    try:
                        for event in read:
                            chunks.extend(translator.feed(event))
                    except GatewayError:
                        if chunks:  # the chunks before a failure in this read are still the client's
                            record.chunks += len(chunks)
                            yield framing.encode(chunks)
                        raise
                    if events.saw_done:  # the last read: the last chunks go with it
                        finished = True
                        final = self._finish(translator)
                        record.chunks += len(chunks) + len(final)
                        yield (framing.encode(chunks) if chunks else b"") + framing.encode(final)
                    elif chunks:
                        events.started = True
                        record.chunks += len(chunks)
                        yield framing.encode(chunks)
                if not finished:
                    if not translator.saw_finish_reason:
                        raise fault("incomplete", clients.of(target).origin)
                    final = self._finish(translator)
                    finished = True
                    record.chunks += len(final)
                    yield framing.encode(final)
            finally:
                events.close()
                if record.chunks > sent and not finished:
                    _cut_short(translator, record)


def _cut_short(translator: StreamingTranslator[Any], record: RequestRecord) -> None:
    """A stream that ended after its first chunk without its last (the client hung up, the
    upstream broke) still used tokens: the translator's estimate of them goes on the record,
    for the log line, the metrics and the key's tpm (the upstream's usage would have come last)."""
    record.tokens(*translator.tokens_so_far())
