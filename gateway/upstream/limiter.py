"""Per-worker limits on what one request may cost: upstream concurrency and JSON nesting.

`UpstreamLimiter` lets at most `GATEWAY_MAX_CONCURRENT_UPSTREAM` upstream requests run at once in
a worker (a stream holds its slot until it ends); the next ones wait up to
`GATEWAY_QUEUE_TIMEOUT` seconds for a slot and then get Ollama's 503 "server busy". The body size
limit, the disconnect watcher and the shutdown drain are in `guard.py`; header size and count
limits are Granian's (`cli.serve`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio

from gateway.errors import SERVER_BUSY, ServerBusy


class UpstreamLimiter:
    """A semaphore with a queue timeout; one acquire and one release per upstream request."""

    __slots__ = ("_semaphore", "limit", "queue_timeout")

    def __init__(self, limit: int, queue_timeout: float) -> None:
        self.limit = limit
        self.queue_timeout = queue_timeout
        self._semaphore = anyio.Semaphore(limit)

    @property
    def in_use(self) -> int:
        return self.limit - self._semaphore.value

    async def acquire(self) -> None:
        """Take a slot, waiting up to `queue_timeout`; ServerBusy (503) if none came."""
        semaphore = self._semaphore
        try:
            semaphore.acquire_nowait()
        except anyio.WouldBlock:
            acquired = False
            with anyio.move_on_after(self.queue_timeout):
                await semaphore.acquire()
                acquired = True
            if not acquired:
                raise ServerBusy(SERVER_BUSY) from None

    def release(self) -> None:
        self._semaphore.release()

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one upstream slot for the body of the `async with`."""
        await self.acquire()
        try:
            yield
        finally:
            self._semaphore.release()


def json_too_deep(value: Any, limit: int) -> bool:
    """True when objects and arrays nest more than `limit` levels (`{}` is one level).

    Checked on the parsed body, before validation: deeper JSON is no real request, and would
    overflow orjson's serializer (254 levels) or pydantic's recursion on the way upstream.
    """
    if not isinstance(value, (dict, list)):
        return False
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        children = node.values() if isinstance(node, dict) else node
        if depth > limit:
            return True
        for child in children:
            if isinstance(child, (dict, list)):
                stack.append((child, depth + 1))
    return False
