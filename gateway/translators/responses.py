"""`POST /v1/responses` (the OpenAI Responses API, Codex) -> Chat Completions, and back (agents-api.md §4).

The request side is `responses_items.py`. The answer is a response object (`resp_` id, `output`
items in order: reasoning, message, then one function_call per tool call; `status` `incomplete`
with `incomplete_details.reason` `max_output_tokens` when the upstream stopped on length); a
stream is the Responses events, each with its `sequence_number` from 0 and at most one item open:

    response.created · response.in_progress
    reasoning   output_item.added · reasoning_summary_part.added · reasoning_summary_text.delta*
                · reasoning_summary_text.done · reasoning_summary_part.done · output_item.done
    message     output_item.added · content_part.added · output_text.delta* · output_text.done
                · content_part.done · output_item.done
    a call      output_item.added · function_call_arguments.delta* · function_call_arguments.done
                · output_item.done   (a custom tool's call: added, then done with its `input`)
    response.completed (full output and usage; status `incomplete` on length, as Codex reads it)

A failure after the first event is `response.failed` with `error: {code, message}`
(`rate_limit_exceeded`, `context_length_exceeded`, `server_error`). Reasoning goes out as the
summary text and, when `include` asks, as `encrypted_content` the gateway can read back.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import orjson

from gateway.errors import GatewayError, UpstreamRelayed
from gateway.translators.anthropic_wire import context_overflow
from gateway.translators.base import StreamingTranslator
from gateway.translators.completion import raise_for_error_event
from gateway.translators.reasoning import ThinkTagSplitter, reasoning_params, reasoning_text
from gateway.translators.responses_output import OutputItem, message_item, new_id, text_part
from gateway.translators.responses_items import ResponsesRequest, ToolIndex, encrypted_reasoning, upstream_messages
from gateway.translators.toolcalls import parse_arguments
from gateway.translators.upstream_body import streamed_chat, with_extras

if TYPE_CHECKING:
    from openai.types.chat import CompletionCreateParams
    from openai.types.chat.completion_create_params import CompletionCreateParamsNonStreaming
    from openai.types.shared_params.response_format_json_schema import JSONSchema

    from gateway.translators.upstream_body import Extras

_EFFORTS: dict[str, bool | str] = {"none": False, "minimal": "low", "low": "low", "medium": "medium", "high": "high",
                                   "xhigh": "max", "max": "max"}


class ResponsesSSE:
    """The Responses events of one stream: `event: <type>`, `data: <JSON>`; a failure is `response.failed`."""

    media_type = "text/event-stream; charset=utf-8"

    def __init__(self, translator: ResponsesTranslator) -> None:
        self._translator = translator

    def encode(self, chunks: list[dict[str, Any]]) -> bytes:
        return b"".join(b"event: " + chunk["type"].encode() + b"\ndata: " + orjson.dumps(chunk) + b"\n\n" for chunk in chunks)

    def error_chunk(self, error: GatewayError) -> bytes:
        return self.encode([self._translator.failed(error)])


class ResponsesTranslator(StreamingTranslator[ResponsesRequest]):
    request_type = ResponsesRequest
    request: ResponsesRequest
    upstream_path = "/chat/completions"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.framing = ResponsesSSE(self)
        self.response_id = new_id("resp_")
        self.created_at = int(time.time())
        self.tools = ToolIndex(self.request.tools)
        self.dropped_options: list[str] = list(self.tools.dropped)
        effort = (self.request.reasoning or {}).get("effort")
        self._think = _EFFORTS.get(effort) if isinstance(effort, str) else None
        self._keep_reasoning = self._think is not False
        self._encrypt = "reasoning.encrypted_content" in (self.request.include or ())
        self._tags = ThinkTagSplitter() if self.target.quirks.think_tags else None
        self._usage: dict[str, Any] | None = None
        self._finish_reason: str | None = None
        self._output_chars = 0
        self._prompt_chars = 0
        # Stream state.
        self._sequence = 0
        self._started = False
        self._output: list[dict[str, Any]] = []
        self._open: OutputItem | None = None
        self._calls: dict[Any, OutputItem] = {}

    @property
    def streams(self) -> bool:
        return self.request.stream is True

    def map_error(self, error: GatewayError) -> GatewayError:
        if context_overflow(error) is None:
            return error
        # The code Codex reads to stop retrying and say the conversation is too long.
        error_object: dict[str, object] = {"message": error.message, "type": "invalid_request_error", "param": None,
                                           "code": "context_length_exceeded"}
        return UpstreamRelayed(error_object, status_code=400)

    # -- request -------------------------------------------------------------------------------

    def upstream_body(self) -> CompletionCreateParams:
        request, quirks = self.request, self.target.quirks
        messages, dropped = upstream_messages(request, quirks, self.tools)
        self.dropped_options = [*self.tools.dropped, *dropped]
        self._prompt_chars = sum(len(content) for m in messages if isinstance(content := m.get("content"), str))
        params: CompletionCreateParamsNonStreaming = {"model": self.target.upstream_model, "messages": messages}
        extras: Extras = {}
        if request.max_output_tokens:
            params[quirks.max_tokens_field] = request.max_output_tokens
        if request.temperature is not None:
            params["temperature"] = request.temperature
        if request.top_p is not None:
            params["top_p"] = request.top_p
        if self.tools.functions:
            params["tools"] = self.tools.functions
            choice = self.tools.choice(request.tool_choice)
            if choice is not None:
                params["tool_choice"] = choice
            if request.parallel_tool_calls is not None:
                params["parallel_tool_calls"] = request.parallel_tool_calls
        declared = self.target.route.capabilities
        if self._think is not None and (not declared or "thinking" in declared):
            effort = reasoning_params(quirks.reasoning, self._think, extras)
            if effort is not None:
                params["reasoning_effort"] = effort
        text_format = (request.text or {}).get("format")
        if isinstance(text_format, dict) and text_format.get("type") == "json_schema" and quirks.json_schema:
            schema: JSONSchema = {"name": text_format.get("name", "response")}
            for key in ("schema", "strict", "description"):
                if key in text_format:
                    schema[key] = text_format[key]
            params["response_format"] = {"type": "json_schema", "json_schema": schema}
        elif isinstance(text_format, dict) and text_format.get("type") in ("json_object", "json_schema"):
            params["response_format"] = {"type": "json_object"}
        return with_extras(streamed_chat(params) if self.streams else params, extras)

    # -- a complete answer ---------------------------------------------------------------------

    def from_response(self, body: dict[str, Any]) -> dict[str, Any]:
        raise_for_error_event(body)
        choice = (body.get("choices") or [{}])[0]
        message = choice.get("message") or {}
        text = message.get("content") or message.get("refusal") or ""
        reasoning = reasoning_text(message) if self._keep_reasoning else ""
        if self._tags is not None:
            text, tagged = self._tags.split_whole(text)
            reasoning += tagged if self._keep_reasoning else ""
        output: list[dict[str, Any]] = []
        if reasoning:
            output.append(self._reasoning_item(new_id("rs_"), reasoning))
        if text:
            output.append(message_item(new_id("msg_"), text, "completed"))
        for call in message.get("tool_calls") or ():
            function = call.get("function") or {}
            item = OutputItem("function_call", len(output), "fc_")
            item.call_id = call.get("id") or new_id("call_")
            self._name_call(item, function.get("name") or "")
            arguments = function.get("arguments")
            item.text = arguments if isinstance(arguments, str) else orjson.dumps(arguments or {}).decode()
            output.append(self._call_item(item, "completed"))
        self._output_chars = len(text) + len(reasoning)
        self._finish_reason = choice.get("finish_reason")
        self._usage = body.get("usage") or None
        return self._response(output, final=True)

    # -- streaming -----------------------------------------------------------------------------

    def feed(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        if "error" in event:
            raise_for_error_event(event)
        out = [] if self._started else self._start()
        if event.get("usage"):
            self._usage = event["usage"]
        choices = event.get("choices")
        if not choices:
            return out
        choice = choices[0]
        delta = choice.get("delta") or {}
        text = delta.get("content") or ""
        reasoning = reasoning_text(delta) if self._keep_reasoning else ""
        if self._tags is not None and text:
            text, tagged = self._tags.feed(text)
            if self._keep_reasoning:
                reasoning += tagged
        if reasoning:
            self._text_delta(out, "reasoning", reasoning)
        if text:
            self._text_delta(out, "message", text)
        self._output_chars += len(text) + len(reasoning)
        for call_delta in delta.get("tool_calls") or ():
            self._call_delta(out, call_delta)
        if choice.get("finish_reason"):
            if choice["finish_reason"] == "error":
                raise_for_error_event(event)
            self.saw_finish_reason = True
            self._finish_reason = choice["finish_reason"]
        return out

    def finish(self) -> list[dict[str, Any]]:
        out = [] if self._started else self._start()
        if self._tags is not None:
            text, reasoning = self._tags.flush()
            if reasoning and self._keep_reasoning:
                self._text_delta(out, "reasoning", reasoning)
            if text:
                self._text_delta(out, "message", text)
        self._close(out)
        response = self._response(self._output, final=True)
        out.append(self._event("response.completed", response=response))
        return out

    def failed(self, error: GatewayError) -> dict[str, Any]:
        """The `response.failed` event for a failure after the first event."""
        overflow = context_overflow(error) is not None
        code = "context_length_exceeded" if overflow else "rate_limit_exceeded" if error.status_code == 429 else "server_error"
        response = {**self._response(self._output, final=False), "status": "failed", "error": {"code": code, "message": error.message}}
        return self._event("response.failed", response=response)

    def _event(self, kind: str, **fields: Any) -> dict[str, Any]:
        event = {"type": kind, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        return event

    def _start(self) -> list[dict[str, Any]]:
        self._started = True
        response = self._response([], final=False)
        return [self._event("response.created", response=response), self._event("response.in_progress", response=response)]

    def _text_delta(self, out: list[dict[str, Any]], kind: str, text: str) -> None:
        item = self._open
        if item is None or item.kind != kind:
            self._close(out)
            item = self._open = OutputItem(kind, len(self._output), "rs_" if kind == "reasoning" else "msg_")
            self._output.append({})  # its place in `output`, filled when it is done
            if kind == "reasoning":
                out.append(self._event("response.output_item.added", output_index=item.index,
                                       item={"id": item.id, "type": "reasoning", "summary": []}))
                out.append(self._event("response.reasoning_summary_part.added", item_id=item.id, output_index=item.index,
                                       summary_index=0, part={"type": "summary_text", "text": ""}))
            else:
                out.append(self._event("response.output_item.added", output_index=item.index,
                                       item=message_item(item.id, None, "in_progress")))
                out.append(self._event("response.content_part.added", item_id=item.id, output_index=item.index,
                                       content_index=0, part=text_part("")))
        item.text += text
        if kind == "reasoning":
            out.append(self._event("response.reasoning_summary_text.delta", item_id=item.id, output_index=item.index,
                                   summary_index=0, delta=text))
        else:
            out.append(self._event("response.output_text.delta", item_id=item.id, output_index=item.index,
                                   content_index=0, delta=text, logprobs=[]))

    def _call_delta(self, out: list[dict[str, Any]], delta: dict[str, Any]) -> None:
        function = delta.get("function") or {}
        call_id = delta.get("id")
        key = delta.get("index", call_id)
        item = self._calls.get(key)
        if item is not None and call_id and item.call_id and call_id != item.call_id:
            item = None  # a server that numbers every call 0: a new call reusing the index
        if item is None:
            self._close(out)
            item = self._calls[key] = self._open = OutputItem("function_call", len(self._output), "fc_")
            self._output.append({})  # its place in `output`, filled when it is done
        item.call_id = item.call_id or call_id or ""
        if not item.name and function.get("name"):
            self._name_call(item, function["name"])
        fragment = function.get("arguments")
        if isinstance(fragment, dict):
            fragment = orjson.dumps(fragment).decode()
        item.text += fragment or ""
        if not item.announced:
            if item.name:  # announced once its name is known, with the arguments so far
                self._announce(out, item)
        elif fragment and not item.custom:
            # Later fragments go to their own item; upstreams send calls one after another.
            out.append(self._event("response.function_call_arguments.delta", item_id=item.id, output_index=item.index,
                                   delta=fragment))

    def _announce(self, out: list[dict[str, Any]], item: OutputItem) -> None:
        item.call_id = item.call_id or new_id("call_")
        item.announced = True
        out.append(self._event("response.output_item.added", output_index=item.index, item=self._call_item(item, "in_progress", "")))
        if item.text and not item.custom:
            out.append(self._event("response.function_call_arguments.delta", item_id=item.id, output_index=item.index,
                                   delta=item.text))

    def _close(self, out: list[dict[str, Any]]) -> None:
        item, self._open = self._open, None
        if item is None:
            return
        if item.kind == "reasoning":
            done = self._reasoning_item(item.id, item.text)
            out.append(self._event("response.reasoning_summary_text.done", item_id=item.id, output_index=item.index,
                                   summary_index=0, text=item.text))
            out.append(self._event("response.reasoning_summary_part.done", item_id=item.id, output_index=item.index,
                                   summary_index=0, part={"type": "summary_text", "text": item.text}))
        elif item.kind == "message":
            done = message_item(item.id, item.text, "completed")
            out.append(self._event("response.output_text.done", item_id=item.id, output_index=item.index, content_index=0,
                                   text=item.text, logprobs=[]))
            out.append(self._event("response.content_part.done", item_id=item.id, output_index=item.index, content_index=0,
                                   part=text_part(item.text)))
        else:
            if not item.announced:  # its name never came: announced now
                self._announce(out, item)
            done = self._call_item(item, "completed")
            if not item.custom:
                out.append(self._event("response.function_call_arguments.done", item_id=item.id, output_index=item.index,
                                       name=item.name, arguments=item.text))
        self._output[item.index] = done
        out.append(self._event("response.output_item.done", output_index=item.index, item=done))

    # -- shared --------------------------------------------------------------------------------

    def _name_call(self, item: OutputItem, upstream_name: str) -> None:
        item.name, item.namespace = self.tools.output_name(upstream_name)
        item.custom = self.tools.is_custom(upstream_name)

    def _call_item(self, item: OutputItem, status: str, arguments: str | None = None) -> dict[str, Any]:
        if item.custom:
            value = "" if arguments is not None else str(parse_arguments(item.name, item.text).get("input") or "")
            return {"id": item.id, "type": "custom_tool_call", "status": status, "call_id": item.call_id, "name": item.name,
                    "input": value}
        called: dict[str, Any] = {"id": item.id, "type": "function_call", "status": status, "call_id": item.call_id,
                                  "name": item.name, "arguments": item.text if arguments is None else arguments}
        if item.namespace is not None:
            called["namespace"] = item.namespace
        return called

    def _reasoning_item(self, item_id: str, text: str) -> dict[str, Any]:
        item: dict[str, Any] = {"id": item_id, "type": "reasoning", "summary": [{"type": "summary_text", "text": text}]}
        if self._encrypt:
            item["encrypted_content"] = encrypted_reasoning(text)
        return item

    def _response(self, output: list[dict[str, Any]], *, final: bool) -> dict[str, Any]:
        request = self.request
        status, incomplete = "in_progress", None
        if final:
            status = "completed"
            if self._finish_reason == "length":
                status, incomplete = "incomplete", {"reason": "max_output_tokens"}
            elif self._finish_reason == "content_filter":
                status, incomplete = "incomplete", {"reason": "content_filter"}
        return {
            "id": self.response_id, "object": "response", "created_at": self.created_at, "status": status, "error": None,
            "incomplete_details": incomplete, "instructions": request.instructions, "model": request.model,
            "output": [item for item in output if item.get("type")], "parallel_tool_calls": request.parallel_tool_calls is not False,
            "temperature": request.temperature if request.temperature is not None else 1.0,
            "top_p": request.top_p if request.top_p is not None else 1.0,
            "tool_choice": request.tool_choice if request.tool_choice is not None else "auto", "tools": request.tools or [],
            "text": request.text or {"format": {"type": "text"}}, "reasoning": request.reasoning,
            "max_output_tokens": request.max_output_tokens, "previous_response_id": None, "store": False,
            "truncation": "disabled", "metadata": request.metadata or {}, "usage": self._usage_out() if final else None,
        }

    def tokens_so_far(self) -> tuple[int, int]:
        self._usage_out()
        return self.prompt_tokens, self.completion_tokens

    def _usage_out(self) -> dict[str, Any]:
        usage = self._usage
        if usage:
            prompt = int(usage.get("prompt_tokens") or 0)
            cached = int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
            output = int(usage.get("completion_tokens") or 0)
            reasoning = int((usage.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0)
        else:  # no usage from the upstream: about four characters a token
            prompt = max(1, self._prompt_chars // 4)
            cached, output, reasoning = 0, -(-self._output_chars // 4), 0
        self.prompt_tokens, self.completion_tokens = prompt, output
        return {"input_tokens": prompt, "input_tokens_details": {"cached_tokens": cached}, "output_tokens": output,
                "output_tokens_details": {"reasoning_tokens": reasoning}, "total_tokens": prompt + output}
