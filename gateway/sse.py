"""An incremental Server-Sent Events decoder for OpenAI-style streams.

Bytes arrive in arbitrary network reads; events end at a blank line; `data:` lines of one event
are joined with newlines; comment lines (`: keep-alive`) and other fields are skipped. The
decoder yields the decoded JSON of each event and notes the `[DONE]` sentinel.
"""

from __future__ import annotations

from typing import Any

import orjson


class MalformedEvent(ValueError):
    """An event's data is not JSON."""


class SSEDecoder:
    __slots__ = ("_buffer", "_data", "done")

    def __init__(self) -> None:
        self._buffer = b""
        self._data: list[bytes] = []
        self.done = False

    def feed(self, chunk: bytes) -> list[dict[str, Any]]:
        """The complete events in `chunk` plus what was buffered; keeps a trailing partial line."""
        if self._buffer:
            chunk = self._buffer + chunk
        lines = chunk.split(b"\n")
        self._buffer = lines.pop()
        events: list[dict[str, Any]] = []
        for line in lines:
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line:
                if self._data:
                    self._dispatch(events)
            elif line.startswith(b"data:"):
                value = line[5:]
                self._data.append(value[1:] if value.startswith(b" ") else value)
        return events

    def close(self) -> list[dict[str, Any]]:
        """Whatever complete event the stream ended with but did not terminate with a blank line."""
        events: list[dict[str, Any]] = []
        if self._buffer:
            events.extend(self.feed(b"\n"))
        if self._data:
            self._dispatch(events)
        return events

    def _dispatch(self, events: list[dict[str, Any]]) -> None:
        data = self._data[0] if len(self._data) == 1 else b"\n".join(self._data)
        self._data = []
        if data == b"[DONE]":
            self.done = True
            return
        try:
            event = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise MalformedEvent(f"upstream sent a malformed stream event: {exc}") from exc
        if isinstance(event, dict):
            events.append(event)
        else:
            raise MalformedEvent("upstream sent a stream event that is not a JSON object")
