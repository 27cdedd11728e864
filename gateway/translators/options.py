"""Ollama `options` and `format` -> OpenAI Chat Completions parameters (openai-mapping.md §1.8, §1.9).

Only what the client set is sent: Ollama's own defaults (temperature 0.8, top_k 40, ...) are never
injected, so the upstream's defaults apply. Options with no OpenAI counterpart and load-time
options (num_ctx, num_gpu, ...) are not sent.
"""

from __future__ import annotations

from typing import Any

from gateway.errors import BadRequest

_SAME_NAME = ("temperature", "top_p", "presence_penalty", "frequency_penalty")


def sampling_params(options: dict[str, Any] | None) -> dict[str, Any]:
    """The OpenAI sampling parameters for the options a client set."""
    if not options:
        return {}
    params: dict[str, Any] = {}
    for name in _SAME_NAME:
        value = options.get(name)
        if value is not None:
            params[name] = value
    seed = options.get("seed")
    if seed is not None and seed >= 0:  # Ollama: -1 means random
        params["seed"] = int(seed)
    num_predict = options.get("num_predict")
    if num_predict is not None and num_predict > 0:  # -1 infinite, -2 fill the context
        params["max_tokens"] = int(num_predict)
    stop = options.get("stop")
    if stop:
        params["stop"] = [stop] if isinstance(stop, str) else list(stop)
    return params


def response_format(format_: str | dict[str, Any] | None) -> dict[str, Any] | None:
    """`format: "json"` -> json_object; a JSON schema -> json_schema in OpenAI's {name, schema} wrapper."""
    if format_ is None or format_ == "":
        return None
    if format_ == "json":
        return {"type": "json_object"}
    if isinstance(format_, dict):
        return {"type": "json_schema", "json_schema": {"name": "response", "schema": format_, "strict": False}}
    raise BadRequest(f'invalid format: "{format_}"; expected "json" or a valid JSON Schema object')
