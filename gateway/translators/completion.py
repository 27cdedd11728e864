"""What /api/chat and /api/generate share: one completion call, answered as Ollama answers.

Subclasses say how the upstream request is built (`upstream_messages`, or a legacy Completions
prompt) and how a chunk looks (`chat` puts text in `message.content`, `generate` in `response`).
Everything else is here: capability checks, the request body (sampling options, format, think),
the load/unload replies, per-event streaming (text, reasoning, `<think>` tags, tool calls,
logprobs), the final chunk and its metrics.

Per streamed event the work is a few dict lookups: no model objects are built (issue 3).
"""

from __future__ import annotations

from abc import abstractmethod
from typing import TYPE_CHECKING, Any, TypeVar

from gateway.translators.clock import now_rfc3339
from gateway.errors import (
    BadRequest,
    UpstreamRejected,
    UpstreamUnavailable,
    ollama_status,
)
from gateway.ollama import GenerationRequest
from gateway.translators.base import StreamingTranslator
from gateway.translators.messages import ToolNames, audio_entry, audio_refused
from gateway.translators.options import response_format, sampling_params
from gateway.translators.reasoning import ThinkTagSplitter, reasoning_params, reasoning_text
from gateway.translators.toolcalls import ToolCallAssembler, ollama_tool_call
from gateway.translators.upstream_body import streamed_chat, with_extras

if TYPE_CHECKING:
    from openai.types import CompletionCreateParams
    from openai.types.chat import ChatCompletionMessageParam
    from openai.types.chat import CompletionCreateParams as ChatCompletionCreateParams
    from openai.types.chat.completion_create_params import CompletionCreateParamsBase as ChatParams
    from openai.types.chat.completion_create_params import CompletionCreateParamsNonStreaming as ChatParamsNonStreaming

    from gateway.translators.upstream_body import Extras

# Ollama knows only these two; tool_calls, content_filter and the rest end "naturally".
_DONE_REASONS = {"length": "length"}


GenerationT = TypeVar("GenerationT", bound=GenerationRequest)


class ChatCompletionTranslator(StreamingTranslator[GenerationT]):
    """Shared core of the chat and generate translators."""

    upstream_path = "/chat/completions"
    # The Ollama capability this endpoint needs ("chat" models: completion) and its verb in errors.
    verb = "chat"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.done_reason = "stop"
        self.dropped_options: list[str] = []
        self.tool_names = ToolNames()
        self._tool_calls = ToolCallAssembler()
        self._keep_thinking = self.request.think is not False
        self._tags = ThinkTagSplitter() if self.target.quirks.think_tags else None
        self._prompt_chars = 0
        self._completion_chars = 0
        self._usage_seen = False

    # -- what subclasses provide -------------------------------------------------------------

    @abstractmethod
    def upstream_messages(self) -> list[ChatCompletionMessageParam]:
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

    def uses_tools(self) -> bool:
        return False

    def add_tools(self, params: ChatParams) -> None:
        """Sets `tools` and `tool_choice`: none here, the chat endpoint has them (after `stream`, before extras)."""

    def images(self) -> list[str]:
        """Every `images` entry of the request (audio ones included)."""
        return []

    @property
    def takes_audio(self) -> bool:
        """The route declares `audio`: WAV and MP3 entries of `images` go up as `input_audio`."""
        return "audio" in (self.target.route.capabilities or ())

    # -- request -----------------------------------------------------------------------------

    @property
    def streams(self) -> bool:
        return self.request.wants_stream

    def local_reply(self) -> dict[str, Any] | None:
        # Ollama's order: unload shortcut, then capability checks, then the empty-input load reply.
        if self.is_empty() and self.request.unloads:
            return self._load_reply("unload")
        self.check_capabilities()
        if self.is_empty():
            return self._load_reply("load")
        return None

    def check_capabilities(self) -> None:
        """400s as Ollama gives them, for models whose routes.yaml entry declares capabilities."""
        declared = self.target.route.capabilities
        name = self.request.model
        if declared and "completion" not in declared:
            raise BadRequest(f'"{name}" does not support {self.verb}')
        if not self.takes_audio:  # read from each entry's first bytes: WAV or MP3 needs `audio`
            for index, entry in enumerate(self.images()):
                if (sound := audio_entry(entry)) is not None:
                    raise BadRequest(audio_refused(index, sound, name))
        if not declared:
            return
        if self.request.think not in (None, False) and "thinking" not in declared:
            raise BadRequest(f'"{name}" does not support thinking')
        if self.uses_tools() and "tools" not in declared:
            raise BadRequest(f'"{name}" does not support tools')

    def _load_reply(self, reason: str) -> dict[str, Any]:
        reply = self.final("", "", None)
        reply["done_reason"] = reason
        return reply

    def upstream_body(self) -> ChatCompletionCreateParams | CompletionCreateParams:
        quirks = self.target.quirks
        messages = self.upstream_messages()
        fmt, format_instruction = response_format(self.request.format, quirks)
        if format_instruction and (fmt is None or fmt.get("type") != "json_object" or not _mentions_json(messages)):
            messages.insert(0, {"role": "system", "content": format_instruction})
        self._prompt_chars = sum(len(content) for m in messages if isinstance(content := m.get("content"), str))
        params: ChatParamsNonStreaming = {"model": self.target.upstream_model, "messages": messages}
        extras: Extras = {}
        self.dropped_options = sampling_params(self.request.options, quirks, params, extras, params)
        if fmt is not None:
            params["response_format"] = fmt
        if self.reasons():
            effort = reasoning_params(quirks.reasoning, self.request.think, extras)
            if effort is not None:
                params["reasoning_effort"] = effort
        if self.request.logprobs:
            params["logprobs"] = True
            if self.request.top_logprobs:
                params["top_logprobs"] = self.request.top_logprobs
        body = streamed_chat(params) if self.streams else params
        self.add_tools(body)
        return with_extras(body, extras)

    def reasons(self) -> bool:
        """`think` goes upstream unless the model is declared without `thinking`."""
        declared = self.target.route.capabilities
        return not declared or "thinking" in declared

    # -- complete answers ----------------------------------------------------------------------

    def from_response(self, body: dict[str, Any]) -> dict[str, Any]:
        raise_for_error_event(body)
        choice = (body.get("choices") or [{}])[0]
        message = choice.get("message") or {}
        content = message.get("content") or message.get("refusal") or choice.get("text") or ""
        thinking = reasoning_text(message) if self._keep_thinking else ""
        if self._tags is not None:
            content, tagged = self._tags.split_whole(content)
            thinking += tagged if self._keep_thinking else ""
        tool_calls = None
        if message.get("tool_calls"):
            tool_calls = [
                ollama_tool_call(index, call.get("id"), self._original_name(call), (call.get("function") or {}).get("arguments"))
                for index, call in enumerate(message["tool_calls"])
            ]
        self._completion_chars = len(content) + len(thinking)
        self.done_reason = _DONE_REASONS.get(choice.get("finish_reason") or "stop", "stop")
        self._record_usage(body.get("usage"))
        reply = self.final(content, thinking, tool_calls)
        logprobs = _logprobs(choice)
        if logprobs:
            reply["logprobs"] = logprobs
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
                raise_for_error_event(event)
            return []
        choice = choices[0]
        delta = choice.get("delta")
        if delta is None:  # legacy Completions stream
            delta = {"content": choice.get("text")}
        content = delta.get("content") or ""
        thinking = reasoning_text(delta) if self._keep_thinking else ""
        if self._tags is not None and content:
            content, tagged = self._tags.feed(content)
            if self._keep_thinking:
                thinking += tagged
        deltas = delta.get("tool_calls")
        if deltas:
            self._tool_calls.add(deltas)
        finish_reason = choice.get("finish_reason")
        out: list[dict[str, Any]] = []
        if content or thinking:
            self.clock.mark_token()
            self._completion_chars += len(content) + len(thinking)
            chunk = self.chunk(content, thinking, None)
            logprobs = _logprobs(choice)
            if logprobs:
                chunk["logprobs"] = logprobs
            out.append(chunk)
        if finish_reason:
            if finish_reason == "error" or "error" in event:
                raise_for_error_event(event)
            self.saw_finish_reason = True
            self.done_reason = _DONE_REASONS.get(finish_reason, "stop")
            if self._tool_calls:
                out.append(self._tool_call_chunk())
        return out

    def finish(self) -> list[dict[str, Any]]:
        out = []
        if self._tags is not None:
            content, thinking = self._tags.flush()
            if content or (thinking and self._keep_thinking):
                out.append(self.chunk(content, thinking if self._keep_thinking else "", None))
        if self._tool_calls:
            out.append(self._tool_call_chunk())
        final = self.final("", "", None)
        final["done_reason"] = self.done_reason
        final.update(self._metrics())
        out.append(final)
        return out

    # -- helpers -------------------------------------------------------------------------------

    def _tool_call_chunk(self) -> dict[str, Any]:
        self.clock.mark_token()
        calls = self._tool_calls.flush()
        if self.tool_names.renamed:
            for call in calls:
                call["function"]["name"] = self.tool_names.original(call["function"]["name"])
        return self.chunk("", "", calls)

    def _original_name(self, call: dict[str, Any]) -> str:
        return self.tool_names.original((call.get("function") or {}).get("name") or "")

    def _record_usage(self, usage: dict[str, Any] | None) -> None:
        if not usage:
            return
        self._usage_seen = True
        self.prompt_tokens = int(usage.get("prompt_tokens") or 0)
        self.completion_tokens = int(usage.get("completion_tokens") or 0)

    def _metrics(self) -> dict[str, int]:
        self.tokens_so_far()
        return self.clock.metrics(self.prompt_tokens, self.completion_tokens)

    def tokens_so_far(self) -> tuple[int, int]:
        if not self._usage_seen:
            # No usage from the upstream: estimate (about four characters a token) rather than omit;
            # some clients require the counts (openai-mapping.md §3.4).
            self.prompt_tokens = max(1, self._prompt_chars // 4)
            self.completion_tokens = -(-self._completion_chars // 4)
        return self.prompt_tokens, self.completion_tokens

    def base_chunk(self) -> dict[str, Any]:
        return {"model": self.request.model, "created_at": now_rfc3339()}


def _mentions_json(messages: list[ChatCompletionMessageParam]) -> bool:
    return any(isinstance(content := m.get("content"), str) and "json" in content.lower() for m in messages)


def _logprobs(choice: dict[str, Any]) -> list[dict[str, Any]] | None:
    """OpenAI's per-token logprobs, in Ollama's shape (token, logprob, bytes, top_logprobs)."""
    logprobs = choice.get("logprobs")
    if not logprobs or not isinstance(logprobs, dict) or not logprobs.get("content"):
        return None
    return [
        {
            "token": item.get("token", ""),
            "logprob": item.get("logprob", 0.0),
            **({"bytes": item["bytes"]} if item.get("bytes") is not None else {}),
            "top_logprobs": [
                {"token": top.get("token", ""), "logprob": top.get("logprob", 0.0), **({"bytes": top["bytes"]} if top.get("bytes") is not None else {})}
                for top in item.get("top_logprobs") or []
            ],
        }
        for item in logprobs["content"]
    ]


def raise_for_error_event(event: dict[str, Any]) -> None:
    """An `error` object in an upstream event or body (OpenRouter mid-stream errors, some proxies)."""
    error = event.get("error")
    if not error:
        return
    if isinstance(error, dict):
        message = str(error.get("message") or error)
        code = error.get("code")
        if isinstance(code, int) and 400 <= code <= 599:
            raise UpstreamRejected(message, status_code=ollama_status(code))
        raise UpstreamUnavailable(message)
    raise UpstreamUnavailable(str(error))
