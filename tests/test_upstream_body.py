"""The translators build the `openai` SDK's request TypedDicts, provider extras set over them last,
and no worker imports `openai` for it (translators/upstream_body.py).

- The standard part of every body is exactly what the real SDK sends for the same parameters: the
  SDK's typed `create()` takes them as keyword arguments (an unknown one is a TypeError), the
  extras as its `extra_body`, and the loopback upstream receives the gateway's body.
- What is no field of the SDK's request type is a provider extra, and sits after the standard fields.
- A worker serving every translated endpoint imports no `openai` module (`PYTHONPROFILEIMPORTTIME`
  lists every import a process makes, the lazy ones included).
"""

from __future__ import annotations

import base64
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.types import CompletionCreateParams, EmbeddingCreateParams
from openai.types.chat import completion_create_params as chat_params
from openai.types.completion_create_params import CompletionCreateParamsStreaming

from gateway.ollama import ChatRequest, EmbedRequest, GenerateRequest
from gateway.translators.anthropic import MessagesTranslator
from gateway.translators.anthropic_messages import MessagesRequest
from gateway.translators.base import Translator
from gateway.translators.chat import ChatTranslator
from gateway.translators.embed import EmbedTranslator
from gateway.translators.generate import GenerateTranslator
from gateway.translators.responses import ResponsesTranslator
from gateway.translators.responses_items import ResponsesRequest
from tests.conftest import API_KEY, RunningGateway, routes_yaml
from tests.fake_upstream import FakeUpstream, Reply
from tests.translator_support import clock, make_target

PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(16)).decode()
TOOL = {"type": "function", "function": {"name": "get weather", "description": "d", "parameters": {"type": "object"}}}
CONVERSATION = [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": "look", "images": [PNG]},
    {"role": "assistant", "content": "", "thinking": "hm", "tool_calls": [{"function": {"name": "get weather", "arguments": {"c": 1}}}]},
    {"role": "tool", "content": "sunny", "tool_name": "get weather"},
]
SAMPLING = {"temperature": 0.2, "top_k": 5, "min_p": 0.1, "repeat_penalty": 1.1, "seed": 3, "num_predict": 7, "stop": ["a"]}


def _keys(typed_dict: Any) -> frozenset[str]:
    return frozenset(typed_dict.__required_keys__ | typed_dict.__optional_keys__)


CHAT_FIELDS = _keys(chat_params.CompletionCreateParamsStreaming)
COMPLETION_FIELDS = _keys(CompletionCreateParamsStreaming)
EMBEDDING_FIELDS = _keys(EmbeddingCreateParams)


def chat(request: dict[str, Any], **quirks: Any) -> ChatTranslator:
    return ChatTranslator(ChatRequest.model_validate({"model": "m", **request}), make_target(**quirks), clock())


def generate(request: dict[str, Any], **quirks: Any) -> GenerateTranslator:
    return GenerateTranslator(GenerateRequest.model_validate({"model": "m", **request}), make_target(**quirks), clock())


def split(body: Mapping[str, Any], fields: frozenset[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the SDK's fields, the rest), after checking that the rest comes last."""
    keys = list(body)
    extras = [key for key in keys if key not in fields]
    assert keys[len(keys) - len(extras):] == extras, f"provider extras must come last: {keys}"
    return {k: v for k, v in body.items() if k in fields}, {k: body[k] for k in extras}


# -- the split ------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("translator", "fields", "extras"),
    [
        pytest.param(lambda: chat({"messages": CONVERSATION, "options": SAMPLING, "think": "high"}, provider="vllm"),
                     CHAT_FIELDS, {"top_k": 5, "min_p": 0.1, "repetition_penalty": 1.1,
                                   "chat_template_kwargs": {"enable_thinking": True, "reasoning_effort": "high"}}, id="vllm-chat"),
        pytest.param(lambda: chat({"messages": CONVERSATION, "think": "low"}, provider="groq"),
                     CHAT_FIELDS, {"reasoning_format": "parsed"}, id="groq-chat"),
        pytest.param(lambda: chat({"messages": CONVERSATION, "options": SAMPLING, "think": True}, provider="openai"),
                     CHAT_FIELDS, {}, id="openai-chat-has-no-extras"),
        pytest.param(lambda: generate({"prompt": "p", "raw": True, "options": {"num_predict": 5}, "think": "low", "logprobs": True,
                                       "top_logprobs": 2}, provider="ollama", max_tokens_field="max_completion_tokens"),
                     COMPLETION_FIELDS, {"max_completion_tokens": 5, "reasoning_effort": "low", "top_logprobs": 2},
                     id="completions-lack-chat-fields"),
    ],
)
def test_what_is_no_sdk_field_is_a_provider_extra_set_last(
    translator: Callable[[], Translator[Any]], fields: frozenset[str], extras: dict[str, Any]
) -> None:
    _, found = split(translator().upstream_body(), fields)
    assert found == extras


# -- the SDK as the reference ---------------------------------------------------------------------

ANTHROPIC = {
    "model": "m", "max_tokens": 10, "system": "sys", "temperature": 0.5, "top_k": 3, "stop_sequences": ["x"],
    "thinking": {"type": "enabled", "budget_tokens": 5000}, "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
    "tools": [{"name": "f", "description": "d", "input_schema": {"type": "object", "properties": {}}}],
    "output_config": {"format": {"type": "json_schema", "schema": {"type": "object"}}},
    "messages": [
        {"role": "user", "content": [{"type": "text", "text": "hi"},
                                     {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
                                     {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "AAAA"}}]},
        {"role": "assistant", "content": [{"type": "thinking", "thinking": "hm"}, {"type": "tool_use", "id": "t1", "name": "f", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "r"}]},
    ],
}
RESPONSES = {
    "model": "m", "instructions": "ins", "max_output_tokens": 9, "top_p": 0.5, "reasoning": {"effort": "high"},
    "text": {"format": {"type": "json_schema", "name": "n", "schema": {"type": "object"}, "strict": True}},
    "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}}, {"type": "custom", "name": "c"}],
    "tool_choice": {"type": "function", "name": "f"}, "parallel_tool_calls": False,
    "input": [
        {"role": "user", "content": [{"type": "input_text", "text": "hi"}, {"type": "input_image", "image_url": "http://x/i.png", "detail": "low"}]},
        {"type": "reasoning", "summary": [{"type": "summary_text", "text": "think"}]},
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "done"},
    ],
}
CHAT_CASES = [
    pytest.param(lambda: chat({"messages": CONVERSATION, "tools": [TOOL], "tool_choice": "required", "options": SAMPLING,
                               "think": False, "format": {"type": "object"}, "logprobs": True, "top_logprobs": 2},
                              provider="llamacpp", capabilities=["completion", "tools", "thinking", "audio"]),
                 {"top_k": 5, "min_p": 0.1, "repeat_penalty": 1.1, "chat_template_kwargs": {"enable_thinking": False}},
                 id="chat-llamacpp"),
    pytest.param(lambda: chat({"messages": CONVERSATION, "format": "json", "options": {"num_predict": 4}, "think": "max"},
                              provider="openai"), {}, id="chat-openai"),
    pytest.param(lambda: generate({"prompt": "p", "system": "s", "images": [PNG], "stream": True, "think": "low"},
                                  provider="openrouter"), {"reasoning": {"effort": "low"}}, id="generate-on-chat-streamed"),
    pytest.param(lambda: MessagesTranslator(MessagesRequest.model_validate(ANTHROPIC), make_target(provider="vllm"), clock()),
                 {"top_k": 3, "chat_template_kwargs": {"enable_thinking": True, "reasoning_effort": "medium"}}, id="anthropic-messages"),
    # deepseek: the assistant turn's reasoning goes back in `reasoning_content`, inside the message.
    pytest.param(lambda: ResponsesTranslator(ResponsesRequest.model_validate(RESPONSES), make_target(provider="deepseek"), clock()),
                 {}, id="responses"),
]


@pytest.fixture
def sdk(upstream: FakeUpstream) -> openai.OpenAI:
    return openai.OpenAI(base_url=upstream.url, api_key="x", max_retries=0)


@pytest.mark.parametrize(("translator", "expected_extras"), CHAT_CASES)
def test_the_sdk_sends_the_chat_bodies_the_translators_build(
    translator: Callable[[], Translator[Any]], expected_extras: dict[str, Any], sdk: openai.OpenAI, upstream: FakeUpstream
) -> None:
    body = translator().upstream_body()
    standard, extras = split(body, CHAT_FIELDS)
    assert extras == expected_extras
    answer = sdk.chat.completions.create(**standard, extra_body=extras or None)
    if standard.get("stream"):
        list(answer)  # type: ignore[call-overload]
    assert upstream.last("/v1/chat/completions").json == body


def test_the_sdk_sends_the_completions_and_embeddings_bodies_the_translators_build(
    sdk: openai.OpenAI, upstream: FakeUpstream
) -> None:
    completion = generate({"prompt": "def f(", "suffix": ")", "options": {"temperature": 0.1, "stop": "\n", "top_k": 3}},
                          provider="together").upstream_body()
    standard, extras = split(completion, COMPLETION_FIELDS)
    assert extras == {"top_k": 3}
    upstream.enqueue("/v1/completions", Reply.json({"id": "c", "object": "text_completion", "created": 1, "model": "up-model",
                                                    "choices": [{"index": 0, "text": "x", "finish_reason": "stop", "logprobs": None}]}))
    sdk.completions.create(**standard, extra_body=extras)
    assert upstream.last("/v1/completions").json == completion
    typed: CompletionCreateParams = standard  # type: ignore[assignment]
    assert typed["model"] == "up-model"

    embedding = EmbedTranslator(EmbedRequest.model_validate({"model": "m", "input": ["a", "b"], "dimensions": 2}),
                                make_target(provider="openai"), clock()).upstream_body()
    standard, extras = split(embedding, EMBEDDING_FIELDS)
    assert extras == {}
    sdk.embeddings.create(**standard)
    assert upstream.last("/v1/embeddings").json == embedding


# -- third-party translators ----------------------------------------------------------------------

def test_a_plugin_translator_returning_a_plain_dict_still_serves(upstream: FakeUpstream, tmp_path: Path) -> None:
    routes = tmp_path / "routes.yaml"
    routes.write_text(routes_yaml(upstream.url) + "endpoints:\n  /api/chat: tests.plugin_translator:VendorChat\n")
    gateway = RunningGateway(routes, tmp_path / "gateway.log")
    try:
        reply = httpx.post(gateway.url + "/api/chat", json={"model": "tiny", "messages": [{"role": "user", "content": "hi"}],
                                                           "stream": False})
    finally:
        gateway.stop()
    assert reply.status_code == 200 and reply.json()["message"]["content"] == "Hello there."
    assert upstream.last().json == {"model": "up-model", "messages": [{"role": "user", "content": "hi"}],
                                    "vendor_flag": {"from": "plugin"}}


# -- no openai in a worker ------------------------------------------------------------------------

# Loaded at start-up by every Python process of the gateway (`sitecustomize` on PYTHONPATH): it
# writes down each `openai` or `gateway` module a process looks for, an import statement's or
# importlib's, at start-up or later while serving.
WATCH = """
import os, sys

class _Watch:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("openai", "gateway"):
            with open(os.environ["IMPORT_WATCH_LOG"], "a") as log:
                log.write(f"{os.getpid()} {name}\\n")
        return None

sys.meta_path.insert(0, _Watch())
"""


def test_a_worker_serving_every_translated_endpoint_imports_no_openai(upstream: FakeUpstream, tmp_path: Path) -> None:
    (tmp_path / "watch").mkdir()
    (tmp_path / "watch" / "sitecustomize.py").write_text(WATCH)
    watched = tmp_path / "imports.txt"
    routes = tmp_path / "routes.yaml"
    routes.write_text(routes_yaml(upstream.url, "  - {name: coder, upstream: fake, model: up-coder, completions: true}\n"))
    path = os.pathsep.join(filter(None, [str(tmp_path / "watch"), os.environ.get("PYTHONPATH")]))
    gateway = RunningGateway(routes, tmp_path / "gateway.log", env={"PYTHONPATH": path, "IMPORT_WATCH_LOG": str(watched)})
    try:
        url = gateway.url
        messages = [{"role": "user", "content": "hi"}]
        for stream in (False, True):
            assert httpx.post(url + "/api/chat", json={"model": "tiny", "messages": messages, "stream": stream,
                                                       "options": {"top_k": 2}, "tools": [TOOL]}).status_code == 200
            assert httpx.post(url + "/api/generate", json={"model": "tiny", "prompt": "p", "stream": stream}).status_code == 200
        upstream.enqueue("/v1/completions", Reply.json({"id": "c", "object": "text_completion", "created": 1, "model": "up-coder",
                                                        "choices": [{"index": 0, "text": "x", "finish_reason": "stop"}]}))
        assert httpx.post(url + "/api/generate", json={"model": "coder", "prompt": "p", "raw": True, "stream": False}).status_code == 200
        assert httpx.post(url + "/api/embed", json={"model": "embedder", "input": ["a"]}).status_code == 200
        assert httpx.post(url + "/api/embeddings", json={"model": "embedder", "prompt": "a"}).status_code == 200
        assert httpx.post(url + "/v1/messages", json={"model": "tiny", "max_tokens": 5, "messages": messages}).status_code == 200
        assert httpx.post(url + "/v1/responses", json={"model": "tiny", "input": "hi"}).status_code == 200
        assert httpx.post(url + "/v1/chat/completions", json={"model": "tiny", "messages": messages}).status_code == 200
        assert upstream.last("/v1/completions").json["model"] == "up-coder"
    finally:
        gateway.stop()
    names = {line.split(" ", 1)[1] for line in watched.read_text().splitlines()}
    # The watch sees the gateway's imports, those importlib makes included (the translator bindings).
    assert {"gateway.app", "gateway.translators.chat", "gateway.translators.upstream_body"} <= names
    assert sorted(name for name in names if name.split(".")[0] == "openai") == []
