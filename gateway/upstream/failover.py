"""Retries and fallbacks: a request goes to its target, then to the entry's `fallbacks` in order.

    with_failover(primary, attempt)
      attempt(primary)                      the no-fault path: one call, nothing else
      on a failure worth another try:
        the same target again, `max_retries` times (tenacity: jittered exponential backoff, or a
        429's Retry-After when it is at most `retry_after_max`), then each fallback in turn,
        with its own upstream's settings

Everything here happens before the first byte reaches the client: a non-streamed answer is
all or nothing, and a stream is opened up to its first NDJSON line before the response starts
(`streaming.open_ndjson_stream`). Once a stream has begun, `streaming.py` ends it with an
`{"error": ...}` line instead.

    failure                                            then
    connection, timeout, 429, 5xx, broken stream      retry, then fall back
    upstream refused our key (401/403), no such
      model or path there (404), its key is unset     fall back at once
    the request itself was refused (400, 413, 422)    answer the client: another target would too

Timeouts per upstream: `first_token_timeout` abandons an attempt whose first line has not come
(and falls back), `total_timeout` bounds the whole request, stream included. Every failed
attempt is logged (`upstream_attempt`, with its target and outcome), and so is the success that
follows one; a request answered at the first try is only in the request's summary line.
A failure's message is scrubbed of the route map's secrets as soon as it is caught here, before
it is logged: a translator (pure, it knows no secrets) may have quoted an upstream's text.
"""

from __future__ import annotations

import asyncio
import email.utils
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from functools import partial
from typing import Any, Literal, TypeVar

import orjson
import structlog
from starlette.responses import Response
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
)
from tenacity.wait import wait_base, wait_exponential_jitter

from gateway.errors import (
    JSON_MEDIA_TYPE,
    BadRequest,
    GatewayError,
    ModelNotFound,
    ServerBusy,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
    error_body,
)
from gateway.logs import RequestRecord
from gateway.routing.resolver import RouteMap, Target
from gateway.http.streaming import ndjson_stream, open_ndjson_stream
from gateway.translators.base import StreamingTranslator, Translator
from gateway.upstream.calls import UpstreamClients

log = structlog.get_logger()

T = TypeVar("T")
Verdict = Literal["retry", "next", "stop"]
Attempt = Callable[[Target, bool], Awaitable[T]]


class Unsuitable(GatewayError):
    """A fallback that cannot take this request (a capability it lacks); the next one is tried."""

    status_code = 400


async def with_failover(primary: Target, route_map: RouteMap, record: RequestRecord, attempt: Attempt[T]) -> T:
    """`attempt(target, is_first)` on the primary target, then retries and fallbacks as needed."""
    try:
        return await attempt(primary, True)
    except GatewayError as exc:
        exc.message = route_map.secrets.scrub(exc.message)
        verdict = verdict_of(exc, primary)
        _log_failure(primary, 1, exc, verdict)
        if verdict == "stop" or (not primary.route.fallbacks and (verdict == "next" or primary.upstream.max_retries == 0)):
            raise
        first_error = exc
    return await _fail_over(primary, route_map, record, attempt, first_error)


async def _fail_over(primary: Target, route_map: RouteMap, record: RequestRecord, attempt: Attempt[T], first_error: GatewayError) -> T:
    errors: list[GatewayError] = []
    pending: GatewayError | None = first_error
    for position, target in enumerate([primary, *route_map.fallback_targets(primary)]):
        if position:
            record.upstream = target.upstream_name
            record.upstream_model = target.upstream_model
        count = 1 if pending is not None else 0
        retrying = AsyncRetrying(
            stop=stop_after_attempt(target.upstream.max_retries + 1),
            wait=_Backoff(target),
            retry=retry_if_exception(partial(_worth_retrying, target=target)),
            before_sleep=partial(_log_wait, target),
            reraise=True,
        )
        try:
            async for state in retrying:
                with state:
                    if pending is not None:
                        # The primary's first try already failed (in with_failover): let tenacity
                        # decide on it, so its wait and its count are the library's.
                        error, pending = pending, None
                        raise error
                    count += 1
                    try:
                        result = await attempt(target, False)
                    except GatewayError as exc:
                        exc.message = route_map.secrets.scrub(exc.message)
                        _log_failure(target, count, exc, verdict_of(exc, target), fallback=position > 0)
                        raise
                    log.info("upstream_attempt", upstream=target.upstream_name, upstream_model=target.upstream_model,
                             attempt=count, fallback=position > 0, outcome="ok")
                    return result
        except GatewayError as exc:
            if verdict_of(exc, target) == "stop":
                raise
            errors.append(exc)
    # All failed: the last real failure (not a fallback that could not take the request), saying
    # what the others were too, so a missing key of the primary is not hidden by a fallback's.
    final = next((error for error in reversed(errors) if not isinstance(error, Unsuitable)), errors[-1])
    earlier = [error.message for error in errors if error is not final and error.message != final.message]
    if earlier:
        final.message = f"{final.message} (tried before: {'; '.join(earlier)})"
    raise final


def verdict_of(exc: GatewayError, target: Target) -> Verdict:
    """What a failure of `target` calls for (see the module docstring)."""
    if isinstance(exc, ServerBusy):
        return "stop"  # the worker's own upstream limit: another target would queue behind it again
    if isinstance(exc, Unsuitable):
        return "next"
    if isinstance(exc, UpstreamTimeout):
        return "retry"
    # The upstream's own HTTP status, when it answered one (the SDK error is the cause).
    upstream_status = getattr(exc.__cause__, "status_code", None)
    if isinstance(exc, ModelNotFound) or upstream_status in (401, 403, 404):
        return "next"
    if isinstance(exc, UpstreamUnavailable):
        if upstream_status is None and target.upstream.missing_key_variable:
            return "next"
        return "retry"
    if isinstance(exc, BadRequest):
        return "stop"
    status = exc.status_code
    if status in (408, 409, 429) or status >= 500:
        return "retry" if isinstance(exc, UpstreamRejected) or upstream_status is not None else "next"
    return "stop"


def _worth_retrying(exc: BaseException, target: Target) -> bool:
    if not isinstance(exc, GatewayError) or verdict_of(exc, target) != "retry":
        return False
    retry_after = retry_after_of(exc)
    return retry_after is None or retry_after <= target.upstream.retry_after_max


def retry_after_of(exc: BaseException) -> float | None:
    """Seconds from a `Retry-After` header the error carries (delta-seconds or an HTTP date)."""
    headers = getattr(exc, "headers", None) or {}
    value = next((v for k, v in headers.items() if k.lower() == "retry-after"), None)
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class _Backoff(wait_base):
    """Retry-After when the upstream sent one (already checked against the cap), else jittered
    exponential backoff: retry_backoff * 2^n + up to retry_backoff of jitter, capped."""

    def __init__(self, target: Target) -> None:
        upstream = target.upstream
        self._exponential = wait_exponential_jitter(
            multiplier=upstream.retry_backoff, max=upstream.retry_backoff_max, jitter=upstream.retry_backoff
        )

    def __call__(self, retry_state: RetryCallState) -> float:
        outcome = retry_state.outcome
        exc = outcome.exception() if outcome is not None else None
        retry_after = retry_after_of(exc) if exc is not None else None
        return retry_after if retry_after is not None else self._exponential(retry_state)


def _log_failure(target: Target, attempt: int, exc: GatewayError, verdict: Verdict, fallback: bool = False) -> None:
    log.warning(
        "upstream_attempt", upstream=target.upstream_name, upstream_model=target.upstream_model, attempt=attempt,
        fallback=fallback, outcome="failed", status=exc.status_code, error=exc.message,
        then={"retry": "retry", "next": "fall back", "stop": "give up"}[verdict],
    )


def _log_wait(target: Target, state: RetryCallState) -> None:
    wait = state.next_action.sleep if state.next_action is not None else 0.0
    log.info("upstream_retry", upstream=target.upstream_name, upstream_model=target.upstream_model, wait_s=round(wait, 3))


# -- Ollama endpoints served by a translator ---------------------------------------------------


async def serve_translated(
    clients: UpstreamClients,
    route_map: RouteMap,
    record: RequestRecord,
    translator: Translator[Any],
    body: dict[str, Any],
    make: Callable[[Target], Translator[Any]],
) -> Response:
    """The upstream call for a translator's request (NDJSON stream or one JSON reply), with failover.

    `body` is `translator.upstream_body()`, for the first try. `make(target)` builds the
    translator for another try: each retry and fallback gets a fresh one, since the body depends
    on the target (model id, quirks) and a stream's translator has state.
    """
    primary = translator.target
    first_body = body

    async def attempt(target: Target, first: bool) -> Response:
        current, body = (translator, first_body) if first else _fresh(make, target, target is primary)
        if current.streams:
            assert isinstance(current, StreamingTranslator)
            return await _open_stream(clients, current, target, body, record)
        answer = await _post(clients, current, target, body)
        response = Response(orjson.dumps(current.from_response(answer)), media_type=JSON_MEDIA_TYPE)
        record.tokens(current.prompt_tokens, current.completion_tokens)
        return response

    return await with_failover(primary, route_map, record, attempt)


def _fresh(make: Callable[[Target], Translator[Any]], target: Target, is_primary: bool) -> tuple[Translator[Any], dict[str, Any]]:
    """A new translator and its body for `target`; a fallback that cannot take the request is Unsuitable."""
    try:
        fresh = make(target)
        if not is_primary:
            fresh.local_reply()  # runs the capability checks for this target
        return fresh, fresh.upstream_body()
    except BadRequest as exc:
        if is_primary:
            raise
        raise Unsuitable(f"fallback '{target.route.name}' cannot take this request: {exc.message}") from exc


async def _post(clients: UpstreamClients, translator: Translator[Any], target: Target, body: dict[str, Any]) -> dict[str, Any]:
    total = target.upstream.total_timeout
    if total is None:
        return await clients.post(target, translator.upstream_path, body, translator.request.model)
    try:
        async with asyncio.timeout(total):
            return await clients.post(target, translator.upstream_path, body, translator.request.model)
    except TimeoutError as exc:
        raise _total_timeout(target) from exc


async def _open_stream(
    clients: UpstreamClients, translator: StreamingTranslator[Any], target: Target, body: dict[str, Any], record: RequestRecord
) -> Response:
    lines = ndjson_stream(clients, translator, target, body, record)
    upstream = target.upstream
    if upstream.total_timeout is not None:
        lines = _before_deadline(lines, asyncio.get_running_loop().time() + upstream.total_timeout, target, record)
    if upstream.first_token_timeout is None:
        return await open_ndjson_stream(lines, {})
    try:
        async with asyncio.timeout(upstream.first_token_timeout):
            return await open_ndjson_stream(lines, {})
    except TimeoutError as exc:
        raise UpstreamTimeout(
            f"upstream '{target.upstream_name}' sent nothing within first_token_timeout ({upstream.first_token_timeout:g} s)"
        ) from exc


async def _before_deadline(
    lines: AsyncGenerator[bytes, None], deadline: float, target: Target, record: RequestRecord
) -> AsyncGenerator[bytes, None]:
    """`lines` until `deadline` (loop time): then a timeout before the first line, or a last error line after it."""
    started = False
    try:
        while True:
            try:
                async with asyncio.timeout_at(deadline):
                    line = await anext(lines)
            except StopAsyncIteration:
                return
            except TimeoutError as exc:
                error = _total_timeout(target)
                if not started:
                    raise error from exc
                record.fail(error, after_first_byte=True)
                yield error_body(error.message) + b"\n"
                return
            started = True
            yield line
    finally:
        await lines.aclose()


def _total_timeout(target: Target) -> UpstreamTimeout:
    return UpstreamTimeout(
        f"upstream '{target.upstream_name}' did not finish within total_timeout ({target.upstream.total_timeout:g} s)"
    )
