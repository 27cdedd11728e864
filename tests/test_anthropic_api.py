"""End to end: `/v1/messages` through the official `anthropic` SDK (base_url = the gateway), the
gateway under Granian, a loopback upstream speaking Chat Completions.

Each test checks what the SDK parsed and what the upstream received.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest

from tests.conftest import API_KEY, RunningGateway, closed_port
from tests.fake_upstream import FakeUpstream, Reply, chat_chunks, chat_completion

CHAT = "/v1/chat/completions"
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\x00" * 16).decode()
SONNET = "claude-sonnet-4-6"


@pytest.fixture(scope="module")
def claude_gateway(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    folder = tmp_path_factory.mktemp("anthropic")
    routes = folder / "routes.yaml"
    routes.write_text(f"""
upstreams:
  fake: {{base_url: "{upstream.url}", api_key: "${{TEST_UPSTREAM_KEY}}", max_retries: 0, cooldown: false}}
  dead: {{base_url: "http://127.0.0.1:{closed_port()}/v1", max_retries: 0, cooldown: false}}
  native: {{base_url: "{upstream.url}", api_key: "${{TEST_UPSTREAM_KEY}}", auth_header: x-api-key, messages_api: true, max_retries: 0, cooldown: false}}
models:
  - name: sonnet
    aliases: [{SONNET}, claude-haiku-4-5]
    upstream: fake
    model: up-model
    reasoning: chat_template_kwargs
    reasoning_input: reasoning_content
    extra_options: [top_k]
  - {{name: gpt, upstream: fake, model: up-gpt, reasoning: reasoning_effort, max_tokens_field: max_completion_tokens, stop_limit: 2}}
  - {{name: router, upstream: fake, model: up-router, reasoning: openrouter}}
  - {{name: tagged, upstream: fake, model: up-tagged, think_tags: true}}
  - {{name: plain, upstream: fake, model: up-plain, capabilities: [completion]}}
  - {{name: qwen, upstream: fake, model: up-qwen, merge_system: true}}
  - {{name: primary, upstream: dead, fallbacks: [sonnet]}}
  - {{name: native, upstream: native, model: claude-up, fallbacks: [sonnet]}}
""")
    running = RunningGateway(routes, folder / "gateway.log")
    yield running
    running.stop()


@pytest.fixture
def client(claude_gateway: RunningGateway) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=claude_gateway.url, api_key="sk-ant-client", max_retries=0) as sdk:
        yield sdk


def sse_events(response: httpx.Response) -> list[tuple[str, dict[str, Any]]]:
    """(event name, data) of each SSE event, checking the name equals the data's `type`."""
    events = []
    for frame in response.text.split("\n\n"):
        if not frame.strip():
            continue
        lines = dict(line.split(": ", 1) for line in frame.split("\n"))
        data = json.loads(lines["data"])
        assert lines["event"] == data["type"]
        events.append((lines["event"], data))
    return events


def tool_chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "up-model",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


# -- create ---------------------------------------------------------------------------------------


def test_create_sends_claude_codes_request_as_chat_completions(client: anthropic.Anthropic, upstream: FakeUpstream) -> None:
    upstream.enqueue(CHAT, Reply.json(chat_completion("It is sunny.", usage=(30, 4))))
    message = client.messages.create(
        model=SONNET, max_tokens=1024, stop_sequences=["END"],
        system=[{"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1; cch=abc;"},
                {"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}},
                {"type": "text", "text": "Be brief."}],
        messages=[{"role": "user", "content": [{"type": "text", "text": "weather?", "cache_control": {"type": "ephemeral"}},
                                               {"type": "text", "text": ""}]}],
        metadata={"user_id": "user_abc"}, extra_query={"beta": "true"},
        service_tier="auto",  # SDK 2.10 no longer types the sampling parameters: Claude Code still sends them
        extra_body={"context_management": {"edits": []}, "temperature": 0.2, "top_p": 0.9, "top_k": 7},
    )
    assert message.id.startswith("msg_") and message.type == "message" and message.role == "assistant"
    assert message.model == SONNET
    assert [block.model_dump() for block in message.content] == [{"type": "text", "text": "It is sunny.", "citations": None}]
    assert (message.stop_reason, message.stop_sequence) == ("end_turn", None)
    assert (message.usage.input_tokens, message.usage.output_tokens) == (30, 4)
    assert upstream.last(CHAT).json == {
        "model": "up-model",
        "messages": [{"role": "system", "content": "You are Claude Code.\n\nBe brief."}, {"role": "user", "content": "weather?"}],
        "max_tokens": 1024, "temperature": 0.2, "top_p": 0.9, "top_k": 7, "stop": ["END"],
    }
    assert upstream.last(CHAT).headers["Authorization"] == f"Bearer {API_KEY}"


def test_cached_prompt_tokens_are_reported_as_cache_reads(client: anthropic.Anthropic, upstream: FakeUpstream) -> None:
    body = chat_completion("ok", usage=(100, 2))
    body["usage"]["prompt_tokens_details"] = {"cached_tokens": 80}
    upstream.enqueue(CHAT, Reply.json(body))
    usage = client.messages.create(model=SONNET, max_tokens=10, messages=[{"role": "user", "content": "hi"}]).usage
    assert (usage.input_tokens, usage.cache_read_input_tokens, usage.cache_creation_input_tokens, usage.output_tokens) == (20, 80, 0, 2)


@pytest.mark.parametrize(("finish", "stop_reason"), [("length", "max_tokens"), ("content_filter", "refusal"), ("stop", "end_turn")])
def test_finish_reasons_become_stop_reasons(client: anthropic.Anthropic, upstream: FakeUpstream, finish: str, stop_reason: str) -> None:
    upstream.enqueue(CHAT, Reply.json(chat_completion("cut", finish_reason=finish)))
    assert client.messages.create(model=SONNET, max_tokens=3, messages=[{"role": "user", "content": "hi"}]).stop_reason == stop_reason


def test_a_stop_sequence_the_upstream_names_is_reported(client: anthropic.Anthropic, upstream: FakeUpstream) -> None:
    body = chat_completion("one two")
    body["choices"][0]["stop_reason"] = "THREE"  # vLLM names the matched stop string
    upstream.enqueue(CHAT, Reply.json(body))
    message = client.messages.create(model="gpt", max_tokens=10, stop_sequences=["THREE", "FOUR", "FIVE"],
                                     messages=[{"role": "user", "content": "count"}])
    assert (message.stop_reason, message.stop_sequence) == ("stop_sequence", "THREE")
    sent = upstream.last(CHAT).json
    assert sent["stop"] == ["THREE", "FOUR"] and sent["max_completion_tokens"] == 10  # the route's stop_limit and field


def test_system_messages_inside_messages_are_kept_in_place(client: anthropic.Anthropic, upstream: FakeUpstream) -> None:
    client.messages.create(model=SONNET, max_tokens=10, messages=[
        {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
        {"role": "system", "content": [{"type": "text", "text": "Now be terse."}]},  # type: ignore[misc, list-item]
        {"role": "user", "content": "c"},
    ])
    assert upstream.last(CHAT).json["messages"] == [
        {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
        {"role": "system", "content": "Now be terse."}, {"role": "user", "content": "c"},
    ]


def test_late_system_messages_are_merged_for_templates_that_reject_them(client: anthropic.Anthropic, upstream: FakeUpstream) -> None:
    client.messages.create(model="qwen", max_tokens=10, system="You are Claude Code.", messages=[
        {"role": "user", "content": "a"},
        {"role": "system", "content": "Available agent types: claude."},  # type: ignore[misc, list-item]
        {"role": "user", "content": "b"},
    ])
    assert upstream.last(CHAT).json["messages"] == [
        {"role": "system", "content": "You are Claude Code.\n\nAvailable agent types: claude."},
        {"role": "user", "content": "a"}, {"role": "user", "content": "b"},
    ]


def test_images_go_up_as_image_url_parts(client: anthropic.Anthropic, upstream: FakeUpstream) -> None:
    client.messages.create(model=SONNET, max_tokens=10, messages=[{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
        {"type": "text", "text": "What are these?"},
    ]}])
    assert upstream.last(CHAT).json["messages"] == [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
        {"type": "text", "text": "What are these?"},
    ]}]


# -- tools ----------------------------------------------------------------------------------------

READ_TOOL = {
    "name": "Read", "description": "Read a file",
    "input_schema": {"$schema": "http://json-schema.org/draft-07/schema#", "type": "object", "additionalProperties": False,
                     "properties": {"path": {"type": "string"}}, "required": ["path"], "x-unknown": {"a": 1}},
    "cache_control": {"type": "ephemeral"},
}
MCP_TOOL = {"name": "mcp__some.server__a_tool_whose_name_is_far_too_long_for_openai_to_accept_it",
            "input_schema": {"type": "object"}}


def test_tools_and_tool_choice_are_mapped(client: anthropic.Anthropic, upstream: FakeUpstream) -> None:
    upstream.enqueue(CHAT, Reply.json(chat_completion("", finish_reason="tool_calls", tool_calls=[
        {"id": "call_1", "type": "function", "function": {"name": "Read", "arguments": '{"path": "a.py"}'}},
        {"id": "call_2", "type": "function", "function": {"name": upstream_name_of(MCP_TOOL["name"]), "arguments": "{}"}},
    ])))
    message = client.messages.create(
        model=SONNET, max_tokens=100, messages=[{"role": "user", "content": "read a.py"}],
        tools=[READ_TOOL, MCP_TOOL, {"type": "web_search_20250305", "name": "web_search", "max_uses": 5}],  # type: ignore[list-item]
        tool_choice={"type": "any", "disable_parallel_tool_use": True},
    )
    assert message.stop_reason == "tool_use"
    assert [(b.type, b.id, b.name, b.input) for b in message.content] == [  # type: ignore[union-attr]
        ("tool_use", "call_1", "Read", {"path": "a.py"}), ("tool_use", "call_2", MCP_TOOL["name"], {}),
    ]
    sent = upstream.last(CHAT).json
    assert sent["tools"][0] == {"type": "function", "function": {
        "name": "Read", "description": "Read a file",
        "parameters": {"type": "object", "additionalProperties": False, "properties": {"path": {"type": "string"}},
                       "required": ["path"], "x-unknown": {"a": 1}},
    }}
    assert sent["tools"][1]["function"]["name"] == upstream_name_of(MCP_TOOL["name"])
    assert len(sent["tools"]) == 2  # the server tool is dropped
    assert (sent["tool_choice"], sent["parallel_tool_calls"]) == ("required", False)


def upstream_name_of(name: str) -> str:
    from gateway.translators.messages import ToolNames

    return ToolNames().upstream(name)


@pytest.mark.parametrize(("choice", "expected"), [
    ({"type": "auto"}, {"tool_choice": "auto"}),
    ({"type": "none"}, {"tool_choice": "none"}),
    ({"type": "tool", "name": "Read"}, {"tool_choice": {"type": "function", "function": {"name": "Read"}}}),
])
def test_each_tool_choice(client: anthropic.Anthropic, upstream: FakeUpstream, choice: Any, expected: dict[str, Any]) -> None:
    client.messages.create(model=SONNET, max_tokens=10, messages=[{"role": "user", "content": "x"}], tools=[READ_TOOL],  # type: ignore[list-item]
                           tool_choice=choice)
    sent = upstream.last(CHAT).json
    assert {key: sent[key] for key in ("tool_choice", "parallel_tool_calls") if key in sent} == expected


def test_a_tool_result_turn_goes_up_as_tool_messages_first(client: anthropic.Anthropic, upstream: FakeUpstream) -> None:
    client.messages.create(model=SONNET, max_tokens=10, tools=[READ_TOOL], messages=[  # type: ignore[list-item]
        {"role": "user", "content": "read two files"},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "I should read both.", "signature": "sig=="},
            {"type": "text", "text": "Reading."},
            {"type": "tool_use", "id": "toolu_1", "name": "Read", "input": {"path": "a.py"}},
            {"type": "tool_use", "id": "toolu_2", "name": "Read", "input": {"path": "b.png"}},
            {"type": "tool_use", "id": "toolu_3", "name": "Read", "input": {"path": "c.py"}},
        ]},
        {"role": "user", "content": [
            {"type": "text", "text": "Here you go."},
            {"type": "tool_result", "tool_use_id": "toolu_2", "content": [
                {"type": "text", "text": "an image:"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}]},
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "no such file", "is_error": True},
        ]},
    ])
    assert upstream.last(CHAT).json["messages"] == [
        {"role": "user", "content": "read two files"},
        {"role": "assistant", "content": "Reading.", "reasoning_content": "I should read both.", "tool_calls": [
            {"id": "toolu_1", "type": "function", "function": {"name": "Read", "arguments": '{"path":"a.py"}'}},
            {"id": "toolu_2", "type": "function", "function": {"name": "Read", "arguments": '{"path":"b.png"}'}},
            {"id": "toolu_3", "type": "function", "function": {"name": "Read", "arguments": '{"path":"c.py"}'}},
        ]},
        {"role": "tool", "tool_call_id": "toolu_2", "content": "an image:"},
        {"role": "tool", "tool_call_id": "toolu_1", "content": "Error: no such file"},
        {"role": "tool", "tool_call_id": "toolu_3", "content": ""},  # unanswered: an empty result
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}]},
        {"role": "user", "content": "Here you go."},
    ]


def test_thinking_of_earlier_turns_is_not_sent_back(client: anthropic.Anthropic, upstream: FakeUpstream) -> None:
    client.messages.create(model=SONNET, max_tokens=10, messages=[
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": [{"type": "thinking", "thinking": "old", "signature": "s"}, {"type": "text", "text": "b"}]},
        {"role": "user", "content": "c"},
    ])
    assert upstream.last(CHAT).json["messages"][1] == {"role": "assistant", "content": "b"}


# -- thinking -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("model", "request_fields", "expected"), [
    ("sonnet", {"thinking": {"type": "enabled", "budget_tokens": 2048}},
     {"chat_template_kwargs": {"enable_thinking": True, "reasoning_effort": "low"}}),
    ("sonnet", {"thinking": {"type": "enabled", "budget_tokens": 31999}},
     {"chat_template_kwargs": {"enable_thinking": True, "reasoning_effort": "high"}}),
    ("sonnet", {"thinking": {"type": "disabled"}}, {"chat_template_kwargs": {"enable_thinking": False}}),
    ("sonnet", {"thinking": {"type": "adaptive"}}, {}),
    ("gpt", {"thinking": {"type": "adaptive"}, "output_config": {"effort": "xhigh"}}, {"reasoning_effort": "high"}),
    ("gpt", {"thinking": {"type": "enabled", "budget_tokens": 8000}}, {"reasoning_effort": "medium"}),
    ("router", {"thinking": {"type": "enabled", "budget_tokens": 5000}}, {"reasoning": {"max_tokens": 5000}}),
    ("plain", {"thinking": {"type": "enabled", "budget_tokens": 5000}}, {}),  # no thinking capability: relaxed
])
def test_thinking_reaches_the_routes_reasoning_knob(client: anthropic.Anthropic, upstream: FakeUpstream, model: str,
                                                    request_fields: dict[str, Any], expected: dict[str, Any]) -> None:
    client.messages.create(model=model, max_tokens=4000, messages=[{"role": "user", "content": "think"}],
                           extra_body=request_fields)
    sent = upstream.last(CHAT).json
    knobs = {key: sent[key] for key in ("chat_template_kwargs", "reasoning_effort", "reasoning") if key in sent}
    assert knobs == expected


def test_reasoning_comes_back_as_a_thinking_block_first(client: anthropic.Anthropic, upstream: FakeUpstream) -> None:
    upstream.enqueue(CHAT, Reply.json(chat_completion("42", reasoning_content="6 times 7")))
    message = client.messages.create(model=SONNET, max_tokens=2000, thinking={"type": "enabled", "budget_tokens": 1024},
                                     messages=[{"role": "user", "content": "6*7?"}])
    assert [block.model_dump(exclude_none=True) for block in message.content] == [
        {"type": "thinking", "thinking": "6 times 7", "signature": ""}, {"type": "text", "text": "42"},
    ]


def test_think_tags_become_thinking_blocks(client: anthropic.Anthropic, upstream: FakeUpstream) -> None:
    upstream.enqueue(CHAT, Reply.sse(chat_chunks(["<thi", "nk>hmm</think>\n", "Yes."])))
    with client.messages.stream(model="tagged", max_tokens=50, messages=[{"role": "user", "content": "?"}]) as stream:
        message = stream.get_final_message()
    assert [(b.type, getattr(b, "thinking", None) or getattr(b, "text", None)) for b in message.content] == [
        ("thinking", "hmm"), ("text", "Yes."),
    ]


# -- streaming ------------------------------------------------------------------------------------


def test_stream_events_are_anthropics_exact_sequence(claude_gateway: RunningGateway, upstream: FakeUpstream) -> None:
    upstream.enqueue(CHAT, Reply.sse(chat_chunks(["Hel", "lo"], usage=(9, 2))))
    response = httpx.post(claude_gateway.url + "/v1/messages?beta=true", json={
        "model": SONNET, "max_tokens": 10, "stream": True, "messages": [{"role": "user", "content": "hi"}]})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["cache-control"] == "no-cache"
    events = sse_events(response)
    assert [name for name, _ in events] == [
        "message_start", "ping", "content_block_start", "content_block_delta", "content_block_delta",
        "content_block_stop", "message_delta", "message_stop",
    ]
    start = events[0][1]["message"]
    assert start["id"].startswith("msg_") and start["content"] == [] and start["stop_reason"] is None
    assert start["usage"]["output_tokens"] == 0 and start["usage"]["input_tokens"] >= 1
    assert events[2][1] == {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
    assert events[3][1] == {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hel"}}
    assert events[6][1] == {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                            "usage": {"input_tokens": 9, "output_tokens": 2, "cache_creation_input_tokens": 0,
                                      "cache_read_input_tokens": 0}}
    sent = upstream.last(CHAT).json
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}


def test_streamed_thinking_text_and_tool_calls_get_indices_in_order(client: anthropic.Anthropic, upstream: FakeUpstream,
                                                                    claude_gateway: RunningGateway) -> None:
    chunks = [
        tool_chunk({"role": "assistant", "content": ""}),
        tool_chunk({"reasoning_content": "Let me "}), tool_chunk({"reasoning_content": "look."}),
        tool_chunk({"content": "Reading both."}),
        tool_chunk({"tool_calls": [{"index": 0, "id": "call_a", "type": "function", "function": {"name": "Read", "arguments": ""}}]}),
        tool_chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"pa'}}]}),
        tool_chunk({"tool_calls": [{"index": 0, "function": {"arguments": 'th": "a.py"}'}}]}),
        tool_chunk({"tool_calls": [{"index": 1, "id": "call_b", "type": "function", "function": {"name": "Read", "arguments": '{"path"'}}]}),
        tool_chunk({"tool_calls": [{"index": 1, "function": {"arguments": ': "b.py"}'}}]}),
        tool_chunk({}, "tool_calls"),
    ]
    upstream.enqueue(CHAT, Reply.sse(chunks), Reply.sse(chunks))
    with client.messages.stream(model=SONNET, max_tokens=100, tools=[READ_TOOL],  # type: ignore[list-item]
                                messages=[{"role": "user", "content": "read"}]) as stream:
        message = stream.get_final_message()
    assert message.stop_reason == "tool_use"
    assert [block.model_dump(exclude_none=True) for block in message.content] == [
        {"type": "thinking", "thinking": "Let me look.", "signature": ""},
        {"type": "text", "text": "Reading both."},
        {"type": "tool_use", "id": "call_a", "name": "Read", "input": {"path": "a.py"}},
        {"type": "tool_use", "id": "call_b", "name": "Read", "input": {"path": "b.py"}},
    ]
    raw = httpx.post(claude_gateway.url + "/v1/messages", json={
        "model": SONNET, "max_tokens": 100, "stream": True, "tools": [READ_TOOL], "messages": [{"role": "user", "content": "read"}]})
    events = sse_events(raw)
    starts = [(data["index"], data["content_block"]) for name, data in events if name == "content_block_start"]
    assert starts == [
        (0, {"type": "thinking", "thinking": "", "signature": ""}), (1, {"type": "text", "text": ""}),
        (2, {"type": "tool_use", "id": "call_a", "name": "Read", "input": {}}),
        (3, {"type": "tool_use", "id": "call_b", "name": "Read", "input": {}}),
    ]
    fragments = [(data["index"], data["delta"]["partial_json"]) for name, data in events
                 if name == "content_block_delta" and data["delta"]["type"] == "input_json_delta"]
    assert fragments == [(2, '{"pa'), (2, 'th": "a.py"}'), (3, '{"path"'), (3, ': "b.py"}')]
    stops = [data["index"] for name, data in events if name == "content_block_stop"]
    assert stops == [0, 1, 2, 3]


def test_an_upstream_failure_after_the_first_byte_is_an_error_event(client: anthropic.Anthropic, upstream: FakeUpstream,
                                                                    claude_gateway: RunningGateway) -> None:
    upstream.enqueue(CHAT, Reply.sse(chat_chunks(["partial", " answer"]), cut_after=2))
    with pytest.raises(anthropic.APIStatusError) as caught:
        with client.messages.stream(model=SONNET, max_tokens=10, messages=[{"role": "user", "content": "hi"}]) as stream:
            for _ in stream:
                pass
    assert caught.value.body["type"] == "error"  # type: ignore[index]
    assert caught.value.body["error"]["type"] == "api_error"  # type: ignore[index]
    upstream.enqueue(CHAT, Reply.sse(chat_chunks(["partial", " answer"]), cut_after=2))
    events = sse_events(httpx.post(claude_gateway.url + "/v1/messages", json={
        "model": SONNET, "max_tokens": 10, "stream": True, "messages": [{"role": "user", "content": "hi"}]}))
    assert [name for name, _ in events][-2:] == ["content_block_delta", "error"]
    assert "message_stop" not in [name for name, _ in events]


# -- errors ---------------------------------------------------------------------------------------


def test_unknown_model_is_anthropics_not_found_error(client: anthropic.Anthropic, upstream: FakeUpstream) -> None:
    with pytest.raises(anthropic.NotFoundError) as caught:
        client.messages.create(model="claude-opus-9", max_tokens=10, messages=[{"role": "user", "content": "hi"}])
    body = caught.value.body
    assert isinstance(body, dict)
    assert body["type"] == "error" and body["error"] == {"type": "not_found_error", "message": "model 'claude-opus-9' not found"}
    assert body["request_id"].startswith("req_")
    assert upstream.received == []


@pytest.mark.parametrize(("status", "error_class", "kind", "http_status"), [
    (429, anthropic.RateLimitError, "rate_limit_error", 429),
    (503, anthropic.OverloadedError, "overloaded_error", 529),
    (500, anthropic.InternalServerError, "api_error", 500),
])
def test_upstream_errors_get_anthropics_statuses(client: anthropic.Anthropic, upstream: FakeUpstream, status: int,
                                                 error_class: type[anthropic.APIStatusError], kind: str, http_status: int) -> None:
    upstream.enqueue(CHAT, Reply.json({"error": {"message": "slow down", "type": "x"}}, status=status))
    with pytest.raises(error_class) as caught:
        client.messages.create(model=SONNET, max_tokens=10, messages=[{"role": "user", "content": "hi"}])
    assert caught.value.status_code == http_status
    assert caught.value.body["error"]["type"] == kind  # type: ignore[index]


@pytest.mark.parametrize(("upstream_message", "expected"), [
    ("This model's maximum context length is 8192 tokens. However, your messages resulted in 9000 tokens.",
     "prompt is too long: 9000 tokens > 8192 maximum"),
    ("This model's maximum context length is 4096 tokens. However, you requested 5000 tokens "
     "(4000 in the messages, 1000 in the completion).",
     "input length and `max_tokens` exceed context limit: 4000 + 1000 > 4096"),
    ("the request exceeds the available context size, try increasing it", "prompt is too long: the request exceeds"),
])
def test_context_overflow_is_worded_as_anthropic_words_it(client: anthropic.Anthropic, upstream: FakeUpstream,
                                                          upstream_message: str, expected: str) -> None:
    upstream.enqueue(CHAT, Reply.json({"error": {"message": upstream_message, "type": "invalid_request_error"}}, status=400))
    with pytest.raises(anthropic.BadRequestError) as caught:
        client.messages.create(model=SONNET, max_tokens=1000, messages=[{"role": "user", "content": "long"}])
    error = caught.value.body["error"]  # type: ignore[index]
    assert error["type"] == "invalid_request_error" and error["message"].startswith(expected)


def test_invalid_requests_are_invalid_request_errors(claude_gateway: RunningGateway) -> None:
    for body, message in [
        ({"model": SONNET, "messages": [{"role": "user", "content": "hi"}]}, "max_tokens: Field required"),
        ({"model": SONNET, "max_tokens": 5, "messages": []}, "messages: at least one message is required"),
        ({"model": SONNET, "max_tokens": 5, "messages": [{"role": "user", "content": [
            {"type": "image", "source": {"type": "file", "file_id": "f"}}]}]}, "messages.0.content.0.source.type"),
    ]:
        response = httpx.post(claude_gateway.url + "/v1/messages", json=body)
        assert response.status_code == 400
        assert response.json()["error"]["type"] == "invalid_request_error"
        assert response.json()["error"]["message"].startswith(message)


def test_tools_on_a_model_without_the_tools_capability_is_a_400(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.BadRequestError) as caught:
        client.messages.create(model="plain", max_tokens=5, tools=[READ_TOOL], messages=[{"role": "user", "content": "x"}])  # type: ignore[list-item]
    assert caught.value.body["error"]["message"] == '"plain" does not support tools'  # type: ignore[index]


def test_a_dead_primary_falls_back(client: anthropic.Anthropic, upstream: FakeUpstream) -> None:
    upstream.enqueue(CHAT, Reply.json(chat_completion("from the fallback")))
    message = client.messages.create(model="primary", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert message.content[0].text == "from the fallback"  # type: ignore[union-attr]
    assert message.model == "primary"
    assert upstream.last(CHAT).json["model"] == "up-model"


# -- what the CLIs read at start-up ---------------------------------------------------------------


def test_both_sdks_read_the_model_list(client: anthropic.Anthropic, claude_gateway: RunningGateway) -> None:
    tags = [entry["name"] for entry in httpx.get(claude_gateway.url + "/api/tags").json()["models"]]
    page = client.models.list()
    assert [model.id for model in page.data] == tags
    assert {model.type for model in page.data} == {"model"}
    assert page.data[0].display_name == tags[0] and page.data[0].created_at.year >= 2020
    assert (page.has_more, page.first_id, page.last_id) == (False, tags[0], tags[-1])
    assert client.models.retrieve("sonnet").id == "sonnet"
    with pytest.raises(anthropic.NotFoundError):
        client.models.retrieve("ghost")
    with openai.OpenAI(base_url=claude_gateway.url + "/v1", api_key="x", max_retries=0) as openai_client:
        assert [model.id for model in openai_client.models.list().data] == tags


def test_api_version_stays_above_codexs_minimum(claude_gateway: RunningGateway) -> None:
    version = httpx.get(claude_gateway.url + "/api/version").json()["version"]
    assert tuple(int(part) for part in version.split(".")) >= (0, 13, 4)  # Codex refuses Ollama < 0.13.4


# -- count_tokens ---------------------------------------------------------------------------------


def test_count_tokens_is_the_character_estimate(client: anthropic.Anthropic, upstream: FakeUpstream) -> None:
    system = "s" * 40
    count = client.messages.count_tokens(model=SONNET, system=system, tools=[READ_TOOL],  # type: ignore[list-item]
                                         messages=[{"role": "user", "content": "u" * 396}], extra_query={"beta": "true"})
    schema_chars = len(json.dumps(READ_TOOL["input_schema"], separators=(",", ":")))
    assert count.input_tokens == (40 + len("user") + 396 + len("Read") + len("Read a file") + schema_chars) // 4
    assert upstream.received == []
    with pytest.raises(anthropic.NotFoundError):
        client.messages.count_tokens(model="ghost", messages=[{"role": "user", "content": "x"}])


# -- auth -----------------------------------------------------------------------------------------


def test_auth_accepts_x_api_key_and_answers_401_in_anthropics_shape(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> None:
    folder = tmp_path_factory.mktemp("anthropic-auth")
    routes = folder / "routes.yaml"
    routes.write_text(f"""
upstreams:
  fake: {{base_url: "{upstream.url}", max_retries: 0, cooldown: false}}
models:
  - {{name: sonnet, aliases: [{SONNET}], upstream: fake}}
auth:
  keys:
    - {{key: "gw-anthropic-0123456789"}}
""")
    running = RunningGateway(routes, folder / "gateway.log")
    try:
        with anthropic.Anthropic(base_url=running.url, api_key="wrong-key", max_retries=0) as sdk:
            with pytest.raises(anthropic.AuthenticationError) as caught:
                sdk.messages.create(model=SONNET, max_tokens=5, messages=[{"role": "user", "content": "x"}])
            assert caught.value.body == {"type": "error", "error": {"type": "authentication_error", "message": "unauthorized"}}
        with anthropic.Anthropic(base_url=running.url, api_key="gw-anthropic-0123456789", max_retries=0) as sdk:
            assert sdk.messages.create(model=SONNET, max_tokens=5, messages=[{"role": "user", "content": "x"}]).content
        with anthropic.Anthropic(base_url=running.url, auth_token="gw-anthropic-0123456789", max_retries=0) as sdk:
            assert sdk.messages.create(model=SONNET, max_tokens=5, messages=[{"role": "user", "content": "x"}]).content
    finally:
        running.stop()


# -- an upstream that speaks the Messages API itself -----------------------------------------------

MESSAGES = "/v1/messages"
NATIVE_ANSWER = {"id": "msg_up", "type": "message", "role": "assistant", "model": "claude-up",
                 "content": [{"type": "text", "text": "native"}], "stop_reason": "end_turn", "stop_sequence": None,
                 "usage": {"input_tokens": 3, "output_tokens": 1}}


def test_a_native_upstream_gets_the_request_passed_through(client: anthropic.Anthropic, upstream: FakeUpstream) -> None:
    upstream.enqueue(MESSAGES, Reply.json(NATIVE_ANSWER))
    message = client.messages.create(model="native", max_tokens=5, messages=[{"role": "user", "content": "x"}],
                                     metadata={"user_id": "u"}, extra_query={"beta": "true"},
                                     extra_headers={"anthropic-beta": "interleaved-thinking-2025-05-14", "X-Other": "no"})
    assert message.id == "msg_up" and message.content[0].text == "native"  # type: ignore[union-attr]
    received = upstream.last(MESSAGES)
    assert received.json == {"model": "claude-up", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}],
                             "metadata": {"user_id": "u"}}
    assert received.query == "beta=true"
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", received.headers["anthropic-version"])  # as the SDK sent it
    assert received.headers["anthropic-beta"] == "interleaved-thinking-2025-05-14"
    assert received.headers["x-api-key"] == API_KEY  # the upstream's credential, not the client's
    assert "X-Other" not in received.headers and "Authorization" not in received.headers
    assert not [r for r in upstream.received if r.path == CHAT]


def test_a_native_upstreams_stream_and_errors_are_relayed(client: anthropic.Anthropic, upstream: FakeUpstream,
                                                          claude_gateway: RunningGateway) -> None:
    events = [f"event: {kind}\ndata: {json.dumps(data)}\n\n" for kind, data in [
        ("message_start", {"type": "message_start", "message": {**NATIVE_ANSWER, "content": [], "stop_reason": None}}),
        ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "hi"}}),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None}, "usage": {"output_tokens": 1}}),
        ("message_stop", {"type": "message_stop"}),
    ]]
    upstream.enqueue(MESSAGES, Reply(events=list(events), content_type="text/event-stream"))
    response = httpx.post(claude_gateway.url + MESSAGES, json={"model": "native", "max_tokens": 5, "stream": True,
                                                              "messages": [{"role": "user", "content": "x"}]})
    assert response.text == "".join(events)  # byte for byte
    overloaded = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    upstream.enqueue(MESSAGES, Reply.json(overloaded, status=529))  # a retryable status: the fallback is translated
    upstream.enqueue(CHAT, Reply.json(chat_completion("translated, on the fallback")))
    message = client.messages.create(model="native", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert message.content[0].text == "translated, on the fallback"  # type: ignore[union-attr]
    upstream.enqueue(MESSAGES, Reply.json({"type": "error", "error": {"type": "invalid_request_error",
                                                                      "message": "prompt is too long: 300000 tokens > 200000 maximum"}}, status=400))
    with pytest.raises(anthropic.BadRequestError) as caught:
        client.messages.create(model="native", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert caught.value.body["error"] == {  # type: ignore[index]
        "type": "invalid_request_error", "message": "prompt is too long: 300000 tokens > 200000 maximum"}
