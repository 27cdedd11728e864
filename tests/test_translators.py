"""Pure translator tests: Ollama request -> upstream body, upstream events -> Ollama chunks."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from gateway.errors import BadRequest, UpstreamUnavailable
from gateway.ollama import ChatRequest, GenerateRequest
from gateway.translators.chat import ChatTranslator
from gateway.translators.generate import GenerateTranslator
from gateway.translators.messages import synthetic_call_id
from gateway.translators.reasoning import ThinkTagSplitter, reasoning_params
from tests.translator_support import clock, fixture_events, make_target, run_stream

PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 16).decode()
JPEG = base64.b64encode(b"\xff\xd8\xff\xe0" + b"\0" * 16).decode()
GIF = base64.b64encode(b"GIF89a" + b"\0" * 16).decode()
WEBP = base64.b64encode(b"RIFF\0\0\0\0WEBPVP8 " + b"\0" * 8).decode()
WEATHER_TOOL = {"type": "function", "function": {"name": "get_weather", "description": "Weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}


def chat(body: dict[str, Any], **target: Any) -> ChatTranslator:
    return ChatTranslator(ChatRequest.model_validate({"model": "m", **body}), make_target(**target), clock())


def generate(body: dict[str, Any], **target: Any) -> GenerateTranslator:
    return GenerateTranslator(GenerateRequest.model_validate({"model": "m", **body}), make_target(**target), clock())


def delta(**fields: Any) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": fields, "finish_reason": None}]}


def finish(reason: str = "stop") -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": {}, "finish_reason": reason}]}


# -- tools ---------------------------------------------------------------------------------------

def test_empty_tools_list_is_not_forwarded() -> None:
    body = chat({"messages": [{"role": "user", "content": "x"}], "tools": []}).upstream_body()
    assert "tools" not in body


def test_tool_names_openai_rejects_are_rewritten_and_restored() -> None:
    tool = {"type": "function", "function": {"name": "github.create issue", "parameters": {"type": "object"}}}
    translator = chat({"messages": [{"role": "user", "content": "x"}], "tools": [tool]})
    sent_name = translator.upstream_body()["tools"][0]["function"]["name"]
    assert sent_name == "github_create_issue"
    reply = translator.from_response({"choices": [{"message": {"content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": sent_name, "arguments": "{\"title\":\"t\"}"}}]}, "finish_reason": "tool_calls"}]})
    assert reply["message"]["tool_calls"][0]["function"]["name"] == "github.create issue"
    assert reply["message"]["tool_calls"][0]["function"]["arguments"] == {"title": "t"}


def test_tool_definitions_keep_only_openai_keys_and_get_default_parameters() -> None:
    tool = {"type": "function", "function": {"name": "now", "extra": 1}, "x": 2}
    tools = chat({"messages": [{"role": "user", "content": "x"}], "tools": [tool]}).upstream_body()["tools"]
    assert tools == [{"type": "function", "function": {"name": "now", "parameters": {"type": "object", "properties": {}}}}]


def test_streamed_tool_call_fragments_are_emitted_once_whole() -> None:
    translator = chat({"messages": [{"role": "user", "content": "weather?"}], "tools": [WEATHER_TOOL]})
    chunks = run_stream(translator, fixture_events("openai", "tools_stream"))
    with_calls = [c for c in chunks if c["message"].get("tool_calls")]
    assert len(with_calls) == 1 and not with_calls[0]["done"]
    call = with_calls[0]["message"]["tool_calls"][0]
    assert isinstance(call["function"]["arguments"], dict) and call["function"]["index"] == 0
    assert call["id"].startswith("call_")
    assert chunks[-1]["done"] and "tool_calls" not in chunks[-1]["message"]


def test_parallel_streamed_tool_calls_keep_their_order_and_arguments() -> None:
    translator = chat({"messages": [{"role": "user", "content": "weather?"}], "tools": [WEATHER_TOOL]})
    chunks = run_stream(translator, fixture_events("openai", "parallel_tools_stream"))
    calls = [call for c in chunks for call in c["message"].get("tool_calls", [])]
    assert [call["function"]["index"] for call in calls] == [0, 1]
    assert len({call["id"] for call in calls}) == 2
    assert all(isinstance(call["function"]["arguments"], dict) and call["function"]["arguments"] for call in calls)


def test_tool_call_id_repeated_on_every_delta_is_not_concatenated() -> None:
    translator = chat({"messages": [{"role": "user", "content": "x"}]})
    events = [
        delta(tool_calls=[{"index": 0, "id": "call_x", "function": {"name": "f", "arguments": "{\"a\""}}]),
        delta(tool_calls=[{"index": 0, "id": "call_x", "function": {"arguments": ":1}"}}]),
        finish("tool_calls"),
    ]
    calls = [call for c in run_stream(translator, events) for call in c["message"].get("tool_calls", [])]
    assert calls == [{"id": "call_x", "function": {"index": 0, "name": "f", "arguments": {"a": 1}}}]


def test_invalid_tool_arguments_are_an_error_never_a_string() -> None:
    translator = chat({"messages": [{"role": "user", "content": "x"}]})
    translator.feed(delta(tool_calls=[{"index": 0, "id": "c", "function": {"name": "f", "arguments": "{not json"}}]))
    with pytest.raises(UpstreamUnavailable, match='invalid tool call arguments for "f"'):
        translator.feed(finish("tool_calls"))


def test_history_tool_calls_go_up_as_json_strings_with_deterministic_ids() -> None:
    messages = [
        {"role": "user", "content": "weather in Oslo and Rome?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"function": {"name": "get_weather", "arguments": {"city": "Oslo"}}},
            {"function": {"name": "get_weather", "arguments": {"city": "Rome"}}},
        ]},
        {"role": "tool", "content": "cold", "tool_name": "get_weather"},
        {"role": "tool", "content": "warm", "tool_name": "get_weather"},
    ]
    first = chat({"messages": messages}).upstream_body()["messages"]
    second = chat({"messages": messages}).upstream_body()["messages"]
    assert first == second
    assistant = first[1]
    assert assistant["content"] is None
    ids = [call["id"] for call in assistant["tool_calls"]]
    assert ids[0] == synthetic_call_id(1, 0, "get_weather", {"city": "Oslo"}) and ids[0] != ids[1]
    assert assistant["tool_calls"][0]["function"]["arguments"] == '{"city":"Oslo"}'
    assert [(m["tool_call_id"], m["content"]) for m in first[2:]] == [(ids[0], "cold"), (ids[1], "warm")]


@pytest.mark.parametrize(
    "results",
    [
        pytest.param([{"role": "tool", "content": "B", "tool_call_id": "id_b"}, {"role": "tool", "content": "A", "tool_call_id": "id_a"}], id="tool_call_id"),
        pytest.param([{"role": "tool", "content": "B", "tool_name": "fb"}, {"role": "tool", "content": "A", "tool_name": "fa"}], id="tool_name"),
    ],
)
def test_tool_results_pair_by_id_or_name(results: list[dict[str, Any]]) -> None:
    messages = [
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "id_a", "function": {"name": "fa", "arguments": {}}},
            {"id": "id_b", "function": {"name": "fb", "arguments": {}}},
        ]},
        *results,
    ]
    sent = chat({"messages": messages}).upstream_body()["messages"]
    assert {m["tool_call_id"]: m["content"] for m in sent if m["role"] == "tool"} == {"id_a": "A", "id_b": "B"}


def test_tool_results_without_id_or_name_pair_in_order_and_missing_ones_are_filled() -> None:
    messages = [
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"function": {"name": "f", "arguments": {"n": 1}}}, {"function": {"name": "f", "arguments": {"n": 2}}}]},
        {"role": "tool", "content": "first"},
        {"role": "user", "content": "and?"},
        {"role": "tool", "content": "orphan"},
    ]
    sent = chat({"messages": messages}).upstream_body()["messages"]
    roles = [m["role"] for m in sent]
    assert roles == ["user", "assistant", "tool", "tool", "user", "user"]
    calls = sent[1]["tool_calls"]
    assert (sent[2]["tool_call_id"], sent[2]["content"]) == (calls[0]["id"], "first")
    assert (sent[3]["tool_call_id"], sent[3]["content"]) == (calls[1]["id"], "")
    assert sent[5]["content"] == "[tool result] orphan"


def test_thinking_goes_back_only_for_the_current_turn_and_only_where_accepted() -> None:
    messages = [
        {"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1", "thinking": "old"},
        {"role": "user", "content": "q2"},
        {"role": "assistant", "content": "", "thinking": "new", "tool_calls": [{"function": {"name": "f", "arguments": {}}}]},
        {"role": "tool", "content": "r"},
    ]
    deepseek = chat({"messages": messages}, provider="deepseek").upstream_body()["messages"]
    assert "reasoning_content" not in deepseek[1] and deepseek[3]["reasoning_content"] == "new"
    openai = chat({"messages": messages}, provider="openai").upstream_body()["messages"]
    assert not any("reasoning_content" in m or "reasoning" in m for m in openai)


# -- images --------------------------------------------------------------------------------------

@pytest.mark.parametrize(("image", "mime"), [(PNG, "image/png"), (JPEG, "image/jpeg"), (GIF, "image/gif"), (WEBP, "image/webp")])
def test_images_become_data_uri_parts_with_sniffed_type(image: str, mime: str) -> None:
    body = chat({"messages": [{"role": "user", "content": "what is it?", "images": [image]}]}).upstream_body()
    assert body["messages"][0]["content"] == [
        {"type": "text", "text": "what is it?"},
        {"type": "image_url", "image_url": {"url": f"data:{mime};base64,{image}"}},
    ]


def test_a_data_uri_image_is_accepted() -> None:
    body = chat({"messages": [{"role": "user", "content": "", "images": [f"data:image/png;base64,{PNG}"]}]}).upstream_body()
    assert body["messages"][0]["content"] == [{"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}]


@pytest.mark.parametrize(
    ("image", "message"),
    [
        pytest.param(base64.b64encode(b"just some text").decode(), "image 0 is not a PNG, JPEG, GIF or WebP image", id="not-an-image"),
        pytest.param("@@@notbase64", "illegal base64 data at input byte 0", id="bad-base64"),
    ],
)
def test_non_images_are_a_400(image: str, message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        chat({"messages": [{"role": "user", "content": "x", "images": [image]}]}).upstream_body()


def test_images_on_tool_results_move_to_a_user_message_after_the_tool_block() -> None:
    messages = [
        {"role": "user", "content": "look"},
        {"role": "assistant", "content": "", "tool_calls": [{"id": "c1", "function": {"name": "shot", "arguments": {}}}]},
        {"role": "tool", "content": "here", "tool_call_id": "c1", "images": [PNG]},
    ]
    sent = chat({"messages": messages}).upstream_body()["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "tool", "user"]
    assert sent[3]["content"][0]["type"] == "image_url" and "images" not in sent[2]


# -- thinking ------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("knob", "think", "effort", "extras"),
    [
        ("reasoning_effort", "low", "low", {}),
        ("reasoning_effort", "max", "high", {}),
        ("reasoning_effort", False, "none", {}),
        ("reasoning_effort", True, None, {}),
        ("openrouter", True, None, {"reasoning": {"enabled": True}}),
        ("openrouter", "high", None, {"reasoning": {"effort": "high"}}),
        ("chat_template_kwargs", False, None, {"chat_template_kwargs": {"enable_thinking": False}}),
        ("chat_template_kwargs", "medium", None, {"chat_template_kwargs": {"enable_thinking": True, "reasoning_effort": "medium"}}),
        ("groq", True, None, {"reasoning_format": "parsed"}),
        ("groq", "low", "low", {"reasoning_format": "parsed"}),
        ("none", True, None, {}),
        ("openrouter", None, None, {}),
    ],
)
def test_think_maps_to_the_configured_knob(knob: str, think: Any, effort: str | None, extras: dict[str, Any]) -> None:
    """OpenAI's `reasoning_effort` is a standard field; the other knobs are provider extras."""
    got: dict[str, Any] = {}
    assert reasoning_params(knob, think, got) == effort  # type: ignore[arg-type]
    assert got == extras


def test_think_knob_comes_from_the_route() -> None:
    body = chat({"messages": [{"role": "user", "content": "x"}], "think": "high"}, reasoning="openrouter").upstream_body()
    assert body["reasoning"] == {"effort": "high"}


def test_think_on_a_model_declared_without_thinking_is_a_400() -> None:
    with pytest.raises(BadRequest, match='"m" does not support thinking'):
        chat({"messages": [{"role": "user", "content": "x"}], "think": True}, capabilities=["completion"]).local_reply()


def test_reasoning_fields_are_read_once_never_added() -> None:
    chunks = run_stream(chat({"messages": [{"role": "user", "content": "x"}]}), fixture_events("openrouter", "reasoning_stream"))
    thinking = "".join(c["message"].get("thinking", "") for c in chunks)
    events = fixture_events("openrouter", "reasoning_stream")
    expected = "".join(e["choices"][0]["delta"].get("reasoning") or "" for e in events if e.get("choices"))
    assert thinking == expected and thinking


def test_reasoning_content_streams_as_thinking_then_content() -> None:
    chunks = run_stream(chat({"messages": [{"role": "user", "content": "x"}]}), fixture_events("deepseek", "reasoning_stream"))
    assert chunks[0]["message"].get("thinking") and chunks[0]["message"]["content"] == ""
    assert any(c["message"]["content"] for c in chunks)


def test_think_false_drops_reasoning() -> None:
    chunks = run_stream(chat({"messages": [{"role": "user", "content": "x"}], "think": False}), fixture_events("deepseek", "reasoning_stream"))
    assert not any("thinking" in c["message"] for c in chunks)


def test_think_tags_in_content_become_thinking() -> None:
    chunks = run_stream(chat({"messages": [{"role": "user", "content": "x"}]}, think_tags=True), fixture_events("groq", "reasoning_stream"))
    thinking = "".join(c["message"].get("thinking", "") for c in chunks)
    content = "".join(c["message"]["content"] for c in chunks)
    assert thinking and "<think>" not in thinking + content and "</think>" not in thinking + content
    assert content


@pytest.mark.parametrize("cut", [1, 3, 7, 8, 9, 12])
def test_think_tag_split_across_chunks(cut: int) -> None:
    text = "<think>plan it</think>\n\nAnswer <b>"
    splitter = ThinkTagSplitter()
    first = splitter.feed(text[:cut])
    second = splitter.feed(text[cut:])
    rest = splitter.flush()
    assert "".join(p[0] for p in (first, second, rest)) == "Answer <b>"
    assert "".join(p[1] for p in (first, second, rest)) == "plan it"


# -- format and options ---------------------------------------------------------------------------

def test_format_json_asks_for_json_object_and_says_json_when_no_message_does() -> None:
    body = chat({"messages": [{"role": "user", "content": "list colors"}], "format": "json"}).upstream_body()
    assert body["response_format"] == {"type": "json_object"}
    assert body["messages"][0]["role"] == "system" and "JSON" in body["messages"][0]["content"]
    mentions = chat({"messages": [{"role": "user", "content": "answer in json"}], "format": "json"}).upstream_body()
    assert mentions["messages"] == [{"role": "user", "content": "answer in json"}]


def test_format_schema_uses_the_json_schema_wrapper() -> None:
    schema = {"type": "object", "properties": {"age": {"type": "integer"}}}
    body = chat({"messages": [{"role": "user", "content": "x"}], "format": schema}).upstream_body()
    assert body["response_format"] == {"type": "json_schema", "json_schema": {"name": "response", "schema": schema, "strict": False}}


def test_format_schema_without_upstream_support_falls_back_to_json_object() -> None:
    schema = {"type": "object"}
    body = chat({"messages": [{"role": "user", "content": "x"}], "format": schema}, provider="deepseek").upstream_body()
    assert body["response_format"] == {"type": "json_object"} and '{"type":"object"}' in body["messages"][0]["content"]


def test_bad_format_is_a_400() -> None:
    with pytest.raises(BadRequest, match="invalid format"):
        chat({"messages": [{"role": "user", "content": "x"}], "format": "yaml"}).upstream_body()


def test_unset_options_are_never_sent_and_extras_only_where_declared() -> None:
    options = {"temperature": 0.1, "top_k": 20, "min_p": 0.05, "num_ctx": 8192, "seed": -1, "num_predict": -1, "mirostat": 1}
    plain = chat({"messages": [{"role": "user", "content": "x"}], "options": options})
    body = plain.upstream_body()
    assert {k: v for k, v in body.items() if k not in ("model", "messages", "stream", "stream_options")} == {"temperature": 0.1}
    assert sorted(plain.dropped_options) == ["min_p", "mirostat", "top_k"]
    vllm = chat({"messages": [{"role": "user", "content": "x"}], "options": {**options, "repeat_penalty": 1.1}}, provider="vllm").upstream_body()
    assert (vllm["top_k"], vllm["min_p"], vllm["repetition_penalty"]) == (20, 0.05, 1.1)


def test_num_predict_and_stop_follow_the_provider() -> None:
    options = {"num_predict": 64, "stop": ["a", "b", "c", "d", "e"], "seed": 7}
    openai = chat({"messages": [{"role": "user", "content": "x"}], "options": options}, provider="openai").upstream_body()
    assert openai["max_completion_tokens"] == 64 and "max_tokens" not in openai
    assert openai["stop"] == ["a", "b", "c", "d"] and openai["seed"] == 7
    generic = chat({"messages": [{"role": "user", "content": "x"}], "options": options}).upstream_body()
    assert generic["max_tokens"] == 64 and len(generic["stop"]) == 5


def test_logprobs_are_requested_and_returned_in_ollama_shape() -> None:
    translator = chat({"messages": [{"role": "user", "content": "x"}], "logprobs": True, "top_logprobs": 2})
    body = translator.upstream_body()
    assert (body["logprobs"], body["top_logprobs"]) == (True, 2)
    event = {"choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": None, "logprobs": {"content": [
        {"token": "Hi", "logprob": -0.1, "bytes": [72, 105], "top_logprobs": [{"token": "Hi", "logprob": -0.1, "bytes": [72, 105]}]}]}}]}
    chunk = translator.feed(event)[0]
    assert chunk["logprobs"] == [{"token": "Hi", "logprob": -0.1, "bytes": [72, 105], "top_logprobs": [{"token": "Hi", "logprob": -0.1, "bytes": [72, 105]}]}]


# -- metrics and framing ---------------------------------------------------------------------------

def test_role_only_first_delta_emits_nothing_and_counts_only_on_final() -> None:
    translator = chat({"messages": [{"role": "user", "content": "x"}]})
    assert translator.feed(delta(role="assistant", content="")) == []
    chunks = run_stream(translator, [delta(content="a"), finish(), {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 1}}])
    assert [c["done"] for c in chunks] == [False, True]
    assert "eval_count" not in chunks[0] and chunks[1]["eval_count"] == 1 and chunks[1]["prompt_eval_count"] == 3
    for key in ("total_duration", "load_duration", "prompt_eval_duration", "eval_duration"):
        assert isinstance(chunks[1][key], int) and chunks[1][key] >= 1


# -- generate specifics ---------------------------------------------------------------------------

def test_raw_with_system_is_a_400() -> None:
    with pytest.raises(BadRequest, match="raw mode does not support template, system, or context"):
        generate({"prompt": "x", "raw": True, "system": "s"})


def test_suffix_goes_to_legacy_completions_where_the_upstream_has_them() -> None:
    translator = generate({"prompt": "def f(", "suffix": "return x", "options": {"num_predict": 8}}, provider="vllm")
    assert translator.local_reply() is None
    assert translator.upstream_path == "/completions"
    body = translator.upstream_body()
    assert (body["prompt"], body["suffix"], body["max_tokens"]) == ("def f(", "return x", 8) and "messages" not in body
    reply = translator.from_response({"choices": [{"text": "x):", "finish_reason": "length"}], "usage": {"prompt_tokens": 4, "completion_tokens": 2}})
    assert (reply["response"], reply["done_reason"], reply["eval_count"]) == ("x):", "length", 2)


def test_suffix_without_completions_is_a_400() -> None:
    with pytest.raises(BadRequest, match='"m" does not support insert'):
        generate({"prompt": "def f(", "suffix": "x"}, provider="openai").local_reply()


def test_generate_chunks_always_carry_response_and_context_on_final() -> None:
    chunks = run_stream(generate({"prompt": "hi", "images": [PNG]}), [delta(content="yo"), finish()])
    assert chunks[0]["response"] == "yo" and chunks[-1]["response"] == "" and chunks[-1]["context"] == []


# -- recorded from a real server (llama-cpp-python) -----------------------------------------------

def test_recorded_llama_cpp_tool_stream_repeats_id_and_name_on_every_delta() -> None:
    chunks = run_stream(chat({"messages": [{"role": "user", "content": "weather?"}], "tools": [WEATHER_TOOL]}),
                        fixture_events("llama-cpp-python", "tools_stream"))
    calls = [call for c in chunks for call in c["message"].get("tool_calls", [])]
    assert len(calls) == 1
    assert calls[0]["id"].startswith("call__0_get_weather_") and calls[0]["id"].count("call_") == 1
    assert calls[0]["function"]["name"] == "get_weather" and isinstance(calls[0]["function"]["arguments"], dict)


def test_recorded_llama_cpp_stream_without_usage_still_has_counts() -> None:
    chunks = run_stream(chat({"messages": [{"role": "user", "content": "hello"}]}), fixture_events("llama-cpp-python", "chat_stream"))
    assert chunks[-1]["done"] and chunks[-1]["eval_count"] > 0 and chunks[-1]["done_reason"] == "length"
    assert "".join(c["message"]["content"] for c in chunks)
