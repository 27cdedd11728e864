"""/api/embed and the legacy /api/embeddings -> OpenAI Embeddings (openai-mapping.md §5)."""

from __future__ import annotations

import math
from itertools import repeat
from operator import truediv
from typing import TYPE_CHECKING, Any

from gateway.errors import BadRequest, GatewayError
from gateway.ollama import EmbeddingsRequest, EmbedRequest
from gateway.translators.base import Translator

if TYPE_CHECKING:
    from openai.types import EmbeddingCreateParams


class EmbedTranslator(Translator[EmbedRequest]):
    """Ollama's /api/embed: one unit-length vector per input, in input order."""

    request_type = EmbedRequest
    upstream_path = "/embeddings"
    request: EmbedRequest

    def local_reply(self) -> dict[str, Any] | None:
        if self.request.inputs:
            return None
        return self._reply([])

    def upstream_body(self) -> EmbeddingCreateParams:
        # encoding_format is explicit: the SDK would otherwise ask for base64, which some servers reject.
        body: EmbeddingCreateParams = {
            "model": self.target.upstream_model, "input": self.request.inputs, "encoding_format": "float",
        }
        if self.request.dimensions and self.target.quirks.dimensions:
            body["dimensions"] = self.request.dimensions
        return body

    def map_error(self, error: GatewayError) -> GatewayError:
        # OpenAI-compatible servers never truncate: an over-long input is their 400. Ollama's
        # words for it when the client asked not to truncate:
        if self.request.truncate is False and error.status_code == 400 and _is_context_error(error.message):
            return BadRequest("the input length exceeds the context length")
        return error

    def from_response(self, body: dict[str, Any]) -> dict[str, Any]:
        vectors = [item["embedding"] for item in sorted(body.get("data") or [], key=lambda item: item.get("index", 0))]
        usage = body.get("usage") or {}
        self.prompt_tokens = int(usage.get("prompt_tokens") or 0)
        dimensions = self.request.dimensions
        return self._reply([unit_vector(vector[:dimensions] if dimensions else vector) for vector in vectors])

    def _reply(self, embeddings: list[list[float]]) -> dict[str, Any]:
        # total_duration, load_duration and prompt_eval_count are required by ollama-ai-provider.
        return {
            "model": self.request.model,
            "embeddings": embeddings,
            "total_duration": self.clock.elapsed_ns(),
            "load_duration": max(self.clock.upstream_called - self.clock.received, 1),
            "prompt_eval_count": self.prompt_tokens,
        }


class LegacyEmbeddingsTranslator(Translator[EmbeddingsRequest]):
    """The legacy /api/embeddings: one vector, not normalized."""

    request_type = EmbeddingsRequest
    upstream_path = "/embeddings"
    request: EmbeddingsRequest

    def local_reply(self) -> dict[str, Any] | None:
        return None if self.request.prompt else {"embedding": []}

    def upstream_body(self) -> EmbeddingCreateParams:
        return {"model": self.target.upstream_model, "input": self.request.prompt, "encoding_format": "float"}

    def from_response(self, body: dict[str, Any]) -> dict[str, Any]:
        data = body.get("data") or [{}]
        return {"embedding": data[0].get("embedding") or []}


def _is_context_error(message: str) -> bool:
    lowered = message.lower()
    return any(word in lowered for word in ("context", "too long", "maximum", "token"))


def unit_vector(vector: list[float]) -> list[float]:
    """L2-normalize, as Ollama's /api/embed always returns unit vectors.

    No Python-level loop per float: `math.hypot` takes the norm in C, and the division maps C
    functions over the list (most providers send unit vectors already: returned as is). Each value
    is divided by the norm, as Ollama does, not multiplied by its inverse (which differs in the
    last bit).
    """
    norm = math.hypot(*vector)
    if norm == 0.0 or abs(norm - 1.0) < 1e-9:
        return vector
    return list(map(truediv, vector, repeat(norm)))
