"""Helpers for pure translator tests: a Target from a few quirks, a clock, SSE fixture events."""

from __future__ import annotations

from typing import Any

import orjson

from gateway.translators.clock import RequestClock
from gateway.routing.resolver import RouteMap, Target
from gateway.upstream.sse import SSEDecoder
from tests.fake_upstream import load_example


def make_target(*, provider: str = "generic", capabilities: list[str] | None = None, **quirks: Any) -> Target:
    route: dict[str, Any] = {"name": "m", "upstream": "up", "model": "up-model", **quirks}
    if capabilities is not None:
        route["capabilities"] = capabilities
    route_map = RouteMap.model_validate(
        {"upstreams": {"up": {"base_url": "http://127.0.0.1:9/v1", "provider": provider}}, "models": [route]}
    )
    target = route_map.resolve("m")
    assert target is not None
    return target


def fixture_events(provider: str, feature: str) -> list[dict[str, Any]]:
    """The decoded SSE events of a stored stream fixture."""
    decoder = SSEDecoder()
    events = decoder.feed(load_example(provider, feature)["response"]["body_text"].encode())
    return events + decoder.close()


def run_stream(translator: Any, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    chunks = [chunk for event in events for chunk in translator.feed(event)]
    return chunks + translator.finish()


def clock() -> RequestClock:
    return RequestClock()


def roundtrip(value: Any) -> Any:
    return orjson.loads(orjson.dumps(value))
