"""The Responses API's output items as a response and its events carry them (agents-api.md §4):
ids, the open item of a stream, a message item and its text part."""

from __future__ import annotations

import secrets
from typing import Any


def new_id(prefix: str) -> str:
    return prefix + secrets.token_hex(12)


class OutputItem:
    """The open output item of a stream."""

    __slots__ = ("kind", "id", "index", "text", "call_id", "name", "namespace", "custom", "announced")

    def __init__(self, kind: str, index: int, prefix: str) -> None:
        self.kind = kind
        self.id = new_id(prefix)
        self.index = index
        self.text = ""  # reasoning or message text, or a call's arguments
        self.call_id = ""
        self.name = ""
        self.namespace: str | None = None
        self.custom = False
        self.announced = False


def text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def message_item(item_id: str, text: str | None, status: str) -> dict[str, Any]:
    content = [] if text is None else [text_part(text)]
    return {"id": item_id, "type": "message", "role": "assistant", "status": status, "content": content}
