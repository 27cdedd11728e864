"""End to end: the `/v1/*` OpenAI-compatible surface through the real `openai` SDK (base_url =
<gateway>/v1), gateway under Granian, loopback upstream.

Each test checks what the client got and what the upstream received: the client's body with only
`model` rewritten to the upstream id, and the upstream's answer back byte for byte.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import API_KEY, RunningGateway, routes_yaml
from tests.fake_upstream import FakeUpstream, Reply, chat_chunks, chat_completion

CHAT = "/v1/chat/completions"
USER_HI = [{"role": "user", "content": "hi"}]


@pytest.fixture
def client(gateway: RunningGateway) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key="sk-client-side", max_retries=0) as sdk_client:
        yield sdk_client


def completion_body(text: str) -> dict[str, Any]:
    return {
        "id": "cmpl-1", "object": "text_completion", "created": 1764090192, "model": "up-model",
        "choices": [{"index": 0, "text": text, "finish_reason": "stop", "logprobs": None}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    }


def test_models_list_names_what_api_tags_lists(client: openai.OpenAI, gateway: RunningGateway) -> None:
    models = client.models.list().data
    tags = [entry["name"] for entry in httpx.get(gateway.url + "/api/tags").json()["models"]]
    assert [model.id for model in models] == tags
    assert {model.owned_by for model in models} == {"library"}
    raw = httpx.get(gateway.url + "/v1/models").json()
    assert raw["object"] == "list"
    first = raw["data"][0]
    # OpenAI's fields and Anthropic's (ModelInfo), in one body both SDKs read.
    assert set(first) == {"id", "object", "created", "owned_by", "type", "display_name", "created_at"}
    assert first["object"] == "model" and isinstance(first["created"], int) and first["created"] > 1_600_000_000
    assert (first["type"], first["display_name"]) == ("model", first["id"])
    assert datetime.fromisoformat(first["created_at"]).timestamp() == first["created"]
    assert (raw["has_more"], raw["first_id"], raw["last_id"]) == (False, tags[0], tags[-1])


def test_model_retrieve_takes_ids_with_slash_and_colon(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    routed = client.models.retrieve("fake/Some-Model:latest")
    assert (routed.id, routed.owned_by, routed.object) == ("fake/Some-Model:latest", "fake", "model")
    assert client.models.retrieve("tiny").owned_by == "library"
    with pytest.raises(openai.NotFoundError) as caught:
        client.models.retrieve("ghost")
    assert caught.value.body == {"message": "model 'ghost' not found", "type": "not_found_error", "param": None, "code": None}
    assert upstream.received == []


def test_chat_body_goes_up_with_only_the_model_id_rewritten(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    upstream.enqueue(CHAT, Reply.json(chat_completion("It is sunny.")))
    reply = client.chat.completions.create(
        model="tiny", messages=USER_HI, temperature=0.3, max_completion_tokens=5, extra_body={"top_k": 3, "vendor": {"x": [1]}}
    )
    assert reply.choices[0].message.content == "It is sunny."
    assert reply.model == "up-model"  # the upstream's answer, untouched
    received = upstream.last(CHAT)
    assert received.json == {
        "model": "up-model", "messages": USER_HI, "temperature": 0.3, "max_completion_tokens": 5, "top_k": 3, "vendor": {"x": [1]},
    }
    assert received.headers["Authorization"] == f"Bearer {API_KEY}"


def test_non_streamed_answer_is_relayed_byte_for_byte(gateway: RunningGateway, upstream: FakeUpstream) -> None:
    body = chat_completion("exact", usage=(1, 1))
    upstream.enqueue(CHAT, Reply.json(body))
    response = httpx.post(gateway.url + CHAT, json={"model": "tiny:latest", "messages": USER_HI})
    assert response.status_code == 200
    assert response.content == json.dumps(body).encode()
    assert response.headers["content-type"].startswith("application/json")


def test_stream_is_relayed_byte_for_byte(gateway: RunningGateway, upstream: FakeUpstream) -> None:
    events = [f"data: {json.dumps(chunk)}\n\n" for chunk in chat_chunks(["It", " is", " sunny."])]
    events.insert(1, ": OPENROUTER PROCESSING\n\n")  # comments and odd framing pass through too
    events.append("data: [DONE]\n\n")
    upstream.enqueue(CHAT, Reply.sse(events, done=False))
    with httpx.stream("POST", gateway.url + CHAT, json={"model": "tiny", "messages": USER_HI, "stream": True}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert b"".join(response.iter_bytes()) == "".join(events).encode()
    assert upstream.last(CHAT).json == {"model": "up-model", "messages": USER_HI, "stream": True}


def test_sdk_stream_with_usage(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    upstream.enqueue(CHAT, Reply.sse(chat_chunks(["Hel", "lo"], usage=(7, 2))))
    chunks = list(client.chat.completions.create(
        model="tiny", messages=USER_HI, stream=True, stream_options={"include_usage": True}
    ))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello"
    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens == 7
    assert upstream.last(CHAT).json["stream_options"] == {"include_usage": True}


@pytest.mark.anyio
async def test_async_client_streams_through_the_same_route(gateway: RunningGateway, upstream: FakeUpstream) -> None:
    upstream.enqueue(CHAT, Reply.sse(chat_chunks(["a", "b", "c"])))
    async with openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key="x", max_retries=0) as client:
        stream = await client.chat.completions.create(model="fake/Other", messages=USER_HI, stream=True)
        pieces = [chunk.choices[0].delta.content async for chunk in stream if chunk.choices and chunk.choices[0].delta.content]
    assert pieces == ["a", "b", "c"]
    assert upstream.last(CHAT).json["model"] == "Other"


def test_completions_plain_and_streamed(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    upstream.enqueue("/v1/completions", Reply.json(completion_body("return 1")))
    reply = client.completions.create(model="tiny", prompt="def f():", suffix="\n", max_tokens=8)
    assert reply.choices[0].text == "return 1"
    assert upstream.last("/v1/completions").json == {"model": "up-model", "prompt": "def f():", "suffix": "\n", "max_tokens": 8}
    chunk = {"id": "cmpl-2", "object": "text_completion", "created": 1, "model": "up-model",
             "choices": [{"index": 0, "text": "x", "finish_reason": None, "logprobs": None}]}
    upstream.enqueue("/v1/completions", Reply.sse([chunk, chunk]))
    streamed = client.completions.create(model="tiny", prompt="p", stream=True)
    assert [c.choices[0].text for c in streamed] == ["x", "x"]


def test_embeddings_are_relayed_unnormalized(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    reply = client.embeddings.create(model="embedder", input=["first", "second"])
    assert [item.embedding for item in reply.data] == [[3.0, 4.0, 0.0], [3.0, 4.0, 0.0]]
    # The SDK asks for base64 by default; that request goes up as sent.
    assert upstream.last("/v1/embeddings").json == {"model": "up-embed", "input": ["first", "second"], "encoding_format": "base64"}


def test_copilot_flow_lists_over_api_and_chats_over_v1(client: openai.OpenAI, gateway: RunningGateway, upstream: FakeUpstream) -> None:
    model = httpx.get(gateway.url + "/api/tags").json()["models"][0]["model"]
    assert httpx.post(gateway.url + "/api/show", json={"model": model}).status_code == 200
    client.chat.completions.create(model=model, messages=USER_HI)
    assert upstream.last(CHAT).json["model"] == "up-model"


def test_unknown_model_is_an_openai_shaped_404(gateway: RunningGateway, upstream: FakeUpstream) -> None:
    response = httpx.post(gateway.url + CHAT, json={"model": "ghost", "messages": USER_HI})
    assert response.status_code == 404
    assert response.json() == {"error": {"message": "model 'ghost' not found", "type": "not_found_error", "param": None, "code": None}}
    assert upstream.received == []


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        pytest.param(CHAT, b"", "missing request body", id="empty"),
        pytest.param(CHAT, b"{oops", None, id="malformed"),
        pytest.param(CHAT, b'{"messages": []}', "model is required", id="no-model"),
        pytest.param("/v1/embeddings", b'{"model": ["tiny"]}', "model is required", id="model-not-a-string"),
    ],
)
def test_bad_bodies_are_openai_shaped_400s(gateway: RunningGateway, upstream: FakeUpstream, path: str, body: bytes, message: str | None) -> None:
    response = httpx.post(gateway.url + path, content=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] is None and error["code"] is None
    if message is not None:
        assert error["message"] == message
    assert upstream.received == []


def test_upstream_error_keeps_its_status_object_and_retry_after(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    error = {"message": "slow down", "type": "rate_limit_error", "param": None, "code": "rate_limited"}
    upstream.enqueue(CHAT, Reply.json({"error": error}, status=429, headers={"Retry-After": "7"}))
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="tiny", messages=USER_HI)
    assert caught.value.status_code == 429 and caught.value.body == error
    assert caught.value.response.headers["retry-after"] == "7"


def test_upstream_error_extras_pass_and_missing_fields_are_filled(gateway: RunningGateway, upstream: FakeUpstream) -> None:
    llamacpp = {"code": 400, "message": "request exceeds the context size", "type": "exceed_context_size_error", "n_ctx": 4096}
    upstream.enqueue(CHAT, Reply.json({"error": llamacpp}, status=400))
    response = httpx.post(gateway.url + CHAT, json={"model": "tiny", "messages": USER_HI})
    assert (response.status_code, response.json()) == (400, {"error": {**llamacpp, "param": None}})
    upstream.enqueue(CHAT, Reply.json({"detail": "bad field"}, status=422))
    response = httpx.post(gateway.url + CHAT, json={"model": "tiny", "messages": USER_HI})
    assert response.status_code == 422
    assert response.json()["error"] | {"detail": None} == {"message": "bad field", "type": "api_error", "param": None, "code": None, "detail": None}


def test_upstream_401_is_502_and_never_leaks_its_text(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    upstream.enqueue(CHAT, Reply.json({"error": {"message": f"Incorrect API key provided: {API_KEY}"}}, status=401))
    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model="tiny", messages=USER_HI)
    assert caught.value.status_code == 502 and API_KEY not in json.dumps(caught.value.body)
    assert caught.value.body["type"] == "api_error"


def test_unreachable_upstream_is_an_openai_shaped_502(client: openai.OpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model="deadmodel", messages=USER_HI)
    assert caught.value.status_code == 502 and "unreachable" in caught.value.body["message"]


def test_failure_mid_stream_is_a_last_error_event(client: openai.OpenAI, gateway: RunningGateway, upstream: FakeUpstream) -> None:
    upstream.enqueue(CHAT, Reply.sse(chat_chunks(["partial", "more"]), cut_after=2))
    with httpx.stream("POST", gateway.url + CHAT, json={"model": "tiny", "messages": USER_HI, "stream": True}) as response:
        text = b"".join(response.iter_bytes()).decode()
    events = [event for event in text.split("\n\n") if event]
    assert response.status_code == 200 and len(events) == 3
    assert json.loads(events[-1].removeprefix("data: "))["error"]["type"] == "api_error"
    upstream.enqueue(CHAT, Reply.sse(chat_chunks(["partial", "more"]), cut_after=2))
    with pytest.raises(openai.APIError):
        list(client.chat.completions.create(model="tiny", messages=USER_HI, stream=True))


def test_client_disconnect_closes_the_upstream_stream(gateway: RunningGateway, upstream: FakeUpstream) -> None:
    upstream.enqueue(CHAT, Reply.sse(chat_chunks([f"w{i} " for i in range(60)]), delay=0.1))
    with httpx.stream("POST", gateway.url + CHAT, json={"model": "tiny", "messages": USER_HI, "stream": True}) as response:
        first = next(response.iter_bytes())
        assert first.startswith(b"data: ")
        assert upstream.open_connections == 1
    deadline = time.monotonic() + 3
    while upstream.open_connections and time.monotonic() < deadline:
        time.sleep(0.05)
    assert upstream.open_connections == 0  # well before the 6 s the full stream would take


@pytest.fixture
def fallback_gateway(upstream: FakeUpstream, tmp_path: Path) -> Iterator[RunningGateway]:
    extra = "  - name: flaky\n    upstream: dead\n    model: dead-model\n    fallbacks: [tiny]\n"
    routes = tmp_path / "routes.yaml"
    routes.write_text(routes_yaml(upstream.url, extra_models=extra))
    running = RunningGateway(routes, tmp_path / "gateway.log")
    yield running
    running.stop()


def test_fallback_gets_its_own_upstream_model_id(fallback_gateway: RunningGateway, upstream: FakeUpstream) -> None:
    """An unreachable primary falls back as on /api; the body goes up with the fallback's id."""
    with openai.OpenAI(base_url=fallback_gateway.url + "/v1", api_key="x", max_retries=0) as client:
        reply = client.chat.completions.create(model="flaky", messages=USER_HI)
    assert reply.choices[0].message.content == "Hello there."
    assert upstream.last(CHAT).json == {"model": "up-model", "messages": USER_HI}
