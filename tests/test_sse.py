"""The SSE decoder: events split anywhere across network reads decode the same."""

from __future__ import annotations

import pytest

from gateway.upstream.sse import MalformedEvent, SSEDecoder

STREAM = b': keep-alive\n\ndata: {"a": 1}\n\ndata: {"b":\ndata: 2}\r\n\r\nevent: x\ndata: {"c": 3}\n\ndata: [DONE]\n\n'
EXPECTED = [{"a": 1}, {"b": 2}, {"c": 3}]


@pytest.mark.parametrize("size", [1, 2, 3, 5, 8, 13, len(STREAM)])
def test_events_split_across_reads(size: int) -> None:
    decoder = SSEDecoder()
    events = [event for start in range(0, len(STREAM), size) for event in decoder.feed(STREAM[start : start + size])]
    assert events == EXPECTED and decoder.done


def test_a_last_event_without_blank_line_is_kept() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b'data: {"a": 1}') == []
    assert decoder.close() == [{"a": 1}]
    assert not decoder.done


def test_malformed_event_raises() -> None:
    with pytest.raises(MalformedEvent):
        SSEDecoder().feed(b"data: {oops\n\n")
