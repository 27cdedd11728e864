"""End to end: `/v1/responses` through the official `openai` SDK's Responses API (base_url =
<gateway>/v1), the gateway under Granian, a loopback upstream speaking Chat Completions.

Each test checks what the SDK parsed and what the upstream received.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import httpx2
import openai
import pytest
import zstandard

from gateway.translators.messages import ToolNames
from gateway.translators.responses_items import encrypted_reasoning
from tests.conftest import RunningGateway
from tests.fake_upstream import FakeUpstream, Reply, chat_chunks, chat_completion

CHAT = "/v1/chat/completions"


@pytest.fixture(scope="module")
def codex_gateway(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    folder = tmp_path_factory.mktemp("responses")
    routes = folder / "routes.yaml"
    routes.write_text(f"""
upstreams:
  fake: {{base_url: "{upstream.url}", api_key: "${{TEST_UPSTREAM_KEY}}", max_retries: 0, cooldown: false}}
  native: {{base_url: "{upstream.url}", api_key: "${{TEST_UPSTREAM_KEY}}", provider: openai, max_retries: 0, cooldown: false}}
models:
  - {{name: "gpt-oss:20b", upstream: fake, model: up-oss, reasoning: reasoning_effort, reasoning_input: reasoning,
      max_tokens_field: max_completion_tokens}}
  - {{name: qwen, upstream: fake, model: up-qwen, merge_system: true}}
  - {{name: native, upstream: native, model: gpt-up}}
""")
    running = RunningGateway(routes, folder / "gateway.log")
    yield running
    running.stop()


@pytest.fixture
def client(codex_gateway: RunningGateway) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=codex_gateway.url + "/v1", api_key="ollama", max_retries=0) as sdk:
        yield sdk


def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "up-oss",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


SHELL = {"type": "function", "name": "shell", "description": "Run a command", "strict": False,
         "parameters": {"type": "object", "properties": {"command": {"type": "array", "items": {"type": "string"}}}}}
NAMESPACE = {"type": "namespace", "name": "mcp_fs", "description": "files", "tools": [
    {"type": "function", "name": "read", "parameters": {"type": "object", "properties": {"path": {"type": "string"}}}}]}
PATCH = {"type": "custom", "name": "apply_patch", "description": "Apply a patch", "format": {"type": "text"}}


def test_create_with_a_string_input(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    upstream.enqueue(CHAT, Reply.json(chat_completion("Hello there.", usage=(12, 3))))
    response = client.responses.create(model="gpt-oss:20b", input="hi", instructions="Be brief.", max_output_tokens=50,
                                       temperature=0.5, store=False, metadata={"k": "v"})
    assert response.id.startswith("resp_") and response.object == "response" and response.status == "completed"
    assert response.output_text == "Hello there."
    assert response.model == "gpt-oss:20b" and response.instructions == "Be brief." and response.metadata == {"k": "v"}
    assert response.output[0].type == "message" and response.output[0].id.startswith("msg_")
    assert response.usage is not None
    assert (response.usage.input_tokens, response.usage.output_tokens, response.usage.total_tokens) == (12, 3, 15)
    assert upstream.last(CHAT).json == {
        "model": "up-oss", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}],
        "max_completion_tokens": 50, "temperature": 0.5,
    }


def test_codexs_items_and_tools_become_chat_messages_and_functions(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    client.responses.create(
        model="gpt-oss:20b", store=False, tool_choice="auto", parallel_tool_calls=False, include=["reasoning.encrypted_content"],
        reasoning={"effort": "high", "summary": "auto"}, tools=[SHELL, NAMESPACE, PATCH, {"type": "web_search"}],  # type: ignore[list-item]
        input=[
            {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "You are Codex."}]},
            {"role": "user", "content": [{"type": "input_text", "text": "list files"},
                                         {"type": "input_image", "image_url": "data:image/png;base64,iVBORw0KGgo="}]},
            {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": encrypted_reasoning("I should run ls.")},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Listing.", "annotations": []}]},
            {"type": "function_call", "call_id": "call_1", "name": "shell", "arguments": '{"command":["ls"]}'},
            {"type": "function_call", "call_id": "call_2", "name": "read", "namespace": "mcp_fs", "arguments": '{"path":"a"}'},
            {"type": "custom_tool_call", "call_id": "call_3", "name": "apply_patch", "input": "*** Begin Patch"},
            {"type": "web_search_call", "id": "ws_1", "status": "completed", "action": {"type": "search", "query": "x"}},
            {"type": "function_call_output", "call_id": "call_2", "output": "contents of a"},
            {"type": "function_call_output", "call_id": "call_1", "output": [{"type": "input_text", "text": "a.py"}]},
        ],  # type: ignore[arg-type]
    )
    sent = upstream.last(CHAT).json
    read_name = ToolNames().upstream("mcp_fs.read")
    assert sent["messages"] == [
        {"role": "system", "content": "You are Codex."},
        {"role": "user", "content": [{"type": "text", "text": "list files"},
                                     {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]},
        {"role": "assistant", "content": "Listing.", "reasoning": "I should run ls.", "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "shell", "arguments": '{"command":["ls"]}'}},
            {"id": "call_2", "type": "function", "function": {"name": read_name, "arguments": '{"path":"a"}'}},
            {"id": "call_3", "type": "function", "function": {"name": "apply_patch", "arguments": '{"input":"*** Begin Patch"}'}},
        ]},
        {"role": "tool", "tool_call_id": "call_2", "content": "contents of a"},
        {"role": "tool", "tool_call_id": "call_1", "content": "a.py"},
        {"role": "tool", "tool_call_id": "call_3", "content": ""},  # unanswered: an empty result
    ]
    assert [tool["function"]["name"] for tool in sent["tools"]] == ["shell", read_name, "apply_patch"]  # web_search dropped
    assert sent["tools"][0] == {"type": "function", "function": {
        "name": "shell", "description": "Run a command", "strict": False, "parameters": SHELL["parameters"]}}
    assert (sent["tool_choice"], sent["parallel_tool_calls"], sent["reasoning_effort"]) == ("auto", False, "high")


def test_tool_calls_come_back_as_function_call_items(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    read_name = ToolNames().upstream("mcp_fs.read")
    upstream.enqueue(CHAT, Reply.json(chat_completion("I will look.", finish_reason="tool_calls", reasoning="think first", tool_calls=[
        {"id": "call_a", "type": "function", "function": {"name": "shell", "arguments": '{"command":["ls"]}'}},
        {"id": "call_b", "type": "function", "function": {"name": read_name, "arguments": '{"path":"x"}'}},
        {"id": "call_c", "type": "function", "function": {"name": "apply_patch", "arguments": '{"input":"*** Begin"}'}},
    ])))
    response = client.responses.create(model="gpt-oss:20b", input="go", tools=[SHELL, NAMESPACE, PATCH],  # type: ignore[list-item]
                                       include=["reasoning.encrypted_content"])
    kinds = [item.type for item in response.output]
    assert kinds == ["reasoning", "message", "function_call", "function_call", "custom_tool_call"]
    reasoning = response.output[0].model_dump()
    assert reasoning["summary"] == [{"type": "summary_text", "text": "think first"}]
    assert reasoning["encrypted_content"] == encrypted_reasoning("think first")
    calls = [item.model_dump(exclude_none=True) for item in response.output[2:]]
    assert [(c["call_id"], c["name"], c.get("arguments", c.get("input")), c.get("namespace")) for c in calls] == [
        ("call_a", "shell", '{"command":["ls"]}', None), ("call_b", "read", '{"path":"x"}', "mcp_fs"), ("call_c", "apply_patch", "*** Begin", None),
    ]
    assert response.status == "completed"


def test_a_length_stop_is_an_incomplete_response(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    upstream.enqueue(CHAT, Reply.json(chat_completion("cut sh", finish_reason="length")))
    response = client.responses.create(model="gpt-oss:20b", input="long", max_output_tokens=2)
    assert response.status == "incomplete"
    assert response.incomplete_details is not None and response.incomplete_details.reason == "max_output_tokens"


def test_streamed_text_events_have_increasing_sequence_numbers(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    upstream.enqueue(CHAT, Reply.sse(chat_chunks(["Hel", "lo"], usage=(7, 2))))
    with client.responses.stream(model="gpt-oss:20b", input="hi") as stream:
        events = list(stream)
        final = stream.get_final_response()
    assert [event.type for event in events] == [
        "response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.delta", "response.output_text.done", "response.content_part.done",
        "response.output_item.done", "response.completed",
    ]
    assert [event.sequence_number for event in events] == list(range(len(events)))
    assert final.output_text == "Hello" and final.status == "completed"
    assert final.usage is not None and (final.usage.input_tokens, final.usage.output_tokens) == (7, 2)
    sent = upstream.last(CHAT).json
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}


def test_streamed_reasoning_and_function_calls(client: openai.OpenAI, upstream: FakeUpstream, codex_gateway: RunningGateway) -> None:
    chunks = [
        chunk({"role": "assistant", "content": ""}), chunk({"reasoning": "Need "}), chunk({"reasoning": "ls."}),
        chunk({"content": "Running."}),
        chunk({"tool_calls": [{"index": 0, "id": "call_a", "type": "function", "function": {"name": "shell", "arguments": ""}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"command":'}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '["ls"]}'}}]}),
        chunk({}, "tool_calls"),
    ]
    upstream.enqueue(CHAT, Reply.sse(chunks), Reply.sse(chunks))
    with client.responses.stream(model="gpt-oss:20b", input="go", tools=[SHELL]) as stream:  # type: ignore[list-item]
        events = list(stream)
        final = stream.get_final_response()
    assert [item.type for item in final.output] == ["reasoning", "message", "function_call"]
    call = final.output[2].model_dump()
    assert (call["call_id"], call["name"], call["arguments"], call["status"]) == ("call_a", "shell", '{"command":["ls"]}', "completed")
    summary = [event.delta for event in events if event.type == "response.reasoning_summary_text.delta"]  # type: ignore[union-attr]
    assert summary == ["Need ", "ls."]
    arguments = [event.delta for event in events if event.type == "response.function_call_arguments.delta"]  # type: ignore[union-attr]
    assert arguments == ['{"command":', '["ls"]}']
    indices = [(event.type, event.output_index) for event in events if event.type.startswith("response.output_item.")]  # type: ignore[union-attr]
    assert indices == [
        ("response.output_item.added", 0), ("response.output_item.done", 0), ("response.output_item.added", 1),
        ("response.output_item.done", 1), ("response.output_item.added", 2), ("response.output_item.done", 2),
    ]
    raw = httpx.post(codex_gateway.url + "/v1/responses", json={"model": "gpt-oss:20b", "input": "go", "stream": True, "tools": [SHELL]})
    frames = [frame for frame in raw.text.split("\n\n") if frame]
    for frame in frames:  # Codex switches on `data.type`; the event name must agree with it
        name, data = frame.split("\n")
        assert name.removeprefix("event: ") == json.loads(data.removeprefix("data: "))["type"]


def test_an_upstream_failure_mid_stream_is_response_failed(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    upstream.enqueue(CHAT, Reply.sse(chat_chunks(["partial", " more"]), cut_after=2))
    with client.responses.stream(model="gpt-oss:20b", input="hi") as stream:
        events = list(stream)
    assert events[-1].type == "response.failed"
    failed = events[-1].response  # type: ignore[union-attr]
    assert failed.status == "failed" and failed.error is not None and failed.error.code == "server_error"
    assert [event.sequence_number for event in events] == list(range(len(events)))


def test_errors_are_in_openais_shape(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    with pytest.raises(openai.NotFoundError) as not_found:
        client.responses.create(model="ghost", input="hi")
    assert not_found.value.body == {"message": "model 'ghost' not found", "type": "not_found_error", "param": None, "code": None}
    with pytest.raises(openai.BadRequestError) as stateful:
        client.responses.create(model="gpt-oss:20b", input="hi", previous_response_id="resp_123")
    assert "keeps no conversation state" in stateful.value.message
    upstream.enqueue(CHAT, Reply.json({"error": {"message": "This model's maximum context length is 8192 tokens. However, your "
                                                  "messages resulted in 9000 tokens.", "type": "invalid_request_error"}}, status=400))
    with pytest.raises(openai.BadRequestError) as overflow:
        client.responses.create(model="gpt-oss:20b", input="long")
    assert overflow.value.code == "context_length_exceeded"
    upstream.enqueue(CHAT, Reply.json({"error": {"message": "slow down"}}, status=429))
    with pytest.raises(openai.RateLimitError):
        client.responses.create(model="gpt-oss:20b", input="hi")


class ZstdTransport(httpx2.HTTPTransport):
    """Compresses every request body with zstd and says so, as Codex ≥ 0.98 does."""

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        body = zstandard.ZstdCompressor().compress(request.read())
        headers = {**request.headers, "content-encoding": "zstd", "content-length": str(len(body))}
        return super().handle_request(httpx2.Request(request.method, request.url, headers=headers, content=body))


def test_a_zstd_body_is_decoded(codex_gateway: RunningGateway, upstream: FakeUpstream) -> None:
    upstream.enqueue(CHAT, Reply.json(chat_completion("decoded")))
    with openai.OpenAI(base_url=codex_gateway.url + "/v1", api_key="x", max_retries=0,
                       http_client=httpx2.Client(transport=ZstdTransport())) as zstd_client:
        response = zstd_client.responses.create(model="gpt-oss:20b", input="compressed " * 1000)
    assert response.output_text == "decoded"
    assert upstream.last(CHAT).json["messages"] == [{"role": "user", "content": "compressed " * 1000}]


def test_zstd_bodies_beyond_the_limits_are_refused(codex_gateway: RunningGateway) -> None:
    url = codex_gateway.url + "/v1/responses"
    headers = {"content-encoding": "zstd"}
    garbage = httpx.post(url, content=b"not zstd at all", headers=headers)
    assert garbage.status_code == 400 and garbage.json()["error"]["message"].startswith("failed to decompress request body")
    body = json.dumps({"model": "gpt-oss:20b", "input": "x" * (21 * 1024 * 1024)}).encode()
    bomb = httpx.post(url, content=zstandard.ZstdCompressor().compress(body), headers=headers)
    assert bomb.status_code == 413 and "decompressed" in bomb.json()["error"]["message"]
    # A frame whose window is over 8 MiB (a long-distance-matching frame) is refused as Ollama refuses it.
    wide = zstandard.ZstdCompressor(compression_params=zstandard.ZstdCompressionParameters(window_log=24, enable_ldm=True))
    chunked = wide.compressobj()
    frame = chunked.compress(json.dumps({"model": "gpt-oss:20b", "input": "y" * 1000}).encode()) + chunked.flush()
    assert httpx.post(url, content=frame, headers=headers).status_code == 400


def test_late_developer_messages_are_merged_for_templates_that_reject_them(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    client.responses.create(model="qwen", instructions="Base.", input=[
        {"role": "user", "content": "a"}, {"role": "developer", "content": "Also this."}, {"role": "user", "content": "b"}])
    assert upstream.last(CHAT).json["messages"] == [
        {"role": "system", "content": "Base.\n\nAlso this."}, {"role": "user", "content": "a"}, {"role": "user", "content": "b"}]


def test_an_upstream_with_its_own_responses_api_gets_the_request_passed_through(client: openai.OpenAI, upstream: FakeUpstream,
                                                                              codex_gateway: RunningGateway) -> None:
    answer = {"id": "resp_up", "object": "response", "created_at": 1, "status": "completed", "model": "gpt-up", "output": [
        {"id": "msg_up", "type": "message", "role": "assistant", "status": "completed",
         "content": [{"type": "output_text", "text": "native", "annotations": []}]}],
        "parallel_tool_calls": True, "tool_choice": "auto", "tools": []}
    upstream.enqueue("/v1/responses", Reply.json(answer))
    response = client.responses.create(model="native", input="hi", store=False, extra_query={"trace": "1"},
                                       include=["reasoning.encrypted_content"])
    assert (response.id, response.output_text) == ("resp_up", "native")
    received = upstream.last("/v1/responses")
    assert received.json == {"model": "gpt-up", "input": "hi", "store": False, "include": ["reasoning.encrypted_content"]}
    assert received.query == "trace=1"
    assert not [r for r in upstream.received if r.path == CHAT]
    error = {"message": "Invalid 'input': bad", "type": "invalid_request_error", "param": "input", "code": "invalid_value"}
    upstream.enqueue("/v1/responses", Reply.json({"error": error}, status=400))
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model="native", input="hi")
    assert caught.value.body == error  # relayed as the upstream said it
    events = "event: response.created\ndata: {\"type\":\"response.created\",\"sequence_number\":0}\n\n"
    upstream.enqueue("/v1/responses", Reply(events=[events], content_type="text/event-stream"))
    raw = httpx.post(codex_gateway.url + "/v1/responses", json={"model": "native", "input": "hi", "stream": True})
    assert raw.text == events  # byte for byte
