"""/api/generate -> Chat Completions, or legacy Completions for `raw` and `suffix`.

`system` and `prompt` (with `images`) become the conversation. `raw` and `suffix` (fill in the
middle) go to `/v1/completions` when the route says the upstream has it; otherwise `raw` falls
back onto chat (the upstream then applies its chat template) and `suffix` is a 400, as Ollama
answers a model without the `insert` capability. `template` cannot be honoured and is ignored;
`context` (token ids from an earlier reply) cannot be detokenized and is ignored: the gateway
keeps no history, and returns `context: []` so clients that require the key find it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gateway.errors import BadRequest
from gateway.ollama import GenerateRequest
from gateway.translators.completion import ChatCompletionTranslator
from gateway.translators.messages import user_content
from gateway.translators.options import sampling_params
from gateway.translators.reasoning import reasoning_params
from gateway.translators.upstream_body import streamed_completion, with_extras

if TYPE_CHECKING:
    from openai.types import CompletionCreateParams
    from openai.types.chat import ChatCompletionMessageParam
    from openai.types.chat import CompletionCreateParams as ChatCompletionCreateParams
    from openai.types.completion_create_params import CompletionCreateParamsNonStreaming

    from gateway.translators.upstream_body import Extras


class GenerateTranslator(ChatCompletionTranslator[GenerateRequest]):
    """Ollama generate: text goes in `response`, reasoning in `thinking`."""

    request_type = GenerateRequest
    request: GenerateRequest
    verb = "generate"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        request = self.request
        if request.raw and (request.system or request.template or request.context):
            raise BadRequest("raw mode does not support template, system, or context")
        self.legacy = bool(request.suffix or request.raw) and self.target.quirks.completions
        if self.legacy:
            self.upstream_path = "/completions"

    def is_empty(self) -> bool:
        return not self.request.prompt

    def check_capabilities(self) -> None:
        super().check_capabilities()
        declared = self.target.route.capabilities
        if self.request.suffix and (not self.target.quirks.completions or (declared and "insert" not in declared)):
            raise BadRequest(f'"{self.request.model}" does not support insert')

    def images(self) -> list[str]:
        return list(self.request.images or ())

    def upstream_messages(self) -> list[ChatCompletionMessageParam]:
        messages: list[ChatCompletionMessageParam] = []
        if self.request.system:
            messages.append({"role": "system", "content": self.request.system})
        messages.append({"role": "user", "content": user_content(self.request.prompt, self.request.images, self.takes_audio)})
        return messages

    def upstream_body(self) -> ChatCompletionCreateParams | CompletionCreateParams:
        if not self.legacy:
            return super().upstream_body()
        request, quirks = self.request, self.target.quirks
        params: CompletionCreateParamsNonStreaming = {"model": self.target.upstream_model, "prompt": request.prompt}
        if request.suffix:
            params["suffix"] = request.suffix
        self._prompt_chars = len(request.prompt) + len(request.suffix or "")
        # What Completions does not define is sent as Chat Completions names it, as an extra.
        extras: Extras = {}
        self.dropped_options = sampling_params(request.options, quirks, params, extras, None)
        if self.reasons():
            effort = reasoning_params(quirks.reasoning, request.think, extras)
            if effort is not None:
                extras["reasoning_effort"] = effort
        if request.logprobs:
            params["logprobs"] = True  # as in the chat body (Completions' field is a count)
            if request.top_logprobs:
                extras["top_logprobs"] = request.top_logprobs
        return with_extras(streamed_completion(params) if self.streams else params, extras)

    def chunk(self, content: str, thinking: str, tool_calls: list[dict[str, Any]] | None) -> dict[str, Any]:
        chunk = self.base_chunk()
        chunk["response"] = content
        if thinking:
            chunk["thinking"] = thinking
        if tool_calls:
            chunk["tool_calls"] = tool_calls
        chunk["done"] = False
        return chunk

    def final(self, content: str, thinking: str, tool_calls: list[dict[str, Any]] | None) -> dict[str, Any]:
        reply = self.chunk(content, thinking, tool_calls)
        reply["done"] = True
        if not self.request.raw:
            reply["context"] = []
        return reply
