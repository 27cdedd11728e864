"""The tokens of a relayed answer (`/v1` passthroughs), read from its own `usage`, cheaply.

The relayed bytes are never changed; this only looks at them, for the request's record (its
summary line, `gateway_tokens_total`, the key's `tpm`):

    body_usage(body)   a whole JSON answer: its top-level `usage`, parsed only when the bytes
                       contain `"usage"` (OpenAI's prompt_tokens/completion_tokens, embeddings'
                       total_tokens, Anthropic's and Responses' input_tokens/output_tokens)
    StreamUsage        an event stream, read by read: a read is looked into only when its bytes
                       contain `"usage"` (or straddle it, or finish a line that did); `"usage": null` is skipped
                       unparsed. OpenAI's last chunk (`include_usage`), Anthropic's
                       message_start/message_delta, Responses' response.completed. What is still
                       missing at the end (no usage sent, or the stream cut short before it) is
                       estimated: the prompt as a quarter of the request body's bytes, the
                       completion as one token per `data:` event relayed (at least that, for a
                       stream cut short). Lines cut across
                       reads are joined (the unfinished line's reads are held, unjoined).
"""

from __future__ import annotations

from typing import Any

import orjson

_USAGE = b'"usage"'
_DATA = b"data:"
_NESTED = ("message", "response")  # Anthropic's message_start, Responses' response.* events
_PROMPT = ("prompt_tokens", "input_tokens")
_COMPLETION = ("completion_tokens", "output_tokens")


def body_usage(body: bytes) -> tuple[int | None, int | None]:
    """(prompt, completion) from a JSON answer's top-level `usage`; None where it says nothing.

    Only the `usage` object is parsed when it can be cut out (its last `"usage": {`, up to the
    first `}` that closes a valid object): an embeddings answer is not parsed whole for it."""
    at = body.rfind(_USAGE)
    if at < 0:
        return None, None
    start = body.find(b"{", at, at + 16)
    if start >= 0 and not body[at + len(_USAGE):start].strip(b" \t\r\n:"):
        end = body.find(b"}", start)
        for _ in range(8):  # nested details ({"cached_tokens": 0}) close before the object does
            if end < 0:
                break
            try:
                return _counts(orjson.loads(body[start:end + 1]))
            except orjson.JSONDecodeError:
                end = body.find(b"}", end + 1)
    try:
        answer = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None, None
    return _counts(answer.get("usage")) if isinstance(answer, dict) else (None, None)


class StreamUsage:
    """Fed every read of a relayed event stream; `tokens()` once it is over."""

    __slots__ = ("_line", "_marked", "_events", "_prompt", "_completion", "_prompt_estimate")

    def __init__(self, prompt_estimate: int = 0) -> None:
        self._line: list[bytes] = []  # the reads (or the tail of one) of the unfinished line
        self._marked = False
        self._events = 0
        self._prompt: int | None = None
        self._completion: int | None = None
        self._prompt_estimate = prompt_estimate

    def feed(self, data: bytes) -> None:
        self._events += data.count(_DATA)
        held = self._line
        if not self._marked:
            at = data.find(_USAGE)
            if at >= 0 and not held and data.endswith(b"\n") and _is_null(data, at) and data.count(_USAGE) == 1:
                return  # OpenAI's `"usage": null` in every chunk but the last with include_usage
            if not (at >= 0 or (held and _USAGE in _tail(held) + data[:6])):
                end = data.rfind(b"\n")  # keep only the unfinished line (none, mostly: reads end events)
                if end < 0:
                    held.append(data)
                elif end + 1 < len(data):
                    self._line = [data[end + 1:]]
                elif held:
                    self._line = []
                return
        held.append(data)
        if b"\n" not in data:  # the line with `"usage"` goes on in the next read
            self._marked = True
            return
        joined = b"".join(held)
        end = joined.rfind(b"\n")
        rest = joined[end + 1:]
        for line in joined[:end].split(b"\n"):
            if _USAGE in line:
                self._line_usage(line)
        self._marked = _USAGE in rest
        self._line = [rest] if rest else []

    def _line_usage(self, line: bytes) -> None:
        if _is_null(line, line.find(_USAGE)):
            return  # OpenAI's every chunk but the last with include_usage; Responses' early events
        payload = line.strip()
        if not payload.startswith(_DATA):
            return
        try:
            event = orjson.loads(payload[len(_DATA):])
        except orjson.JSONDecodeError:
            return
        if not isinstance(event, dict):
            return
        usage = event.get("usage")
        for name in _NESTED:
            if usage is None and isinstance(nested := event.get(name), dict):
                usage = nested.get("usage")
        prompt, completion = _counts(usage)
        if prompt is not None:
            self._prompt = prompt
        if completion is not None:
            self._completion = completion

    def tokens(self, complete: bool) -> tuple[int, int] | None:
        """(prompt, completion): the upstream's usage, each part it did not send estimated (of a
        stream cut short, the completion is at least the estimate: Anthropic's message_start
        says 1); None for a stream that relayed no event and no usage (nothing used)."""
        if self._prompt is None and self._completion is None and not self._events:
            return None
        prompt = self._prompt if self._prompt is not None else self._prompt_estimate
        if self._completion is None:
            return prompt, self._events
        return prompt, self._completion if complete else max(self._completion, self._events)


def _is_null(data: bytes, at: int) -> bool:
    """`"usage"` at `at` is followed by `: null`."""
    return data[at + len(_USAGE):at + len(_USAGE) + 8].lstrip(b": ").startswith(b"null")


def _tail(held: list[bytes]) -> bytes:
    """The held line's last 6 bytes: where a `"usage"` cut by the next read begins."""
    tail = held[-1][-6:]
    return tail if len(tail) == 6 or len(held) == 1 else b"".join(held[-6:])[-6:]


def _counts(usage: Any) -> tuple[int | None, int | None]:
    if not isinstance(usage, dict):
        return None, None
    prompt = _first_int(usage, _PROMPT)
    completion = _first_int(usage, _COMPLETION)
    if prompt is None and completion is None and isinstance(total := usage.get("total_tokens"), int):
        return total, 0
    if prompt is not None and completion is None and "total_tokens" in usage:
        completion = 0  # embeddings: prompt_tokens and total_tokens, nothing generated
    return prompt, completion


def _first_int(usage: dict[str, Any], names: tuple[str, ...]) -> int | None:
    for name in names:
        value = usage.get(name)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None
