"""`GATEWAY_ROOT_PATH`: the whole API under a prefix as well as at the root (a reverse proxy that
does not strip it). End to end: gateway under Granian with the prefix set, loopback upstream,
the real `ollama`, `openai` and `anthropic` SDKs pointed at the prefixed base URL."""

from __future__ import annotations

import json
from collections.abc import Iterator

import anthropic
import httpx
import ollama
import openai
import pytest

from gateway.settings import Settings
from tests.conftest import RunningGateway, routes_yaml
from tests.fake_upstream import FakeUpstream

CHAT = "/v1/chat/completions"
HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def prefixed(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    folder = tmp_path_factory.mktemp("root-path")
    routes = folder / "routes.yaml"
    routes.write_text(routes_yaml(upstream.url))
    running = RunningGateway(routes, folder / "gateway.log", env={"GATEWAY_ROOT_PATH": "/ollama/"})
    yield running
    running.stop()


def test_every_surface_is_served_under_the_prefix_and_at_the_root(prefixed: RunningGateway, upstream: FakeUpstream) -> None:
    base = prefixed.url + "/ollama"
    assert httpx.get(base + "/api/tags").json() == httpx.get(prefixed.url + "/api/tags").json()
    assert httpx.get(base + "/api/tags/").status_code == 200  # the trailing slash rule still applies
    assert httpx.get(base).text == "Ollama is running"
    assert httpx.get(base + "/").text == "Ollama is running"
    with ollama.Client(host=base) as ollama_client:
        assert ollama_client.chat(model="tiny", messages=HI).message.content == "Hello there."  # a hot endpoint
    with openai.OpenAI(base_url=base + "/v1", api_key="x", max_retries=0) as openai_client:
        assert openai_client.chat.completions.create(model="tiny", messages=HI).choices[0].message.content == "Hello there."  # type: ignore[arg-type]
        assert [model.id for model in openai_client.models.list().data]
    with anthropic.Anthropic(base_url=base, api_key="x", max_retries=0) as anthropic_client:
        reply = anthropic_client.messages.create(model="tiny", max_tokens=5, messages=HI, extra_query={"beta": "true"})  # type: ignore[arg-type]
        assert reply.content[0].text == "Hello there."  # type: ignore[union-attr]
    assert upstream.last(CHAT).json["model"] == "up-model"


def test_only_the_whole_prefix_is_dropped(prefixed: RunningGateway) -> None:
    for path in ("/ollamax/api/tags", "/ollama/ollama/api/tags", "/api/ollama/tags"):
        response = httpx.get(prefixed.url + path)
        assert (response.status_code, response.text) == (404, "404 page not found"), path


def test_the_log_line_keeps_the_path_as_sent(prefixed: RunningGateway) -> None:
    response = httpx.get(prefixed.url + "/ollama/api/version")
    text = prefixed.log_text_after(response.headers["x-request-id"])
    line = next(json.loads(row) for row in text.splitlines() if response.headers["x-request-id"] in row and '"event":"request"' in row)
    assert line["path"] == "/ollama/api/version" and line["status"] == 200


@pytest.mark.parametrize(("value", "expected"), [("", ""), ("/ollama", "/ollama"), ("/ollama/", "/ollama"), ("/a/b", "/a/b")])
def test_root_path_setting_is_normalised(value: str, expected: str) -> None:
    settings = Settings(root_path=value)
    assert settings.root_path == expected
    assert settings.to_environ()["GATEWAY_ROOT_PATH"] == expected  # the workers get it


@pytest.mark.parametrize("value", ["ollama", "/a b", "/a?x", "/a//b"])
def test_a_root_path_that_is_no_path_is_refused(value: str) -> None:
    with pytest.raises(ValueError, match="GATEWAY_ROOT_PATH"):
        Settings(root_path=value)
