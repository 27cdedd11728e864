"""Ollama `options` and `format` -> OpenAI Chat Completions parameters (openai-mapping.md §1.8, §1.9).

Only what the client set is sent: Ollama's own defaults (temperature 0.8, top_k 40, ...) are never
injected, so the upstream's defaults apply. Options with no OpenAI counterpart go up as provider
extras where the route's `extra_options` names them (upstream_body.py), else are dropped;
load-time options (num_ctx, num_gpu, ...) are never sent.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import orjson

from gateway.errors import BadRequest
from gateway.routing.presets import Quirks

if TYPE_CHECKING:
    from openai.types.chat.completion_create_params import CompletionCreateParamsBase as ChatParams
    from openai.types.chat.completion_create_params import ResponseFormat
    from openai.types.completion_create_params import CompletionCreateParamsBase as CompletionParams

    from gateway.translators.upstream_body import Extras

_SAME_NAME: tuple[Literal["temperature", "top_p", "presence_penalty", "frequency_penalty"], ...] = (
    "temperature", "top_p", "presence_penalty", "frequency_penalty",
)
# Options that configure how Ollama loads a model: no per-request meaning upstream, never sent.
LOAD_TIME = frozenset(
    "num_ctx num_keep num_batch num_gpu main_gpu use_mmap num_thread draft_num_predict numa low_vram f16_kv "
    "logits_all vocab_only use_mlock embedding_only".split()
)


def sampling_params(
    options: dict[str, Any] | None, quirks: Quirks, params: ChatParams | CompletionParams, extras: Extras,
    chat: ChatParams | None,
) -> list[str]:
    """Sets the parameters for the options a client set in `params`; returns the names dropped.

    `chat` is `params` again for a Chat Completions body (None for legacy Completions, which has no
    `max_completion_tokens`: that goes into `extras` there). Options without an OpenAI counterpart
    (top_k, min_p, repeat_penalty, ...) go into `extras`, for upstreams whose quirks list them in
    `extra_options` only (OpenAI and Groq reject unknown keys).
    """
    if not options:
        return []
    for field in _SAME_NAME:
        value = options.get(field)
        if value is not None:
            params[field] = value
    seed = options.get("seed")
    if seed is not None and seed >= 0:  # Ollama: -1 means random
        params["seed"] = int(seed)
    num_predict = options.get("num_predict")
    if num_predict is not None and num_predict > 0:  # -1 infinite, -2 fill the context
        if quirks.max_tokens_field == "max_tokens":
            params["max_tokens"] = int(num_predict)
        elif chat is not None:
            chat["max_completion_tokens"] = int(num_predict)
        else:
            extras["max_completion_tokens"] = int(num_predict)
    stop = options.get("stop")
    if stop:
        stops = [stop] if isinstance(stop, str) else list(stop)
        params["stop"] = stops[: quirks.stop_limit] if quirks.stop_limit else stops
    dropped = []
    for name, value in options.items():
        if value is None or name in _HANDLED:
            continue
        upstream_name = quirks.extra_options.get(name)
        if upstream_name is not None:
            extras[upstream_name] = value
        elif name not in LOAD_TIME:
            dropped.append(name)
    return dropped


_HANDLED = frozenset((*_SAME_NAME, "seed", "num_predict", "stop"))


def response_format(format_: str | dict[str, Any] | None, quirks: Quirks) -> tuple[ResponseFormat | None, str | None]:
    """`format` as OpenAI's `response_format`, plus a system line to add (or None).

    "json" -> json_object (OpenAI demands the word "json" in the prompt: the caller adds the line
    when no message says it); a JSON schema -> json_schema in the {name, schema} wrapper OpenAI
    requires, or, for upstreams without json_schema, json_object with the schema in a system line.
    """
    if format_ is None or format_ == "":
        return None, None
    if format_ == "json":
        return {"type": "json_object"}, "Respond with a JSON object."
    if isinstance(format_, dict):
        if quirks.json_schema:
            return {"type": "json_schema", "json_schema": {"name": "response", "schema": format_, "strict": False}}, None
        schema = orjson.dumps(format_).decode()
        return {"type": "json_object"}, f"Respond with a JSON object that follows this JSON schema: {schema}"
    raise BadRequest(f'invalid format: "{format_}"; expected "json" or a valid JSON Schema object')
