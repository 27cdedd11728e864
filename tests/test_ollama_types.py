"""Ollama response shapes, checked against the official ollama-python SDK.

``references/ollama-types/*.json`` are the SDK's own pydantic JSON schemas, written by
``scripts/extract_ollama_types.py``.  ``assert_ollama_shape`` validates an object against
both the stored schema and the live SDK class, so other tests can call it on whatever the
gateway returns:

    from test_ollama_types import assert_ollama_shape  # tests/ is on sys.path under pytest's
    assert_ollama_shape("ChatResponse", line)           # default (prepend) import mode

The examples below are the ones in shared/reference/ollama-api.md (§4–§10, §12).
"""

from __future__ import annotations

import copy
import importlib.metadata
import importlib.util
import json
import warnings
from functools import lru_cache
from pathlib import Path

import jsonschema
import ollama
import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
TYPES_DIR = REPO_ROOT / "references" / "ollama-types"
EXTRACT_SCRIPT = REPO_ROOT / "scripts" / "extract_ollama_types.py"
RERUN_HINT = (
    "the installed ollama SDK ({version}) no longer matches references/ollama-types/ "
    "(stored from {stored}); rerun `python scripts/extract_ollama_types.py`, review the diff "
    "of the shapes, and update the gateway if a response shape changed"
)


def _load_extract_script():
    spec = importlib.util.spec_from_file_location("extract_ollama_types", EXTRACT_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


extract = _load_extract_script()


def _stored_version() -> str:
    return (TYPES_DIR / "VERSION").read_text(encoding="utf-8").strip()


@lru_cache(maxsize=None)
def _validator(type_name: str) -> jsonschema.protocols.Validator:
    schema = json.loads((TYPES_DIR / f"{type_name}.json").read_text(encoding="utf-8"))
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    cls.check_schema(schema)
    # FORMAT_CHECKER checks "date-time" (RFC 3339, via rfc3339-validator) for modified_at/expires_at.
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def assert_ollama_shape(type_name: str, obj: dict) -> None:
    """Fail unless ``obj`` is a valid ollama-python ``type_name`` (e.g. "ChatResponse").

    Checks the stored JSON schema (references/ollama-types/<type_name>.json, with date-time
    formats enforced) and the live SDK class ``ollama.<type_name>.model_validate``.
    """
    errors = sorted(_validator(type_name).iter_errors(obj), key=lambda e: list(e.absolute_path))
    if errors:
        detail = "\n".join(
            f"  at {'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors
        )
        pytest.fail(f"{type_name} JSON schema rejects the object:\n{detail}\nobject: {json.dumps(obj)[:2000]}")
    try:
        getattr(ollama, type_name).model_validate(obj)
    except Exception as exc:  # pydantic.ValidationError
        pytest.fail(f"ollama.{type_name}.model_validate rejects the object:\n{exc}")


# --- the stored schemas are the installed SDK's ---------------------------------------


def test_date_time_format_is_enforced():
    """jsonschema only checks "date-time" when rfc3339-validator is installed; without it a bad
    modified_at/expires_at would pass the schema half of assert_ollama_shape silently."""
    checker = jsonschema.Draft202012Validator.FORMAT_CHECKER
    assert "date-time" in checker.checkers, "pip install rfc3339-validator (needed by jsonschema's date-time check)"
    assert not checker.conforms("yesterday", "date-time")
    assert checker.conforms("2026-11-25T16:58:01.512377311Z", "date-time")


def test_all_response_types_exist_in_sdk():
    assert extract.available_types() == extract.RESPONSE_TYPES


@pytest.mark.parametrize("type_name", extract.RESPONSE_TYPES)
def test_stored_schema_matches_installed_sdk(type_name):
    path = TYPES_DIR / f"{type_name}.json"
    hint = RERUN_HINT.format(version=extract.sdk_version(), stored=_stored_version())
    assert path.exists(), f"{path} is missing: {hint}"
    stored = json.loads(path.read_text(encoding="utf-8"))
    current = json.loads(json.dumps(extract.schema_for(type_name)))
    assert stored == current, f"{type_name} changed: {hint}"


def test_stored_version_matches_installed_sdk():
    installed = importlib.metadata.version("ollama")
    if installed != _stored_version():
        # Shapes are equal (the test above passes) but the VERSION file is stale.
        warnings.warn(RERUN_HINT.format(version=installed, stored=_stored_version()), stacklevel=1)


def test_stored_files_have_no_strays():
    stored = {p.stem for p in TYPES_DIR.glob("*.json")}
    assert stored == set(extract.RESPONSE_TYPES)


# --- examples from shared/reference/ollama-api.md --------------------------------------

DETAILS = {
    "parent_model": "",
    "format": "gguf",
    "family": "qwen3",
    "families": ["qwen3"],
    "parameter_size": "32B",
    "quantization_level": "unknown",
}

# §7.2 streaming: last (final) chunk
CHAT_FINAL_CHUNK = {
    "model": "qwen3:latest",
    "created_at": "2026-11-25T17:03:12.55391Z",
    "message": {"role": "assistant", "content": ""},
    "done": True,
    "done_reason": "stop",
    "total_duration": 1834120411,
    "load_duration": 2110033,
    "prompt_eval_count": 182,
    "prompt_eval_duration": 301552000,
    "eval_count": 41,
    "eval_duration": 1520301000,
}

# §7.2 streaming: thinking chunk and tool-call chunk
CHAT_THINKING_CHUNK = {
    "model": "qwen3:latest",
    "created_at": "2026-11-25T17:03:12.104593Z",
    "message": {"role": "assistant", "content": "", "thinking": "The user wants"},
    "done": False,
}
CHAT_TOOL_CALL_CHUNK = {
    "model": "qwen3:latest",
    "created_at": "2026-11-25T17:03:12.52Z",
    "message": {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {"id": "call_k3x9q2mw", "function": {"index": 0, "name": "get_weather", "arguments": {"city": "Oslo"}}}
        ],
    },
    "done": False,
}

# §7.3 non-streaming response
CHAT_NON_STREAMING = {
    **CHAT_FINAL_CHUNK,
    "message": {
        "role": "assistant",
        "content": "",
        "thinking": "The user wants the weather.",
        "tool_calls": CHAT_TOOL_CALL_CHUNK["message"]["tool_calls"],
    },
}

# §8.2 generate: a streamed chunk and the final chunk
GENERATE_CHUNK = {"model": "qwen3:latest", "created_at": "2026-11-25T17:05:00.1Z", "response": "It is", "done": False}
GENERATE_FINAL_CHUNK = {
    "model": "qwen3:latest",
    "created_at": "2026-11-25T17:05:00.13Z",
    "response": "",
    "done": True,
    "done_reason": "stop",
    "context": [1, 2, 3],
    "total_duration": 1834120411,
    "load_duration": 2110033,
    "prompt_eval_count": 182,
    "prompt_eval_duration": 301552000,
    "eval_count": 41,
    "eval_duration": 1520301000,
}

# §4 /api/tags
TAGS = {
    "models": [
        {
            "name": "openai/gpt-4o-mini:latest",
            "model": "openai/gpt-4o-mini:latest",
            "modified_at": "2026-11-25T16:58:01.512377311Z",
            "size": 0,
            "digest": "3f1c5b0c9e6a4d2f8b7e1a0c5d9f2b6e4a8c1d3f5e7b9a0c2d4f6e8a1b3c5d7e",
            "details": {
                "parent_model": "",
                "format": "gguf",
                "family": "gpt",
                "families": ["gpt"],
                "parameter_size": "unknown",
                "quantization_level": "unknown",
                "context_length": 128000,
            },
            "capabilities": ["completion", "tools", "vision"],
        }
    ]
}

# §5 /api/show
SHOW = {
    "modelfile": (
        '# Modelfile generated by "ollama show"\n# To build a new Modelfile based on this, replace FROM with:\n'
        "# FROM qwen3:latest\n\nFROM qwen3:latest\nPARAMETER num_ctx 131072\n"
    ),
    "parameters": "num_ctx                        131072",
    "template": "{{- if .System }}{{ .System }}\n{{ end }}{{- if .Tools }}{{ .Tools }}\n{{ end }}{{ .Prompt }}",
    "details": DETAILS,
    "model_info": {
        "general.architecture": "qwen3",
        "general.basename": "qwen3",
        "qwen3.context_length": 131072,
    },
    "capabilities": ["completion", "tools", "thinking"],
    "modified_at": "2026-11-25T16:58:01.512377311Z",
}

# §6 /api/ps (the doc elides the digest; a real 64-hex one here)
PS = {
    "models": [
        {
            "name": "qwen3:latest",
            "model": "qwen3:latest",
            "size": 0,
            "digest": "9b2c1f0e8d7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c",
            "details": DETAILS,
            "expires_at": "2026-11-25T17:08:12.104593Z",
            "size_vram": 0,
            "context_length": 131072,
        }
    ]
}

# §9 /api/embed and §10 /api/embeddings
EMBED = {
    "model": "nomic-embed-text:latest",
    "embeddings": [[0.010071029, -0.0017594862, 0.05007221]],
    "total_duration": 14143917,
    "load_duration": 1019500,
    "prompt_eval_count": 8,
}
EMBEDDINGS = {"embedding": [0.5670403838157654, -0.1234, 0.0]}

# §12 management endpoints
PULL_PROGRESS = {"status": "pulling 6a0746a1ec1a", "digest": "sha256:" + "ab" * 32, "total": 100, "completed": 40}
STATUS_SUCCESS = {"status": "success"}

EXAMPLES = [
    ("ChatResponse", "chat_final_chunk", CHAT_FINAL_CHUNK),
    ("ChatResponse", "chat_thinking_chunk", CHAT_THINKING_CHUNK),
    ("ChatResponse", "chat_tool_call_chunk", CHAT_TOOL_CALL_CHUNK),
    ("ChatResponse", "chat_non_streaming", CHAT_NON_STREAMING),
    ("GenerateResponse", "generate_chunk", GENERATE_CHUNK),
    ("GenerateResponse", "generate_final_chunk", GENERATE_FINAL_CHUNK),
    ("ListResponse", "tags", TAGS),
    ("ListResponse", "tags_empty", {"models": []}),
    ("ShowResponse", "show", SHOW),
    ("ShowResponse", "show_empty_model_info", {**SHOW, "model_info": {}}),
    ("ProcessResponse", "ps", PS),
    ("ProcessResponse", "ps_empty", {"models": []}),
    ("EmbedResponse", "embed", EMBED),
    ("EmbedResponse", "embed_empty", {"model": "nomic-embed-text:latest", "embeddings": []}),
    ("EmbeddingsResponse", "embeddings", EMBEDDINGS),
    ("ProgressResponse", "pull_progress", PULL_PROGRESS),
    ("StatusResponse", "status_success", STATUS_SUCCESS),
]


@pytest.mark.parametrize(("type_name", "obj"), [(t, o) for t, _, o in EXAMPLES], ids=[i for _, i, _ in EXAMPLES])
def test_documented_examples_are_valid(type_name, obj):
    assert_ollama_shape(type_name, obj)


# --- the helper really rejects what the SDK rejects (ollama-api.md §14) -----------------


def _without(obj: dict, key: str) -> dict:
    out = copy.deepcopy(obj)
    del out[key]
    return out


def _tool_args_as_string() -> dict:
    out = copy.deepcopy(CHAT_TOOL_CALL_CHUNK)
    out["message"]["tool_calls"][0]["function"]["arguments"] = '{"city": "Oslo"}'
    return out


BAD_EXAMPLES = [
    ("ShowResponse", "show_without_model_info", _without(SHOW, "model_info")),
    ("ShowResponse", "show_bad_modified_at", {**SHOW, "modified_at": "yesterday"}),
    ("ChatResponse", "chat_without_message", _without(CHAT_FINAL_CHUNK, "message")),
    ("ChatResponse", "chat_tool_arguments_string", _tool_args_as_string()),
    ("ChatResponse", "chat_fractional_duration", {**CHAT_FINAL_CHUNK, "eval_duration": 1.5}),
    ("ListResponse", "tags_without_models", {}),
    ("ProcessResponse", "ps_without_models", {}),
    ("EmbedResponse", "embed_without_embeddings", _without(EMBED, "embeddings")),
    ("EmbeddingsResponse", "embeddings_without_embedding", {}),
]


@pytest.mark.parametrize(("type_name", "obj"), [(t, o) for t, _, o in BAD_EXAMPLES], ids=[i for _, i, _ in BAD_EXAMPLES])
def test_helper_rejects_invalid_shapes(type_name, obj):
    with pytest.raises(pytest.fail.Exception):
        assert_ollama_shape(type_name, obj)


@pytest.mark.parametrize(("type_name", "obj"), [(t, o) for t, _, o in BAD_EXAMPLES], ids=[i for _, i, _ in BAD_EXAMPLES])
def test_schema_and_sdk_agree_on_invalid_shapes(type_name, obj):
    """Both halves of the helper reject each bad example (neither is a no-op)."""
    assert list(_validator(type_name).iter_errors(obj)), "JSON schema accepted it"
    with pytest.raises(Exception):
        getattr(ollama, type_name).model_validate(obj)
