"""Anthropic Messages requests (agents-api.md §1.2–1.3) -> Chat Completions `messages` and `tools` (§2.1–2.2).

The request is a pydantic model that ignores unknown fields (Claude Code sends `context_management`,
`mcp_servers`, `container`, ... that have no Chat Completions meaning); content blocks stay dicts and
are read by their `type`, so a block type this gateway does not know is dropped, not a 400.

    system (string or blocks)      one leading `system` message, block texts joined by a blank line;
                                   Claude Code's `x-anthropic-billing-header:` block dropped (§2.6)
    role "system" in messages      a `system` message in place (merged into the leading one for
                                   upstreams with the `merge_system` quirk)
    user blocks                    every `tool_result` first, as `tool` messages in block order
                                   (`is_error` kept as an `Error: ` prefix, images moved into a
                                   user message after them); then text / image (base64 or URL) /
                                   document parts, a plain string when only text remains
    assistant blocks               text -> `content`, `tool_use` -> `tool_calls` (input as JSON text),
                                   `thinking` -> the upstream's reasoning input field, current tool
                                   loop only; signatures and redacted thinking dropped
    custom tools                   function tools, `$schema` and `cache_control` left out; server
                                   tools (`web_search_20250305`, ...) dropped: no upstream runs them

Every tool call is answered exactly once upstream: a call no `tool_result` answers gets an empty
result, a result for no call becomes user text (OpenAI rejects both otherwise).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, StrictBool

from gateway.errors import BadRequest
from gateway.ollama import ModelRequest
from gateway.routing.presets import Quirks
from gateway.translators.messages import ToolNames, merge_late_system

if TYPE_CHECKING:
    from openai.types.chat import (
        ChatCompletionContentPartImageParam,
        ChatCompletionContentPartParam,
        ChatCompletionContentPartTextParam,
        ChatCompletionFunctionToolParam,
        ChatCompletionMessageFunctionToolCallParam,
        ChatCompletionMessageParam,
    )
    from openai.types.chat.completion_create_params import CompletionCreateParamsBase as ChatParams
    from openai.types.chat.chat_completion_content_part_param import File
    from openai.types.shared_params import FunctionDefinition

    from gateway.translators.upstream_body import AssistantMessage

BILLING_PREFIX = "x-anthropic-billing-header:"
_KNOWN_TOOL_TYPES = (None, "custom")


class AnthropicMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: str
    content: str | list[dict[str, Any]]


class MessagesRequest(ModelRequest):
    """`POST /v1/messages` (and, without `max_tokens`, `count_tokens`): the fields the gateway reads."""

    model_config = ConfigDict(extra="ignore")

    max_tokens: int | None = None
    messages: list[AnthropicMessage] = Field(default_factory=list)
    system: str | list[dict[str, Any]] | None = None
    stop_sequences: list[str] | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: dict[str, Any] | None = None
    thinking: dict[str, Any] | None = None
    output_config: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None
    stream: StrictBool | None = None




def system_text(system: str | list[dict[str, Any]] | None) -> str:
    if system is None:
        return ""
    if isinstance(system, str):
        return system
    texts = [block.get("text") for block in system if block.get("type", "text") == "text"]
    return "\n\n".join(text for text in texts if isinstance(text, str) and text and not text.startswith(BILLING_PREFIX))


def upstream_tools(
    tools: list[dict[str, Any]] | None, names: ToolNames
) -> tuple[list[ChatCompletionFunctionToolParam], list[str]]:
    """Function tools for the custom tools, and the names of the server tools left out."""
    functions: list[ChatCompletionFunctionToolParam] = []
    dropped: list[str] = []
    for index, tool in enumerate(tools or ()):
        name = tool.get("name")
        if tool.get("type") not in _KNOWN_TOOL_TYPES and "input_schema" not in tool:
            dropped.append(f"tools.{name or tool.get('type')}")
            continue
        if not isinstance(name, str) or not name:
            raise BadRequest(f"tools.{index}.name: Field required")
        schema = tool.get("input_schema")
        parameters = {k: v for k, v in schema.items() if k != "$schema"} if isinstance(schema, dict) else {}
        parameters.setdefault("type", "object")
        definition: FunctionDefinition = {"name": names.upstream(name), "parameters": parameters}
        if isinstance(tool.get("description"), str):
            definition["description"] = tool["description"]
        if isinstance(tool.get("strict"), bool):
            definition["strict"] = tool["strict"]
        functions.append({"type": "function", "function": definition})
    return functions, dropped


def tool_choice(choice: dict[str, Any] | None, names: ToolNames, params: ChatParams) -> None:
    """Sets `tool_choice` and `parallel_tool_calls` for an upstream that is given tools."""
    if not choice:
        return
    kind = choice.get("type")
    if kind == "auto":
        params["tool_choice"] = "auto"
    elif kind == "any":
        params["tool_choice"] = "required"
    elif kind == "none":
        params["tool_choice"] = "none"
        return
    elif kind == "tool":
        name = choice.get("name")
        if not isinstance(name, str) or not name:
            raise BadRequest("tool_choice.name: Field required")
        params["tool_choice"] = {"type": "function", "function": {"name": names.upstream(name)}}
    else:
        raise BadRequest(f"tool_choice.type: Input should be 'auto', 'any', 'tool' or 'none'; got {kind!r}")
    if choice.get("disable_parallel_tool_use") is True:
        params["parallel_tool_calls"] = False


def upstream_messages(request: MessagesRequest, quirks: Quirks, names: ToolNames) -> list[ChatCompletionMessageParam]:
    """The conversation as Chat Completions messages (see the module docstring)."""
    out: list[ChatCompletionMessageParam] = []
    system = system_text(request.system)
    if system:
        out.append({"role": "system", "content": system})
    messages = request.messages
    current_from = _current_loop_start(messages)
    pending: list[str] = []  # ids of the calls of the last assistant turn not answered yet

    def answer_pending() -> None:
        out.extend({"role": "tool", "tool_call_id": call_id, "content": ""} for call_id in pending)
        pending.clear()

    for index, message in enumerate(messages):
        blocks = _blocks(message.content)
        if message.role == "assistant":
            answer_pending()
            out.append(_assistant(blocks, index >= current_from, quirks, names, pending, index))
        elif message.role == "system":
            answer_pending()
            text = "\n\n".join(str(b.get("text") or "") for b in blocks if b.get("type") == "text")
            if text and not text.startswith(BILLING_PREFIX):
                out.append({"role": "system", "content": text})
        elif message.role == "user":
            _user(blocks, pending, out, index)
            answer_pending()
        else:
            raise BadRequest(f"messages.{index}.role: Input should be 'user' or 'assistant'")
    answer_pending()
    return merge_late_system(out) if quirks.merge_system else out


def _blocks(content: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"type": "text", "text": content}] if isinstance(content, str) else content


def _current_loop_start(messages: list[AnthropicMessage]) -> int:
    """Index after the last user message that answers no tool call: the current tool loop starts there."""
    for index in range(len(messages) - 1, -1, -1):
        message = messages[index]
        if message.role == "user" and not any(b.get("type") == "tool_result" for b in _blocks(message.content)):
            return index + 1
    return 0


def _assistant(blocks: list[dict[str, Any]], current: bool, quirks: Quirks, names: ToolNames, pending: list[str],
               index: int) -> AssistantMessage:
    texts: list[str] = []
    thinking: list[str] = []
    calls: list[ChatCompletionMessageFunctionToolCallParam] = []
    for position, block in enumerate(blocks):
        kind = block.get("type")
        if kind == "text" and block.get("text"):
            texts.append(str(block["text"]))
        elif kind == "thinking" and block.get("thinking"):
            thinking.append(str(block["thinking"]))
        elif kind == "tool_use":
            name, call_id = block.get("name"), block.get("id")
            if not isinstance(name, str) or not name or not isinstance(call_id, str) or not call_id:
                raise BadRequest(f"messages.{index}.content.{position}: a tool_use block needs an id and a name")
            arguments = block.get("input")
            pending.append(call_id)
            calls.append({"id": call_id, "type": "function", "function": {
                "name": names.upstream(name), "arguments": orjson.dumps(arguments if arguments is not None else {}).decode(),
            }})
    converted: AssistantMessage = {"role": "assistant", "content": "".join(texts) if texts or not calls else None}
    if thinking and current and quirks.reasoning_input != "drop":
        converted[quirks.reasoning_input] = "\n\n".join(thinking)
    if calls:
        converted["tool_calls"] = calls
    return converted


def _user(blocks: list[dict[str, Any]], pending: list[str], out: list[ChatCompletionMessageParam], index: int) -> None:
    parts: list[ChatCompletionContentPartParam] = []
    moved_images: list[ChatCompletionContentPartImageParam] = []
    for position, block in enumerate(blocks):
        kind = block.get("type")
        where = f"messages.{index}.content.{position}"
        if kind == "tool_result":
            text, images = _tool_result_content(block.get("content"), where)
            if block.get("is_error") is True:
                text = f"Error: {text}" if text else "Error"
            moved_images.extend(images)
            call_id = block.get("tool_use_id")
            if isinstance(call_id, str) and call_id in pending:
                pending.remove(call_id)
                out.append({"role": "tool", "tool_call_id": call_id, "content": text})
            else:  # a result for no call: OpenAI rejects a tool message no call asked for
                parts.append({"type": "text", "text": f"[tool result] {text}"})
        elif kind == "text":
            if block.get("text"):
                parts.append({"type": "text", "text": str(block["text"])})
        elif kind == "image":
            parts.append(image_part(block, where))
        elif kind == "document":
            parts.append(_document_part(block, where))
    if pending:  # calls the message did not answer: their empty results come before its content
        out.extend({"role": "tool", "tool_call_id": call_id, "content": ""} for call_id in pending)
        pending.clear()
    if moved_images:
        out.append({"role": "user", "content": moved_images})
    if not parts:
        return
    if all(part["type"] == "text" for part in parts):
        out.append({"role": "user", "content": "\n\n".join(part["text"] for part in parts if part["type"] == "text")})
    else:
        out.append({"role": "user", "content": parts})


def image_part(block: dict[str, Any], where: str) -> ChatCompletionContentPartImageParam:
    source = block.get("source")
    if not isinstance(source, dict):
        raise BadRequest(f"{where}.source: Field required")
    kind = source.get("type")
    if kind == "base64":
        media_type, data = source.get("media_type"), source.get("data")
        if not isinstance(media_type, str) or not isinstance(data, str) or not data:
            raise BadRequest(f"{where}.source: a base64 image needs media_type and data")
        return {"type": "image_url", "image_url": {"url": f"data:{media_type};base64,{data}"}}
    if kind == "url" and isinstance(source.get("url"), str):
        return {"type": "image_url", "image_url": {"url": source["url"]}}
    raise BadRequest(f"{where}.source.type: an image source is 'base64' or 'url', got {kind!r}")


def _document_part(block: dict[str, Any], where: str) -> ChatCompletionContentPartTextParam | File:
    source = block.get("source")
    if not isinstance(source, dict):
        raise BadRequest(f"{where}.source: Field required")
    title = block.get("title")
    prefix = f"{title}\n\n" if isinstance(title, str) and title else ""
    kind = source.get("type")
    if kind == "text":
        return {"type": "text", "text": prefix + str(source.get("data") or "")}
    if kind == "content":
        content = source.get("content")
        text = content if isinstance(content, str) else "\n".join(
            str(b.get("text") or "") for b in content or () if isinstance(b, dict) and b.get("type") == "text"
        )
        return {"type": "text", "text": prefix + text}
    if kind == "base64" and source.get("media_type") == "application/pdf":
        filename = title if isinstance(title, str) and title else "document.pdf"
        return {"type": "file", "file": {"filename": filename, "file_data": f"data:application/pdf;base64,{source.get('data') or ''}"}}
    raise BadRequest(f"{where}.source: documents are supported as text, content blocks or base64 PDF, not {kind!r}")


def _tool_result_content(content: Any, where: str) -> tuple[str, list[ChatCompletionContentPartImageParam]]:
    if content is None:
        return "", []
    if isinstance(content, str):
        return content, []
    texts: list[str] = []
    images: list[ChatCompletionContentPartImageParam] = []
    for position, block in enumerate(content if isinstance(content, list) else ()):
        if not isinstance(block, dict):
            continue
        if block.get("type") == "text":
            texts.append(str(block.get("text") or ""))
        elif block.get("type") == "image":
            images.append(image_part(block, f"{where}.content.{position}"))
    return "\n".join(texts), images


def estimate_input_tokens(request: MessagesRequest) -> int:
    """Ollama's `EstimateCountTokens` (agents-api.md §1.8): the characters of the system text,
    the roles, text and thinking blocks, the JSON of other blocks and of the tools, over four."""
    chars = len(system_text(request.system))
    for message in request.messages:
        chars += len(message.role)
        for block in _blocks(message.content):
            kind = block.get("type")
            if kind == "text":
                chars += len(str(block.get("text") or ""))
            elif kind == "thinking":
                chars += len(str(block.get("thinking") or ""))
            elif kind in ("tool_use", "tool_result"):
                chars += len(orjson.dumps(block))
    for tool in request.tools or ():
        chars += len(str(tool.get("name") or "")) + len(str(tool.get("description") or ""))
        chars += len(orjson.dumps(tool.get("input_schema") or {}))
    return max(1, chars // 4)
