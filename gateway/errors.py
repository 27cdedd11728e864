"""Every error the gateway answers, rendered in Ollama's shape `{"error": "..."}`.

    GatewayError (500)                 every error carries `verdict`: what failover does with it
    ├── BadRequest (400)               the client's request cannot be served as sent
    │   └── Unsuitable (400)           a fallback that cannot take this request (next target)
    ├── ModelForbidden (403)           the request's auth key may not use this model
    ├── PayloadTooLarge (413)          the request body is over a limit
    ├── ServerBusy (503)               no upstream slot within GATEWAY_QUEUE_TIMEOUT, or shutting down
    ├── ModelNotFound (404)            no route for the model name (or the upstream does not know it)
    ├── UpstreamRejected (4xx/5xx)     the upstream answered with an error; status already mapped
    ├── UpstreamUnavailable (502)      no usable answer: refused, DNS, TLS, garbage, bad credentials
    ├── UpstreamTimeout (504)          the upstream did not answer in time
    └── UpstreamRelayed (4xx/5xx)      `/v1` only: the upstream's error status and object, as sent

`UPSTREAM_FAULTS` is the one table of what an upstream failure becomes (openai-mapping.md §7),
and of what failover does about it: each row carries its verdict. `upstream/faults.py`
classifies what happened once (an upstream status, or a fault name such as "dns") and
`upstream_fault()` builds the error from the row; nothing re-derives a verdict later. Before the
first streamed byte an error is a status and a JSON body; after it, one last line in the stream's
own framing (`upstream/streams.py`).

    verdict   failover does
    retry     the same target again (its max_retries, backoff), then the next one
    next      the next target at once (fallbacks): this target cannot serve the request
    stop      answer the client now: any other target would refuse it too
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import orjson
from starlette.responses import Response

JSON_MEDIA_TYPE = "application/json; charset=utf-8"

Verdict = Literal["retry", "next", "stop"]


class GatewayError(Exception):
    status_code = 500
    verdict: Verdict = "stop"

    def __init__(
        self, message: str, *, status_code: int | None = None, headers: dict[str, str] | None = None,
        verdict: Verdict | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if status_code is not None:
            self.status_code = status_code
        self.headers = headers or {}
        if verdict is not None:
            self.verdict = verdict


class BadRequest(GatewayError):
    status_code = 400


class Unsuitable(BadRequest):
    """A fallback that cannot take this request (a capability it lacks); the next one is tried."""

    verdict: Verdict = "next"


class ModelForbidden(GatewayError):
    status_code = 403

    def __init__(self, name: str) -> None:
        super().__init__(f"this key may not use model '{name}'")


class PayloadTooLarge(GatewayError):
    status_code = 413


class ServerBusy(GatewayError):
    """Stops failover: another target would queue behind the same worker limit again."""

    status_code = 503


class KeyLimited(GatewayError):
    """A key past one of its routes.yaml `limits` (http/keylimits.py): 429 with Retry-After in whole seconds."""

    status_code = 429

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message, headers={"Retry-After": str(max(1, math.ceil(retry_after)))})


class UpstreamCooling(ServerBusy):
    """A target skipped: its upstream is cooling down after failures in a row (503, Retry-After;
    upstream/admission.py). Its verdict sends the request on to the next target."""

    verdict: Verdict = "next"

    def __init__(self, upstream: str, after_failures: int, left: float) -> None:
        seconds = math.ceil(left)
        super().__init__(
            f"upstream '{upstream}' is cooling down after {after_failures} failures in a row ({seconds} s left)",
            headers={"Retry-After": str(seconds)},
        )


class ModelNotFound(GatewayError):
    status_code = 404
    verdict: Verdict = "next"

    def __init__(self, name: str) -> None:
        super().__init__(f"model '{name}' not found")


def verdict_for_status(status: int) -> Verdict:
    """For an error status met outside the table (an error event, a relayed status)."""
    if status == 404:
        return "next"
    return "retry" if status in (408, 409, 429) or status >= 500 else "stop"


class UpstreamRejected(GatewayError):
    """An upstream error status, translated to the status Ollama clients expect."""

    def __init__(self, message: str, *, status_code: int | None = None, headers: dict[str, str] | None = None,
                 verdict: Verdict | None = None) -> None:
        super().__init__(message, status_code=status_code, headers=headers)
        self.verdict = verdict or verdict_for_status(self.status_code)


class UpstreamUnavailable(GatewayError):
    status_code = 502
    verdict: Verdict = "retry"


class UpstreamTimeout(GatewayError):
    status_code = 504
    verdict: Verdict = "retry"


class UpstreamRelayed(GatewayError):
    """An upstream error on the OpenAI-compatible `/v1` surface: its status and its OpenAI error
    object (`{"message", "type", "param", "code", ...}`, every field scrubbed), relayed unmapped."""

    def __init__(self, error: dict[str, object], *, status_code: int, headers: dict[str, str] | None = None) -> None:
        super().__init__(str(error.get("message") or ""), status_code=status_code, headers=headers,
                         verdict=verdict_for_status(status_code))
        self.error = error


def error_body(message: str) -> bytes:
    return orjson.dumps({"error": message})


def error_response(error: GatewayError) -> Response:
    return Response(
        error_body(error.message),
        status_code=error.status_code,
        headers=error.headers,
        media_type=JSON_MEDIA_TYPE,
    )


# Ollama's own wording for an overloaded server (server/sched.go ErrMaxQueue), two spaces included.
SERVER_BUSY = "server busy, please try again.  maximum pending requests exceeded"
SHUTTING_DOWN = "the gateway is shutting down, please try again"


@dataclass(frozen=True, slots=True)
class Fault:
    """One row: the status the Ollama client gets, the error class, the message template, and what
    failover does next.

    Templates may use {upstream} (its name in routes.yaml), {model} (as the client sent it),
    {status} (the upstream's), {timeout} (seconds), {base_url} and {detail} (the upstream's own
    message, or the transport's; already scrubbed of credentials).
    """

    status: int
    error: type[GatewayError]
    message: str
    then: Verdict


_FROM_UPSTREAM = "{detail}"

# Upstream status or fault -> what the Ollama client gets. Credential problems are the gateway's
# own misconfiguration: 502 (never 401/403), so clients do not start a re-login against it, and
# never the upstream's text (OpenAI's 401 message quotes part of the key).
UPSTREAM_FAULTS: dict[int | str, Fault] = {
    400: Fault(400, UpstreamRejected, _FROM_UPSTREAM, "stop"),
    401: Fault(502, UpstreamUnavailable, "upstream '{upstream}' rejected the gateway's credentials (401); check its api_key", "next"),
    403: Fault(502, UpstreamUnavailable, "upstream '{upstream}' refused the gateway's credentials (403); check its api_key and its permissions", "next"),
    404: Fault(502, UpstreamUnavailable, "upstream '{upstream}' answered 404 at {base_url}: {detail}", "next"),
    "model_not_found": Fault(404, ModelNotFound, "model '{model}' not found", "next"),
    408: Fault(504, UpstreamTimeout, _FROM_UPSTREAM, "retry"),
    409: Fault(503, UpstreamRejected, _FROM_UPSTREAM, "retry"),
    413: Fault(400, UpstreamRejected, _FROM_UPSTREAM, "stop"),
    422: Fault(400, UpstreamRejected, _FROM_UPSTREAM, "stop"),
    429: Fault(429, UpstreamRejected, _FROM_UPSTREAM, "retry"),  # Retry-After is passed on
    500: Fault(500, UpstreamRejected, _FROM_UPSTREAM, "retry"),
    502: Fault(502, UpstreamRejected, _FROM_UPSTREAM, "retry"),
    503: Fault(503, UpstreamRejected, _FROM_UPSTREAM, "retry"),
    504: Fault(504, UpstreamRejected, _FROM_UPSTREAM, "retry"),
    "other_4xx": Fault(400, UpstreamRejected, _FROM_UPSTREAM, "stop"),
    "other_5xx": Fault(502, UpstreamRejected, _FROM_UPSTREAM, "retry"),
    # No usable HTTP answer.
    "refused": Fault(502, UpstreamUnavailable, "upstream '{upstream}' is unreachable: connection refused at {base_url}", "retry"),
    "dns": Fault(502, UpstreamUnavailable, "upstream '{upstream}' is unreachable: cannot resolve the host of {base_url} ({detail})", "retry"),
    "tls": Fault(502, UpstreamUnavailable, "upstream '{upstream}' is unreachable: TLS failed with {base_url} ({detail})", "retry"),
    "connect": Fault(502, UpstreamUnavailable, "upstream '{upstream}' is unreachable: {detail}", "retry"),
    "connect_timeout": Fault(504, UpstreamTimeout, "upstream '{upstream}' could not be reached within {timeout} s", "retry"),
    "timeout": Fault(504, UpstreamTimeout, "upstream '{upstream}' did not answer within {timeout} s", "retry"),
    "no_answer": Fault(502, UpstreamUnavailable, "upstream '{upstream}' closed the connection without answering", "retry"),
    "transport": Fault(502, UpstreamUnavailable, "upstream '{upstream}' failed: {detail}", "retry"),
    "not_json": Fault(502, UpstreamUnavailable, "upstream '{upstream}' sent a body that is not JSON: {detail}", "retry"),
    "not_object": Fault(502, UpstreamUnavailable, "upstream '{upstream}' sent JSON that is not an object", "retry"),
    "too_large": Fault(502, UpstreamUnavailable, "upstream '{upstream}' sent an answer over the gateway's limit of {detail} bytes", "retry"),
    # Faults of a stream (they may come before or after the first NDJSON line).
    "not_event_stream": Fault(502, UpstreamUnavailable, "upstream '{upstream}' did not send an event stream: {detail}", "retry"),
    "malformed_event": Fault(502, UpstreamUnavailable, "upstream '{upstream}' sent a malformed stream event: {detail}", "retry"),
    "incomplete": Fault(502, UpstreamUnavailable, "upstream '{upstream}' ended the stream before it was complete", "retry"),
    "cut": Fault(502, UpstreamUnavailable, "upstream '{upstream}' closed the connection in the middle of its answer", "retry"),
    "idle": Fault(504, UpstreamTimeout, "upstream '{upstream}' sent nothing for {timeout} s in the middle of its answer", "retry"),
    "error_event": Fault(502, UpstreamUnavailable, _FROM_UPSTREAM, "retry"),
}


def fault_of(status: int) -> Fault:
    """The row for an upstream error status (statuses without their own row by class)."""
    row = UPSTREAM_FAULTS.get(status)
    if row is not None:
        return row
    return UPSTREAM_FAULTS["other_4xx" if 400 <= status < 500 else "other_5xx"]


def ollama_status(upstream_status: int) -> int:
    """The status an Ollama client gets for an upstream error status."""
    return fault_of(upstream_status).status


def upstream_fault(
    kind: int | str,
    *,
    upstream: str,
    detail: str = "",
    model: str = "",
    timeout: float = 0.0,
    base_url: str = "",
    headers: dict[str, str] | None = None,
) -> GatewayError:
    """The GatewayError for one row of `UPSTREAM_FAULTS` (`kind`: an upstream status or a fault)."""
    row = fault_of(kind) if isinstance(kind, int) else UPSTREAM_FAULTS[kind]
    if not detail:
        detail = f"upstream '{upstream}' answered {kind}" if isinstance(kind, int) else "no details"
    message = row.message.format(
        upstream=upstream, detail=detail, model=model, timeout=f"{timeout:g}", base_url=base_url, status=kind
    )
    if row.error is ModelNotFound:
        return ModelNotFound(model)
    return row.error(message, status_code=row.status, headers=headers, verdict=row.then)
