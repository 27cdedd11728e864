"""/api/generate -> Chat Completions: `system` and `prompt` become the conversation."""

from __future__ import annotations

from typing import Any

from gateway.ollama import GenerateRequest
from gateway.translators.completion import ChatCompletionTranslator


class GenerateTranslator(ChatCompletionTranslator[GenerateRequest]):
    """Ollama generate: text goes in `response`, reasoning in `thinking`."""

    request_type = GenerateRequest
    request: GenerateRequest

    def is_empty(self) -> bool:
        return not self.request.prompt

    def upstream_messages(self) -> list[dict[str, Any]]:
        messages = []
        if self.request.system:
            messages.append({"role": "system", "content": self.request.system})
        messages.append({"role": "user", "content": self.request.prompt})
        return messages

    def chunk(self, content: str, thinking: str, tool_calls: list[dict[str, Any]] | None) -> dict[str, Any]:
        chunk = self.base_chunk()
        chunk["response"] = content
        if thinking:
            chunk["thinking"] = thinking
        if tool_calls:
            chunk["tool_calls"] = tool_calls
        chunk["done"] = False
        return chunk

    def final(self, content: str, thinking: str, tool_calls: list[dict[str, Any]] | None) -> dict[str, Any]:
        reply = self.chunk(content, thinking, tool_calls)
        reply["done"] = True
        return reply
