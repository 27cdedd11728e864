"""What /api/chat and /api/generate share: one Chat Completions call, answered as Ollama answers.

Subclasses say how the upstream messages are built (`upstream_messages`) and how a chunk looks
(`chat` puts text in `message.content`, `generate` in `response`). Everything else is here: the
request body, the load/unload replies, per-event streaming, the final chunk and its metrics.

Per streamed event the work is a few dict lookups: no model objects are built (issue 3).
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any, ClassVar

from gateway.clock import now_rfc3339
from gateway.errors import UpstreamRejected, UpstreamUnavailable
from gateway.ollama import GenerationRequest
from gateway.translators.base import RequestT, StreamingTranslator
from gateway.translators.options import response_format, sampling_params
from gateway.translators.toolcalls import ToolCallAssembler, ollama_tool_call

# Ollama knows only these two; tool_calls, content_filter and the rest end "naturally".
_DONE_REASONS = {"length": "length"}


class ChatCompletionTranslator(StreamingTranslator[RequestT]):
    """Shared core of the chat and generate translators."""

    upstream_path: ClassVar[str] = "/chat/completions"
    request: GenerationRequest

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.done_reason = "stop"
        self._tool_calls = ToolCallAssembler()
        self._keep_thinking = self.request.think is not False
        self._prompt_chars = 0
        self._completion_chars = 0
        self._usage_seen = False

    # -- what subclasses provide -------------------------------------------------------------

    @abstractmethod
    def upstream_messages(self) -> list[dict[str, Any]]:
        """The OpenAI `messages` for this request."""

    @abstractmethod
    def is_empty(self) -> bool:
        """True when there is nothing to generate from (Ollama then answers load/unload)."""

    @abstractmethod
    def chunk(self, content: str, thinking: str, tool_calls: list[dict[str, Any]] | None) -> dict[str, Any]:
        """One `done: false` chunk in this endpoint's shape."""

    @abstractmethod
    def final(self, content: str, thinking: str, tool_calls: list[dict[str, Any]] | None) -> dict[str, Any]:
        """The `done: true` object (metrics are added by the caller)."""

    # -- request -----------------------------------------------------------------------------

    @property
    def streams(self) -> bool:
        return self.request.wants_stream

    def local_reply(self) -> dict[str, Any] | None:
        if not self.is_empty():
            return None
        reply = self.final("", "", None)
        reply["done_reason"] = "unload" if self.request.unloads else "load"
        return reply

    def upstream_body(self) -> dict[str, Any]:
        messages = self.upstream_messages()
        self._prompt_chars = sum(len(message["content"]) for message in messages if isinstance(message.get("content"), str))
        body: dict[str, Any] = {"model": self.target.upstream_model, "messages": messages}
        body.update(sampling_params(self.request.options))
        fmt = response_format(self.request.format)
        if fmt is not None:
            body["response_format"] = fmt
        if self.streams:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        return body

    # -- complete answers ----------------------------------------------------------------------

    def from_response(self, body: dict[str, Any]) -> dict[str, Any]:
        _raise_for_error_event(body)
        choices = body.get("choices") or [{}]
        choice = choices[0]
        message = choice.get("message") or {}
        content = message.get("content") or message.get("refusal") or ""
        thinking = self._thinking_of(message)
        calls = message.get("tool_calls")
        tool_calls = (
            [
                ollama_tool_call(index, call.get("id"), (call.get("function") or {}).get("name") or "", (call.get("function") or {}).get("arguments"))
                for index, call in enumerate(calls)
            ]
            if calls
            else None
        )
        self._completion_chars = len(content) + len(thinking)
        self.done_reason = _DONE_REASONS.get(choice.get("finish_reason") or "stop", "stop")
        self._record_usage(body.get("usage"))
        reply = self.final(content, thinking, tool_calls)
        reply["done_reason"] = self.done_reason
        reply.update(self._metrics())
        return reply

    # -- streaming -----------------------------------------------------------------------------

    def feed(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        usage = event.get("usage")
        if usage:
            self._record_usage(usage)
        choices = event.get("choices")
        if not choices:
            if "error" in event:
                _raise_for_error_event(event)
            return []
        choice = choices[0]
        delta = choice.get("delta") or {}
        content = delta.get("content") or ""
        thinking = self._thinking_of(delta)
        deltas = delta.get("tool_calls")
        if deltas:
            self._tool_calls.add(deltas)
        finish_reason = choice.get("finish_reason")
        out: list[dict[str, Any]] = []
        if content or thinking:
            self.clock.mark_token()
            self._completion_chars += len(content) + len(thinking)
            out.append(self.chunk(content, thinking, None))
        if finish_reason:
            if finish_reason == "error" or "error" in event:
                _raise_for_error_event(event)
            self.saw_finish_reason = True
            self.done_reason = _DONE_REASONS.get(finish_reason, "stop")
            if self._tool_calls:
                out.append(self._tool_call_chunk())
        return out

    def finish(self) -> list[dict[str, Any]]:
        out = [self._tool_call_chunk()] if self._tool_calls else []
        final = self.final("", "", None)
        final["done_reason"] = self.done_reason
        final.update(self._metrics())
        out.append(final)
        return out

    # -- helpers -------------------------------------------------------------------------------

    def _tool_call_chunk(self) -> dict[str, Any]:
        self.clock.mark_token()
        return self.chunk("", "", self._tool_calls.flush())

    def _thinking_of(self, message: dict[str, Any]) -> str:
        # Providers that send the same text in two fields (OpenRouter) are read once: never add them.
        if not self._keep_thinking:
            return ""
        return message.get("reasoning_content") or message.get("reasoning") or ""

    def _record_usage(self, usage: dict[str, Any] | None) -> None:
        if not usage:
            return
        self._usage_seen = True
        self.prompt_tokens = int(usage.get("prompt_tokens") or 0)
        self.completion_tokens = int(usage.get("completion_tokens") or 0)

    def _metrics(self) -> dict[str, int]:
        if not self._usage_seen:
            # No usage from the upstream: estimate (about four characters a token) rather than omit;
            # some clients require the counts (openai-mapping.md §3.4).
            self.prompt_tokens = max(1, self._prompt_chars // 4)
            self.completion_tokens = -(-self._completion_chars // 4)
        return self.clock.metrics(self.prompt_tokens, self.completion_tokens)

    def base_chunk(self) -> dict[str, Any]:
        return {"model": self.request.model, "created_at": now_rfc3339()}


def _raise_for_error_event(event: dict[str, Any]) -> None:
    """An `error` object in an upstream event or body (OpenRouter mid-stream errors, some proxies)."""
    error = event.get("error")
    if not error:
        return
    if isinstance(error, dict):
        message = str(error.get("message") or error)
        code = error.get("code")
        if isinstance(code, int) and 400 <= code <= 599:
            raise UpstreamRejected(message, status_code=code)
        raise UpstreamUnavailable(message)
    raise UpstreamUnavailable(str(error))
