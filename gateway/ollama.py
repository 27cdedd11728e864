"""Ollama request bodies, as Ollama parses them (no HTTP here).

Unknown fields are ignored at every level, as Ollama ignores them; `name` is accepted for
`model`; `role` is lower-cased; `absent` and `false` stay distinct for `stream` and `think`.
Booleans are strict (`"yes"`, `"true"` or `1` for `stream` is a 400, as Go's decoder makes it in
Ollama), and integers are Go's int64: a number beyond its range is a 400, never sent upstream.
Validation failures become 400 errors (see `describe_validation_error`).
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    ValidationError,
    field_validator,
    model_validator,
)

THINK_LEVELS = ("high", "medium", "low", "max")
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
# Go's int/int64 (Ollama's integer fields): a larger number is a 400, not a crash in orjson.
Int64 = Annotated[int, Field(ge=INT64_MIN, le=INT64_MAX)]

# api.Options (Ollama v0.33) plus the names Ollama removed but clients still send; a known key
# with the wrong JSON type is a 400, an unknown key is ignored (ollama-api.md §11).
_INT_OPTIONS = frozenset(
    "num_predict top_k repeat_last_n seed num_keep num_ctx num_batch num_gpu main_gpu num_thread "
    "draft_num_predict mirostat".split()
)
_FLOAT_OPTIONS = frozenset(
    "temperature top_p min_p typical_p repeat_penalty presence_penalty frequency_penalty tfs_z "
    "mirostat_tau mirostat_eta".split()
)
_BOOL_OPTIONS = frozenset("use_mmap numa low_vram f16_kv logits_all vocab_only use_mlock embedding_only penalize_newline".split())

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ModelRequest(_Body):
    """Any request naming a model; `name` is the deprecated spelling that Continue and ollama-js send."""

    model: str = ""

    @model_validator(mode="before")
    @classmethod
    def _name_is_model(cls, data: Any) -> Any:
        if isinstance(data, dict) and not data.get("model") and isinstance(data.get("name"), str):
            data = {**data, "model": data["name"]}
        return data


class ToolCallFunction(_Body):
    name: str
    arguments: dict[str, Any] | str = Field(default_factory=dict)
    index: Int64 | None = None


class ToolCall(_Body):
    id: str | None = None
    function: ToolCallFunction


class Message(_Body):
    role: str
    content: str = ""
    thinking: str | None = None
    images: list[str] | None = None
    tool_calls: list[ToolCall] | None = None
    tool_name: str | None = None
    tool_call_id: str | None = None

    @field_validator("role")
    @classmethod
    def _lower_role(cls, role: str) -> str:
        return role.lower()

    @field_validator("content", mode="before")
    @classmethod
    def _content_string(cls, content: Any) -> Any:
        # ollama-ai-provider-v2 sends `[]` for an image-only message; Ollama 400s, we accept it.
        if content is None or content == []:
            return ""
        return content


class GenerationRequest(ModelRequest):
    """Fields shared by /api/chat and /api/generate."""

    format: str | dict[str, Any] | None = None
    options: dict[str, Any] | None = None
    stream: StrictBool | None = None
    keep_alive: float | str | None = None
    think: StrictBool | str | None = None
    logprobs: StrictBool | None = None
    top_logprobs: int | None = None

    @field_validator("options")
    @classmethod
    def _option_types(cls, options: dict[str, Any] | None) -> dict[str, Any] | None:
        if options:
            for key, value in options.items():
                check_option_type(key, value)
        return options

    @field_validator("think", mode="before")
    @classmethod
    def _think_type(cls, think: Any) -> Any:
        if think is not None and not isinstance(think, (bool, str)):
            raise ValueError("think must be a boolean or string")  # Ollama's ThinkValue.UnmarshalJSON
        return think

    @field_validator("think")
    @classmethod
    def _think_value(cls, think: bool | str | None) -> bool | str | None:
        if isinstance(think, str) and think not in THINK_LEVELS:
            raise ValueError(f'invalid think value: "{think}" (must be "high", "medium", "low", "max", true, or false)')
        return think

    @field_validator("top_logprobs")
    @classmethod
    def _top_logprobs_range(cls, value: int | None) -> int | None:
        if value is not None and not 0 <= value <= 20:
            raise ValueError("top_logprobs must be between 0 and 20")
        return value

    @field_validator("keep_alive")
    @classmethod
    def _keep_alive_duration(cls, value: float | str | None) -> float | str | None:
        if isinstance(value, str):
            parse_duration(value)
        return value

    @property
    def wants_stream(self) -> bool:
        return self.stream is not False

    @property
    def unloads(self) -> bool:
        """`keep_alive: 0` asks Ollama to unload the model."""
        return self.keep_alive is not None and keep_alive_seconds(self.keep_alive) == 0


class ChatRequest(GenerationRequest):
    messages: list[Message] = Field(default_factory=list)
    tools: list[dict[str, Any]] | None = None
    # Not Ollama's (it ignores it), but SDKs and agent frameworks send it: forwarded upstream in
    # Chat Completions' shape; a value of no known shape (of any JSON type) is dropped, not a 400.
    tool_choice: Any = None


class GenerateRequest(GenerationRequest):
    prompt: str = ""
    suffix: str | None = None
    system: str | None = None
    template: str | None = None
    context: list[int] | None = None
    raw: StrictBool | None = None
    images: list[str] | None = None


def _valid_keep_alive(value: float | str | None) -> float | str | None:
    """A keep_alive string must be a Go duration (else a 400 here, not a crash when it is used)."""
    if isinstance(value, str):
        parse_duration(value)
    return value


class EmbedRequest(ModelRequest):
    input: str | list[Any] = ""
    truncate: StrictBool | None = None
    dimensions: int | None = Field(default=None, gt=0, le=INT64_MAX)
    options: dict[str, Any] | None = None
    keep_alive: float | str | None = None

    _keep_alive_duration = field_validator("keep_alive")(_valid_keep_alive)

    @field_validator("input")
    @classmethod
    def _strings_only(cls, value: str | list[Any]) -> str | list[Any]:
        if isinstance(value, list) and not all(isinstance(item, str) for item in value):
            raise ValueError("invalid input type")
        return value

    @property
    def inputs(self) -> list[str]:
        if isinstance(self.input, str):
            return [self.input] if self.input else []
        return list(self.input)


class EmbeddingsRequest(ModelRequest):
    """The legacy /api/embeddings body."""

    prompt: str = ""
    options: dict[str, Any] | None = None
    keep_alive: float | str | None = None

    _keep_alive_duration = field_validator("keep_alive")(_valid_keep_alive)


class ShowRequest(ModelRequest):
    verbose: StrictBool | None = None


def check_option_type(key: str, value: Any) -> None:
    """Raise ValueError in Ollama's words when a known option has the wrong JSON type."""
    if value is None:
        return
    if key in _INT_OPTIONS:
        ok = isinstance(value, int) and not isinstance(value, bool) or isinstance(value, float) and value.is_integer()
        if ok and not INT64_MIN <= value <= INT64_MAX:
            # orjson reads an integer beyond uint64 as a float: 2**64 and 1e20 both land here.
            raise ValueError(f'option "{key}" must be an integer between {INT64_MIN} and {INT64_MAX}')
        expected = "integer"
    elif key in _FLOAT_OPTIONS:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        expected = "float"
    elif key in _BOOL_OPTIONS:
        ok = isinstance(value, bool)
        expected = "boolean"
    elif key == "stop":
        ok = isinstance(value, str) or isinstance(value, list) and all(isinstance(item, str) for item in value)
        expected = "array of strings"
    else:
        return
    if not ok:
        raise ValueError(f'option "{key}" must be of type {expected}')


def parse_duration(text: str) -> float:
    """Seconds in a Go duration string (`5m`, `1h30m`, `300ms`, `-1s`); ValueError otherwise."""
    value = text.strip()
    sign = -1.0 if value.startswith("-") else 1.0
    body = value.lstrip("+-")
    if body == "0":
        return 0.0
    total, position = 0.0, 0
    for match in _DURATION_PART.finditer(body):
        if match.start() != position:
            break
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        position = match.end()
    if not body or position != len(body):
        raise ValueError(f'time: invalid duration "{text}"')
    return sign * total


def keep_alive_seconds(value: float | str) -> float:
    return parse_duration(value) if isinstance(value, str) else float(value)


def describe_validation_error(exc: ValidationError) -> str:
    """A one-line 400 message; our own validators' messages are kept word for word."""
    error = exc.errors(include_url=False)[0]
    message = error["msg"]
    if error["type"] == "value_error":
        return message.removeprefix("Value error, ")
    where = ".".join(str(part) for part in error["loc"] if not str(part).startswith("function-"))
    return f"invalid value for {where}: {message}" if where else message
