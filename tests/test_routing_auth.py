"""Inbound keys and what upstreams are sent: routes.yaml `auth`, per-upstream headers, query
parameters and auth header (Azure), and `pass_client_key`."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from aiohttp import web

from tests.conftest import RunningGateway
from tests.fake_upstream import FakeUpstream

CHAT = "/v1/chat/completions"
USER_HI = [{"role": "user", "content": "hi"}]
ALL_KEY = "gw-all-0123456789"
TINY_KEY = "gw-tiny-0123456789"
UPSTREAM_KEY = "sk-upstream-key-abcdef"


class RecordingUpstream(FakeUpstream):
    """Also records each request's query string."""

    def __init__(self) -> None:
        super().__init__()
        self.queries: list[str] = []

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.queries.append(request.query_string)
        return await super()._handle(request)


@pytest.fixture(scope="module")
def recording() -> Iterator[RecordingUpstream]:
    server = RecordingUpstream()
    server.start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _reset(recording: RecordingUpstream) -> None:
    recording.reset()
    recording.queries.clear()


@pytest.fixture(scope="module")
def locked(recording: RecordingUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    folder = tmp_path_factory.mktemp("auth")
    routes = folder / "routes.yaml"
    routes.write_text(f"""
upstreams:
  up: {{base_url: "{recording.url}", api_key: "${{AUTH_TEST_UPSTREAM_KEY}}", max_retries: 0, cooldown: false}}
models:
  - {{name: tiny, aliases: [tiny-alias], upstream: up}}
  - {{name: other, upstream: up}}
  - {{name: "up/*", upstream: up}}
auth:
  keys:
    - {{key: "${{AUTH_TEST_ALL}}"}}
    - {{key: "${{AUTH_TEST_TINY}}", models: [tiny]}}
    - {{key: "${{AUTH_TEST_UNSET}}"}}
""")
    running = RunningGateway(routes, folder / "gateway.log", workers=1, env={
        "AUTH_TEST_ALL": ALL_KEY, "AUTH_TEST_TINY": TINY_KEY, "AUTH_TEST_UPSTREAM_KEY": UPSTREAM_KEY})
    yield running
    running.stop()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def chat(gateway: RunningGateway, model: str, headers: dict[str, str]) -> httpx.Response:
    return httpx.post(gateway.url + "/api/chat", json={"model": model, "messages": USER_HI, "stream": False}, headers=headers, timeout=30)


@pytest.mark.parametrize(
    ("method", "path", "headers"),
    [
        pytest.param("GET", "/api/tags", {}, id="tags-no-key"),
        pytest.param("GET", "/api/version", {}, id="version-no-key"),
        pytest.param("POST", "/api/chat", bearer("wrong-key-0000000"), id="chat-wrong-key"),
        pytest.param("POST", "/api/chat", {"Authorization": ALL_KEY}, id="no-bearer-scheme"),
        pytest.param("POST", "/api/chat", {"Authorization": f"Basic {ALL_KEY}"}, id="basic-scheme"),
        pytest.param("GET", "/api/ps", {"Authorization": "Bearer"}, id="empty-bearer"),
        pytest.param("GET", "/v1/models", {}, id="openai-surface"),
    ],
)
def test_a_missing_or_wrong_key_is_401(locked: RunningGateway, recording: RecordingUpstream, method: str, path: str, headers: dict[str, str]) -> None:
    response = httpx.request(method, locked.url + path, headers=headers, json={"model": "tiny", "messages": USER_HI})
    assert response.status_code == 401
    assert response.content == b'{"error":"unauthorized"}' and response.json() == {"error": "unauthorized"}
    assert response.headers["content-type"].startswith("application/json")
    assert recording.received == []


def test_the_root_stays_open(locked: RunningGateway) -> None:
    assert httpx.get(locked.url + "/").status_code == 200
    assert httpx.head(locked.url + "/").status_code == 200


def test_a_good_key_gets_everything(locked: RunningGateway, recording: RecordingUpstream) -> None:
    names = [m["name"] for m in httpx.get(locked.url + "/api/tags", headers=bearer(ALL_KEY)).json()["models"]]
    assert names == ["tiny:latest", "tiny-alias:latest", "other:latest"]
    assert chat(locked, "up/anything", bearer(ALL_KEY)).status_code == 200
    assert recording.last(CHAT).headers["Authorization"] == f"Bearer {UPSTREAM_KEY}", "the upstream gets its own key"


def test_a_limited_key_sees_and_uses_only_its_models(locked: RunningGateway, recording: RecordingUpstream) -> None:
    headers = bearer(TINY_KEY)
    names = [m["name"] for m in httpx.get(locked.url + "/api/tags", headers=headers).json()["models"]]
    assert names == ["tiny:latest", "tiny-alias:latest"], "an alias of an allowed entry is allowed"
    assert chat(locked, "TINY", headers).status_code == 200
    assert chat(locked, "tiny-alias", headers).status_code == 200
    refused = chat(locked, "other", headers)
    assert refused.status_code == 403 and "other" in refused.json()["error"]
    assert httpx.post(locked.url + "/api/show", json={"model": "up/x"}, headers=headers).status_code == 403
    assert len([r for r in recording.received if r.path == CHAT]) == 2
    ids = [m["id"] for m in httpx.get(locked.url + "/v1/models", headers=headers).json()["data"]]
    assert ids == ["tiny:latest", "tiny-alias:latest"]


@pytest.fixture(scope="module")
def shaped(recording: RecordingUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    folder = tmp_path_factory.mktemp("shapes")
    routes = folder / "routes.yaml"
    routes.write_text(f"""
upstreams:
  azure:
    provider: azure
    base_url: "{recording.url}"
    cooldown: false
    api_key: "{UPSTREAM_KEY}"
    auth_header: api-key
    query: {{api-version: "2024-10-21"}}
    max_retries: 0
  router:
    provider: openrouter
    base_url: "{recording.url}"
    cooldown: false
    api_key: "{UPSTREAM_KEY}"
    headers: {{HTTP-Referer: "https://example.org/app", X-Title: "Example App"}}
    max_retries: 0
  byok:
    base_url: "{recording.url}"
    cooldown: false
    api_key: "{UPSTREAM_KEY}"
    pass_client_key: true
    max_retries: 0
models:
  - {{name: az, upstream: azure, model: my-deployment}}
  - {{name: ro, upstream: router, model: vendor/model}}
  - {{name: own, upstream: byok}}
""")
    running = RunningGateway(routes, folder / "gateway.log", workers=1)
    yield running
    running.stop()


def header(received: Any, name: str) -> str | None:
    return next((value for key, value in received.headers.items() if key.lower() == name.lower()), None)


def test_azure_gets_its_api_version_and_api_key_header(shaped: RunningGateway, recording: RecordingUpstream) -> None:
    assert chat(shaped, "az", {}).status_code == 200
    sent = recording.last(CHAT)
    assert recording.queries[-1] == "api-version=2024-10-21"
    assert header(sent, "api-key") == UPSTREAM_KEY and header(sent, "Authorization") is None


def test_per_upstream_headers_are_sent(shaped: RunningGateway, recording: RecordingUpstream) -> None:
    assert chat(shaped, "ro", bearer("client-token-123456")).status_code == 200
    sent = recording.last(CHAT)
    assert header(sent, "HTTP-Referer") == "https://example.org/app" and header(sent, "X-Title") == "Example App"
    assert header(sent, "Authorization") == f"Bearer {UPSTREAM_KEY}" and recording.queries[-1] == ""


def test_pass_client_key_sends_the_clients_own_key(shaped: RunningGateway, recording: RecordingUpstream) -> None:
    assert chat(shaped, "own", bearer("client-token-123456")).status_code == 200
    assert header(recording.last(CHAT), "Authorization") == "Bearer client-token-123456"
    assert chat(shaped, "own", {}).status_code == 200
    assert header(recording.last(CHAT), "Authorization") == f"Bearer {UPSTREAM_KEY}", "no client key: the configured one"
