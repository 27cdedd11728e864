"""The translator interface: how one Ollama endpoint is served by one OpenAI-compatible call.

A translator is made per request from the validated Ollama request, the route target and the
request's clock. It is pure: it builds the upstream body, turns the upstream's answer back into
Ollama's shape, and does no IO (`http/` and `upstream/exchange.py` do that).

    Translator            local_reply() -> upstream_body() -> from_response(body)
    StreamingTranslator   ... or, when the client streams: feed(event)* -> finish()

Bind your own class to an endpoint in routes.yaml (`endpoints: {/api/chat: pkg.mod:Class}`); it
must subclass one of these.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from gateway.translators.clock import RequestClock
from gateway.errors import GatewayError
from gateway.ollama import ModelRequest
from gateway.routing.resolver import Target

RequestT = TypeVar("RequestT", bound=ModelRequest)


class Translator(ABC, Generic[RequestT]):
    """Serves one request of an Ollama endpoint from the upstream path `upstream_path`."""

    request_type: ClassVar[type[ModelRequest]]
    upstream_path: str  # relative to the upstream's base URL; a class default, an instance may differ

    def __init__(self, request: RequestT, target: Target, clock: RequestClock) -> None:
        self.request = request
        self.target = target
        self.clock = clock
        self.prompt_tokens = 0
        self.completion_tokens = 0

    @property
    def streams(self) -> bool:
        """True when the client gets NDJSON chunks (only StreamingTranslator can)."""
        return False

    def local_reply(self) -> dict[str, Any] | None:
        """An answer Ollama gives without running the model (load, unload, empty input), or None."""
        return None

    @abstractmethod
    def upstream_body(self) -> Mapping[str, object]:
        """The JSON body for `upstream_path`, model id included.

        The built-in translators return the `openai` SDK's request TypedDict for the path, provider
        extras set over it (upstream_body.py); any mapping JSON can encode does, a plain dict too.
        (For mypy, an override in a subclass of a built-in translator keeps that translator's type.)
        """

    @abstractmethod
    def from_response(self, body: dict[str, Any]) -> dict[str, Any]:
        """The Ollama reply for a complete (non-streamed) upstream answer."""

    def map_error(self, error: GatewayError) -> GatewayError:
        """A chance to say an upstream error in this endpoint's words (default: unchanged)."""
        return error


class ChunkFraming(Protocol):
    """How a translator's streamed chunks go on the wire, when not as Ollama's NDJSON lines."""

    @property
    def media_type(self) -> str: ...

    def encode(self, chunks: list[dict[str, Any]]) -> bytes:
        """The bytes of consecutive chunks, written at once."""

    def error_chunk(self, error: GatewayError) -> bytes:
        """The last chunk of a stream that failed after its first byte."""


class StreamingTranslator(Translator[RequestT]):
    """A translator whose endpoint can stream NDJSON from the upstream's SSE events."""

    # None: Ollama's NDJSON, one chunk a line; otherwise the framing of another surface
    # (the Anthropic Messages events, translators/anthropic.py).
    framing: ChunkFraming | None = None

    # Set by `feed` once an event carried a finish reason: a stream that ends without `[DONE]`
    # is complete only if this is true.
    saw_finish_reason: bool = False

    @abstractmethod
    def feed(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        """Ollama chunks (possibly none) for one decoded SSE `data:` event."""

    @abstractmethod
    def finish(self) -> list[dict[str, Any]]:
        """The last chunks once the upstream stream ended cleanly; the final one has `done: true`."""

    def tokens_so_far(self) -> tuple[int, int]:
        """(prompt, completion) tokens of a stream cut short after its first chunk (the client
        hung up, the upstream broke): the usage comes in the upstream's last event, so the
        built-in translators estimate what was streamed (about four characters a token)."""
        return self.prompt_tokens, self.completion_tokens
