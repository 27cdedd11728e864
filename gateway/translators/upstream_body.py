"""What a translator sends upstream: the `openai` SDK's request TypedDict, and the provider extras.

The standard fields are built as the SDK's own request types (`openai.types.chat.CompletionCreateParams`
with its message, content part and tool types, `openai.types.CompletionCreateParams`,
`openai.types.EmbeddingCreateParams`), so mypy checks every key and value: a misspelt or
mistyped OpenAI field is a type error. What no OpenAI API defines but a provider takes goes into
`Extras`, set over the standard fields last, as the SDK's `extra_body` is:

    extra_options       top_k, min_p, repeat_penalty, ... as routes.yaml maps them (presets.py)
    reasoning knobs     OpenRouter's `reasoning`, `chat_template_kwargs`, Groq's `reasoning_format`
    Completions gaps    what `/completions` lacks but is sent there all the same (`top_logprobs`,
                        `reasoning_effort`, `max_completion_tokens`)

Two provider fields live inside messages, typed here as extensions of the SDK's message types: an
earlier assistant turn's reasoning (`reasoning_content` or `reasoning`, quirk `reasoning_input`)
and a tool result's `name` (quirk `tool_result_name`).

`openai` is a dev dependency only: these types exist for the type checker and are never imported
at run time (tests/test_layout.py holds that). A TypedDict is a plain dict: nothing is validated
or copied on the way.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypeVar, cast

if TYPE_CHECKING:
    from openai.types import completion_create_params as completions
    from openai.types.chat import ChatCompletionAssistantMessageParam, ChatCompletionToolMessageParam
    from openai.types.chat import completion_create_params as chat

    class AssistantMessage(ChatCompletionAssistantMessageParam, total=False):
        """An assistant turn with its reasoning, in the field the upstream reads it from (not OpenAI's)."""

        reasoning_content: str
        reasoning: str

    class ToolMessage(ChatCompletionToolMessageParam, total=False):
        """A tool result naming its tool, for chat templates that need it (not OpenAI's)."""

        name: str


# Provider fields that are no OpenAI field: set over the standard ones last, as `extra_body` is.
Extras = dict[str, Any]

ParamsT = TypeVar("ParamsT", bound="Mapping[str, object]")


def with_extras(params: ParamsT, extras: Extras) -> ParamsT:
    """The JSON body: `params` with `extras` set over them, in place (no copy)."""
    if extras:
        cast("dict[str, Any]", params).update(extras)
    return params


def streamed_chat(params: chat.CompletionCreateParamsNonStreaming) -> chat.CompletionCreateParamsStreaming:
    """The same dict as a streamed Chat Completions request, asking for the usage chunk."""
    streaming = cast("chat.CompletionCreateParamsStreaming", params)
    streaming["stream"] = True
    streaming["stream_options"] = {"include_usage": True}
    return streaming


def streamed_completion(
    params: completions.CompletionCreateParamsNonStreaming,
) -> completions.CompletionCreateParamsStreaming:
    """The same dict as a streamed legacy Completions request, asking for the usage chunk."""
    streaming = cast("completions.CompletionCreateParamsStreaming", params)
    streaming["stream"] = True
    streaming["stream_options"] = {"include_usage": True}
    return streaming
