"""`POST /v1/messages` (Anthropic Messages, Claude Code) -> Chat Completions, and back (agents-api.md §2).

The request side is `anthropic_messages.py`; this module builds the upstream body's other keys and
turns the answer into Anthropic's message, or the upstream's SSE events into Anthropic's events:

    message_start (usage: the input estimate) · ping
    per block, indices 0, 1, 2 ... in start order:
        content_block_start (the full empty block) · content_block_delta* · content_block_stop
        thinking   reasoning deltas (`reasoning_content` / `reasoning` / `<think>` tags) as thinking_delta
        text       content deltas as text_delta
        tool_use   one per upstream call (started once its name is known), argument fragments
                   as input_json_delta as they come
    message_delta (stop_reason, stop_sequence, usage from the upstream) · message_stop

Stop reasons: a tool call -> `tool_use`, `length` -> `max_tokens`, `content_filter` -> `refusal`,
a stop the upstream names (vLLM's choice-level `stop_reason`) -> `stop_sequence`, else `end_turn`.
Usage: `input_tokens` = prompt tokens less cached ones, `cache_read_input_tokens` = the cached ones.

Thinking: `thinking.type: disabled` -> think off; `output_config.effort` (xhigh -> high) or the
`budget_tokens` of `enabled` (< 4096 low, < 16384 medium, else high; OpenRouter gets the budget
itself) -> the route's reasoning knob; `adaptive` or nothing -> the model's default.

Errors are Anthropic's `{"type": "error", "error": {"type", "message"}}`: `anthropic_error` gives
the status and type for a GatewayError (503 -> 529 `overloaded_error`), the stream's framing the
`error` event after the first byte; an upstream saying the context is too long is reworded as
Anthropic says it (`prompt is too long: N tokens > M maximum`), which makes Claude Code compact.
"""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING, Any

import orjson

from gateway.errors import BadRequest, GatewayError
from gateway.translators.anthropic_wire import AnthropicSSE, context_overflow
from gateway.translators.anthropic_messages import (
    MessagesRequest,
    estimate_input_tokens,
    tool_choice,
    upstream_messages,
    upstream_tools,
)
from gateway.translators.base import StreamingTranslator
from gateway.translators.completion import raise_for_error_event
from gateway.translators.messages import ToolNames
from gateway.translators.reasoning import ThinkTagSplitter, reasoning_params, reasoning_text
from gateway.translators.toolcalls import parse_arguments
from gateway.translators.upstream_body import streamed_chat, with_extras

if TYPE_CHECKING:
    from openai.types.chat import CompletionCreateParams
    from openai.types.chat.completion_create_params import CompletionCreateParamsNonStreaming
    from openai.types.shared_params import ReasoningEffort

    from gateway.translators.upstream_body import Extras

_EFFORTS = {"low": "low", "medium": "medium", "high": "high", "xhigh": "high", "max": "max"}


class _Call:
    """One upstream tool call of a stream: its block index once started, arguments held until then."""

    __slots__ = ("id", "name", "held", "index")

    def __init__(self, call_id: str | None, name: str | None) -> None:
        self.id = call_id
        self.name = name
        self.held = ""
        self.index: int | None = None


class MessagesTranslator(StreamingTranslator[MessagesRequest]):
    request_type = MessagesRequest
    request: MessagesRequest
    upstream_path = "/chat/completions"
    framing = AnthropicSSE()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.message_id = "msg_" + secrets.token_hex(12)
        self.tool_names = ToolNames()
        self.dropped_options: list[str] = []
        thinking = self.request.thinking or {}
        self._keep_thinking = thinking.get("type") != "disabled"
        self._tags = ThinkTagSplitter() if self.target.quirks.think_tags else None
        self.input_estimate = estimate_input_tokens(self.request)
        self._usage: dict[str, Any] | None = None
        self._finish_reason: str | None = None
        self._matched_stop: str | None = None
        self._output_chars = 0
        # Stream state: the block counter, the open block ("thinking", "text", a _Call, or None).
        self._started = False
        self._blocks = 0
        self._open: str | _Call | None = None
        self._calls: list[_Call] = []
        self._by_key: dict[Any, _Call] = {}
        self._last_key: Any = 0

    @property
    def streams(self) -> bool:
        return self.request.stream is True

    def local_reply(self) -> dict[str, Any] | None:
        declared = self.target.route.capabilities
        if declared:
            if "completion" not in declared:
                raise BadRequest(f'"{self.request.model}" does not support chat')
            if self.request.tools and "tools" not in declared:
                raise BadRequest(f'"{self.request.model}" does not support tools')
        return None

    def map_error(self, error: GatewayError) -> GatewayError:
        return context_overflow(error) or error

    # -- request -------------------------------------------------------------------------------

    def upstream_body(self) -> CompletionCreateParams:
        request, quirks = self.request, self.target.quirks
        tools, dropped = upstream_tools(request.tools, self.tool_names)
        self.dropped_options = dropped
        params: CompletionCreateParamsNonStreaming = {
            "model": self.target.upstream_model, "messages": upstream_messages(request, quirks, self.tool_names),
        }
        extras: Extras = {}
        if request.max_tokens:
            params[quirks.max_tokens_field] = request.max_tokens
        if request.temperature is not None:
            params["temperature"] = request.temperature
        if request.top_p is not None:
            params["top_p"] = request.top_p
        if request.top_k is not None:
            if "top_k" in quirks.extra_options:
                extras[quirks.extra_options["top_k"]] = request.top_k
            else:
                self.dropped_options.append("top_k")
        if request.stop_sequences:
            params["stop"] = request.stop_sequences[: quirks.stop_limit] if quirks.stop_limit else request.stop_sequences
        if tools:
            params["tools"] = tools
            tool_choice(request.tool_choice, self.tool_names, params)
        declared = self.target.route.capabilities
        if not declared or "thinking" in declared:  # else relaxed, as Ollama does for Claude Code
            effort = self._reasoning(extras)
            if effort is not None:
                params["reasoning_effort"] = effort
        output_format = (request.output_config or {}).get("format")
        schema = output_format.get("schema") if isinstance(output_format, dict) else None
        if isinstance(schema, dict):
            params["response_format"] = {"type": "json_schema", "json_schema": {"name": "response", "schema": schema, "strict": False}}
        return with_extras(streamed_chat(params) if self.streams else params, extras)

    def _reasoning(self, extras: Extras) -> ReasoningEffort:
        thinking = self.request.thinking or {}
        kind = thinking.get("type")
        knob = self.target.quirks.reasoning
        if kind == "disabled":
            return reasoning_params(knob, False, extras)
        effort = _EFFORTS.get(str((self.request.output_config or {}).get("effort")))
        budget = thinking.get("budget_tokens")
        if effort is None and kind == "enabled" and isinstance(budget, int) and budget > 0:
            if knob == "openrouter":
                extras["reasoning"] = {"max_tokens": budget}
                return None
            effort = "low" if budget < 4096 else "medium" if budget < 16384 else "high"
        if effort is not None:
            return reasoning_params(knob, effort, extras)
        return reasoning_params(knob, True, extras) if kind == "enabled" else None

    # -- a complete answer ---------------------------------------------------------------------

    def from_response(self, body: dict[str, Any]) -> dict[str, Any]:
        raise_for_error_event(body)
        choice = (body.get("choices") or [{}])[0]
        message = choice.get("message") or {}
        text = message.get("content") or message.get("refusal") or ""
        thinking = reasoning_text(message) if self._keep_thinking else ""
        if self._tags is not None:
            text, tagged = self._tags.split_whole(text)
            thinking += tagged if self._keep_thinking else ""
        content: list[dict[str, Any]] = []
        if thinking:
            content.append({"type": "thinking", "thinking": thinking, "signature": ""})
        if text:
            content.append({"type": "text", "text": text})
        for call in message.get("tool_calls") or ():
            function = call.get("function") or {}
            name = self.tool_names.original(function.get("name") or "")
            content.append({"type": "tool_use", "id": call.get("id") or _tool_id(), "name": name,
                            "input": parse_arguments(name, function.get("arguments"))})
        self._output_chars = len(text) + len(thinking)
        self._note_finish(choice)
        self._usage = body.get("usage") or None
        stop_reason, stop_sequence = self._stop(any(block["type"] == "tool_use" for block in content))
        return {
            "id": self.message_id, "type": "message", "role": "assistant", "model": self.request.model, "content": content,
            "stop_reason": stop_reason, "stop_sequence": stop_sequence, "usage": self._usage_out(),
        }

    # -- streaming -----------------------------------------------------------------------------

    def feed(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        if "error" in event:
            raise_for_error_event(event)
        out: list[dict[str, Any]] = [] if self._started else self._start()
        usage = event.get("usage")
        if usage:
            self._usage = usage
        choices = event.get("choices")
        if not choices:
            return out
        choice = choices[0]
        delta = choice.get("delta") or {}
        text = delta.get("content") or ""
        thinking = reasoning_text(delta) if self._keep_thinking else ""
        if self._tags is not None and text:
            text, tagged = self._tags.feed(text)
            if self._keep_thinking:
                thinking += tagged
        if thinking:
            self._delta(out, "thinking", {"type": "thinking_delta", "thinking": thinking})
        if text:
            self._delta(out, "text", {"type": "text_delta", "text": text})
        self._output_chars += len(text) + len(thinking)
        for call_delta in delta.get("tool_calls") or ():
            self._tool_delta(out, call_delta)
        if choice.get("finish_reason"):
            if choice["finish_reason"] == "error":
                raise_for_error_event(event)
            self.saw_finish_reason = True
            self._note_finish(choice)
        return out

    def finish(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = [] if self._started else self._start()
        if self._tags is not None:
            text, thinking = self._tags.flush()
            if thinking and self._keep_thinking:
                self._delta(out, "thinking", {"type": "thinking_delta", "thinking": thinking})
            if text:
                self._delta(out, "text", {"type": "text_delta", "text": text})
        for call in self._calls:  # a call whose name never came: started now, whole
            if call.index is None:
                call.name = call.name or ""
                self._start_call(out, call)
        self._close(out)
        stop_reason, stop_sequence = self._stop(bool(self._calls))
        usage = self._usage_out()
        out.append({"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": stop_sequence}, "usage": usage})
        out.append({"type": "message_stop"})
        return out

    def _start(self) -> list[dict[str, Any]]:
        self._started = True
        message: dict[str, Any] = {
            "id": self.message_id, "type": "message", "role": "assistant", "model": self.request.model, "content": [],
            "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": self.input_estimate, "output_tokens": 0, "cache_creation_input_tokens": 0,
                      "cache_read_input_tokens": 0},
        }
        return [{"type": "message_start", "message": message}, {"type": "ping"}]

    def _delta(self, out: list[dict[str, Any]], kind: str, delta: dict[str, Any]) -> None:
        if self._open != kind:
            self._close(out)
            empty = {"type": "thinking", "thinking": "", "signature": ""} if kind == "thinking" else {"type": "text", "text": ""}
            out.append({"type": "content_block_start", "index": self._blocks, "content_block": empty})
            self._open = kind
        out.append({"type": "content_block_delta", "index": self._blocks, "delta": delta})

    def _close(self, out: list[dict[str, Any]]) -> None:
        if self._open is not None:
            out.append({"type": "content_block_stop", "index": self._blocks})
            self._blocks += 1
            self._open = None

    def _tool_delta(self, out: list[dict[str, Any]], delta: dict[str, Any]) -> None:
        function = delta.get("function") or {}
        call_id, name = delta.get("id"), function.get("name")
        key = delta.get("index")
        if key is None:
            key = call_id or (self._last_key if self._calls else 0)
        call = self._by_key.get(key)
        if call is not None and call_id and call.id and call_id != call.id:
            call = None  # a server that numbers every call 0: a new call reusing the index
        if call is None:
            call = self._by_key[key] = _Call(call_id, name)
            self._calls.append(call)
        else:
            call.id = call.id or call_id
            call.name = call.name or name
        self._last_key = key
        fragment = function.get("arguments")
        if isinstance(fragment, dict):
            fragment = orjson.dumps(fragment).decode()
        if call.index is None:
            call.held += fragment or ""
            if call.name:
                self._start_call(out, call)
        elif fragment:
            # A call's later fragments go to its own block; upstreams send calls one after another.
            out.append({"type": "content_block_delta", "index": call.index,
                        "delta": {"type": "input_json_delta", "partial_json": fragment}})

    def _start_call(self, out: list[dict[str, Any]], call: _Call) -> None:
        self._close(out)
        call.id = call.id or _tool_id()
        call.index = self._blocks
        block = {"type": "tool_use", "id": call.id, "name": self.tool_names.original(call.name or ""), "input": {}}
        out.append({"type": "content_block_start", "index": call.index, "content_block": block})
        if call.held:
            out.append({"type": "content_block_delta", "index": call.index,
                        "delta": {"type": "input_json_delta", "partial_json": call.held}})
            call.held = ""
        self._open = call

    # -- shared --------------------------------------------------------------------------------

    def _note_finish(self, choice: dict[str, Any]) -> None:
        self._finish_reason = choice.get("finish_reason")
        matched = choice.get("stop_reason")
        if isinstance(matched, str) and matched in (self.request.stop_sequences or ()):
            self._matched_stop = matched

    def _stop(self, called_tools: bool) -> tuple[str, str | None]:
        reason = self._finish_reason
        if reason == "length":
            return "max_tokens", None
        if called_tools or reason in ("tool_calls", "function_call"):
            return "tool_use", None
        if reason == "content_filter":
            return "refusal", None
        if self._matched_stop is not None:
            return "stop_sequence", self._matched_stop
        return "end_turn", None

    def tokens_so_far(self) -> tuple[int, int]:
        self._usage_out()
        return self.prompt_tokens, self.completion_tokens

    def _usage_out(self) -> dict[str, int]:
        usage = self._usage
        if usage:
            prompt = int(usage.get("prompt_tokens") or 0)
            cached = int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
            output = int(usage.get("completion_tokens") or 0)
        else:  # no usage from the upstream: about four characters a token, as on /api/chat
            prompt, cached, output = self.input_estimate, 0, -(-self._output_chars // 4)
        self.prompt_tokens, self.completion_tokens = prompt, output
        return {"input_tokens": prompt - cached, "output_tokens": output, "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": cached}


def _tool_id() -> str:
    return "toolu_" + secrets.token_hex(12)
