"""End to end: the real `ollama` SDK against the gateway under Granian against a loopback upstream.

Each test checks what the client got (parsed by the SDK's own types) and what the upstream got.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import ollama
import pytest

from tests.conftest import API_KEY, RunningGateway
from tests.fake_upstream import FakeUpstream, Reply, chat_chunks, chat_completion, embeddings_body
from tests.test_ollama_types import assert_ollama_shape

CHAT = "/v1/chat/completions"
USER_HI = [{"role": "user", "content": "hi"}]


@pytest.fixture
def client(gateway: RunningGateway) -> Iterator[ollama.Client]:
    with ollama.Client(host=gateway.url) as sdk_client:
        yield sdk_client


def test_chat_non_streaming_round_trip(client: ollama.Client, upstream: FakeUpstream) -> None:
    upstream.enqueue(CHAT, Reply.json(chat_completion("It is sunny.", usage=(21, 4))))
    reply = client.chat(model="tiny", messages=USER_HI, options={"temperature": 0.2})
    assert reply.message.role == "assistant"
    assert reply.message.content == "It is sunny."
    assert reply.done and reply.done_reason == "stop"
    assert reply.model == "tiny"
    assert (reply.prompt_eval_count, reply.eval_count) == (21, 4)
    for duration in (reply.total_duration, reply.load_duration, reply.prompt_eval_duration, reply.eval_duration):
        assert isinstance(duration, int) and duration >= 1
    sent = upstream.last(CHAT).json
    assert sent == {"model": "up-model", "messages": USER_HI, "temperature": 0.2}
    assert upstream.last(CHAT).headers["Authorization"] == f"Bearer {API_KEY}"


def test_chat_streams_each_delta_then_one_done_chunk(client: ollama.Client, upstream: FakeUpstream) -> None:
    upstream.enqueue(CHAT, Reply.sse(chat_chunks(["It", " is", " sunny."], usage=(9, 3))))
    chunks = list(client.chat(model="tiny:latest", messages=USER_HI, stream=True))
    assert [c.message.content for c in chunks] == ["It", " is", " sunny.", ""]
    assert [c.done for c in chunks] == [False, False, False, True]
    assert all(c.message.role == "assistant" for c in chunks)
    assert all(c.eval_count is None and c.done_reason is None for c in chunks[:-1])
    final = chunks[-1]
    assert final.done_reason == "stop" and (final.prompt_eval_count, final.eval_count) == (9, 3)
    assert final.model == "tiny:latest"
    sent = upstream.last(CHAT).json
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}
    assert sent["model"] == "up-model"


def test_stream_raw_framing_is_ndjson_with_no_blank_lines(gateway: RunningGateway, upstream: FakeUpstream) -> None:
    upstream.enqueue(CHAT, Reply.sse(chat_chunks(["a", "b"])))
    response = httpx.post(gateway.url + "/api/chat", json={"model": "tiny", "messages": USER_HI}, timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/x-ndjson"
    assert response.text.endswith("\n") and "\n\n" not in response.text
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert sum(line["done"] for line in lines) == 1 and lines[-1]["done"] is True
    for line in lines:
        assert_ollama_shape("ChatResponse", line)
        assert line["created_at"].endswith("Z")


def test_stream_without_usage_estimates_counts(client: ollama.Client, upstream: FakeUpstream) -> None:
    upstream.enqueue(CHAT, Reply.sse(chat_chunks(["Hello world, how are you"], usage=None)))
    final = list(client.chat(model="tiny", messages=USER_HI, stream=True))[-1]
    assert final.done and final.eval_count and final.eval_count > 0 and final.prompt_eval_count


def test_finish_reason_length_becomes_done_reason_length(client: ollama.Client, upstream: FakeUpstream) -> None:
    upstream.enqueue(CHAT, Reply.sse(chat_chunks(["cut"], finish_reason="length")))
    final = list(client.chat(model="tiny", messages=USER_HI, stream=True, options={"num_predict": 1}))[-1]
    assert final.done_reason == "length"
    assert upstream.last(CHAT).json["max_tokens"] == 1


def test_generate_maps_system_and_prompt_onto_chat(client: ollama.Client, upstream: FakeUpstream) -> None:
    upstream.enqueue(CHAT, Reply.json(chat_completion("42")))
    reply = client.generate(model="tiny", prompt="answer?", system="be brief")
    assert reply.response == "42" and reply.done and reply.done_reason == "stop"
    assert upstream.last(CHAT).json["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "answer?"},
    ]


def test_generate_streams_response_field(client: ollama.Client, upstream: FakeUpstream) -> None:
    upstream.enqueue(CHAT, Reply.sse(chat_chunks(["4", "2"])))
    chunks = list(client.generate(model="tiny", prompt="answer?", stream=True))
    assert [c.response for c in chunks] == ["4", "2", ""]
    assert chunks[-1].done and chunks[-1].eval_duration and chunks[-1].eval_duration >= 1


@pytest.mark.parametrize(
    ("endpoint", "body", "reason"),
    [
        pytest.param("/api/chat", {"model": "tiny", "messages": []}, "load", id="chat-load"),
        pytest.param("/api/chat", {"model": "tiny", "messages": [], "keep_alive": 0}, "unload", id="chat-unload"),
        pytest.param("/api/generate", {"model": "tiny", "prompt": ""}, "load", id="generate-load"),
        pytest.param("/api/generate", {"model": "tiny", "keep_alive": "0s"}, "unload", id="generate-unload"),
    ],
)
def test_empty_input_is_answered_locally(
    gateway: RunningGateway, upstream: FakeUpstream, endpoint: str, body: dict, reason: str
) -> None:
    response = httpx.post(gateway.url + endpoint, json=body, timeout=10)
    assert response.status_code == 200
    reply = response.json()
    assert reply["done"] is True and reply["done_reason"] == reason
    assert upstream.received == []


def test_embed_normalizes_and_orders_by_index(client: ollama.Client, upstream: FakeUpstream) -> None:
    upstream.enqueue("/v1/embeddings", Reply.json(embeddings_body([[3.0, 4.0], [0.0, 2.0]], order=[1, 0], prompt_tokens=7)))
    reply = client.embed(model="embedder", input=["first", "second"])
    assert reply.embeddings == [[0.6, 0.8], [0.0, 1.0]]
    assert reply.prompt_eval_count == 7 and reply.total_duration and reply.load_duration
    assert upstream.last("/v1/embeddings").json == {"model": "up-embed", "input": ["first", "second"], "encoding_format": "float"}


def test_embed_empty_input_is_answered_locally(client: ollama.Client, upstream: FakeUpstream) -> None:
    assert client.embed(model="embedder", input=[]).embeddings == []
    assert upstream.received == []


def test_legacy_embeddings_are_not_normalized(client: ollama.Client, upstream: FakeUpstream) -> None:
    upstream.enqueue("/v1/embeddings", Reply.json(embeddings_body([[3.0, 4.0]])))
    assert client.embeddings(model="embedder", prompt="x").embedding == [3.0, 4.0]


def test_list_show_ps_version(client: ollama.Client, gateway: RunningGateway, upstream: FakeUpstream) -> None:
    listed = client.list()
    names = [m.model for m in listed.models]
    assert names == ["tiny:latest", "embedder:latest", "nokey:latest", "deadmodel:latest"]
    raw = httpx.get(gateway.url + "/api/tags").json()
    assert_ollama_shape("ListResponse", raw)
    tiny = raw["models"][0]
    assert tiny["name"] == tiny["model"] == "tiny:latest"
    assert len(tiny["digest"]) == 64 and tiny["capabilities"] == ["completion", "tools"]
    assert tiny["details"]["context_length"] == 4096

    shown = client.show("TINY")
    assert shown.capabilities == ["completion", "tools"]
    assert shown.modelinfo is not None
    arch = shown.modelinfo["general.architecture"]
    assert shown.modelinfo[f"{arch}.context_length"] == 4096
    assert shown.parameters is not None and shown.parameters.split() == ["num_ctx", "4096"]
    assert ".Tools" in (shown.template or "")

    client.chat(model="tiny", messages=USER_HI, keep_alive="10m")
    ps = httpx.get(gateway.url + "/api/ps").json()
    assert_ollama_shape("ProcessResponse", ps)
    assert ps["models"][0]["name"] == "tiny:latest" and ps["models"][0]["context_length"] == 4096

    version = httpx.get(gateway.url + "/api/version").json()["version"]
    assert tuple(int(part) for part in version.split(".")) >= (0, 6, 4)


def test_show_accepts_name_and_reports_unknown_with_tag(gateway: RunningGateway) -> None:
    assert httpx.post(gateway.url + "/api/show", json={"name": "tiny"}).status_code == 200
    missing = httpx.post(gateway.url + "/api/show", json={"model": "ghost"})
    assert (missing.status_code, missing.json()) == (404, {"error": "model 'ghost:latest' not found"})
    assert httpx.post(gateway.url + "/api/show", json={}).json() == {"error": "model is required"}


def test_pattern_routes_pass_the_rest_of_the_name_upstream(client: ollama.Client, upstream: FakeUpstream) -> None:
    client.chat(model="fake/Some-Model:latest", messages=USER_HI)
    assert upstream.last(CHAT).json["model"] == "Some-Model"


def test_root_and_head(gateway: RunningGateway) -> None:
    response = httpx.get(gateway.url + "/")
    assert (response.status_code, response.text) == (200, "Ollama is running")
    assert response.headers["content-type"].startswith("text/plain")
    head = httpx.head(gateway.url + "/")
    assert head.status_code == 200 and head.content == b""


def test_unknown_path_and_wrong_method_answer_in_plain_text(gateway: RunningGateway) -> None:
    missing = httpx.get(gateway.url + "/api/nothing-here")
    assert (missing.status_code, missing.text) == (404, "404 page not found")
    wrong = httpx.get(gateway.url + "/api/chat")
    assert (wrong.status_code, wrong.text) == (405, "405 method not allowed")


def test_body_is_json_whatever_the_content_type(gateway: RunningGateway, upstream: FakeUpstream) -> None:
    body = json.dumps({"model": "tiny", "messages": USER_HI, "stream": False, "unknown_field": 1})
    response = httpx.post(gateway.url + "/api/chat", content=body, headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert response.status_code == 200 and response.json()["message"]["content"] == "Hello there."


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        pytest.param(b"", 400, "missing request body", id="empty"),
        pytest.param(b"{not json", 400, None, id="malformed"),
        pytest.param(b'{"model": "tiny", "messages": "nope"}', 400, None, id="wrong-type"),
        pytest.param(b'{"model": "tiny", "messages": [{"role": "user", "content": 5}]}', 400, None, id="content-number"),
        pytest.param(b'{"messages": []}', 400, "model is required", id="no-model"),
        pytest.param(b'{"model": "ghost", "messages": []}', 404, "model 'ghost' not found", id="unknown-model"),
        pytest.param(b'{"model": "tiny", "think": "loud"}', 400, None, id="bad-think"),
        pytest.param(b'{"model": "tiny", "options": {"num_ctx": "big"}}', 400, 'option "num_ctx" must be of type integer', id="bad-option"),
    ],
)
def test_bad_requests_get_ollama_errors(gateway: RunningGateway, body: bytes, status: int, message: str | None) -> None:
    response = httpx.post(gateway.url + "/api/chat", content=body)
    assert response.status_code == status
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert isinstance(error, str) and error
    if message is not None:
        assert error == message


def test_sdk_sees_unknown_model_as_404(client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as caught:
        client.chat(model="ghost", messages=USER_HI)
    assert caught.value.status_code == 404 and caught.value.error == "model 'ghost' not found"


def test_upstream_error_before_first_byte_keeps_its_status(client: ollama.Client, upstream: FakeUpstream) -> None:
    upstream.enqueue(CHAT, Reply.json({"error": {"message": "the prompt is too long", "type": "invalid_request_error"}}, status=400))
    with pytest.raises(ollama.ResponseError) as caught:
        list(client.chat(model="tiny", messages=USER_HI, stream=True))
    assert (caught.value.status_code, caught.value.error) == (400, "the prompt is too long")


def test_error_after_first_byte_is_a_final_error_line(gateway: RunningGateway, upstream: FakeUpstream) -> None:
    chunks = chat_chunks(["partial"])[:2]
    chunks.append({"error": {"message": "provider overloaded", "code": 503}, "choices": [{"index": 0, "delta": {}, "finish_reason": "error"}]})
    upstream.enqueue(CHAT, Reply.sse(chunks))
    response = httpx.post(gateway.url + "/api/chat", json={"model": "tiny", "messages": USER_HI}, timeout=10)
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert response.status_code == 200
    assert lines[0]["message"]["content"] == "partial"
    assert lines[-1] == {"error": "provider overloaded"}
    assert not any(line.get("done") for line in lines)
    with pytest.raises(ollama.ResponseError) as caught:
        upstream.enqueue(CHAT, Reply.sse(chunks))
        with ollama.Client(host=gateway.url) as fresh:
            list(fresh.chat(model="tiny", messages=USER_HI, stream=True))
    assert caught.value.status_code == -1 and caught.value.error == "provider overloaded"


def test_stream_cut_without_finish_is_an_error_not_a_success(gateway: RunningGateway, upstream: FakeUpstream) -> None:
    upstream.enqueue(CHAT, Reply.sse(chat_chunks(["half"])[:2], done=False))
    response = httpx.post(gateway.url + "/api/chat", json={"model": "tiny", "messages": USER_HI}, timeout=10)
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert "error" in lines[-1] and not any(line.get("done") for line in lines)


def test_unreachable_upstream_is_502(client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as caught:
        client.chat(model="deadmodel", messages=USER_HI)
    assert caught.value.status_code == 502 and "unreachable" in caught.value.error


def test_missing_api_key_names_the_variable(client: ollama.Client, upstream: FakeUpstream) -> None:
    with pytest.raises(ollama.ResponseError) as caught:
        client.chat(model="nokey", messages=USER_HI)
    assert caught.value.status_code == 502 and "TEST_MISSING_KEY" in caught.value.error
    assert upstream.received == []


def test_upstream_401_is_502_and_never_leaks_its_text(client: ollama.Client, upstream: FakeUpstream) -> None:
    upstream.enqueue(CHAT, Reply.json({"error": {"message": f"Incorrect API key provided: {API_KEY}", "code": "invalid_api_key"}}, status=401))
    with pytest.raises(ollama.ResponseError) as caught:
        client.chat(model="tiny", messages=USER_HI)
    assert caught.value.status_code == 502 and API_KEY not in caught.value.error


def test_request_id_is_echoed_and_logged_without_prompt_or_key(gateway: RunningGateway, upstream: FakeUpstream) -> None:
    secret_prompt = "my-very-private-prompt-text"
    response = httpx.post(
        gateway.url + "/api/chat",
        json={"model": "tiny", "messages": [{"role": "user", "content": secret_prompt}], "stream": False},
        headers={"X-Request-Id": "req-abc-123"},
    )
    assert response.headers["x-request-id"] == "req-abc-123"
    generated = httpx.get(gateway.url + "/api/version").headers["x-request-id"]
    assert len(generated) >= 8
    log = gateway.log_text_after("req-abc-123")
    summary = [json.loads(line) for line in log.splitlines() if '"req-abc-123"' in line]
    assert summary and summary[-1]["event"] == "request"
    assert summary[-1]["model"] == "tiny" and summary[-1]["upstream"] == "fake" and summary[-1]["status"] == 200
    assert summary[-1]["prompt_tokens"] == 12 and "duration_ms" in summary[-1]
    assert secret_prompt not in log and API_KEY not in log
