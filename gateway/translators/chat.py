"""/api/chat -> Chat Completions."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gateway.ollama import ChatRequest
from gateway.translators.completion import ChatCompletionTranslator
from gateway.translators.messages import upstream_messages, upstream_tool_choice, upstream_tools

if TYPE_CHECKING:
    from openai.types.chat import ChatCompletionMessageParam
    from openai.types.chat.completion_create_params import CompletionCreateParamsBase as ChatParams


class ChatTranslator(ChatCompletionTranslator[ChatRequest]):
    """Ollama chat: text goes in `message.content`, reasoning in `message.thinking`."""

    request_type = ChatRequest
    request: ChatRequest

    def is_empty(self) -> bool:
        return not self.request.messages

    def uses_tools(self) -> bool:
        return bool(self.request.tools)

    def images(self) -> list[str]:
        return [image for message in self.request.messages for image in message.images or ()]

    def upstream_messages(self) -> list[ChatCompletionMessageParam]:
        return upstream_messages(self.request.messages, self.target.quirks, self.tool_names, self.takes_audio)

    def add_tools(self, params: ChatParams) -> None:
        tools = upstream_tools(self.request.tools, self.tool_names)
        if tools:  # an empty list is never forwarded: OpenAI rejects `tools: []`
            params["tools"] = tools
            if self.request.tool_choice is not None:
                choice = upstream_tool_choice(self.request.tool_choice, self.tool_names)
                if choice is None:
                    self.dropped_options.append("tool_choice")
                else:
                    params["tool_choice"] = choice

    def chunk(self, content: str, thinking: str, tool_calls: list[dict[str, Any]] | None) -> dict[str, Any]:
        chunk = self.base_chunk()
        chunk["message"] = _message(content, thinking, tool_calls)
        chunk["done"] = False
        return chunk

    def final(self, content: str, thinking: str, tool_calls: list[dict[str, Any]] | None) -> dict[str, Any]:
        reply = self.base_chunk()
        reply["message"] = _message(content, thinking, tool_calls)
        reply["done"] = True
        return reply


def _message(content: str, thinking: str, tool_calls: list[dict[str, Any]] | None) -> dict[str, Any]:
    # `content` is always present, even empty: LlamaIndex and Zed index it on every chunk.
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if thinking:
        message["thinking"] = thinking
    if tool_calls:
        message["tool_calls"] = tool_calls
    return message
