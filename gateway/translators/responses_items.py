"""OpenAI Responses requests (agents-api.md §3.1–3.2) -> Chat Completions `messages` and `tools` (§4.1–4.2).

Stateless, as Ollama serves it: the whole conversation comes in `input` every turn (Codex sends
`store: false`); `previous_response_id` and `conversation` are a 400 saying so.

    instructions; input string      a leading `system` message; one `user` message
    message items                   user / system / developer (-> system) / assistant messages;
                                    input_text / output_text -> text, input_image -> image_url,
                                    input_file -> a file part (or its text, for text/*)
    function_call                   a call of the open assistant message (several in a row: one
                                    message with parallel calls); custom_tool_call the same, its
                                    input as `{"input": ...}`
    function_call_output            a `tool` message right after the assistant message holding the
                                    call (Codex may replay a message in between); images in a
                                    following user message
    reasoning                       its text (the gateway's own `encrypted_content`, else the
                                    summary) on the next assistant message, current tool loop only
    others (web_search_call, ...)   dropped, named in `dropped`; `item_reference` is a 400

Tools: function tools nested under `function`; namespace members flattened to `ns.name` (then
made valid for OpenAI and restored on the way back); custom tools as a function taking one
string `input`; built-in tools (web_search, file_search, local_shell, ...) dropped.
"""

from __future__ import annotations

import base64
import binascii
from typing import TYPE_CHECKING, Any, Literal

import orjson
from pydantic import ConfigDict, StrictBool

from gateway.errors import BadRequest
from gateway.ollama import ModelRequest
from gateway.routing.presets import Quirks
from gateway.translators.messages import ToolNames, merge_late_system

if TYPE_CHECKING:
    from openai.types.chat import (
        ChatCompletionContentPartParam,
        ChatCompletionFunctionToolParam,
        ChatCompletionMessageFunctionToolCallParam,
        ChatCompletionMessageParam,
        ChatCompletionToolChoiceOptionParam,
    )
    from openai.types.chat.chat_completion_content_part_image_param import ImageURL
    from openai.types.shared_params import FunctionDefinition

    from gateway.translators.upstream_body import AssistantMessage

REASONING_MARK = "gwr1:"  # the gateway's `encrypted_content`: this prefix, then the text in base64
_MESSAGE_ROLES = {"user": "user", "system": "system", "developer": "system", "assistant": "assistant"}
_CHOICE_WORDS: dict[str, Literal["auto", "none", "required"]] = {"auto": "auto", "none": "none", "required": "required"}
CUSTOM_PARAMETERS = {"type": "object", "properties": {"input": {"type": "string"}}, "required": ["input"]}


class ResponsesRequest(ModelRequest):
    model_config = ConfigDict(extra="ignore")

    input: str | list[dict[str, Any]] = ""
    instructions: str | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: StrictBool | None = None
    reasoning: dict[str, Any] | None = None
    text: dict[str, Any] | None = None
    max_output_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stream: StrictBool | None = None
    include: list[str] | None = None
    metadata: dict[str, Any] | None = None
    previous_response_id: str | None = None
    conversation: str | dict[str, Any] | None = None
    background: StrictBool | None = None


class ToolIndex:
    """The request's tools as the upstream gets them, and how an upstream name maps back."""

    __slots__ = ("names", "functions", "dropped", "_members", "_custom")

    def __init__(self, tools: list[dict[str, Any]] | None) -> None:
        self.names = ToolNames()
        self.functions: list[ChatCompletionFunctionToolParam] = []
        self.dropped: list[str] = []
        self._members: dict[str, tuple[str, str]] = {}  # "ns.name" -> (namespace, name)
        self._custom: set[str] = set()
        for tool in tools or ():
            kind = tool.get("type")
            if kind == "function":
                self._add(tool)
            elif kind == "namespace":
                for member in tool.get("tools") or ():
                    if isinstance(member, dict) and member.get("type", "function") == "function" and tool.get("name"):
                        qualified = f"{tool['name']}.{member.get('name')}"
                        self._members[qualified] = (str(tool["name"]), str(member.get("name")))
                        self._add({**member, "name": qualified})
            elif kind == "custom":
                self._custom.add(str(tool.get("name")))
                self._add({"name": tool.get("name"), "description": tool.get("description"), "parameters": CUSTOM_PARAMETERS})
            else:
                self.dropped.append(f"tools.{tool.get('name') or kind}")

    def _add(self, tool: dict[str, Any]) -> None:
        name = tool.get("name")
        if not isinstance(name, str) or not name:
            raise BadRequest("tools: a function tool needs a name")
        parameters = tool.get("parameters")
        definition: FunctionDefinition = {
            "name": self.names.upstream(name),
            "parameters": parameters if isinstance(parameters, dict) else {"type": "object", "properties": {}},
        }
        if isinstance(tool.get("description"), str):
            definition["description"] = tool["description"]
        if isinstance(tool.get("strict"), bool):
            definition["strict"] = tool["strict"]
        self.functions.append({"type": "function", "function": definition})

    def is_custom(self, upstream_name: str) -> bool:
        return self.names.original(upstream_name) in self._custom

    def output_name(self, upstream_name: str) -> tuple[str, str | None]:
        """(name, namespace) of a call the upstream made."""
        original = self.names.original(upstream_name)
        member = self._members.get(original)
        return (member[1], member[0]) if member else (original, None)

    def choice(self, choice: str | dict[str, Any] | None) -> ChatCompletionToolChoiceOptionParam | None:
        if choice is None or isinstance(choice, str):
            return None if choice is None else _CHOICE_WORDS.get(choice)
        kind = choice.get("type")
        if kind in ("function", "custom") and isinstance(choice.get("name"), str):
            return {"type": "function", "function": {"name": self.names.upstream(choice["name"])}}
        if kind == "allowed_tools":
            mode = choice.get("mode")
            return _CHOICE_WORDS.get(mode) if mode in ("auto", "required") else None
        return None


def upstream_messages(
    request: ResponsesRequest, quirks: Quirks, tools: ToolIndex
) -> tuple[list[ChatCompletionMessageParam], list[str]]:
    """The conversation as Chat Completions messages, and the item types left out."""
    if request.previous_response_id is not None or request.conversation is not None:
        raise BadRequest("previous_response_id and conversation are not supported: the gateway keeps no conversation "
                         "state; send the whole conversation in input (store: false)")
    out: list[ChatCompletionMessageParam] = []
    if request.instructions:
        out.append({"role": "system", "content": request.instructions})
    if isinstance(request.input, str):
        out.append({"role": "user", "content": request.input})
        return out, []
    return _Walk(out, quirks, tools).run(request.input)


class _Walk:
    __slots__ = ("out", "quirks", "tools", "dropped", "assistant", "homes", "reasoning")

    def __init__(self, out: list[ChatCompletionMessageParam], quirks: Quirks, tools: ToolIndex) -> None:
        self.out = out
        self.quirks = quirks
        self.tools = tools
        self.dropped: list[str] = []
        self.assistant: AssistantMessage | None = None  # the open assistant message
        self.homes: dict[str, AssistantMessage] = {}  # call id -> the assistant message holding it (unanswered)
        self.reasoning = ""

    def run(self, items: list[dict[str, Any]]) -> tuple[list[ChatCompletionMessageParam], list[str]]:
        last_user = max((i for i, item in enumerate(items) if item.get("role") == "user"), default=-1)
        for index, item in enumerate(items):
            kind = item.get("type") or ("message" if "role" in item else None)
            where = f"input[{index}]"
            if kind == "message":
                self._message(item, where)
            elif kind == "reasoning":
                if index > last_user and self.quirks.reasoning_input != "drop":
                    self.reasoning += reasoning_text(item)
            elif kind in ("function_call", "custom_tool_call"):
                self._call(item, kind, where)
            elif kind in ("function_call_output", "custom_tool_call_output"):
                self._output(item, where)
            elif kind == "item_reference":
                raise BadRequest(f"{where}: item_reference is not supported: the gateway keeps no conversation state")
            else:
                self.dropped.append(f"input.{kind}")
        for call_id in list(self.homes):  # calls no output answered: an empty result each
            self._place({"role": "tool", "tool_call_id": call_id, "content": ""}, self.homes.pop(call_id))
        return merge_late_system(self.out) if self.quirks.merge_system else self.out, self.dropped

    def _message(self, item: dict[str, Any], where: str) -> None:
        role = _MESSAGE_ROLES.get(str(item.get("role")))
        if role is None:
            raise BadRequest(f"{where}.role: must be one of user, assistant, system, developer")
        content = item.get("content")
        if role == "assistant":
            text = content if isinstance(content, str) else "".join(
                str(part.get("text") or "") for part in content or () if isinstance(part, dict) and part.get("type") == "output_text")
            message = self._open_assistant()
            before = message.get("content")
            message["content"] = (before if isinstance(before, str) else "") + text
            return
        self.assistant = None
        if isinstance(content, str) or role == "system":
            text = content if isinstance(content, str) else "\n\n".join(
                str(part.get("text") or "") for part in content or () if isinstance(part, dict))
            if role == "system":
                self.out.append({"role": "system", "content": text})
            else:
                self.out.append({"role": "user", "content": text})
            return
        parts = [part for position, raw in enumerate(content or ()) if (part := _part(raw, f"{where}.content[{position}]"))]
        if parts and all(part["type"] == "text" for part in parts):
            self.out.append({"role": "user", "content": "\n\n".join(part["text"] for part in parts if part["type"] == "text")})
        else:
            self.out.append({"role": "user", "content": parts})

    def _open_assistant(self) -> AssistantMessage:
        if self.assistant is None:
            self.assistant = {"role": "assistant", "content": None}
            if self.reasoning and self.quirks.reasoning_input != "drop":  # (never gathered for "drop")
                self.assistant[self.quirks.reasoning_input] = self.reasoning
                self.reasoning = ""
            self.out.append(self.assistant)
        return self.assistant

    def _call(self, item: dict[str, Any], kind: str, where: str) -> None:
        call_id, name = item.get("call_id"), item.get("name")
        if not isinstance(call_id, str) or not call_id or not isinstance(name, str) or not name:
            raise BadRequest(f"{where}: a {kind} needs call_id and name")
        namespace = item.get("namespace")
        qualified = f"{namespace}.{name}" if isinstance(namespace, str) and namespace else name
        if kind == "custom_tool_call":
            arguments = orjson.dumps({"input": str(item.get("input") or "")}).decode()
        else:
            given = item.get("arguments")
            arguments = given if isinstance(given, str) else "{}"
            try:
                orjson.loads(arguments or "{}")
            except orjson.JSONDecodeError as exc:
                raise BadRequest(f"{where}.arguments: not valid JSON") from exc
        message = self._open_assistant()
        call: ChatCompletionMessageFunctionToolCallParam = {
            "id": call_id, "type": "function", "function": {"name": self.tools.names.upstream(qualified), "arguments": arguments}}
        calls = message.get("tool_calls")
        if isinstance(calls, list):
            calls.append(call)
        else:
            message["tool_calls"] = [call]
        self.homes[call_id] = message

    def _output(self, item: dict[str, Any], where: str) -> None:
        self.assistant = None
        call_id = item.get("call_id")
        output = item.get("output")
        images: list[ChatCompletionContentPartParam] = []
        if isinstance(output, list):
            texts = []
            for position, raw in enumerate(output):
                part = _part(raw, f"{where}.output[{position}]")
                if part is None:
                    continue
                if part["type"] == "text":
                    texts.append(part["text"])
                else:
                    images.append(part)
            text = "\n".join(texts)
        else:
            text = output if isinstance(output, str) else "" if output is None else orjson.dumps(output).decode()
        home = self.homes.pop(call_id, None) if isinstance(call_id, str) else None
        if home is None or not isinstance(call_id, str):  # no call asked for it: OpenAI rejects such a tool message
            self.out.append({"role": "user", "content": f"[tool result] {text}"})
        else:
            self._place({"role": "tool", "tool_call_id": call_id, "content": text}, home)
        if images:
            self.out.append({"role": "user", "content": images})

    def _place(self, result: ChatCompletionMessageParam, home: AssistantMessage) -> None:
        """`result` after the assistant message holding its call and the results already there."""
        position = next(i for i, message in enumerate(self.out) if message is home) + 1
        while position < len(self.out) and self.out[position].get("role") == "tool":
            position += 1
        self.out.insert(position, result)


def _part(part: Any, where: str) -> ChatCompletionContentPartParam | None:
    if not isinstance(part, dict):
        return None
    kind = part.get("type")
    if kind in ("input_text", "output_text", "text"):
        return {"type": "text", "text": str(part.get("text") or "")} if part.get("text") else None
    if kind == "input_image":
        url = part.get("image_url")
        if not isinstance(url, str) or not url:
            raise BadRequest(f"{where}: input_image needs an image_url (file_id is not supported)")
        image: ImageURL = {"url": url}
        if part.get("detail") in ("low", "high", "auto"):
            image["detail"] = part["detail"]
        return {"type": "image_url", "image_url": image}
    if kind == "input_file":
        data, filename = part.get("file_data"), str(part.get("filename") or "file")
        if not isinstance(data, str) or not data:
            raise BadRequest(f"{where}: input_file needs file_data (file_id and file_url are not supported)")
        header, _, encoded = data.partition(",")
        if header.startswith("data:text/"):
            try:
                return {"type": "text", "text": f"{filename}\n\n{base64.b64decode(encoded).decode(errors='replace')}"}
            except (binascii.Error, ValueError) as exc:
                raise BadRequest(f"{where}.file_data: invalid base64") from exc
        return {"type": "file", "file": {"filename": filename, "file_data": data}}
    return None


def reasoning_text(item: dict[str, Any]) -> str:
    encrypted = item.get("encrypted_content")
    if isinstance(encrypted, str) and encrypted.startswith(REASONING_MARK):
        try:
            return base64.b64decode(encrypted[len(REASONING_MARK):]).decode()
        except (binascii.Error, ValueError, UnicodeDecodeError):
            pass
    parts = item.get("content") or item.get("summary") or ()
    return "".join(str(part.get("text") or "") for part in parts if isinstance(part, dict))


def encrypted_reasoning(text: str) -> str:
    return REASONING_MARK + base64.b64encode(text.encode()).decode()
