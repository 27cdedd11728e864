"""Thinking: Ollama's `think` -> the upstream's reasoning knob, and `<think>` tags -> `thinking`.

The knob is chosen per upstream or model in routes.yaml (`reasoning:`), because the right one
depends on the provider and the model family (openai-mapping.md §1.7). `think` absent sends
nothing: the model's default applies, as in Ollama.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gateway.routing.presets import ReasoningKnob

if TYPE_CHECKING:
    from openai.types.shared_params import ReasoningEffort

    from gateway.translators.upstream_body import Extras

_OPEN, _CLOSE = "<think>", "</think>"


def reasoning_params(knob: ReasoningKnob, think: bool | str | None, extras: Extras) -> ReasoningEffort:
    """Carries `think` to an upstream using `knob`: returns the OpenAI `reasoning_effort` to send
    (None: none), and sets the provider's own fields (not OpenAI's) in `extras`."""
    if think is None or knob == "none":
        return None
    level = think if isinstance(think, str) else None
    if knob == "reasoning_effort":
        if think is False:
            return "none"
        return _effort(level) if level else None
    if knob == "openrouter":
        if level:
            extras["reasoning"] = {"effort": "xhigh" if level == "max" else level}
        else:
            extras["reasoning"] = {"enabled": bool(think)}
        return None
    if knob == "chat_template_kwargs":
        kwargs: dict[str, Any] = {"enable_thinking": think is not False}
        if level:
            kwargs["reasoning_effort"] = level
        extras["chat_template_kwargs"] = kwargs
        return None
    # groq: qwen3 takes reasoning_effort none/default, gpt-oss low/medium/high; reasoning comes back parsed
    if think is False:
        return "none"
    extras["reasoning_format"] = "parsed"
    return _effort(level) if level else None


# Ollama's think levels as OpenAI's efforts: "max" is sent as "high", as Ollama does.
_EFFORTS: dict[str, ReasoningEffort] = {"low": "low", "medium": "medium", "high": "high", "max": "high"}


def _effort(level: str) -> ReasoningEffort:
    # ollama.THINK_LEVELS are the keys: a request with another level was a 400 already.
    return _EFFORTS[level]


def reasoning_text(message: dict[str, Any]) -> str:
    """The reasoning text of an upstream message or delta, from whichever field the provider uses.

    Read once, never added together: OpenRouter sends the same text in `reasoning` and in
    `reasoning_details` (openai-mapping.md §1.7).
    """
    thinking = message.get("reasoning_content") or message.get("reasoning")
    if thinking:
        return str(thinking)
    details = message.get("reasoning_details")
    if details:
        return "".join(str(d.get("text") or d.get("summary") or "") for d in details if isinstance(d, dict))
    return ""


class ThinkTagSplitter:
    """Splits streamed content into (content, thinking) at `<think>`/`</think>`, across chunk edges.

    A tag cut by a chunk boundary is held back until the next piece shows whether it is one.
    """

    __slots__ = ("_thinking", "_held")

    def __init__(self) -> None:
        self._thinking = False
        self._held = ""

    def feed(self, text: str) -> tuple[str, str]:
        text = self._held + text
        self._held = ""
        content: list[str] = []
        thinking: list[str] = []
        while text:
            tag = _CLOSE if self._thinking else _OPEN
            found = text.find(tag)
            target = thinking if self._thinking else content
            if found >= 0:
                target.append(text[:found])
                text = text[found + len(tag) :]
                if self._thinking:
                    text = text.lstrip("\n")  # Ollama drops the blank line after </think>
                self._thinking = not self._thinking
                continue
            keep = _partial_tag_length(text, tag)
            target.append(text[: len(text) - keep])
            self._held = text[len(text) - keep :]
            break
        return "".join(content), "".join(thinking)

    def flush(self) -> tuple[str, str]:
        """What was held back when the stream ends: it was no tag after all."""
        held, self._held = self._held, ""
        return ("", held) if self._thinking else (held, "")

    def split_whole(self, text: str) -> tuple[str, str]:
        """A complete (non-streamed) answer's text as (content, thinking)."""
        content, thinking = self.feed(text)
        held_content, held_thinking = self.flush()
        return content + held_content, thinking + held_thinking


def _partial_tag_length(text: str, tag: str) -> int:
    """Length of the longest end of `text` that is a beginning of `tag`."""
    for length in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:length]):
            return length
    return 0
