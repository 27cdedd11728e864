"""A stream's first line does not wait for the rest of a large first read (issue 10's first-line target).

A fast upstream can write hundreds of events in one go; they reach the gateway as one network
read. `EventStream.reads()` hands over one HTTP chunk (one event, as servers send them) at a
time until its caller says the first chunk has left (`started`, or after a few chunks), and
whole reads from then on.
Against the loopback fake upstream, in-process, with aiohttp as the gateway uses it.
"""

from __future__ import annotations

import asyncio

from gateway.routing.schema import UpstreamConfig
from gateway.upstream.calls import _EAGER_CHUNKS, open_events
from gateway.upstream.clients import UpstreamClient
from gateway.upstream.redact import Secrets
from tests.fake_upstream import FakeUpstream, Reply, chat_chunks

PIECES = [f"piece {i} " for i in range(200)]


async def _reads_of_a_fast_stream(upstream: FakeUpstream, start_after: int) -> tuple[list[int], bool]:
    """The number of events in each read; `started` is set after `start_after` reads."""
    upstream.enqueue("/v1/chat/completions", Reply.sse(chat_chunks(PIECES)))
    client = UpstreamClient("fake", UpstreamConfig(base_url=upstream.url, api_key="k"), Secrets())
    try:
        events = await open_events(client, "/chat/completions", b'{"stream": true}', "m")
        try:
            await asyncio.sleep(0.3)  # the whole answer is read and parsed: one read's worth, buffered
            counts: list[int] = []
            async for read in events.reads():
                counts.append(len(list(read)))
                if len(counts) == start_after:
                    events.started = True
            return counts, events.saw_done
        finally:
            events.close()
    finally:
        await client.aclose()


def test_before_the_first_chunk_leaves_reads_are_one_event_each(upstream: FakeUpstream) -> None:
    counts, done = asyncio.run(_reads_of_a_fast_stream(upstream, start_after=2))
    total = len(chat_chunks(PIECES))  # role, pieces, finish, usage ([DONE] is not an event)
    assert counts[:2] == [1, 1]
    assert counts[2] == total - 2  # everything else, in one read
    assert sum(counts) == total and done


def test_a_first_line_that_waits_for_many_events_goes_back_to_whole_reads(upstream: FakeUpstream) -> None:
    """Tool calls collected before the first line: after `_EAGER_CHUNKS` one-event reads, whole reads."""
    counts, done = asyncio.run(_reads_of_a_fast_stream(upstream, start_after=0))
    total = len(chat_chunks(PIECES))
    assert counts == [1] * _EAGER_CHUNKS + [total - _EAGER_CHUNKS] and done
