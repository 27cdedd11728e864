"""Upstream tool calls -> Ollama tool calls (openai-mapping.md §3.2).

OpenAI streams a call as fragments keyed by `index` (id and name first, then pieces of the JSON
`arguments` string); Ollama clients must get each call once, whole, with `arguments` as an
object. The assembler keeps one slot per call in first-seen order and flushes them together.
"""

from __future__ import annotations

import secrets
from typing import Any

import orjson

from gateway.errors import UpstreamUnavailable


class _Slot:
    __slots__ = ("id", "name", "arguments")

    def __init__(self, call_id: str | None, name: str | None) -> None:
        self.id = call_id
        self.name = name
        self.arguments: str | dict[str, Any] = ""


class ToolCallAssembler:
    """Streamed tool-call deltas in, complete Ollama tool calls out."""

    __slots__ = ("_slots", "_by_key")

    def __init__(self) -> None:
        self._slots: list[_Slot] = []
        self._by_key: dict[Any, _Slot] = {}

    def __bool__(self) -> bool:
        return bool(self._slots)

    def add(self, deltas: list[dict[str, Any]]) -> None:
        for delta in deltas:
            function = delta.get("function") or {}
            call_id = delta.get("id")
            key = delta.get("index")
            if key is None:
                key = call_id if call_id else (None if not self._slots else id(self._slots[-1]))
            slot = self._by_key.get(key)
            if slot is not None and call_id and slot.id and call_id != slot.id and _complete(slot):
                slot = None  # a server that numbers every call 0: a new call reusing the index
            if slot is None:
                slot = _Slot(call_id, function.get("name"))
                self._slots.append(slot)
                self._by_key[key if key is not None else id(slot)] = slot
            else:
                slot.id = slot.id or call_id
                slot.name = slot.name or function.get("name")
            fragment = function.get("arguments")
            if isinstance(fragment, dict):
                slot.arguments = fragment
            elif fragment:
                if isinstance(slot.arguments, str):
                    if fragment == slot.arguments and _parses(slot.arguments):
                        continue  # a whole-call resend
                    slot.arguments += fragment

    def flush(self) -> list[dict[str, Any]]:
        """Every assembled call in Ollama's shape; the assembler is empty afterwards."""
        calls = [ollama_tool_call(index, slot.id, slot.name or "", slot.arguments) for index, slot in enumerate(self._slots)]
        self._slots.clear()
        self._by_key.clear()
        return calls


def ollama_tool_call(index: int, call_id: str | None, name: str, arguments: str | dict[str, Any] | None) -> dict[str, Any]:
    """One call as Ollama writes it: arguments an object, `function.index` its position."""
    return {
        "id": call_id or "call_" + secrets.token_hex(4),
        "function": {"index": index, "name": name, "arguments": parse_arguments(name, arguments)},
    }


def parse_arguments(name: str, arguments: str | dict[str, Any] | None) -> dict[str, Any]:
    if isinstance(arguments, dict):
        return arguments
    if arguments is None or not arguments.strip():
        return {}
    try:
        value = orjson.loads(arguments)
    except orjson.JSONDecodeError:
        value = _first_object(arguments)
    if not isinstance(value, dict):
        raise UpstreamUnavailable(f'upstream returned invalid tool call arguments for "{name}"')
    return value


def _first_object(text: str) -> Any:
    """Recover `{...}{...}` (a duplicated object) by keeping the first; None if that fails too."""
    depth, in_string, escaped = 0, False, False
    for position, char in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                try:
                    return orjson.loads(text[: position + 1])
                except orjson.JSONDecodeError:
                    return None
    return None


def _parses(text: str) -> bool:
    try:
        orjson.loads(text)
    except orjson.JSONDecodeError:
        return False
    return True


def _complete(slot: _Slot) -> bool:
    return bool(slot.name) and (isinstance(slot.arguments, dict) or _parses(slot.arguments))
