"""Per-worker limits on what one request may cost: upstream concurrency and what a body holds.

`UpstreamLimiter` lets at most `GATEWAY_MAX_CONCURRENT_UPSTREAM` upstream requests run at once in
a worker (a stream holds its slot until it ends); the next ones wait up to
`GATEWAY_QUEUE_TIMEOUT` seconds for a slot and then get Ollama's 503 "server busy". The body size
limit, the disconnect watcher and the shutdown drain are in `http/guard.py`; header size and count
limits are Granian's (`cli.serve`).

`check_body` bounds what a parsed body holds (`GATEWAY_MAX_MESSAGES`, `GATEWAY_MAX_INPUTS`,
`GATEWAY_MAX_JSON_ITEMS`, `GATEWAY_MAX_JSON_DEPTH`) before pydantic builds an object per item:
within the body size limit, a million tiny messages would otherwise take seconds and a gigabyte.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Literal

import anyio

from gateway.errors import SERVER_BUSY, BadRequest, PayloadTooLarge, ServerBusy
from gateway.settings import Settings


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


def check_body(body: dict[str, Any], settings: Settings) -> None:
    """Raise 413 for a body holding more than the limits allow, 400 for one nested too deep.

    The counts come first, from the lengths of the lists alone; the walk that follows stops at
    the first limit it passes, so a huge body costs no more than a body at the limit.
    """
    messages = body.get("messages")
    if isinstance(messages, list) and len(messages) > settings.max_messages:
        raise PayloadTooLarge(f"too many messages: {len(messages)} (the limit is {settings.max_messages})")
    inputs = body.get("input")
    if isinstance(inputs, list) and len(inputs) > settings.max_inputs:
        raise PayloadTooLarge(f"too many inputs: {len(inputs)} (the limit is {settings.max_inputs})")
    excess = json_excess(body, settings.max_json_depth, settings.max_json_items)
    if excess == "depth":
        raise BadRequest(f"request body nests JSON deeper than {settings.max_json_depth} levels")
    if excess == "items":
        raise PayloadTooLarge(f"request body holds more than {settings.max_json_items} JSON values")


def json_excess(value: Any, max_depth: int, max_items: int) -> Literal["depth", "items"] | None:
    """Which limit `value` passes first: objects and arrays nested more than `max_depth` levels
    (`{}` is one level), or more than `max_items` array elements and object members in all.

    Checked on the parsed body, before validation: deeper JSON is no real request, and would
    overflow orjson's serializer (254 levels) or pydantic's recursion on the way upstream.
    """
    if not isinstance(value, (dict, list)):
        return None
    # Exact types (orjson makes no subclasses) and bound methods: this runs on every request.
    stack: list[tuple[Any, int]] = [(value, 1)]
    pop, push = stack.pop, stack.append
    items = 0
    while stack:
        node, depth = pop()
        if depth > max_depth:
            return "depth"
        items += len(node)
        if items > max_items:
            return "items"
        deeper = depth + 1
        for child in node.values() if type(node) is dict else node:
            kind = type(child)
            if kind is dict or kind is list:
                push((child, deeper))
    return None


def json_too_deep(value: Any, limit: int) -> bool:
    """True when objects and arrays nest more than `limit` levels (`{}` is one level)."""
    return json_excess(value, limit, sys.maxsize) == "depth"
