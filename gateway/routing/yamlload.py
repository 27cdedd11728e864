"""YAML parsing for routes.yaml whose errors say where, never what: no line of the file in them.

PyYAML's messages quote the offending line under a caret, and some quote a token (`found undefined
alias 'x'`, a tag, `invalid literal for int() with base 10: 'x'`). routes.yaml can hold literal
keys, and these messages reach `ollama-gateway check` and the reload log, so a parse error is
rewritten as `line L, column C: <what was wrong>` with any quoted text longer than a few
characters replaced by `'…'` (PyYAML's token names such as `'<block end>'` are kept).
"""

from __future__ import annotations

import re
from typing import Any

import yaml

# Quoted text in a message: kept when it is a token name or at most a few characters (`'\t'`).
_QUOTED = re.compile(r"'([^'\n]*)'|\"([^\"\n]*)\"")
_KEPT_LENGTH = 4
_TOKEN = re.compile(r"<[a-z ]+>")  # PyYAML's token names: '<block mapping start>'


class YamlError(ValueError):
    """The text is not valid YAML; the message gives the position and the problem only."""


class _Loader(yaml.SafeLoader):
    """SafeLoader whose value conversions (`!!int x`, a date such as 2020-13-45) fail with a mark."""

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (ValueError, TypeError, OverflowError):
            # The exception's own message may quote the value (`invalid literal for int(): 'x'`).
            problem = "a value that does not parse as its type (an explicit !!tag, or a date such as 2020-13-45)"
            raise yaml.constructor.ConstructorError(None, None, problem, node.start_mark) from None


def load(text: str) -> Any:
    """Parse one YAML document with the safe loader; YamlError without any of the text on failure."""
    try:
        return yaml.load(text, Loader=_Loader)  # a SafeLoader subclass: no arbitrary objects
    except yaml.MarkedYAMLError as exc:
        message = _describe(exc)
    except yaml.reader.ReaderError as exc:  # a character YAML does not allow: no line and column of its own
        message = f"{_position(text, exc.position)}: character #x{exc.character:04x} is not allowed in YAML"
    except yaml.YAMLError:
        message = "cannot be parsed"
    raise YamlError(message) from None


def _describe(exc: yaml.MarkedYAMLError) -> str:
    where = _mark(exc.problem_mark) or _mark(exc.context_mark) or "position unknown"
    text = f"{where}: {_mask(exc.problem or exc.context or 'invalid YAML')}"
    if exc.context and exc.problem:
        started = _mark(exc.context_mark)
        text += f" ({_mask(exc.context)}" + (f" that starts at {started}" if started and started != where else "") + ")"
    return text


def _mark(mark: yaml.Mark | None) -> str | None:
    return None if mark is None else f"line {mark.line + 1}, column {mark.column + 1}"


def _position(text: str, offset: int) -> str:
    line = text.count("\n", 0, offset) + 1
    column = offset - (text.rfind("\n", 0, offset) + 1) + 1
    return f"line {line}, column {column}"


def _mask(message: str) -> str:
    def keep_or_hide(match: re.Match[str]) -> str:
        inner = match.group(1) if match.group(1) is not None else match.group(2)
        if len(inner) <= _KEPT_LENGTH or _TOKEN.fullmatch(inner):
            return match.group(0)
        return "'…'"

    return _QUOTED.sub(keep_or_hide, message)
