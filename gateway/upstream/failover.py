"""Retry and fallback policy: which targets a request may try, in what order, and how long to wait.

Policy only; `exchange.py` runs the attempts. A request goes to its target; for an entry with
`targets`, the balanced choice (`balance.py`, made when the request was routed) and then the
entry's other deployments; then to the entry's `fallbacks` in order, each with its own
deployments (`tiers`). A target cooling down is skipped; one whose `max_concurrent` leases are
all taken is passed over for the next of its tier, and waited for (GATEWAY_QUEUE_TIMEOUT, then
503) only when no other target of its tier could answer (admission.py). Whether a failed attempt is tried again, skipped to the next
target or answered is the failure's own verdict (`errors.UPSTREAM_FAULTS` rows):

    verdict   failure                                          then
    retry     connection, timeout, 429, 5xx, broken stream     the same target up to max_retries
                                                               times (`retrying`), then fall back
    next      upstream refused our key (401/403), no such
              model or path there (404), its key is unset,
              a fallback lacking a capability                  fall back at once
    stop      the request itself was refused (400, 413, 422),
              the worker's own upstream limit                  answer the client

Waits between tries of one target (tenacity): a 429's Retry-After when it is at most
`retry_after_max` (a longer one falls back at once), else jittered exponential backoff.
Everything here happens before the first byte reaches the client.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Callable
from functools import partial

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt
from tenacity.wait import wait_base, wait_exponential_jitter

from gateway.errors import GatewayError, Unsuitable, Verdict
from gateway.routing.resolver import RouteMap, Target
from gateway.upstream import balance


def verdict_of(exc: GatewayError) -> Verdict:
    """What a failure calls for (see the module docstring); set once, where it was classified."""
    return exc.verdict


def gives_up_at_once(exc: GatewayError, primary: Target) -> bool:
    """After the primary's first try: no retry and no fallback can help."""
    verdict = exc.verdict
    if verdict == "stop":
        return True
    return not primary.route.fallbacks and (verdict == "next" or primary.upstream.max_retries == 0)


def tiers(primary: Target, route_map: RouteMap, order: Callable[[Target], list[Target]]) -> list[list[Target]]:
    """The targets to try, tier by tier: the primary and the rest of its entry's deployments,
    then each fallback's deployments in their balanced `order` (names that match nothing are
    left out)."""
    first = [primary, *balance.rest(primary)] if primary.group is not None else [primary]
    return [first, *(order(target) if target.group is not None else [target] for target in route_map.fallback_targets(primary))]


def retrying(target: Target, before_sleep: Callable[[RetryCallState], None]) -> AsyncRetrying:
    """Tries of one target: `max_retries` more after the first, waiting as the module says."""
    return AsyncRetrying(
        stop=stop_after_attempt(target.upstream.max_retries + 1),
        wait=_Backoff(target),
        retry=retry_if_exception(partial(_worth_retrying, target=target)),
        before_sleep=before_sleep,
        reraise=True,
    )


def final_error(errors: list[GatewayError]) -> GatewayError:
    """When every target failed: the last real failure (not a fallback that could not take the
    request), saying what the others were too, so a missing key of the primary is not hidden by a
    fallback's."""
    final = next((error for error in reversed(errors) if not isinstance(error, Unsuitable)), errors[-1])
    earlier = [error.message for error in errors if error is not final and error.message != final.message]
    if earlier:
        final.message = f"{final.message} (tried before: {'; '.join(earlier)})"
    return final


def _worth_retrying(exc: BaseException, target: Target) -> bool:
    if not isinstance(exc, GatewayError) or exc.verdict != "retry":
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
