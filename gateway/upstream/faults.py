"""What went wrong with an upstream call, classified once into a row of `errors.UPSTREAM_FAULTS`.

Every failure of a call passes here exactly once, where it happens: a transport failure
(`transport_fault`: refused, DNS, TLS, timeouts, a connection cut before or after the status
line), an error status with its body (`status_fault`, or `relayed_fault` on `/v1`, which keeps
the upstream's own error object), or an answer that is not what was asked for (`not_json`,
`not_event_stream`, ...). The error built from the row carries the row's verdict, so failover
never looks at the cause again.

Upstream text is scrubbed of the route map's secrets before it is cut short (a secret across the
cut would lose its last characters and no longer be recognised), and once more after.

    aiohttp failure                          before the status line     while the body is read
    ConnectionTimeoutError (sock_connect)    connect_timeout            -
    other timeouts (sock_read)               timeout                    idle
    ClientConnectorDNSError                  dns                        -
    ClientSSLError                           tls                        -
    ClientConnectorError, refused            refused                    -
    ClientConnectorError, other              connect                    -
    ServerDisconnectedError, ClientOSError   no_answer                  cut
    ClientPayloadError                       -                          cut (or transport: bad encoding)
    any other aiohttp.ClientError            transport                  transport
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from typing import Any

import aiohttp
import orjson

from gateway.errors import GatewayError, UpstreamRelayed, upstream_fault
from gateway.upstream.redact import Secrets

MESSAGE_LIMIT = 1000  # characters of an upstream's message kept (after scrubbing)
EXCERPT_LIMIT = 200
_EXCERPT_HEAD = 4096  # bytes of an unexpected body looked at for its excerpt
_TAG = re.compile(rb"<[^>]*>")


class Origin:
    """Who failed: what a fault message names (an upstream's name, timeouts, URL and secrets)."""

    __slots__ = ("name", "connect_timeout", "timeout", "display_url", "secrets")

    def __init__(self, name: str, connect_timeout: float, timeout: float, display_url: str, secrets: Secrets) -> None:
        self.name = name
        self.connect_timeout = connect_timeout
        self.timeout = timeout
        self.display_url = display_url
        self.secrets = secrets


def fault(
    kind: int | str, origin: Origin, detail: str = "", model_name: str = "", headers: dict[str, str] | None = None
) -> GatewayError:
    """The row's error, with `detail` (upstream text) scrubbed and only then cut short."""
    return upstream_fault(
        kind,
        upstream=origin.name,
        detail=origin.secrets.clip(detail, MESSAGE_LIMIT),
        model=model_name,
        timeout=origin.connect_timeout if kind == "connect_timeout" else origin.timeout,
        base_url=origin.display_url,
        headers=headers,
    )


def transport_fault(exc: BaseException, origin: Origin, *, answering: bool) -> GatewayError:
    """An aiohttp failure; `answering`: the status line had arrived (the body was being read)."""
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return fault("connect_timeout", origin)
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return fault("idle" if answering else "timeout", origin)
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return fault("dns", origin, str(exc.os_error) or str(exc))
    if isinstance(exc, aiohttp.ClientSSLError):
        return fault("tls", origin, str(getattr(exc, "os_error", "") or exc))
    if isinstance(exc, aiohttp.ClientConnectorError):
        if isinstance(exc.os_error, ConnectionRefusedError):
            return fault("refused", origin)
        return fault("connect", origin, str(exc.os_error) or str(exc) or "connection error")
    if isinstance(exc, aiohttp.ClientPayloadError) and not _is_cut(exc):
        return fault("transport", origin, str(exc) or type(exc).__name__)
    if isinstance(exc, (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError, aiohttp.ClientPayloadError)):
        return fault("cut" if answering else "no_answer", origin)
    if isinstance(exc, aiohttp.ClientResponseError):  # a status line or headers aiohttp cannot parse
        return fault("no_answer", origin) if not answering else fault("transport", origin, exc.message)
    return fault("transport", origin, str(exc) or type(exc).__name__)


def _is_cut(exc: aiohttp.ClientPayloadError) -> bool:
    """A body that stopped short (the connection went), not one that could not be decoded."""
    cause = exc.__cause__ or exc.__context__
    text = str(exc).lower()
    return "not completed" in text or "connection" in text or isinstance(cause, (ConnectionError, aiohttp.ServerDisconnectedError))


def error_data(content: bytes) -> object:
    """An error body as the OpenAI SDK reads it: the inner `error` object of JSON, else the text."""
    text = content.decode("utf-8", errors="replace").strip()
    try:
        body: object = orjson.loads(text)
    except orjson.JSONDecodeError:
        return text
    return body.get("error", body) if isinstance(body, dict) else body


def status_fault(status: int, content: bytes, headers: Mapping[str, str], origin: Origin, model_name: str) -> GatewayError:
    """An upstream error status; 401 and 403 rows never quote the upstream (it may echo the key)."""
    return _status_fault(status, error_data(content), headers, origin, model_name)


def _status_fault(status: int, data: object, headers: Mapping[str, str], origin: Origin, model_name: str) -> GatewayError:
    message = message_of(data)
    kind: int | str = status
    if status == 404:
        if _is_model_not_found(data, message):
            kind = "model_not_found"
        message = message or "not found"
    return fault(kind, origin, message, model_name, retry_after(headers, origin.secrets))


def relayed_fault(status: int, content: bytes, headers: Mapping[str, str], origin: Origin, model_name: str) -> GatewayError:
    """`/v1`: the upstream's OpenAI error object (whatever else it holds too), every field scrubbed.

    Credential failures still become the 502 rows: the upstream's text may quote the key.
    """
    if status in (401, 403):
        return status_fault(status, content, headers, origin, model_name)
    data = error_data(content)
    secrets = origin.secrets
    error: dict[str, object] = secrets.scrub_json(data) if isinstance(data, dict) else {}
    message = message_of(data) or f"upstream '{origin.name}' answered {status}"
    error["message"] = secrets.clip(message, MESSAGE_LIMIT)
    return UpstreamRelayed(error, status_code=status, headers=retry_after(headers, secrets))


def not_event_stream(body: bytes, headers: Mapping[str, str], origin: Origin, model_name: str) -> GatewayError:
    """A streaming request answered with something else: its error object, or an excerpt."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        parsed = None
    if isinstance(parsed, dict) and parsed.get("error"):
        error = parsed["error"]
        code = error.get("code") if isinstance(error, dict) else None
        if isinstance(code, int) and 400 <= code <= 599:
            return _status_fault(code, error, headers, origin, model_name)
        return fault("error_event", origin, message_of(parsed))
    return fault("not_event_stream", origin, excerpt(body, origin.secrets))


def retry_after(headers: Mapping[str, str], secrets: Secrets) -> dict[str, str] | None:
    """The upstream's Retry-After, to pass on (an upstream's header value is scrubbed like its text)."""
    value = headers.get("retry-after") or headers.get("Retry-After")
    return {"Retry-After": secrets.scrub(value)} if value else None


def excerpt(content: bytes, secrets: Secrets) -> str:
    """A short, readable excerpt of a body that should have been JSON or SSE (tags dropped).

    Scrubbed before anything is cut or dropped (a tag stripped out of a secret would hide it
    from the scrub), and again once it is short.
    """
    if not content.strip():
        return "an empty body"
    head = secrets.scrub_bytes(content[:_EXCERPT_HEAD])
    text = b" ".join(_TAG.sub(b" ", head).split()).decode("utf-8", errors="replace")
    return repr(secrets.clip(text, EXCERPT_LIMIT, "..."))


def message_of(body: object) -> str:
    """The upstream's own message, whole: `{"error": {"message": ...}}`, `{"message": ...}`, or the text.

    Whoever uses it scrubs it before cutting it short (`Secrets.clip`).
    """
    if isinstance(body, dict):
        error: Any = body.get("error", body)
        if isinstance(error, dict):
            message = error.get("message") or error.get("detail")
            if message:
                return str(message)
        elif isinstance(error, str) and error:
            return error
        detail = body.get("detail")
        if detail:
            return str(detail)
        return ""
    if isinstance(body, str):
        # A text or HTML error page (a proxy in front of the upstream): its words, not its markup.
        return " ".join(_TAG.sub(b" ", body.encode()).decode(errors="replace").split())
    return ""


def _is_model_not_found(body: object, message: str) -> bool:
    error = body.get("error", body) if isinstance(body, dict) else None
    if isinstance(error, dict) and error.get("code") == "model_not_found":
        return True
    return "model" in message.lower()
