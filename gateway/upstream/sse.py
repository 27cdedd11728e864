"""An incremental Server-Sent Events decoder for OpenAI-style streams.

Bytes arrive in arbitrary network reads; events end at a blank line; `data:` lines of one event
are joined with newlines; comment lines (`: keep-alive`) and other fields are skipped. The
decoder yields the decoded JSON of each event and notes the `[DONE]` sentinel.

Buffers start empty and grow only as far as one event needs: a line split across reads is kept
as a list of its parts and joined once when its newline arrives (so a long event costs linear
time, whatever the size of the reads), and an event over `max_event_bytes` is refused rather
than buffered without end.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson

# Ollama's Go client reads NDJSON lines into an 8 MB buffer: an event beyond that is unusable.
MAX_EVENT_BYTES = 8 * 1024 * 1024


class MalformedEvent(ValueError):
    """An event's data is not a JSON object, or is too large."""


class SSEDecoder:
    __slots__ = ("_parts", "_partial", "_data", "_data_size", "_failure", "done", "events_seen", "max_event_bytes")

    def __init__(self, max_event_bytes: int = MAX_EVENT_BYTES) -> None:
        self._parts: list[bytes] = []  # the unfinished last line, as received
        self._partial = 0
        self._data: list[bytes] = []  # the data lines of the current event
        self._data_size = 0
        self.done = False
        self.events_seen = 0
        self.max_event_bytes = max_event_bytes
        # A malformed event after good ones in the same read: the good ones are returned first,
        # and the failure is raised by the next call.
        self._failure: MalformedEvent | None = None

    def feed(self, chunk: bytes) -> list[dict[str, Any]]:
        """The complete events in `chunk` plus what was buffered; keeps a trailing partial line.

        A malformed event after good ones: the good ones are returned, the next call raises.
        """
        events: list[dict[str, Any]] = []
        try:
            events.extend(self.events(chunk))
        except MalformedEvent as exc:
            if not events:
                raise
            self._failure = exc
        return events

    def events(self, chunk: bytes) -> Iterator[dict[str, Any]]:
        """As `feed`, lazily: each event is decoded when it is asked for, so the first event of a
        large read can be passed on before the rest of the read is parsed. A malformed event
        raises where it stands; iterate to the end (or stop on an error) before the next call."""
        if self._failure is not None:
            raise self._failure
        if self.done:
            return
        if b"\r" in chunk:
            yield from self._events_of(self._lines(chunk))
            return
        if self._parts or self._data:  # an event begun in the last read: line by line to its end
            end = chunk.find(b"\n\n")
            if end < 0:
                yield from self._events_of(self._lines(chunk))
                return
            yield from self._events_of(self._lines(chunk[: end + 2]))
            if self.done:
                return
            chunk = chunk[end + 2:]
        # The usual read: whole `data: {...}` events, each one line and a blank one, no CR.
        # Each is decoded straight from its block; anything else goes line by line.
        blocks = chunk.split(b"\n\n")
        tail = blocks.pop()
        for block in blocks:
            if block.startswith(b"data: ") and b"\n" not in block:
                if len(block) - 5 > self.max_event_bytes:
                    raise self._too_large()
                event = self._decoded(block[6:])
            else:
                event = None
                for event in self._events_of([*block.split(b"\n"), b""]):
                    pass
            if event is not None:
                yield event
            if self.done:
                return  # nothing after [DONE] counts, even within the same read
        if tail:
            yield from self._events_of(self._lines(tail))

    def _events_of(self, lines: list[bytes]) -> Iterator[dict[str, Any]]:
        """The events that complete lines end, line by line (CR, several data lines, comments)."""
        for line in lines:
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line:
                if self._data:
                    event = self._take()
                    if event is not None:
                        yield event
                    if self.done:
                        return  # nothing after [DONE] counts, even within the same read
            elif line.startswith(b"data:"):
                value = line[5:]
                value = value[1:] if value.startswith(b" ") else value
                self._data.append(value)
                self._data_size += len(value) + 1
                if self._data_size > self.max_event_bytes:
                    raise self._too_large()

    def _lines(self, chunk: bytes) -> list[bytes]:
        """The complete lines that `chunk` ends (with what was buffered); keeps the partial last one."""
        if b"\n" not in chunk:
            if chunk:
                self._parts.append(chunk)
                self._partial += len(chunk)
                if self._partial + self._data_size > self.max_event_bytes:
                    raise self._too_large()
            return []
        if self._parts:
            self._parts.append(chunk)
            chunk = b"".join(self._parts)
            self._parts = []
        lines = chunk.split(b"\n")
        tail = lines.pop()
        self._partial = len(tail)
        if tail:
            self._parts.append(tail)
        return lines

    def close(self) -> list[dict[str, Any]]:
        """Whatever complete event the stream ended with but did not terminate with a blank line."""
        if self._failure is not None:
            raise self._failure
        events: list[dict[str, Any]] = []
        if self._parts:
            events.extend(self.feed(b"\n"))
        if self._data:
            event = self._take()
            if event is not None:
                events.append(event)
        return events

    def _take(self) -> dict[str, Any] | None:
        """The event whose data lines are buffered (None for `[DONE]`)."""
        data = self._data[0] if len(self._data) == 1 else b"\n".join(self._data)
        self._data = []
        self._data_size = 0
        return self._decoded(data)

    def _decoded(self, data: bytes) -> dict[str, Any] | None:
        """One event's data as a JSON object (None for `[DONE]`)."""
        if data == b"[DONE]":
            self.done = True
            return None
        try:
            event = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            # The parser's position only: the event's text may hold completion text (never logged).
            raise MalformedEvent(str(exc)) from exc
        if type(event) is not dict:
            raise MalformedEvent(f"an event that is a JSON {type(event).__name__}, not an object")
        self.events_seen += 1
        return event

    def _too_large(self) -> MalformedEvent:
        return MalformedEvent(f"an event larger than {self.max_event_bytes} bytes")

