"""Discovery end to end: an upstream's /v1/models merged into /api/tags under a prefix and routed,
refreshed on an interval, kept when the upstream fails, and never in the way of requests."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import RunningGateway
from tests.fake_upstream import FakeUpstream, Reply

CHAT = "/v1/chat/completions"


class ModelsUpstream(FakeUpstream):
    """Serves `models` at /v1/models; `failing` makes that 500, `stall` makes it hang."""

    def __init__(self) -> None:
        super().__init__()
        self.models: list[dict[str, Any]] = []
        self.failing = False
        self.stall = 0.0

    def _default(self, path: str, body: Any) -> Reply:
        if path.endswith("/models"):
            if self.failing:
                return Reply.json({"error": {"message": "models are down", "type": "server_error"}}, status=500)
            return Reply(json_body={"object": "list", "data": self.models}, stall=self.stall)
        return super()._default(path, body)


@pytest.fixture(scope="module")
def listing() -> Iterator[ModelsUpstream]:
    server = ModelsUpstream()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def hanging() -> Iterator[ModelsUpstream]:
    server = ModelsUpstream()
    server.start()
    server.stall = 60.0
    yield server
    server.stop()


@pytest.fixture(scope="module")
def gateway(listing: ModelsUpstream, hanging: ModelsUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    listing.models = [
        {"id": "alpha", "object": "model", "created": 0, "owned_by": "x", "context_length": 32768,
         "architecture": {"input_modalities": ["text", "image"]}, "supported_parameters": ["tools", "reasoning"]},
        {"id": "text-embed-small", "object": "model", "created": 0, "owned_by": "x"},
        {"id": "pinned", "object": "model", "created": 0, "owned_by": "x"},
    ]
    folder = tmp_path_factory.mktemp("discovery")
    routes = folder / "routes.yaml"
    routes.write_text(f"""
upstreams:
  lister: {{base_url: "{listing.url}", discover: true, prefix: "lst/", discover_interval: 1, discover_timeout: 2, max_retries: 0, cooldown: false}}
  hangs:  {{base_url: "{hanging.url}", discover: true, prefix: "hang/", discover_interval: 1, discover_timeout: 0.5, cooldown: false}}
models:
  - {{name: lst/pinned, upstream: lister, model: pinned, context_length: 999}}
""")
    started = time.monotonic()
    running = RunningGateway(routes, folder / "gateway.log", workers=2)
    assert time.monotonic() - started < 25, "a hanging model list does not hold up the start"
    yield running
    running.stop()


def tag_names(gateway: RunningGateway) -> list[str]:
    return [m["name"] for m in httpx.get(gateway.url + "/api/tags", timeout=10).json()["models"]]


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def every_worker_lists(gateway: RunningGateway, name: str, present: bool = True) -> Callable[[], bool]:
    # Several answers, so that each worker is very likely to have answered at least once.
    return lambda: all((name in tag_names(gateway)) is present for _ in range(8))


def test_discovered_models_are_listed_under_the_prefix_and_routed(gateway: RunningGateway, listing: ModelsUpstream) -> None:
    wait_for(every_worker_lists(gateway, "lst/alpha:latest"), "the discovered list")
    models = {m["name"]: m for m in httpx.get(gateway.url + "/api/tags").json()["models"]}
    assert list(models) == ["lst/pinned:latest", "lst/alpha:latest", "lst/text-embed-small:latest"]
    assert models["lst/alpha:latest"]["capabilities"] == ["completion", "vision", "tools", "thinking"]
    assert models["lst/alpha:latest"]["details"]["context_length"] == 32768
    assert models["lst/text-embed-small:latest"]["capabilities"] == ["embedding"]
    assert models["lst/pinned:latest"]["details"]["context_length"] == 999, "an entry in models wins"
    response = httpx.post(gateway.url + "/api/chat", json={"model": "LST/alpha", "messages": [{"role": "user", "content": "x"}],
                                                           "stream": False}, timeout=30)
    assert response.status_code == 200 and listing.last(CHAT).json["model"] == "alpha"
    shown = httpx.post(gateway.url + "/api/show", json={"model": "lst/alpha"}).json()
    assert shown["capabilities"] == ["completion", "vision", "tools", "thinking"]


def test_a_failing_upstream_keeps_its_last_list_then_refreshes(gateway: RunningGateway, listing: ModelsUpstream) -> None:
    wait_for(every_worker_lists(gateway, "lst/alpha:latest"), "the discovered list")
    listing.failing = True
    try:
        wait_for(lambda: '"discovery_failed"' in gateway.log_text() and '"upstream":"lister"' in gateway.log_text(),
                 "a failed refresh")
        assert "lst/alpha:latest" in tag_names(gateway)
    finally:
        listing.failing = False
    listing.models = [{"id": "beta", "object": "model", "created": 0, "owned_by": "x"}]
    wait_for(every_worker_lists(gateway, "lst/beta:latest"), "the refreshed list")
    wait_for(every_worker_lists(gateway, "lst/alpha:latest", present=False), "the old id to go")


def test_a_hanging_model_list_is_abandoned_and_never_blocks_requests(gateway: RunningGateway) -> None:
    assert httpx.get(gateway.url + "/api/version", timeout=5).status_code == 200
    wait_for(lambda: any(
        json.loads(line).get("upstream") == "hangs" for line in gateway.log_text().splitlines()
        if line.startswith("{") and '"discovery_failed"' in line
    ), "the hanging list to time out")
    assert not any(name.startswith("hang/") for name in tag_names(gateway))
