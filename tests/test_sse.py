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


# No CR anywhere: whole reads take the decoder's block path, and a read that ends inside an
# event sends the next one line by line to that event's end, then back to blocks.
PLAIN = (b': keep-alive\n\ndata: {"a": 1}\n\ndata:{"b": 2}\n\n\n\ndata: {"c":\ndata: 3}\n\n'
         b'event: x\nid: 7\ndata: {"d": 4}\n\ndata: {"e": 5}\n\ndata: [DONE]\n\ndata: {"after": 1}\n\n')
PLAIN_EXPECTED = [{"a": 1}, {"b": 2}, {"c": 3}, {"d": 4}, {"e": 5}]


def test_events_of_plain_reads_split_once_anywhere() -> None:
    for cut in range(len(PLAIN) + 1):
        decoder = SSEDecoder()
        events = decoder.feed(PLAIN[:cut])
        if not decoder.done:
            events += decoder.feed(PLAIN[cut:])
        assert events == PLAIN_EXPECTED and decoder.done, cut
        assert decoder.events_seen == len(PLAIN_EXPECTED)


def test_an_oversized_single_line_event_is_refused_in_a_whole_read() -> None:
    with pytest.raises(MalformedEvent, match="larger than 16 bytes"):
        SSEDecoder(max_event_bytes=16).feed(b'data: {"text": "' + b"x" * 32 + b'"}\n\n')
