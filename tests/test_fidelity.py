"""End to end through the `ollama` SDK: tools, vision, thinking, structured output, options.

The upstream replays provider fixtures from references/openai-examples/; each test checks what
the SDK parsed and what the upstream received.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator

import ollama
import pytest

from tests.conftest import RunningGateway, routes_yaml
from tests.fake_upstream import FakeUpstream, Reply, chat_completion

CHAT = "/v1/chat/completions"
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 32).decode()

EXTRA_MODELS = """
  - name: thinker
    upstream: fake
    model: up-thinker
    capabilities: [completion, thinking, tools, vision]
    reasoning: openrouter
  - name: tagger
    upstream: fake
    model: up-tagger
    think_tags: true
  - name: plain
    upstream: fake
    model: up-plain
    capabilities: [completion]
"""


def get_weather(city: str) -> str:
    """Get the current weather for a city.

    Args:
        city: The city name
    """
    return "sunny"


@pytest.fixture(scope="module")
def rich_gateway(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    folder = tmp_path_factory.mktemp("fidelity")
    routes = folder / "routes.yaml"
    routes.write_text(routes_yaml(upstream.url, EXTRA_MODELS))
    running = RunningGateway(routes, folder / "gateway.log")
    yield running
    running.stop()


@pytest.fixture
def client(rich_gateway: RunningGateway) -> Iterator[ollama.Client]:
    with ollama.Client(host=rich_gateway.url) as sdk_client:
        yield sdk_client


def test_streamed_tool_calls_arrive_whole_once(client: ollama.Client, upstream: FakeUpstream) -> None:
    upstream.enqueue(CHAT, Reply.fixture("openai", "parallel_tools_stream"))
    chunks = list(client.chat(model="thinker", messages=[{"role": "user", "content": "weather in two cities?"}], tools=[get_weather], stream=True))
    calls = [call for chunk in chunks for call in (chunk.message.tool_calls or [])]
    assert len(calls) == 2 and all(isinstance(call.function.arguments, dict) for call in calls)
    assert chunks[-1].done and chunks[-1].done_reason == "stop"
    sent = upstream.last(CHAT).json
    assert sent["tools"][0]["function"]["name"] == "get_weather"
    assert sent["tools"][0]["function"]["parameters"]["properties"]["city"]["type"] == "string"


def test_non_streamed_tool_calls_and_history_round_trip(client: ollama.Client, upstream: FakeUpstream) -> None:
    upstream.enqueue(CHAT, Reply.fixture("openai", "tools"))
    reply = client.chat(model="thinker", messages=[{"role": "user", "content": "weather?"}], tools=[get_weather])
    call = reply.message.tool_calls[0]
    assert call.function.name == "get_weather" and isinstance(call.function.arguments, dict)
    history = [
        {"role": "user", "content": "weather?"},
        reply.message,
        {"role": "tool", "content": "sunny", "tool_name": "get_weather"},
    ]
    client.chat(model="thinker", messages=history, tools=[get_weather])
    sent = upstream.last(CHAT).json["messages"]
    assert sent[1]["tool_calls"][0]["function"]["arguments"] == json.dumps(call.function.arguments, separators=(",", ":"))
    assert sent[2] == {"role": "tool", "tool_call_id": sent[1]["tool_calls"][0]["id"], "content": "sunny"}


def test_tools_on_a_model_without_tools_is_a_400(client: ollama.Client, upstream: FakeUpstream) -> None:
    with pytest.raises(ollama.ResponseError) as caught:
        client.chat(model="plain", messages=[{"role": "user", "content": "x"}], tools=[get_weather])
    assert caught.value.status_code == 400 and "does not support tools" in caught.value.error
    assert upstream.received == []


def test_images_reach_the_upstream_as_data_uris(client: ollama.Client, upstream: FakeUpstream) -> None:
    client.chat(model="thinker", messages=[{"role": "user", "content": "what is this?", "images": [base64.b64decode(PNG)]}])
    parts = upstream.last(CHAT).json["messages"][0]["content"]
    assert parts[0] == {"type": "text", "text": "what is this?"}
    assert parts[1]["image_url"]["url"].startswith("data:image/png;base64,")


def test_a_non_image_is_a_400(client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as caught:
        client.generate(model="thinker", prompt="x", images=[b"plain text, not an image"])
    assert caught.value.status_code == 400 and "not a PNG" in caught.value.error


def test_thinking_streams_and_uses_the_routes_knob(client: ollama.Client, upstream: FakeUpstream) -> None:
    upstream.enqueue(CHAT, Reply.fixture("openrouter", "reasoning_stream"))
    chunks = list(client.chat(model="thinker", messages=[{"role": "user", "content": "2+2?"}], think="high", stream=True))
    assert "".join(c.message.thinking or "" for c in chunks)
    assert "".join(c.message.content for c in chunks)
    assert upstream.last(CHAT).json["reasoning"] == {"effort": "high"}


def test_think_tags_become_thinking(client: ollama.Client, upstream: FakeUpstream) -> None:
    upstream.enqueue(CHAT, Reply.fixture("groq", "reasoning_stream"))
    chunks = list(client.generate(model="tagger", prompt="2+2?", stream=True))
    response = "".join(c.response for c in chunks)
    assert "".join(c.thinking or "" for c in chunks) and "<think>" not in response and response


def test_think_false_hides_reasoning(client: ollama.Client, upstream: FakeUpstream) -> None:
    upstream.enqueue(CHAT, Reply.fixture("deepseek", "reasoning_stream"))
    chunks = list(client.chat(model="thinker", messages=[{"role": "user", "content": "2+2?"}], think=False, stream=True))
    assert not any(c.message.thinking for c in chunks)
    assert upstream.last(CHAT).json["reasoning"] == {"enabled": False}


def test_structured_output_schema(client: ollama.Client, upstream: FakeUpstream) -> None:
    upstream.enqueue(CHAT, Reply.json(chat_completion('{"age": 3}')))
    schema = {"type": "object", "properties": {"age": {"type": "integer"}}, "required": ["age"]}
    reply = client.chat(model="thinker", messages=[{"role": "user", "content": "age?"}], format=schema)
    assert json.loads(reply.message.content) == {"age": 3}
    assert upstream.last(CHAT).json["response_format"]["json_schema"] == {"name": "response", "schema": schema, "strict": False}


def test_removed_and_load_time_options_are_accepted_and_not_sent(client: ollama.Client, upstream: FakeUpstream) -> None:
    options = {"mirostat": 1, "tfs_z": 1.0, "num_ctx": 32768, "num_gpu": 1, "use_mlock": True, "temperature": 0.5, "top_p": 0.9, "seed": 3}
    client.chat(model="thinker", messages=[{"role": "user", "content": "x"}], options=options)
    sent = upstream.last(CHAT).json
    assert {k: sent[k] for k in ("temperature", "top_p", "seed")} == {"temperature": 0.5, "top_p": 0.9, "seed": 3}
    assert not {"mirostat", "tfs_z", "num_ctx", "num_gpu", "use_mlock"} & set(sent)
