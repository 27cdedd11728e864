"""Record what an OpenAI-compatible server really sends, as replayable fixtures.

For each feature (chat, streaming, tools, reasoning, JSON output, embeddings, models,
errors) this script sends one request through the ``openai`` SDK's typed method
(``client.chat.completions.create(...)``, ``client.embeddings.create(...)``,
``client.models.list()``; fields the SDK does not define, such as a provider's reasoning switch,
as its ``extra_body``) and writes the body the SDK sent and the exact response (status,
content-type / retry-after headers, and the raw body, read unparsed through
``with_streaming_response``) to ``references/openai-examples/<provider>/<feature>.json``:

    {
      "source": "recorded from <server> by scripts/collect_examples.py on YYYY-MM-DD",
      "feature": "chat_stream",
      "request": {"method": "POST", "path": "/v1/chat/completions", "json": {...}},
      "response": {"status": 200, "headers": {"content-type": "text/event-stream"},
                   "body_text": "data: {...}\\n\\ndata: [DONE]\\n\\n"}
    }

Features: chat, chat_stream, tools, tools_stream, parallel_tools_stream, reasoning,
reasoning_stream, json_mode, json_schema, embeddings, models, error_unknown_model,
error_bad_request, error_bad_key; optionally (``--with-optional`` or ``--only``)
error_context_length and error_context_length_stream, which need a prompt longer than the
model's context window (``--context-overflow-words``).

JSON responses are stored parsed under ``"body"``; SSE and other bodies verbatim under
``"body_text"``.  ``path`` is the URL path on the server (base URL path included).  The
gateway's tests replay these files from a loopback HTTP server.  A feature the server does
not support is recorded anyway (whatever it answered), and a summary table is printed.
The API key is sent only in the Authorization header and never written to a file (without a
key, the placeholder ``unused`` is sent, as the SDK always sends one).

Refreshing fixtures from a real provider (a maintainer with a key)
-------------------------------------------------------------------
Put the key in the environment (never on the command line, where it lands in shell
history), then run from the repository root with the project venv:

    export COLLECT_API_KEY=sk-...            # the provider's key
    python scripts/collect_examples.py --provider openai \\
        --base-url https://api.openai.com/v1 \\
        --chat-model gpt-4o-mini --embed-model text-embedding-3-small

    # a reasoning model, with the provider's own switch in --reasoning-extra:
    python scripts/collect_examples.py --provider openrouter \\
        --base-url https://openrouter.ai/api/v1 --chat-model openai/gpt-4o-mini \\
        --reasoning-model deepseek/deepseek-r1 --reasoning-extra '{"reasoning": {"enabled": true}}' \\
        --only reasoning reasoning_stream

    # OpenAI reasoning models want max_completion_tokens (the reasoning features send no temperature):
    python scripts/collect_examples.py --provider openai --base-url https://api.openai.com/v1 \\
        --chat-model gpt-4o-mini --reasoning-model o4-mini \\
        --max-tokens-param max_completion_tokens --only reasoning reasoning_stream

Review the diff before committing: recorded bodies contain whatever the provider sent
(ids, fingerprints), never the key.  Hand-made files in the same folder (e.g. the
documented ``error_rate_limit``) are left alone unless their feature is collected.

The local llama-cpp-python server (see shared/tools/README.md) is recorded with:

    COLLECT_API_KEY=test-key python scripts/collect_examples.py --provider llama-cpp-python \\
        --base-url http://127.0.0.1:8080/v1 --chat-model tiny-chat --embed-model tiny-embed \\
        --reasoning-max-tokens 24 --with-optional \\
        --server-desc "llama-cpp-python X.Y.Z server (tiny-chat.gguf and tiny-embed.gguf from shared/tools/make_tiny_gguf.py)"
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

import openai
from openai.types import EmbeddingCreateParams
from openai.types.chat.completion_create_params import CompletionCreateParamsStreaming

REPO_ROOT = Path(__file__).resolve().parent.parent
KEPT_HEADERS = ("content-type", "retry-after")
BAD_KEY = "sk-collector-deliberately-invalid-key"
UNKNOWN_MODEL = "no-such-model-collector-404"

FEATURES = [
    "chat",
    "chat_stream",
    "tools",
    "tools_stream",
    "parallel_tools_stream",
    "reasoning",
    "reasoning_stream",
    "json_mode",
    "json_schema",
    "embeddings",
    "models",
    "error_unknown_model",
    "error_bad_request",
    "error_bad_key",
]

# Not collected by default (a real provider needs a prompt of its whole context window, i.e. a
# large paid request): name them in --only, or add them with --with-optional.
OPTIONAL_FEATURES = [
    "error_context_length",
    "error_context_length_stream",
]

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {
                # enums keep the tool call short and valid even for a grammar-constrained
                # random-weight model
                "city": {"type": "string", "enum": ["Oslo", "Paris", "Tokyo"], "description": "City name"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}

WEATHER_SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "enum": ["Oslo", "Paris", "Tokyo"]},
        "sunny": {"type": "boolean"},
    },
    "required": ["city", "sunny"],
    "additionalProperties": False,
}

EMBED_INPUTS = ["The sky is blue.", "Grass is green.", "Ollama Gateway fixtures."]

# The fields of the SDK's request types: the rest of a body goes as `extra_body`.
CHAT_FIELDS = CompletionCreateParamsStreaming.__required_keys__ | CompletionCreateParamsStreaming.__optional_keys__
EMBEDDING_FIELDS = EmbeddingCreateParams.__required_keys__ | EmbeddingCreateParams.__optional_keys__


# --------------------------------------------------------------------------- requests


@dataclass
class Spec:
    """One feature: the request to send and what to expect back."""

    feature: str
    method: str
    endpoint: str  # relative to the base URL, e.g. "/chat/completions"
    body: dict | None
    expect_status: int
    check: Callable[["Recorded"], tuple[bool, str]]
    api_key: str | None = None  # override (error_bad_key)
    stream: bool = False


@dataclass
class Recorded:
    status: int
    headers: dict[str, str]
    text: str
    json_body: Any = None
    is_json: bool = False
    is_sse: bool = False
    events: list[Any] = field(default_factory=list)  # parsed SSE data payloads (not [DONE])
    comments: int = 0
    done_marker: bool = False
    sent: Any = None  # the JSON body the SDK sent


def build_specs(args: argparse.Namespace) -> dict[str, Spec]:
    mt = {args.max_tokens_param: args.max_tokens}
    mt_reason = {args.max_tokens_param: args.reasoning_max_tokens}
    mt_tools = {args.max_tokens_param: args.tools_max_tokens}
    mt_json = {args.max_tokens_param: args.json_max_tokens}
    sampling = {} if args.no_temperature else {"temperature": 0}
    include_usage = {"stream_options": {"include_usage": True}}
    reasoning_model = args.reasoning_model or args.chat_model
    reasoning_extra = json.loads(args.reasoning_extra) if args.reasoning_extra else {"reasoning_effort": "low"}
    tool_choice_forced = {"type": "function", "function": {"name": "get_weather"}}
    embed_dims = {"dimensions": args.embed_dimensions} if args.embed_dimensions else {}

    def chat(messages: list[dict], cap: dict | None = None, **extra: Any) -> dict:
        return {"model": args.chat_model, "messages": messages, **(cap or mt), **sampling, **extra}

    hello = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Say hello in one short sentence."},
    ]
    weather = [{"role": "user", "content": "What is the weather in Oslo? Use the get_weather tool."}]
    weather2 = [
        {
            "role": "user",
            "content": "What is the weather in Oslo and in Paris? Call get_weather once for each city, in parallel.",
        }
    ]
    overflow = [{"role": "user", "content": " ".join(["water"] * args.context_overflow_words)}]
    reasoning_msgs = [{"role": "user", "content": "Is 17 a prime number? Think it through, then answer yes or no."}]
    json_msgs = [
        {"role": "system", "content": "Reply with a JSON object only."},
        {"role": "user", "content": 'Give the weather in Oslo as JSON with keys "city" and "sunny".'},
    ]

    specs = [
        Spec("chat", "POST", "/chat/completions", chat(hello), 200, check_chat),
        Spec("chat_stream", "POST", "/chat/completions", chat(hello, stream=True, **include_usage), 200,
             check_chat_stream, stream=True),
        Spec("tools", "POST", "/chat/completions", chat(weather, mt_tools, tools=[WEATHER_TOOL], tool_choice=tool_choice_forced),
             200, check_tools),
        Spec("tools_stream", "POST", "/chat/completions",
             chat(weather, mt_tools, tools=[WEATHER_TOOL], tool_choice=tool_choice_forced, stream=True,
                  **include_usage),
             200, check_tools_stream, stream=True),
        Spec("parallel_tools_stream", "POST", "/chat/completions",
             chat(weather2, mt_tools, tools=[WEATHER_TOOL], tool_choice="required", parallel_tool_calls=True, stream=True,
                  **include_usage),
             200, check_parallel_tools_stream, stream=True),
        Spec("reasoning", "POST", "/chat/completions",
             {"model": reasoning_model, "messages": reasoning_msgs, **mt_reason, **reasoning_extra},
             200, check_reasoning),
        Spec("reasoning_stream", "POST", "/chat/completions",
             {"model": reasoning_model, "messages": reasoning_msgs, **mt_reason, **reasoning_extra, "stream": True,
              **include_usage},
             200, check_reasoning_stream, stream=True),
        Spec("json_mode", "POST", "/chat/completions",
             chat(json_msgs, mt_json, response_format={"type": "json_object"}),
             200, check_json_mode),
        Spec("json_schema", "POST", "/chat/completions",
             chat(json_msgs, mt_json, response_format={
                 "type": "json_schema",
                 "json_schema": {"name": "weather", "schema": WEATHER_SCHEMA, "strict": True},
             }),
             200, check_json_schema),
        Spec("embeddings", "POST", "/embeddings",
             {"model": args.embed_model, "input": EMBED_INPUTS, "encoding_format": "float", **embed_dims},
             200, check_embeddings),
        Spec("models", "GET", "/models", None, 200, check_models),
        Spec("error_unknown_model", "POST", "/chat/completions",
             {"model": UNKNOWN_MODEL, "messages": hello, **mt}, 404, check_error),
        Spec("error_bad_request", "POST", "/chat/completions",
             chat([{"role": "wizard", "content": "Say hello."}]), 400, check_error),
        Spec("error_bad_key", "POST", "/chat/completions", chat(hello), 401, check_error, api_key=BAD_KEY),
        Spec("error_context_length", "POST", "/chat/completions", chat(overflow), 400, check_error),
        Spec("error_context_length_stream", "POST", "/chat/completions",
             chat(overflow, stream=True, **include_usage), 400, check_error_stream, stream=True),
    ]
    return {s.feature: s for s in specs}


# --------------------------------------------------------------------------- recording


def parse_sse(text: str) -> tuple[list[Any], int, bool]:
    """Return (data payloads parsed as JSON where possible, comment-line count, saw [DONE])."""
    events: list[Any] = []
    comments = 0
    done = False
    data_lines: list[str] = []

    def flush() -> None:
        nonlocal done
        if not data_lines:
            return
        data = "\n".join(data_lines)
        data_lines.clear()
        if data.strip() == "[DONE]":
            done = True
            return
        try:
            events.append(json.loads(data))
        except json.JSONDecodeError:
            events.append(data)

    for line in text.replace("\r\n", "\n").split("\n"):
        if line == "":
            flush()
        elif line.startswith(":"):
            comments += 1
        elif line.startswith("data:"):
            data_lines.append(line[5:].removeprefix(" "))
    flush()
    return events, comments, done


def typed_call(client: openai.OpenAI, spec: Spec) -> AbstractContextManager[Any]:
    """The SDK's typed method for the spec, as a raw streamed response (read whole, unparsed)."""
    if spec.endpoint == "/models":
        return client.models.with_streaming_response.list()
    assert spec.body is not None
    fields = CHAT_FIELDS if spec.endpoint == "/chat/completions" else EMBEDDING_FIELDS
    params = {key: value for key, value in spec.body.items() if key in fields}
    extra = {key: value for key, value in spec.body.items() if key not in fields} or None
    if spec.endpoint == "/chat/completions":
        return client.chat.completions.with_streaming_response.create(**params, extra_body=extra)
    return client.embeddings.with_streaming_response.create(**params, extra_body=extra)


def send(client: openai.OpenAI, spec: Spec) -> Recorded:
    if spec.api_key is not None:
        client = client.with_options(api_key=spec.api_key)
    try:
        with typed_call(client, spec) as response:
            raw, status, headers, request = response.read(), response.status_code, response.headers, response.http_request
    except openai.APIStatusError as exc:  # a 4xx or 5xx: the SDK raises, its response read whole
        raw, status, headers, request = exc.response.content, exc.status_code, exc.response.headers, exc.request
    text = raw.decode("utf-8", errors="replace")
    kept = {k: headers[k] for k in KEPT_HEADERS if k in headers}
    ctype = kept.get("content-type", "").lower()
    rec = Recorded(status=status, headers=kept, text=text, sent=json.loads(request.content) if request.content else None)
    if "text/event-stream" in ctype:
        rec.is_sse = True
        rec.events, rec.comments, rec.done_marker = parse_sse(text)
    elif "json" in ctype:
        try:
            rec.json_body = json.loads(text)
            rec.is_json = True
        except json.JSONDecodeError:
            pass
    return rec


def fixture(spec: Spec, rec: Recorded, source: str, path_prefix: str) -> dict:
    response: dict[str, Any] = {"status": rec.status, "headers": rec.headers}
    if rec.is_json:
        response["body"] = rec.json_body
    else:
        response["body_text"] = rec.text
    request: dict[str, Any] = {"method": spec.method, "path": path_prefix + spec.endpoint}
    if rec.sent is not None:
        request["json"] = rec.sent
    return {"source": source, "feature": spec.feature, "request": request, "response": response}


def redact(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        if secret and len(secret) >= 4 and secret in text:
            text = text.replace(secret, "<redacted>")
    return text


# --------------------------------------------------------------------------- checks
# Each returns (supported, note) for the summary table.


def _choice0(body: Any) -> dict:
    try:
        return body["choices"][0] or {}
    except (KeyError, IndexError, TypeError):
        return {}


def _stream_stats(rec: Recorded) -> tuple[list[dict], str]:
    chunks = [e for e in rec.events if isinstance(e, dict)]
    usage = [c for c in chunks if c.get("usage")]
    empty = [c for c in chunks if c.get("choices") == []]
    errors = [c for c in chunks if "error" in c]
    finish = [ch.get("finish_reason") for c in chunks for ch in c.get("choices") or [] if ch.get("finish_reason")]
    parts = [f"{len(chunks)} chunks"]
    parts.append(f"usage on {len(usage)}" + (f" (choices==[] on {len(empty)})" if empty else ""))
    parts.append("finish=" + (",".join(finish) or "none"))
    if not rec.done_marker:
        parts.append("no [DONE]")
    if rec.comments:
        parts.append(f"{rec.comments} comment lines")
    if errors:
        parts.append(f"{len(errors)} error events")
    return chunks, "; ".join(parts)


def _deltas(chunks: list[dict]) -> list[dict]:
    return [ch.get("delta") or {} for c in chunks for ch in c.get("choices") or []]


def check_chat(rec: Recorded) -> tuple[bool, str]:
    msg = _choice0(rec.json_body).get("message") or {}
    usage = (rec.json_body or {}).get("usage") if rec.is_json else None
    ok = rec.status == 200 and "content" in msg
    return ok, f"finish={_choice0(rec.json_body).get('finish_reason')}; usage={'yes' if usage else 'no'}"


def check_chat_stream(rec: Recorded) -> tuple[bool, str]:
    if not rec.is_sse:
        return False, "not SSE"
    chunks, note = _stream_stats(rec)
    return rec.status == 200 and bool(chunks), note


def _args_note(args_by_call: list[str]) -> str:
    notes = []
    for a in args_by_call:
        try:
            json.loads(a or "{}")
            notes.append("valid")
        except json.JSONDecodeError:
            notes.append("INVALID")
    return "args " + ",".join(notes) if notes else "no args"


def check_tools(rec: Recorded) -> tuple[bool, str]:
    msg = _choice0(rec.json_body).get("message") or {}
    calls = msg.get("tool_calls") or []
    names = [((c.get("function") or {}).get("name")) for c in calls]
    args = [((c.get("function") or {}).get("arguments")) or "" for c in calls]
    return bool(calls), (f"{len(calls)} tool_calls {names}, {_args_note(args)}; "
                         f"finish={_choice0(rec.json_body).get('finish_reason')}")


def _tool_deltas(rec: Recorded) -> tuple[list[dict], str]:
    chunks, note = _stream_stats(rec)
    tds = [tc for d in _deltas(chunks) for tc in d.get("tool_calls") or []]
    return tds, note


def _assembled_args(tds: list[dict]) -> list[str]:
    slots: dict[Any, str] = {}
    for t in tds:
        key = t.get("index", t.get("id"))
        slots[key] = slots.get(key, "") + ((t.get("function") or {}).get("arguments") or "")
    return list(slots.values())


def check_tools_stream(rec: Recorded) -> tuple[bool, str]:
    if not rec.is_sse:
        return False, "not SSE"
    tds, note = _tool_deltas(rec)
    with_id = sum(1 for t in tds if t.get("id"))
    return bool(tds), f"{len(tds)} tool_call deltas ({with_id} with id), {_args_note(_assembled_args(tds))}; {note}"


def check_parallel_tools_stream(rec: Recorded) -> tuple[bool, str]:
    if not rec.is_sse:
        return False, "not SSE"
    tds, note = _tool_deltas(rec)
    indices = sorted({t.get("index") for t in tds if t.get("index") is not None})
    ids = {t.get("id") for t in tds if t.get("id")}
    return len(indices) >= 2 or len(ids) >= 2, f"indices={indices} ids={len(ids)}; {note}"


REASONING_FIELDS = ("reasoning_content", "reasoning", "reasoning_details")


def _reasoning_in(obj: dict) -> list[str]:
    found = [f for f in REASONING_FIELDS if obj.get(f)]
    if "<think>" in (obj.get("content") or "") or "</think>" in (obj.get("content") or ""):
        found.append("<think> in content")
    return found


def check_reasoning(rec: Recorded) -> tuple[bool, str]:
    msg = _choice0(rec.json_body).get("message") or {}
    found = _reasoning_in(msg)
    usage = (rec.json_body or {}).get("usage") or {} if rec.is_json else {}
    rt = (usage.get("completion_tokens_details") or {}).get("reasoning_tokens")
    note = f"reasoning via {found or 'nothing'}"
    if rt is not None:
        note += f"; reasoning_tokens={rt}"
    return rec.status == 200 and bool(found or rt), note


def check_reasoning_stream(rec: Recorded) -> tuple[bool, str]:
    if not rec.is_sse:
        return False, "not SSE"
    chunks, note = _stream_stats(rec)
    found = sorted({f for d in _deltas(chunks) for f in _reasoning_in(d)})
    return bool(found), f"reasoning via {found or 'nothing'}; {note}"


def _content_json(rec: Recorded) -> tuple[Any, str]:
    content = (_choice0(rec.json_body).get("message") or {}).get("content")
    try:
        return json.loads(content or ""), "valid JSON"
    except (json.JSONDecodeError, TypeError):
        return None, f"content not JSON (finish={_choice0(rec.json_body).get('finish_reason')})"


def check_json_mode(rec: Recorded) -> tuple[bool, str]:
    if rec.status != 200:
        return False, ""
    value, note = _content_json(rec)
    return isinstance(value, dict), note


def check_json_schema(rec: Recorded) -> tuple[bool, str]:
    if rec.status != 200:
        return False, ""
    value, note = _content_json(rec)
    ok = isinstance(value, dict) and set(value) == set(WEATHER_SCHEMA["required"])
    return ok, note + ("" if ok or value is None else f"; keys {sorted(value) if isinstance(value, dict) else type(value).__name__}")


def check_embeddings(rec: Recorded) -> tuple[bool, str]:
    data = (rec.json_body or {}).get("data") if rec.is_json and isinstance(rec.json_body, dict) else None
    if not data:
        return False, ""
    dims = {len(d.get("embedding") or []) for d in data}
    order = [d.get("index") for d in data]
    return len(data) == len(EMBED_INPUTS), f"{len(data)} vectors, dims {sorted(dims)}, index order {order}"


def check_models(rec: Recorded) -> tuple[bool, str]:
    data = (rec.json_body or {}).get("data") if rec.is_json and isinstance(rec.json_body, dict) else None
    if data is None:
        return False, ""
    return True, "ids " + ", ".join(str(m.get("id")) for m in data[:6]) + (" ..." if len(data) > 6 else "")


def check_error_stream(rec: Recorded) -> tuple[bool, str]:
    """An error that may come as a status, as an SSE error event, or as an empty 200 stream."""
    if rec.status >= 400:
        return check_error(rec)
    chunks, note = _stream_stats(rec)
    errors = [c for c in chunks if "error" in c]
    if errors:
        return True, f"SSE error event: {json.dumps(errors[0].get('error'))[:60]!r}; {note}"
    if not rec.text.strip():
        return False, "200 with an EMPTY body (no chunks, no [DONE])"
    return False, note


def check_error(rec: Recorded) -> tuple[bool, str]:
    body = rec.json_body if rec.is_json else None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        err = body["error"]
        shape = "error{" + ",".join(err) + "}"
        msg = str(err.get("message", ""))[:60]
    elif isinstance(body, dict):
        shape = "{" + ",".join(body) + "}"
        msg = json.dumps(body)[:60]
    else:
        shape = rec.headers.get("content-type", "?")
        msg = rec.text[:60]
    return rec.status >= 400, f"{shape}: {msg!r}"


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Record OpenAI-compatible responses as replayable fixtures.",
        epilog="Features: " + " ".join(FEATURES) + ". Optional: " + " ".join(OPTIONAL_FEATURES) + ".",
    )
    p.add_argument("--base-url", default="http://127.0.0.1:8080/v1", help="OpenAI base URL incl. /v1 (default: %(default)s)")
    p.add_argument("--api-key", default=os.environ.get("COLLECT_API_KEY"),
                   help="API key (default: $COLLECT_API_KEY; prefer the env var)")
    p.add_argument("--provider", required=True, help="folder name under references/openai-examples/")
    p.add_argument("--chat-model", required=True)
    p.add_argument("--embed-model", help="embedding model (embeddings is skipped without it)")
    p.add_argument("--embed-dimensions", type=int,
                   help="send dimensions=N with embeddings (keeps OpenAI text-embedding-3 fixtures small)")
    p.add_argument("--reasoning-model", help="model for reasoning/reasoning_stream (default: the chat model)")
    p.add_argument("--reasoning-extra", metavar="JSON",
                   help='extra top-level request fields for the reasoning features '
                        '(default: {"reasoning_effort": "low"}), e.g. \'{"reasoning": {"enabled": true}}\'')
    p.add_argument("--out", type=Path, help="output folder (default: references/openai-examples/<provider>/)")
    p.add_argument("--only", nargs="+", choices=FEATURES + OPTIONAL_FEATURES, metavar="FEATURE",
                   help="collect only these features")
    p.add_argument("--with-optional", action="store_true",
                   help="also collect " + ", ".join(OPTIONAL_FEATURES))
    p.add_argument("--context-overflow-words", type=int, default=1500,
                   help="prompt length in words for error_context_length* (default: %(default)s; a real provider "
                        "needs more than its context window)")
    p.add_argument("--max-tokens", type=int, default=24, help="generation cap for chat and errors (default: %(default)s)")
    p.add_argument("--tools-max-tokens", type=int, default=64,
                   help="cap for tools/tools_stream/parallel_tools_stream (default: %(default)s)")
    p.add_argument("--json-max-tokens", type=int, default=64, help="cap for json_mode/json_schema (default: %(default)s)")
    p.add_argument("--reasoning-max-tokens", type=int, default=512, help="cap for reasoning (default: %(default)s)")
    p.add_argument("--max-tokens-param", choices=["max_tokens", "max_completion_tokens"], default="max_tokens")
    p.add_argument("--no-temperature", action="store_true", help="do not send temperature 0 (OpenAI reasoning models)")
    p.add_argument("--header", action="append", default=[], metavar="NAME:VALUE",
                   help="extra request header (not recorded), repeatable")
    p.add_argument("--server-desc", help='what was recorded, for "source" (default: "<provider> at <base-url>")')
    p.add_argument("--timeout", type=float, default=180.0)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out: Path = args.out or REPO_ROOT / "references" / "openai-examples" / args.provider
    out.mkdir(parents=True, exist_ok=True)
    extra_headers = {}
    for h in args.header:
        name, _, value = h.partition(":")
        extra_headers[name.strip()] = value.strip()
    secrets = [args.api_key or ""] + [v for v in extra_headers.values() if len(v) >= 16]

    path_prefix = urlsplit(args.base_url).path.rstrip("/")
    today = dt.datetime.now(dt.timezone.utc).date().isoformat()
    server = args.server_desc or f"{args.provider} at {args.base_url}"
    source = f"recorded from {server} by scripts/collect_examples.py on {today}"

    specs = build_specs(args)
    wanted = args.only or (FEATURES + OPTIONAL_FEATURES if args.with_optional else FEATURES)
    rows: list[tuple[str, str, str, str, str]] = []
    headers = {"Accept-Encoding": "identity", **extra_headers}
    with openai.OpenAI(base_url=args.base_url, api_key=args.api_key or "unused", default_headers=headers,
                       timeout=args.timeout, max_retries=0) as client:
        for feature in wanted:
            spec = specs[feature]
            if feature == "embeddings" and not args.embed_model:
                rows.append((feature, "-", str(spec.expect_status), "skipped", "no --embed-model"))
                continue
            try:
                rec = send(client, spec)
            except openai.APIError as exc:
                rows.append((feature, "-", str(spec.expect_status), "FAILED", f"{type(exc).__name__}: {exc}"))
                continue
            supported, note = spec.check(rec)
            if rec.status >= 400 and spec.expect_status < 400:
                note = check_error(rec)[1]
            if rec.status != spec.expect_status:
                verdict = "unexpected" if spec.expect_status >= 400 or rec.status == 200 else "unsupported"
            else:
                verdict = "ok" if supported else "unsupported"
            text = json.dumps(fixture(spec, rec, source, path_prefix), indent=2, ensure_ascii=False) + "\n"
            text = redact(text, secrets)
            (out / f"{feature}.json").write_text(text, encoding="utf-8")
            rows.append((feature, str(rec.status), str(spec.expect_status), verdict, note))

    print(f"\n{source}\nwritten to {out}\n")
    widths = [max(len(r[i]) for r in rows + [("feature", "got", "want", "verdict", "")]) for i in range(4)]
    header = ("feature", "got", "want", "verdict", "notes")
    for row in [header] + rows:
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:4])) + "  " + row[4])
    return 1 if any(r[3] == "FAILED" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
