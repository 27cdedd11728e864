"""Every error the gateway answers, rendered in Ollama's shape `{"error": "..."}`.

    GatewayError (500)
    ├── BadRequest (400)            the client's request cannot be served as sent
    ├── PayloadTooLarge (413)       the request body is over GATEWAY_MAX_BODY_BYTES
    ├── ServerBusy (503)            no upstream slot within GATEWAY_QUEUE_TIMEOUT, or shutting down
    ├── ModelNotFound (404)         no route for the model name (or the upstream does not know it)
    ├── UpstreamRejected (4xx/5xx)  the upstream answered with an error; status already mapped
    ├── UpstreamUnavailable (502)   no usable answer: refused, DNS, TLS, garbage, bad credentials
    ├── UpstreamTimeout (504)       the upstream did not answer in time
    └── UpstreamRelayed (4xx/5xx)   `/v1` only: the upstream's error status and object, as sent

`UPSTREAM_FAULTS` is the one table of what an upstream failure becomes (openai-mapping.md §7):
`upstream.py` only classifies what happened (an upstream status, or a fault name such as "dns")
and `upstream_fault()` builds the error from the row. Before the first streamed byte an error is
a status and a JSON body; after it, one final NDJSON line `{"error": ...}` (see `streaming.py`).
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson
from starlette.responses import Response

JSON_MEDIA_TYPE = "application/json; charset=utf-8"


class GatewayError(Exception):
    status_code = 500

    def __init__(self, message: str, *, status_code: int | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status_code is not None:
            self.status_code = status_code
        self.headers = headers or {}


class BadRequest(GatewayError):
    status_code = 400


class PayloadTooLarge(GatewayError):
    status_code = 413


class ServerBusy(GatewayError):
    status_code = 503


class ModelNotFound(GatewayError):
    status_code = 404

    def __init__(self, name: str) -> None:
        super().__init__(f"model '{name}' not found")


class UpstreamRejected(GatewayError):
    """An upstream error status, translated to the status Ollama clients expect."""


class UpstreamUnavailable(GatewayError):
    status_code = 502


class UpstreamTimeout(GatewayError):
    status_code = 504


class UpstreamRelayed(GatewayError):
    """An upstream error on the OpenAI-compatible `/v1` surface: its status and its OpenAI error
    object (`{"message", "type", "param", "code", ...}`, every field scrubbed), relayed unmapped."""

    def __init__(self, error: dict[str, object], *, status_code: int, headers: dict[str, str] | None = None) -> None:
        super().__init__(str(error.get("message") or ""), status_code=status_code, headers=headers)
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
    """One row: the status the Ollama client gets, the error class, and the message template.

    Templates may use {upstream} (its name in routes.yaml), {model} (as the client sent it),
    {status} (the upstream's), {timeout} (seconds), {base_url} and {detail} (the upstream's own
    message, or the transport's; already scrubbed of credentials).
    """

    status: int
    error: type[GatewayError]
    message: str


_FROM_UPSTREAM = "{detail}"

# Upstream status or fault -> what the Ollama client gets. Credential problems are the gateway's
# own misconfiguration: 502 (never 401/403), so clients do not start a re-login against it, and
# never the upstream's text (OpenAI's 401 message quotes part of the key).
UPSTREAM_FAULTS: dict[int | str, Fault] = {
    400: Fault(400, UpstreamRejected, _FROM_UPSTREAM),
    401: Fault(502, UpstreamUnavailable, "upstream '{upstream}' rejected the gateway's credentials (401); check its api_key"),
    403: Fault(502, UpstreamUnavailable, "upstream '{upstream}' refused the gateway's credentials (403); check its api_key and its permissions"),
    404: Fault(502, UpstreamUnavailable, "upstream '{upstream}' answered 404 at {base_url}: {detail}"),
    "model_not_found": Fault(404, ModelNotFound, "model '{model}' not found"),
    408: Fault(504, UpstreamTimeout, _FROM_UPSTREAM),
    409: Fault(503, UpstreamRejected, _FROM_UPSTREAM),
    413: Fault(400, UpstreamRejected, _FROM_UPSTREAM),
    422: Fault(400, UpstreamRejected, _FROM_UPSTREAM),
    429: Fault(429, UpstreamRejected, _FROM_UPSTREAM),  # Retry-After is passed on
    500: Fault(500, UpstreamRejected, _FROM_UPSTREAM),
    502: Fault(502, UpstreamRejected, _FROM_UPSTREAM),
    503: Fault(503, UpstreamRejected, _FROM_UPSTREAM),
    504: Fault(504, UpstreamRejected, _FROM_UPSTREAM),
    "other_4xx": Fault(400, UpstreamRejected, _FROM_UPSTREAM),
    "other_5xx": Fault(502, UpstreamRejected, _FROM_UPSTREAM),
    # No usable HTTP answer.
    "refused": Fault(502, UpstreamUnavailable, "upstream '{upstream}' is unreachable: connection refused at {base_url}"),
    "dns": Fault(502, UpstreamUnavailable, "upstream '{upstream}' is unreachable: cannot resolve the host of {base_url} ({detail})"),
    "tls": Fault(502, UpstreamUnavailable, "upstream '{upstream}' is unreachable: TLS failed with {base_url} ({detail})"),
    "connect": Fault(502, UpstreamUnavailable, "upstream '{upstream}' is unreachable: {detail}"),
    "connect_timeout": Fault(504, UpstreamTimeout, "upstream '{upstream}' could not be reached within {timeout} s"),
    "timeout": Fault(504, UpstreamTimeout, "upstream '{upstream}' did not answer within {timeout} s"),
    "no_answer": Fault(502, UpstreamUnavailable, "upstream '{upstream}' closed the connection without answering"),
    "transport": Fault(502, UpstreamUnavailable, "upstream '{upstream}' failed: {detail}"),
    "not_json": Fault(502, UpstreamUnavailable, "upstream '{upstream}' sent a body that is not JSON: {detail}"),
    "not_object": Fault(502, UpstreamUnavailable, "upstream '{upstream}' sent JSON that is not an object"),
    "too_large": Fault(502, UpstreamUnavailable, "upstream '{upstream}' sent an answer over the gateway's limit of {detail} bytes"),
    # Faults of a stream (they may come before or after the first NDJSON line).
    "not_event_stream": Fault(502, UpstreamUnavailable, "upstream '{upstream}' did not send an event stream: {detail}"),
    "malformed_event": Fault(502, UpstreamUnavailable, "upstream '{upstream}' sent a malformed stream event: {detail}"),
    "incomplete": Fault(502, UpstreamUnavailable, "upstream '{upstream}' ended the stream before it was complete"),
    "cut": Fault(502, UpstreamUnavailable, "upstream '{upstream}' closed the connection in the middle of its answer"),
    "idle": Fault(504, UpstreamTimeout, "upstream '{upstream}' sent nothing for {timeout} s in the middle of its answer"),
    "error_event": Fault(502, UpstreamUnavailable, _FROM_UPSTREAM),
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
    return row.error(message, status_code=row.status, headers=headers)
