"""Provider quirks: how OpenAI-compatible servers differ, declared in routes.yaml, not coded per vendor.

An upstream may name a `provider` preset; any quirk set on the upstream overrides the preset, and
any quirk set on a model entry overrides the upstream (the right reasoning knob depends on the
model family). Sources: openai-mapping.md §1.7–1.9 and §8.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal

ProviderName = Literal[
    "generic", "openai", "azure", "openrouter", "groq", "deepseek", "together", "mistral",
    "vllm", "llamacpp", "lmstudio", "ollama",
]
# How `think` reaches the upstream (openai-mapping.md §1.7).
ReasoningKnob = Literal["none", "reasoning_effort", "openrouter", "chat_template_kwargs", "groq"]
# Which field carries an earlier assistant turn's thinking back upstream (§1.4).
ReasoningInput = Literal["drop", "reasoning_content", "reasoning"]

SAMPLING_EXTRAS = {"top_k": "top_k", "min_p": "min_p", "repeat_penalty": "repetition_penalty"}
LLAMACPP_EXTRAS = {
    "top_k": "top_k", "min_p": "min_p", "typical_p": "typical_p", "repeat_penalty": "repeat_penalty",
    "repeat_last_n": "repeat_last_n", "mirostat": "mirostat", "mirostat_tau": "mirostat_tau", "mirostat_eta": "mirostat_eta",
}


@dataclass(frozen=True, slots=True)
class Quirks:
    """Resolved behaviour of one target."""

    max_tokens_field: Literal["max_tokens", "max_completion_tokens"] = "max_tokens"
    reasoning: ReasoningKnob = "none"
    reasoning_input: ReasoningInput = "drop"
    think_tags: bool = False
    extra_options: dict[str, str] = field(default_factory=dict)
    completions: bool = False
    stop_limit: int | None = None
    json_schema: bool = True
    dimensions: bool = False
    tool_result_name: bool = False
    # The upstream speaks Anthropic's Messages API itself (`{base_url}/messages`): `/v1/messages`
    # is passed through to it instead of translated (http/anthropic_api.py).
    messages_api: bool = False
    # The upstream's chat template rejects a system message after the conversation began (Qwen's
    # templates on vLLM, llama.cpp, LM Studio): such messages are merged into the leading one.
    # Claude Code sends them (agents-api.md §2.6); applied on /v1/messages and /v1/responses.
    merge_system: bool = False
    # The upstream has its own Responses API (`{base_url}/responses`): `/v1/responses` is passed through.
    responses_api: bool = False

    def merged(self, overrides: dict[str, Any]) -> Quirks:
        """These quirks with every non-None value of `overrides` applied."""
        known = {f.name for f in fields(self)}
        return replace(self, **{key: value for key, value in overrides.items() if key in known and value is not None})


PRESETS: dict[str, Quirks] = {
    "generic": Quirks(),
    "openai": Quirks(max_tokens_field="max_completion_tokens", reasoning="reasoning_effort", stop_limit=4, dimensions=True,
                     responses_api=True),
    "azure": Quirks(max_tokens_field="max_completion_tokens", reasoning="reasoning_effort", stop_limit=4, dimensions=True),
    "openrouter": Quirks(reasoning="openrouter", reasoning_input="reasoning", extra_options=SAMPLING_EXTRAS),
    "groq": Quirks(max_tokens_field="max_completion_tokens", reasoning="groq", stop_limit=4),
    "deepseek": Quirks(reasoning_input="reasoning_content", json_schema=False, completions=True),
    "together": Quirks(extra_options=SAMPLING_EXTRAS, completions=True),
    "mistral": Quirks(json_schema=True),
    "vllm": Quirks(reasoning="chat_template_kwargs", reasoning_input="reasoning", extra_options=SAMPLING_EXTRAS, completions=True,
                   merge_system=True),
    "llamacpp": Quirks(reasoning="chat_template_kwargs", reasoning_input="reasoning_content", extra_options=LLAMACPP_EXTRAS,
                       completions=True, tool_result_name=True, merge_system=True),
    "lmstudio": Quirks(extra_options={"top_k": "top_k", "min_p": "min_p", "repeat_penalty": "repeat_penalty"}, completions=True,
                       merge_system=True),
    "ollama": Quirks(reasoning="reasoning_effort", reasoning_input="reasoning", completions=True),
}
