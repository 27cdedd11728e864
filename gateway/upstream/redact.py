"""Secrets masked out of everything the gateway relays, renders or logs: `Secrets`.

One `Secrets` per loaded route map (`RouteMap.secrets`), built once when the map loads, holds
every secret the map configures (`RouteMap` decides which: api keys, `headers:` values, base_url
passwords, auth keys); per request it also masks the client's own key when an upstream passes
it through (`CLIENT_KEY`). Masking writes `***` over

- every occurrence of a secret (also as JSON escapes it), and
- every run of 8 or more characters that is a prefix or a suffix of one: what is left of a
  secret that something truncated (an upstream quoting part of a key, a cut). For a *weak*
  secret (a header value whose name does not say credential, such as a Referer URL) such a run
  counts only where it ends (a prefix) or starts (a suffix) at a non-alphanumeric character or
  at the end of the text, so a message holding `https://...` keeps its URLs although the
  Referer starts with `https://` too.

Callers scrub *before* they cut text short, and again after (`clip`).

Cost: each `Secrets` compiles one regex that matches the first and the last 8 characters of
every secret; text in which it finds nothing is returned as it is, after one scan in C. Only
where it finds one does a short loop work out what to mask. It is meant for error text, log
fields and the non-stream bodies `/v1` relays, not for every chunk of a stream.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from contextvars import ContextVar
from typing import Any, AnyStr, Generic, NamedTuple

# The client's own bearer token, set per request by the front layer when an upstream says
# `pass_client_key` (http/front.py; upstream/clients.py sends it); masked like a configured secret.
CLIENT_KEY: ContextVar[str | None] = ContextVar("client_key", default=None)

MASK = "***"
ANCHOR = 8  # a run this long that begins or ends a secret counts as the secret
SHORTEST = 4  # shorter values are placeholders (masking them would garble every message)
_CLIENT_CACHE = 256


class Secrets:
    """Masks a fixed set of secrets, and the client's passed-through key, in text and bytes.

    `secrets` are `(value, strong)` pairs: a strong secret is a credential (see the module
    docstring for what a weak one changes). Values shorter than `SHORTEST` are ignored; a
    strong one shorter than `ANCHOR` is masked where it occurs in full only.
    """

    __slots__ = ("_text", "_bytes", "_clients")

    def __init__(self, secrets: Iterable[tuple[str, bool]] = ()) -> None:
        strongest: dict[str, bool] = {}
        for value, strong in secrets:
            if len(value) >= SHORTEST and (strong or len(value) >= ANCHOR):
                for variant in _variants(value):
                    strongest[variant] = strongest.get(variant, False) or strong
        pairs = sorted(strongest.items())
        self._text = _Index(pairs, _Syntax(MASK, "|", "(?=(", "))", _is_word_char))
        encoded = [(value.encode(), strong) for value, strong in pairs]
        self._bytes = _Index(encoded, _Syntax(MASK.encode(), b"|", b"(?=(", b"))", _is_word_byte))
        self._clients: dict[str, Secrets] = {}

    def scrub(self, text: str) -> str:
        """`text` with every secret, and every long prefix or suffix of one, masked."""
        text = self._text.scrub(text)
        client = CLIENT_KEY.get()
        return self._client(client)._text.scrub(text) if client else text

    def mentions(self, text: str) -> bool:
        """True if `text` may hold a secret (what `scrub` would look at more closely)."""
        if self._text.mentions(text):
            return True
        client = CLIENT_KEY.get()
        return self._client(client)._text.mentions(text) if client else False

    def scrub_bytes(self, data: bytes) -> bytes:
        data = self._bytes.scrub(data)
        client = CLIENT_KEY.get()
        return self._client(client)._bytes.scrub(data) if client else data

    def scrub_json(self, value: Any) -> Any:
        """A JSON-like value (dicts, lists, strings) with every string in it scrubbed, names too."""
        if isinstance(value, str):
            return self.scrub(value)
        if isinstance(value, dict):
            return {self.scrub(str(name)): self.scrub_json(item) for name, item in value.items()}
        if isinstance(value, list | tuple):
            return [self.scrub_json(item) for item in value]
        return value

    def clip(self, text: str, limit: int, ellipsis: str = "") -> str:
        """`text` scrubbed, then cut to `limit` characters (`ellipsis` added if cut), then scrubbed again
        (a cut can leave a weak secret's prefix at the very end, where it counts)."""
        text = self.scrub(text)
        if len(text) > limit:
            text = self.scrub(text[:limit]) + ellipsis
        return text

    def _client(self, key: str) -> Secrets:
        """The client's key as a secret of its own (compiled once per key, a few hundred kept)."""
        found = self._clients.get(key)
        if found is None:
            if len(self._clients) >= _CLIENT_CACHE:
                self._clients.clear()
            found = self._clients[key] = Secrets([(key, True)])
        return found


def _variants(value: str) -> set[str]:
    """The secret as written and as a JSON encoder may escape it (`\\uXXXX`, `\\/`)."""
    variants = {value, json.dumps(value)[1:-1], json.dumps(value, ensure_ascii=False)[1:-1]}
    return variants | {variant.replace("/", "\\/") for variant in variants if "/" in variant}


def _is_word_char(text: str, index: int) -> bool:
    return text[index].isalnum()


def _is_word_byte(data: bytes, index: int) -> bool:
    return data[index : index + 1].isalnum() or data[index] >= 0x80  # part of a UTF-8 character


class _Syntax(NamedTuple, Generic[AnyStr]):
    """What differs between the str and the bytes index: literals, and what a word character is."""

    mask: AnyStr
    bar: AnyStr
    lookahead: AnyStr
    close: AnyStr
    is_word: Callable[[AnyStr, int], bool]


class _Index(Generic[AnyStr]):
    """The secrets in one representation (str or bytes) and the regexes that find them."""

    __slots__ = ("_mask", "_is_word", "_any", "_each", "_anchors", "_short")

    def __init__(self, secrets: list[tuple[AnyStr, bool]], syntax: _Syntax[AnyStr]) -> None:
        self._mask: AnyStr = syntax.mask
        self._is_word: Callable[[AnyStr, int], bool] = syntax.is_word
        # Each secret is found by its first and its last ANCHOR characters; a secret too short to
        # have a proper prefix of that length (strong ones only) is found whole, by `_short`.
        self._anchors: dict[AnyStr, list[tuple[AnyStr, bool, bool]]] = {}
        short: list[AnyStr] = []
        for value, strong in secrets:
            if len(value) < ANCHOR:
                short.append(value)
                continue
            self._anchors.setdefault(value[:ANCHOR], []).append((value, True, strong))
            self._anchors.setdefault(value[-ANCHOR:], []).append((value, False, strong))
        self._any: re.Pattern[AnyStr] | None = None
        self._each: re.Pattern[AnyStr] | None = None
        if self._anchors:
            alternatives = syntax.bar.join(re.escape(anchor) for anchor in self._anchors)
            self._any = re.compile(alternatives)
            # A lookahead finds overlapping anchors too (one secret's head inside another's text).
            self._each = re.compile(syntax.lookahead + alternatives + syntax.close)
        self._short: re.Pattern[AnyStr] | None = None
        if short:
            short.sort(key=len, reverse=True)
            self._short = re.compile(syntax.bar.join(re.escape(value) for value in short))

    def mentions(self, text: AnyStr) -> bool:
        return (self._any is not None and self._any.search(text) is not None) or (
            self._short is not None and self._short.search(text) is not None
        )

    def scrub(self, text: AnyStr) -> AnyStr:
        if self._any is not None:
            first = self._any.search(text)
            if first is not None:
                text = self._masked(text, first.start())
        if self._short is not None:
            text = self._short.sub(self._mask, text)
        return text

    def _masked(self, text: AnyStr, start: int) -> AnyStr:
        assert self._each is not None
        spans: list[tuple[int, int]] = []
        for match in self._each.finditer(text, start):
            at = match.start()
            for secret, is_head, strong in self._anchors[match.group(1)]:
                span = self._head(text, at, secret, strong) if is_head else self._tail(text, at, secret, strong)
                if span is not None:
                    spans.append(span)
        if not spans:
            return text
        spans.sort()
        pieces: list[AnyStr] = []
        done = 0
        span_start, span_end = spans[0]
        for begin, end in spans[1:]:
            if begin <= span_end:
                span_end = max(span_end, end)
                continue
            pieces += [text[done:span_start], self._mask]
            done, span_start, span_end = span_end, begin, end
        pieces += [text[done:span_start], self._mask, text[span_end:]]
        return text[:0].join(pieces)

    def _head(self, text: AnyStr, at: int, secret: AnyStr, strong: bool) -> tuple[int, int] | None:
        """The span from `at` that is the secret or a prefix of it (`at` starts its anchor)."""
        if text.startswith(secret, at):
            return at, at + len(secret)
        length = ANCHOR
        limit = min(len(secret), len(text) - at)
        while length < limit and text[at + length] == secret[length]:
            length += 1
        end = at + length
        if strong or end == len(text) or not self._is_word(text, end):
            return at, end
        return None

    def _tail(self, text: AnyStr, at: int, secret: AnyStr, strong: bool) -> tuple[int, int] | None:
        """The span ending at `at + ANCHOR` that is the secret or a suffix of it."""
        end = at + ANCHOR
        size = len(secret)
        if end >= size and text.startswith(secret, end - size):
            return end - size, end
        length = ANCHOR
        limit = min(size, end)
        while length < limit and text[end - length - 1] == secret[size - length - 1]:
            length += 1
        begin = end - length
        if strong or begin == 0 or not self._is_word(text, begin - 1):
            return begin, end
        return None

