"""Ollama conversation -> OpenAI `messages` and `tools` (openai-mapping.md §1.2–1.6).

- Images (base64, or a full data URI) become `image_url` parts with the MIME type sniffed from
  the bytes; only `user` messages may carry them upstream, so images on other roles move into a
  user message placed after the tool-result block. An entry that sniffs as WAV or MP3 audio goes
  up as an `input_audio` part when the route declares the `audio` capability, else is a 400.
- Assistant tool calls go up with JSON-string arguments and ids: the client's id, else a
  deterministic one (same conversation, same ids: upstream prompt caches keep working).
- Tool results are paired with their calls whether the client sent `tool_call_id`, only
  `tool_name`, or neither; unanswered calls get an empty result, orphan results become text.
- Tool names OpenAI would reject are rewritten, and restored on the way back (`ToolNames`); a
  client's `tool_choice` (not Ollama's, but SDKs send it) goes up in Chat Completions' shape.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from typing import TYPE_CHECKING, Any, Literal

import orjson

from gateway.errors import BadRequest
from gateway.ollama import Message, ToolCall
from gateway.routing.presets import Quirks

if TYPE_CHECKING:
    from openai.types.chat import (
        ChatCompletionContentPartImageParam,
        ChatCompletionContentPartInputAudioParam,
        ChatCompletionContentPartParam,
        ChatCompletionFunctionToolParam,
        ChatCompletionMessageFunctionToolCallParam,
        ChatCompletionMessageParam,
        ChatCompletionSystemMessageParam,
        ChatCompletionToolChoiceOptionParam,
    )
    from openai.types.shared_params import FunctionDefinition

    from gateway.translators.upstream_body import AssistantMessage, ToolMessage

_VALID_TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_INVALID_TOOL_CHARS = re.compile(r"[^a-zA-Z0-9_-]")
_ROLES = {"system": "system", "user": "user", "assistant": "assistant", "tool": "tool", "developer": "system"}
_CHOICE_WORDS: dict[str, Literal["auto", "none", "required"]] = {
    "auto": "auto", "none": "none", "required": "required", "any": "required",  # `any`: Anthropic's word
}


class ToolNames:
    """Per-request map between the client's tool names and names the upstream accepts."""

    __slots__ = ("_upstream", "_original")

    def __init__(self) -> None:
        self._upstream: dict[str, str] = {}
        self._original: dict[str, str] = {}

    def upstream(self, name: str) -> str:
        known = self._upstream.get(name)
        if known is not None:
            return known
        if _VALID_TOOL_NAME.match(name):
            safe = name
        else:
            safe = _INVALID_TOOL_CHARS.sub("_", name)[:64] or "tool"
            if safe in self._original:
                suffix = "_" + hashlib.sha256(name.encode()).hexdigest()[:8]
                safe = safe[: 64 - len(suffix)] + suffix
        self._upstream[name] = safe
        self._original[safe] = name
        return safe

    def original(self, upstream_name: str) -> str:
        return self._original.get(upstream_name, upstream_name)

    @property
    def renamed(self) -> bool:
        return any(original != safe for safe, original in self._original.items())


def upstream_tools(tools: list[dict[str, Any]] | None, names: ToolNames) -> list[ChatCompletionFunctionToolParam] | None:
    """Rebuilt function tools (only the keys OpenAI knows); None for no tools (never `[]`)."""
    if not tools:
        return None
    rebuilt: list[ChatCompletionFunctionToolParam] = []
    for index, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
            raise BadRequest(f"tools[{index}]: a function tool needs function.name")
        parameters = function.get("parameters")
        definition: FunctionDefinition = {
            "name": names.upstream(function["name"]),
            "parameters": parameters if isinstance(parameters, dict) else {"type": "object", "properties": {}},
        }
        if isinstance(function.get("description"), str):
            definition["description"] = function["description"]
        rebuilt.append({"type": "function", "function": definition})
    return rebuilt


def upstream_tool_choice(choice: Any, names: ToolNames) -> ChatCompletionToolChoiceOptionParam | None:
    """A client's `tool_choice` in Chat Completions' shape, or None for one it cannot be.

    Strings `auto`, `none`, `required` (and `any`, Anthropic's word for it); a function by name
    nested (`{"type": "function", "function": {"name"}}`) or flat (the Responses API's
    `{"type": "function", "name"}`), its name as the upstream knows the tool.
    """
    if isinstance(choice, str):
        return _CHOICE_WORDS.get(choice)
    if not isinstance(choice, dict):
        return None
    function = choice.get("function")
    name = function.get("name") if isinstance(function, dict) else choice.get("name")
    if choice.get("type", "function") in ("function", "tool") and isinstance(name, str) and name:
        return {"type": "function", "function": {"name": names.upstream(name)}}
    return None


def merge_late_system(messages: list[ChatCompletionMessageParam]) -> list[ChatCompletionMessageParam]:
    """The messages with every system message after the first other one merged into the leading
    system message (made if there is none), in order, separated by a blank line (quirk `merge_system`)."""
    leading = 0
    while leading < len(messages) and messages[leading]["role"] == "system":
        leading += 1
    late = [m for m in messages[leading:] if m["role"] == "system"]
    if not late:
        return messages
    texts = [str(m.get("content") or "") for m in (*messages[:leading], *late)]
    merged: ChatCompletionSystemMessageParam = {"role": "system", "content": "\n\n".join(text for text in texts if text)}
    return [merged, *(m for m in messages[leading:] if m["role"] != "system")]


def image_part(
    encoded: str, index: int, audio: bool = False
) -> ChatCompletionContentPartImageParam | ChatCompletionContentPartInputAudioParam:
    """An `image_url` part for one Ollama image (an `input_audio` part for WAV or MP3 bytes when
    the route takes `audio`); 400 for bad base64, audio the route does not take, or other bytes."""
    if encoded.startswith("data:"):
        encoded = encoded.partition(",")[2]
    try:
        raw = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        position = _first_bad_base64_byte(encoded)
        raise BadRequest(f"illegal base64 data at input byte {position}") from exc
    mime = sniff_image_type(raw)
    if mime is not None:
        return {"type": "image_url", "image_url": {"url": f"data:{mime};base64,{encoded}"}}
    sound = sniff_audio_format(raw)
    if sound is None:
        also = ", or WAV or MP3 audio" if audio else ""
        raise BadRequest(f"image {index} is not a PNG, JPEG, GIF or WebP image{also}")
    if not audio:
        raise BadRequest(audio_refused(index, sound))
    return {"type": "input_audio", "input_audio": {"data": encoded, "format": sound}}


def audio_refused(index: int, sound: str, model: str = "") -> str:
    who = f'"{model}"' if model else "the model"
    return (f"image {index} is {sound.upper()} audio, and {who} does not take audio: add `audio` to the "
            "`capabilities` of its entry in routes.yaml if its upstream model accepts `input_audio`")


def sniff_image_type(data: bytes) -> str | None:
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def sniff_audio_format(data: bytes) -> Literal["wav", "mp3"] | None:
    """`wav` for a RIFF/WAVE file; `mp3` for an ID3 tag or an MPEG audio Layer III frame header
    (11-bit sync, a version that is not reserved, layer III, a bitrate that is neither free nor
    bad, a sample rate that is not reserved). Layer I/II and AAC (ADTS, layer 0) are not MP3."""
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        return "wav"
    if data.startswith(b"ID3"):
        return "mp3"
    if len(data) >= 3 and data[0] == 0xFF and data[1] & 0xE0 == 0xE0:
        version, layer = (data[1] >> 3) & 0b11, (data[1] >> 1) & 0b11
        bitrate, rate = data[2] >> 4, (data[2] >> 2) & 0b11
        if version != 0b01 and layer == 0b01 and bitrate not in (0, 0b1111) and rate != 0b11:
            return "mp3"
    return None


def audio_entry(encoded: str) -> str | None:
    """The audio format of an `images` entry, from its first bytes only (no full decode)."""
    if encoded.startswith("data:"):
        encoded = encoded.partition(",")[2]
    try:
        head = base64.b64decode(encoded[:16], validate=True)
    except (binascii.Error, ValueError):
        return None
    return sniff_audio_format(head)


def _first_bad_base64_byte(text: str) -> int:
    for position, char in enumerate(text):
        if not (char.isalnum() or char in "+/="):
            return position
    return len(text)


def user_content(text: str, images: list[str] | None, audio: bool = False) -> str | list[ChatCompletionContentPartParam]:
    """A plain string, or text-then-image (or audio) parts when there are images."""
    if not images:
        return text
    parts: list[ChatCompletionContentPartParam] = [{"type": "text", "text": text}] if text else []
    parts.extend(image_part(image, index, audio) for index, image in enumerate(images))
    return parts


def synthetic_call_id(message_index: int, call_index: int, name: str, arguments: Any) -> str:
    canonical = arguments if isinstance(arguments, str) else orjson.dumps(arguments, option=orjson.OPT_SORT_KEYS).decode()
    digest = hashlib.sha256(f"{message_index}:{call_index}:{name}:{canonical}".encode()).hexdigest()
    return "call_" + digest[:24]


def upstream_messages(
    messages: list[Message], quirks: Quirks, names: ToolNames, audio: bool = False
) -> list[ChatCompletionMessageParam]:
    """The whole conversation, converted and with every tool call answered exactly once
    (`audio`: the route takes audio, so WAV and MP3 entries of `images` go up as `input_audio`)."""
    last_user = max((index for index, message in enumerate(messages) if message.role == "user"), default=-1)
    out: list[ChatCompletionMessageParam] = []
    pending: list[tuple[str, str]] = []  # (id, upstream name) of calls still waiting for a result
    moved_images: list[str] = []

    def close_turn() -> None:
        for call_id, _ in pending:
            out.append({"role": "tool", "tool_call_id": call_id, "content": ""})
        pending.clear()
        if moved_images:
            out.append({"role": "user", "content": user_content("", list(moved_images), audio)})
            moved_images.clear()

    for index, message in enumerate(messages):
        if message.role == "tool":
            _tool_result(message, pending, out, quirks, names)
            moved_images.extend(message.images or ())
            continue
        close_turn()
        role = _ROLES.get(message.role, "user")
        if role == "user":
            out.append({"role": "user", "content": user_content(message.content, message.images, audio)})
            continue
        moved_images.extend(message.images or ())
        if role == "assistant":
            out.append(_assistant(message, index, index > last_user, quirks, names, pending))
        else:  # "system" (and "developer"): "tool" was the first case
            out.append({"role": "system", "content": message.content})
    close_turn()
    return out


def _assistant(
    message: Message, index: int, current_turn: bool, quirks: Quirks, names: ToolNames, pending: list[tuple[str, str]]
) -> AssistantMessage:
    converted: AssistantMessage = {"role": "assistant", "content": message.content}
    if message.thinking and current_turn and quirks.reasoning_input != "drop":
        # Only the current tool loop's reasoning goes back (DeepSeek requires it; older turns drop it).
        converted[quirks.reasoning_input] = message.thinking
    if message.tool_calls:
        converted["tool_calls"] = [_call(call, index, position, names, pending) for position, call in enumerate(message.tool_calls)]
        if not message.content:
            converted["content"] = None
    return converted


def _call(
    call: ToolCall, message_index: int, position: int, names: ToolNames, pending: list[tuple[str, str]]
) -> ChatCompletionMessageFunctionToolCallParam:
    name = names.upstream(call.function.name)
    arguments = call.function.arguments
    text = arguments if isinstance(arguments, str) else orjson.dumps(arguments).decode()
    call_id = call.id or synthetic_call_id(message_index, position, call.function.name, arguments)
    pending.append((call_id, name))
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": text}}


def _tool_result(
    message: Message, pending: list[tuple[str, str]], out: list[ChatCompletionMessageParam], quirks: Quirks, names: ToolNames
) -> None:
    if not pending:
        # An orphan result: OpenAI rejects a tool message no call asked for, so keep it as text.
        out.append({"role": "user", "content": f"[tool result] {message.content}"})
        return
    chosen = 0
    if message.tool_call_id and any(call_id == message.tool_call_id for call_id, _ in pending):
        chosen = next(i for i, (call_id, _) in enumerate(pending) if call_id == message.tool_call_id)
    elif message.tool_name:
        wanted = names.upstream(message.tool_name)
        chosen = next((i for i, (_, name) in enumerate(pending) if name == wanted), 0)
    call_id, name = pending.pop(chosen)
    result: ToolMessage = {"role": "tool", "tool_call_id": call_id, "content": message.content}
    if quirks.tool_result_name:
        result["name"] = name
    out.append(result)
