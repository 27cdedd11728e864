"""Tracing with structlog: a request id per request and one summary line per request.

`configure_logging` runs once per process. A `RequestRecord` holds what the one `request` line
of a request says; the front layer (`http/front.py`) makes it, binds `request_id` and writes the
line when the response is over, disconnects included; the handler and the stream fill it in.
Nothing is logged per chunk. Prompts, completions and keys are never fields of any line, except
that `GATEWAY_LOG_CONTENT=true` (a debugging switch, off by default) adds `ContentLogMiddleware`:
one `content` line per request with both bodies.

Every field is bounded (`bound_fields`): a client's 16 MB model name is 256 characters and a
marker in the log, not 16 MB.

Whatever a line holds, every string in it (an exception's text included) is scrubbed of the
route map's secrets (`Redactor`) before fields are cut and rendered, so no line written
through structlog can carry one; Granian's own lines (an unhandled exception's traceback) go
through `RedactingFilter` on its handlers.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import Any

import orjson
import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.upstream.redact import Secrets

log = structlog.get_logger()

# True when the level is `debug` (set once by `configure_logging`): the stage events are behind
# `if logs.DEBUG:`, so at `info` they cost one attribute lookup and build nothing.
DEBUG = False
# True when `info` lines are written (the `request` summary line): at `warning` and above its
# fields are not even gathered (front.py), unless tracing needs them.
INFO = True

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
_NUMBERS = {int, float, bool, type(None)}
_SERVER_LOGGER = "_granian"  # Granian's stdlib logger (its handlers are set up before the app)
# Longest string field in any line (names: 256, a traceback: 16 KiB), and longest list field.
_FIELD_CHARS = 1024
_FIELD_CHARS_BY_NAME = {"model": 256, "upstream_model": 256, "path": 256, "exception": 16 * 1024}
_FIELD_ITEMS = 32


def configure_logging(log_format: str, level: str, secrets: Callable[[], Secrets] | None = None) -> None:
    """JSON lines when not on a terminal (or when asked), readable console lines otherwise.

    `secrets` gives the secrets in force (they change with a reload): every line is scrubbed of them.
    """
    global DEBUG, INFO, _request_log
    DEBUG = level == "debug"
    INFO = _LEVELS[level] <= logging.INFO
    use_json = log_format == "json" or (log_format == "auto" and not sys.stderr.isatty())
    processors: list[Any] = [structlog.contextvars.merge_contextvars]
    if use_json:
        processors.append(structlog.processors.format_exc_info)  # before the scrub: a traceback is text too
    if secrets is not None:
        processors.append(Redactor(secrets))  # before the level and time stamp, which hold no secret
    # Cut long fields after the scrub: a secret straddling a cut would survive it otherwise.
    processors += [structlog.processors.add_log_level, structlog.processors.TimeStamper(fmt="iso", utc=True), bound_fields]
    if use_json:
        processors.append(structlog.processors.JSONRenderer(serializer=orjson.dumps))
        factory: Any = structlog.BytesLoggerFactory(sys.stderr.buffer)
    else:
        processors.append(structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty()))
        factory = structlog.PrintLoggerFactory(sys.stderr)
    if secrets is not None:
        for handler in logging.getLogger(_SERVER_LOGGER).handlers:
            if not any(isinstance(existing, RedactingFilter) for existing in handler.filters):
                handler.addFilter(RedactingFilter(secrets))
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )
    _request_log = None  # bound again, to this configuration, at its next use


_request_log: Any = None


def request_log() -> Any:
    """The logger of the `request` summary line, bound once per configuration: a module's
    `structlog.get_logger()` is a lazy proxy that builds a bound logger at every call (about 3 µs)."""
    global _request_log
    if _request_log is None:
        _request_log = structlog.get_logger().bind()
    return _request_log


def bound_fields(logger: Any, method_name: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """A structlog processor: cut long strings (with a marker saying how much) and long lists.

    Fields hold what clients send (model names, paths, error messages that quote them); the
    `content` line of `GATEWAY_LOG_CONTENT` is exempt, its middleware bounds it (64 KiB a body).
    """
    if event_dict.get("event") == "content":
        return event_dict
    for key, value in event_dict.items():
        if type(value) is str:
            if len(value) > 256:
                event_dict[key] = _cut(value, _FIELD_CHARS_BY_NAME.get(key, _FIELD_CHARS))
        elif type(value) is list:
            items = [_cut(item, _FIELD_CHARS) if type(item) is str else item for item in value[:_FIELD_ITEMS]]
            if len(value) > _FIELD_ITEMS:
                items.append(f"...[{len(value) - _FIELD_ITEMS} more]")
            event_dict[key] = items
    return event_dict


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"{text[:limit]}...[{len(text) - limit} more chars]"


class Redactor:
    """A structlog processor: every string of a line (top level, or in lists and dicts) scrubbed.

    Error text is scrubbed where it is made; this is the net under everything else a line may
    carry. A line of plain strings and numbers (and lists of numbers) costs one regex scan (in C,
    finding nothing) of its strings joined: about 1 µs for the `request` line, where it took 7 µs
    when its list of attempt times sent it down the field-by-field path.
    """

    __slots__ = ("_secrets",)

    def __init__(self, secrets: Callable[[], Secrets]) -> None:
        self._secrets = secrets

    def __call__(self, logger: Any, method: str, event: dict[str, Any]) -> dict[str, Any]:
        secrets = self._secrets()
        strings = []
        for value in event.values():
            kind = type(value)
            if kind is str:
                strings.append(value)
            elif kind not in _NUMBERS and not (kind is list and all(type(item) in _NUMBERS for item in value)):
                break  # a list of numbers (the request line's `upstream_attempts_ms`) has nothing to mask
        else:
            if not secrets.mentions("\0".join(strings)):  # the usual line: nothing to mask
                return event
        for name, value in event.items():
            if isinstance(value, str):
                event[name] = secrets.scrub(value)
            elif isinstance(value, dict | list | tuple):
                event[name] = secrets.scrub_json(value)
        return event


class RedactingFilter(logging.Filter):
    """A stdlib handler filter: the record's message, traceback and stack scrubbed (formatted here)."""

    def __init__(self, secrets: Callable[[], Secrets]) -> None:
        super().__init__()
        self._secrets = secrets

    def filter(self, record: logging.LogRecord) -> bool:
        secrets = self._secrets()
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # arguments that do not fit the format: both shown as they are
            message = f"{record.msg} {record.args!r}"
        record.msg, record.args = secrets.scrub(message), None
        if record.exc_info:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
        if record.exc_text:
            record.exc_text = secrets.scrub(record.exc_text)
        if record.stack_info:
            record.stack_info = secrets.scrub(record.stack_info)
        return True


class RequestRecord:
    """What the summary line of one request says; filled in as the request goes.

    It is the one source of a request's stage times (the log line, the spans of `gateway.otel`,
    and whatever else reads the request at its end). The marks are `time.perf_counter_ns()`
    instants, 0 until reached, each set once where its stage ends:

        started        the front layer took the request (front.py)
        validated      the body was read and validated, routing begins (context.route)
        translated     routed, and the first attempt's upstream request built (exchange.py)
        answered       the upstream's first byte (a stream) or whole answer (JSON) of the attempt
                       that served the request (exchange.py)
        streamed       the response's last byte was handed to the server (streaming.py; streams only)

    `attempt_ns` holds each upstream attempt's wait (call to first byte, answer or failure), in
    order. `fields()` turns them into the summary line's milliseconds (see `stage_fields`).
    """

    __slots__ = (
        "request_id", "method", "path", "started", "status", "model", "upstream", "upstream_model",
        "first_byte", "chunks", "prompt_tokens", "completion_tokens", "outcome", "error",
        "validated", "translated", "answered", "streamed", "attempt_ns", "done_reason", "span",
        "first_byte", "chunks", "prompt_tokens", "completion_tokens", "outcome", "error", "route",
    )

    def __init__(self, request_id: str, method: str, path: str) -> None:
        self.request_id = request_id
        self.method = method
        self.path = path
        self.started = time.perf_counter_ns()
        self.status = 0
        self.model: str | None = None
        self.upstream: str | None = None
        self.upstream_model: str | None = None
        self.first_byte = 0
        self.chunks = 0
        self.prompt_tokens: int | None = None
        self.completion_tokens: int | None = None
        self.outcome = "ok"
        self.error: str | None = None
        self.validated = 0
        self.translated = 0
        self.answered = 0
        self.streamed = 0
        self.attempt_ns: list[int] | None = None
        self.done_reason: str | None = None
        self.span: Any = None  # the request's server span (gateway.otel), None without tracing
        # For the metrics (metrics.py): the name of the routed entry (bounded, unlike `model`).
        self.route: str | None = None

    def tokens(self, prompt: int, completion: int) -> None:
        self.prompt_tokens = prompt
        self.completion_tokens = completion

    def fail(self, error: Exception, *, after_first_byte: bool = False) -> None:
        self.outcome = "error_after_first_byte" if after_first_byte else "error"
        self.error = getattr(error, "message", None) or type(error).__name__

    def attempted(self, began: int) -> int:
        """One upstream attempt, called at `began`, is over (answered or failed): its wait in ns."""
        now = time.perf_counter_ns()
        waits = self.attempt_ns
        if waits is None:
            waits = self.attempt_ns = []
        waits.append(now - began)
        return now

    def stage(self) -> str:
        """The stage the request was in last: body, route, upstream or stream."""
        if self.answered:
            return "stream"
        if self.translated:
            return "upstream"
        return "route" if self.validated else "body"

    def fields(self) -> dict[str, Any]:
        now = time.perf_counter_ns()
        fields: dict[str, Any] = {
            "method": self.method,
            "path": self.path,
            "status": self.status,
            "duration_ms": round((now - self.started) / 1e6, 3),
            "outcome": self.outcome,
        }
        if self.first_byte:
            fields["first_byte_ms"] = round((self.first_byte - self.started) / 1e6, 3)
        for name in ("model", "upstream", "upstream_model", "prompt_tokens", "completion_tokens", "error"):
            value = getattr(self, name)
            if value is not None:
                fields[name] = value
        if self.chunks:
            fields["chunks"] = self.chunks
        if self.validated:
            self.stage_fields(fields, now)
        return fields

    def stage_fields(self, fields: dict[str, Any], now: int) -> None:
        """The stage times of a request that got past its body (an endpoint with a model).

            body_ms        reading and validating the body (from the front layer's start)
            route_ms       routing and translating the request for the upstream
            upstream_ms    from the first upstream call to the answer that served: every
                           attempt, and the waits and fallbacks between them
            stream_ms      writing the response: the stream to its end, or the JSON body
            attempts, upstream_attempts_ms   how many upstream calls, and each one's wait (call
                           to first byte, whole answer, or failure)
            gateway_ms     the gateway's own share: the total less the upstream attempts' waits
                           and, for a stream, less the stream (paced by the upstream's tokens)

        A stage ends where the next one begins, and the last one reached ends now: body_ms +
        route_ms + upstream_ms + stream_ms is duration_ms, to rounding. Stages not reached are left
        out (a 404 model has body_ms and route_ms only).
        """
        validated, translated, answered = self.validated, self.translated, self.answered
        route_end = translated or answered or now
        fields["body_ms"] = round((validated - self.started) / 1e6, 3)
        fields["route_ms"] = round((route_end - validated) / 1e6, 3)
        if translated:
            fields["upstream_ms"] = round(((answered or now) - translated) / 1e6, 3)
        if answered:
            fields["stream_ms"] = round((now - answered) / 1e6, 3)
        waits = self.attempt_ns
        if waits:
            fields["attempts"] = len(waits)
            fields["upstream_attempts_ms"] = [round(wait / 1e6, 3) for wait in waits]
        fields["gateway_ms"] = round((now - self.started - self.upstream_wait_ns(now)) / 1e6, 3)

    def upstream_wait_ns(self, now: int) -> int:
        """The time spent waiting on the upstream (the attempts' waits and, for a stream, the
        stream, paced by the upstream's tokens): what `gateway_ms` and the overhead metric leave out."""
        waited = sum(self.attempt_ns) if self.attempt_ns else 0
        if self.streamed and self.answered:
            waited += now - self.answered
        return waited


class ContentLogMiddleware:
    """Only with `GATEWAY_LOG_CONTENT=true` (off by default): one `content` line per request with
    the request body and the response body as sent (each cut at `limit` bytes). For debugging:
    these are the users' prompts and completions. Never installed otherwise, so it costs nothing."""

    def __init__(self, app: ASGIApp, limit: int = 64 * 1024) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = bytearray()
        response = bytearray()
        limit = self.limit

        async def receive_logged() -> Message:
            message = await receive()
            if message["type"] == "http.request" and len(request) < limit:
                request.extend(message.get("body", b"")[: limit - len(request)])
            return message

        async def send_logged(message: Message) -> None:
            if message["type"] == "http.response.body" and len(response) < limit:
                response.extend(message.get("body", b"")[: limit - len(response)])
            await send(message)

        try:
            await self.app(scope, receive_logged, send_logged)
        finally:
            log.info(
                "content",
                request=request.decode("utf-8", errors="replace"),
                response=response.decode("utf-8", errors="replace"),
            )
