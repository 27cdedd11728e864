"""`tool_choice` on /api/chat: Ollama ignores it, but SDKs and agent frameworks send it (LangChain's
`bind_tools(tool_choice=...)`, LiteLLM, the Vercel AI SDK); the gateway forwards it to the
upstream in Chat Completions' shape. End to end: gateway under Granian, loopback upstream."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.conftest import RunningGateway
from tests.fake_upstream import FakeUpstream

CHAT = "/v1/chat/completions"
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {}}}}
DOTTED = {"type": "function", "function": {"name": "ns.lookup", "parameters": {"type": "object"}}}


def sent_choice(gateway: RunningGateway, upstream: FakeUpstream, **fields: Any) -> Any:
    body = {"model": "tiny", "stream": False, "messages": [{"role": "user", "content": "weather?"}], **fields}
    response = httpx.post(gateway.url + "/api/chat", json=body)
    assert response.status_code == 200, response.text
    return upstream.last(CHAT).json.get("tool_choice", "<absent>")


@pytest.mark.parametrize(("choice", "expected"), [
    ("auto", "auto"), ("none", "none"), ("required", "required"), ("any", "required"),
    ({"type": "function", "function": {"name": "get_weather"}}, {"type": "function", "function": {"name": "get_weather"}}),
    ({"type": "function", "name": "get_weather"}, {"type": "function", "function": {"name": "get_weather"}}),
    # The name as the upstream knows the tool (dots are invalid for OpenAI, so it was rewritten).
    ({"type": "function", "function": {"name": "ns.lookup"}}, {"type": "function", "function": {"name": "ns_lookup"}}),
])
def test_tool_choice_is_forwarded_in_chat_completions_shape(gateway: RunningGateway, upstream: FakeUpstream, choice: Any,
                                                            expected: Any) -> None:
    assert sent_choice(gateway, upstream, tools=[WEATHER, DOTTED], tool_choice=choice) == expected


def test_tool_choice_without_tools_or_in_an_unknown_shape_is_not_sent(gateway: RunningGateway, upstream: FakeUpstream) -> None:
    assert sent_choice(gateway, upstream, tool_choice="required") == "<absent>"  # OpenAI rejects it without tools
    assert sent_choice(gateway, upstream, tools=[WEATHER], tool_choice="sometimes") == "<absent>"
    assert sent_choice(gateway, upstream, tools=[WEATHER], tool_choice={"type": "allowed_tools"}) == "<absent>"
    assert sent_choice(gateway, upstream, tools=[WEATHER]) == "<absent>"


def test_a_tool_choice_of_another_json_type_is_ignored_as_ollama_ignores_it(gateway: RunningGateway, upstream: FakeUpstream) -> None:
    assert sent_choice(gateway, upstream, tools=[WEATHER], tool_choice=5) == "<absent>"
    assert sent_choice(gateway, upstream, tools=[WEATHER], tool_choice=["auto"]) == "<absent>"
