"""Compose the documented-shape fixtures under references/openai-examples/{openai,openrouter,deepseek,groq}.

The files it writes are hand-made from the providers' documentation (each file's `source`
names the page), composed programmatically only so that ids, timestamps, token counts and SSE
framing are self-consistent. Rerun it after editing a shape: `python scripts/make_documented_examples.py`.
"""

import hashlib
import json
import math
import sys
from pathlib import Path

from collect_examples import EMBED_INPUTS, WEATHER_SCHEMA, WEATHER_TOOL

ROOT = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent) / "references" / "openai-examples"

HELLO = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Say hello in one short sentence."},
]
WEATHER = [{"role": "user", "content": "What is the weather in Oslo? Use the get_weather tool."}]
WEATHER2 = [{"role": "user", "content": "What is the weather in Oslo and in Paris? Call get_weather once for each city, in parallel."}]
REASON = [{"role": "user", "content": "Is 17 a prime number? Think it through, then answer yes or no."}]
JSON_MSGS = [
    {"role": "system", "content": "Reply with a JSON object only."},
    {"role": "user", "content": 'Give the weather in Oslo as JSON with keys "city" and "sunny".'},
]
# The same tool, schema and inputs the collector sends to a live server, so documented and
# recorded fixtures answer the same requests.
USAGE_ON = {"stream_options": {"include_usage": True}}


def compact(obj):
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def sse(events):
    out = []
    for ev in events:
        if isinstance(ev, tuple) and ev[0] == "comment":
            out.append(f": {ev[1]}\n\n")
        elif ev == "[DONE]":
            out.append("data: [DONE]\n\n")
        else:
            out.append(f"data: {compact(ev)}\n\n")
    return "".join(out)


def obf(seed: str, n: int = 6) -> str:
    """Deterministic stand-in for OpenAI's random `obfuscation` padding."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
    h = hashlib.sha256(seed.encode()).digest()
    return "".join(alphabet[b % len(alphabet)] for b in h[:n])


def write(provider, feature, source, method, path, req, status, headers, body=None, body_text=None):
    response = {"status": status, "headers": headers}
    if body_text is not None:
        response["body_text"] = body_text
    else:
        response["body"] = body
    request = {"method": method, "path": path}
    if req is not None:
        request["json"] = req
    doc = {"source": source, "feature": feature, "request": request, "response": response}
    out = ROOT / provider
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{feature}.json").write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def src(doc, composed):
    return f"documented shape: {doc}; {composed}"


# ============================================================================ OpenAI
OA_REF_CHAT = '"Create chat completion" / "The chat completion object" (https://platform.openai.com/docs/api-reference/chat/create)'
OA_REF_CHUNK = '"The chat completion chunk object" (https://platform.openai.com/docs/api-reference/chat-streaming/streaming) and "Streaming API responses" (https://platform.openai.com/docs/guides/streaming-responses)'
OA_FN = '"Function calling" (https://platform.openai.com/docs/guides/function-calling)'
OA_SO = '"Structured model outputs" (https://platform.openai.com/docs/guides/structured-outputs)'
OA_EMB = '"Create embeddings" (https://platform.openai.com/docs/api-reference/embeddings/create)'
OA_MODELS = '"List models" (https://platform.openai.com/docs/api-reference/models/list)'
OA_ERR = '"Error codes" (https://platform.openai.com/docs/guides/error-codes)'
OA_RL = '"Rate limits" (https://platform.openai.com/docs/guides/rate-limits)'

OA_MODEL_REQ = "gpt-4o-mini"
OA_MODEL = "gpt-4o-mini-2024-07-18"
OA_FP = "fp_560af6e559"
OA_JSON = {"content-type": "application/json"}
OA_SSE = {"content-type": "text/event-stream; charset=utf-8"}
OA_CREATED = 1764089520


def oa_usage(p, c, reasoning=0):
    return {
        "prompt_tokens": p,
        "completion_tokens": c,
        "total_tokens": p + c,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": reasoning,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def oa_completion(cid, created, message, finish, usage):
    return {
        "id": cid,
        "object": "chat.completion",
        "created": created,
        "model": OA_MODEL,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
        "usage": usage,
        "service_tier": "default",
        "system_fingerprint": OA_FP,
    }


class OAStream:
    def __init__(self, cid, created):
        self.cid, self.created, self.events = cid, created, []

    def chunk(self, delta=None, finish=None, usage=None, choices=True):
        n = len(self.events)
        ev = {
            "id": self.cid,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": OA_MODEL,
            "service_tier": "default",
            "system_fingerprint": OA_FP,
            "choices": [{"index": 0, "delta": delta or {}, "logprobs": None, "finish_reason": finish}] if choices else [],
            "usage": usage,
            "obfuscation": obf(f"{self.cid}:{n}", 4 + n % 7),
        }
        self.events.append(ev)

    def text(self):
        return sse(self.events + ["[DONE]"])


def openai():
    base = "/v1"
    # chat
    reply = "Hello! How can I help you today?"
    write("openai", "chat",
          src(OA_REF_CHAT, "all values composed (ids, fingerprint, text, token counts); field layout as in the reference's example response"),
          "POST", f"{base}/chat/completions",
          {"model": OA_MODEL_REQ, "messages": HELLO, "max_tokens": 24, "temperature": 0},
          200, OA_JSON,
          oa_completion("chatcmpl-Cq1ch4tD0c5RkzXyQ7aJbLm2VnW8e", OA_CREATED,
                        {"role": "assistant", "content": reply, "refusal": None, "annotations": []},
                        "stop", oa_usage(22, 9)))

    # chat_stream
    s = OAStream("chatcmpl-Cq1ciHnS3bXw9PqR2tYvK7mZa4LdE", OA_CREATED + 1)
    s.chunk({"role": "assistant", "content": "", "refusal": None})
    for tok in ["Hello", "!", " How", " can", " I", " help", " you", " today", "?"]:
        s.chunk({"content": tok})
    s.chunk({}, finish="stop")
    s.chunk(usage=oa_usage(22, 9), choices=False)
    write("openai", "chat_stream",
          src(OA_REF_CHUNK, "quoted rules: every chunk has the same id/created/model, `usage` is null on all chunks but the "
              "extra final chunk sent for stream_options.include_usage, whose `choices` is always []; `obfuscation` padding is on by "
              "default (stream_options.include_obfuscation). Composed: ids, fingerprint, text, token counts, obfuscation strings"),
          "POST", f"{base}/chat/completions",
          {"model": OA_MODEL_REQ, "messages": HELLO, "max_tokens": 24, "temperature": 0, "stream": True, **USAGE_ON},
          200, OA_SSE, body_text=s.text())

    # tools
    args = compact({"city": "Oslo", "unit": "celsius"})
    write("openai", "tools",
          src(OA_FN + " and " + OA_REF_CHAT,
              "assistant message with content null and tool_calls[{id,type:function,function:{name,arguments:<JSON string>}}], "
              "finish_reason tool_calls, as documented; ids and counts composed"),
          "POST", f"{base}/chat/completions",
          {"model": OA_MODEL_REQ, "messages": WEATHER, "max_tokens": 24, "temperature": 0, "tools": [WEATHER_TOOL]},
          200, OA_JSON,
          oa_completion("chatcmpl-Cq1cjR8uVb2NwQe5TyHk3LmPz9XaF", OA_CREATED + 2,
                        {"role": "assistant", "content": None,
                         "tool_calls": [{"id": "call_Kx3mQ9vTz2LpW8aRb5YdN1cE", "type": "function",
                                         "function": {"name": "get_weather", "arguments": args}}],
                         "refusal": None, "annotations": []},
                        "tool_calls", oa_usage(86, 18)))

    # tools_stream: arguments split into several fragments
    s = OAStream("chatcmpl-Cq1ckW4pXn7RtYb2QmVz8LcHs5DuG", OA_CREATED + 3)
    s.chunk({"role": "assistant", "content": None,
             "tool_calls": [{"index": 0, "id": "call_Vb7nR2qLx9TmZ4wPa6KdY3sH", "type": "function",
                             "function": {"name": "get_weather", "arguments": ""}}],
             "refusal": None})
    frags = ['{"', "city", '":"', "Oslo", '","', "unit", '":"', "c", "elsius", '"}']
    assert "".join(frags) == args
    for f in frags:
        s.chunk({"tool_calls": [{"index": 0, "function": {"arguments": f}}]})
    s.chunk({}, finish="tool_calls")
    s.chunk(usage=oa_usage(86, 18), choices=False)
    write("openai", "tools_stream",
          src(OA_FN + " (section \"Streaming\") and " + OA_REF_CHUNK,
              "quoted rule: the first tool-call delta carries index, id, type and function.name with arguments \"\", the "
              "following ones only index and an arguments fragment to be concatenated. Composed: fragment boundaries, ids, counts"),
          "POST", f"{base}/chat/completions",
          {"model": OA_MODEL_REQ, "messages": WEATHER, "max_tokens": 24, "temperature": 0, "tools": [WEATHER_TOOL],
           "stream": True, **USAGE_ON},
          200, OA_SSE, body_text=s.text())

    # parallel_tools_stream: two calls, fragments interleaved by index
    s = OAStream("chatcmpl-Cq1clB6yNc4WqXe8ZrTm2KvPa7JsH", OA_CREATED + 4)
    id0, id1 = "call_Pq4sW8mZx1RnT6bLc3VyK9dA", "call_Hn2kY7tQw5XpB9mRz4LcV8sJ"
    s.chunk({"role": "assistant", "content": None,
             "tool_calls": [{"index": 0, "id": id0, "type": "function", "function": {"name": "get_weather", "arguments": ""}}],
             "refusal": None})
    a0 = ['{"ci', 'ty":"Os', 'lo","unit', '":"celsius"}']
    a1 = ['{"city', '":"Paris', '","unit":"', 'celsius"}']
    s.chunk({"tool_calls": [{"index": 0, "function": {"arguments": a0[0]}}]})
    s.chunk({"tool_calls": [{"index": 1, "id": id1, "type": "function", "function": {"name": "get_weather", "arguments": ""}}]})
    s.chunk({"tool_calls": [{"index": 1, "function": {"arguments": a1[0]}}]})
    s.chunk({"tool_calls": [{"index": 0, "function": {"arguments": a0[1]}}]})
    s.chunk({"tool_calls": [{"index": 1, "function": {"arguments": a1[1]}}]})
    s.chunk({"tool_calls": [{"index": 0, "function": {"arguments": a0[2]}}]})
    s.chunk({"tool_calls": [{"index": 0, "function": {"arguments": a0[3]}}]})
    s.chunk({"tool_calls": [{"index": 1, "function": {"arguments": a1[2]}}]})
    s.chunk({"tool_calls": [{"index": 1, "function": {"arguments": a1[3]}}]})
    assert json.loads("".join(a0)) == {"city": "Oslo", "unit": "celsius"}
    assert json.loads("".join(a1)) == {"city": "Paris", "unit": "celsius"}
    s.chunk({}, finish="tool_calls")
    s.chunk(usage=oa_usage(98, 44), choices=False)
    write("openai", "parallel_tools_stream",
          src(OA_FN + " (sections \"Parallel function calling\" and \"Streaming\") and " + OA_REF_CHUNK,
              "documented: several tool calls in one turn, each streamed under its own `index`. Composed: the fragments of "
              "index 0 and 1 are deliberately interleaved (OpenAI usually sends one call after the other) so that an "
              "assembler keyed by index is exercised; ids, fragment boundaries and counts composed"),
          "POST", f"{base}/chat/completions",
          {"model": OA_MODEL_REQ, "messages": WEATHER2, "max_tokens": 64, "temperature": 0, "tools": [WEATHER_TOOL],
           "parallel_tool_calls": True, "stream": True, **USAGE_ON},
          200, OA_SSE, body_text=s.text())

    # json_mode
    write("openai", "json_mode",
          src('"JSON mode" in ' + OA_SO + " and " + OA_REF_CHAT,
              'response_format {"type":"json_object"} yields a JSON string in message.content (the prompt must mention JSON); '
              "content text, ids and counts composed"),
          "POST", f"{base}/chat/completions",
          {"model": OA_MODEL_REQ, "messages": JSON_MSGS, "max_tokens": 64, "temperature": 0,
           "response_format": {"type": "json_object"}},
          200, OA_JSON,
          oa_completion("chatcmpl-Cq1cmT9zLd5XrYf3AsUn6WbQk2MvJ", OA_CREATED + 5,
                        {"role": "assistant", "content": '{\n  "city": "Oslo",\n  "sunny": false\n}', "refusal": None,
                         "annotations": []},
                        "stop", oa_usage(38, 13)))

    # json_schema
    write("openai", "json_schema",
          src(OA_SO + " and " + OA_REF_CHAT,
              'response_format {"type":"json_schema","json_schema":{"name","schema","strict":true}} yields content that '
              "matches the schema, refusal null; content text, ids and counts composed"),
          "POST", f"{base}/chat/completions",
          {"model": OA_MODEL_REQ, "messages": JSON_MSGS, "max_tokens": 64, "temperature": 0,
           "response_format": {"type": "json_schema",
                               "json_schema": {"name": "weather", "schema": WEATHER_SCHEMA, "strict": True}}},
          200, OA_JSON,
          oa_completion("chatcmpl-Cq1cnY2aMe6YsZg4BtVo7XcRl3NwK", OA_CREATED + 6,
                        {"role": "assistant", "content": '{"city":"Oslo","sunny":false}', "refusal": None, "annotations": []},
                        "stop", oa_usage(97, 9)))

    # embeddings (documented order: data[i].index == i)
    def unit_vec(seed, n=8):
        h = hashlib.sha256(seed.encode()).digest()
        v = [(b - 127.5) / 127.5 for b in h[:n]]
        norm = math.sqrt(sum(x * x for x in v))
        return [round(x / norm, 9) for x in v]

    write("openai", "embeddings",
          src(OA_EMB + ' and "Vector embeddings" guide (https://platform.openai.com/docs/guides/embeddings)',
              '{"object":"list","data":[{"object":"embedding","index":i,"embedding":[…]}],"model","usage":{prompt_tokens,total_tokens}} '
              "in documented (input) order. Composed: vector values (deterministic unit vectors) and token counts; the request "
              "uses the documented `dimensions: 8` so the file stays small (1536 values per vector without it)"),
          "POST", f"{base}/embeddings",
          {"model": "text-embedding-3-small", "input": EMBED_INPUTS, "encoding_format": "float", "dimensions": 8},
          200, OA_JSON,
          {"object": "list",
           "data": [{"object": "embedding", "index": i, "embedding": unit_vec(t)} for i, t in enumerate(EMBED_INPUTS)],
           "model": "text-embedding-3-small",
           "usage": {"prompt_tokens": 14, "total_tokens": 14}})

    # models
    write("openai", "models",
          src(OA_MODELS, '{"object":"list","data":[{"id","object":"model","created","owned_by"}]} as documented; a composed '
              "subset of ids with plausible created timestamps"),
          "GET", f"{base}/models", None, 200, OA_JSON,
          {"object": "list", "data": [
              {"id": "gpt-4o-mini", "object": "model", "created": 1721172741, "owned_by": "system"},
              {"id": "gpt-4o-mini-2024-07-18", "object": "model", "created": 1721172717, "owned_by": "system"},
              {"id": "gpt-4o", "object": "model", "created": 1715367049, "owned_by": "system"},
              {"id": "o4-mini", "object": "model", "created": 1744225351, "owned_by": "system"},
              {"id": "text-embedding-3-small", "object": "model", "created": 1705948997, "owned_by": "system"},
          ]})

    # errors
    bad_model = "no-such-model-collector-404"
    write("openai", "error_unknown_model",
          src(OA_ERR + " and the error object of the API reference (https://platform.openai.com/docs/api-reference/introduction)",
              "body composed in the documented {error:{message,type,param,code}} form with the model_not_found message and code"),
          "POST", f"{base}/chat/completions",
          {"model": bad_model, "messages": HELLO, "max_tokens": 24},
          404, OA_JSON,
          {"error": {"message": f"The model `{bad_model}` does not exist or you do not have access to it.",
                     "type": "invalid_request_error", "param": None, "code": "model_not_found"}})
    write("openai", "error_bad_key",
          src(OA_ERR, '"401 - Incorrect API key provided" quoted from the guide; body composed in the {error:{message,type,param,'
              "code}} form with code invalid_api_key; the masked key is the collector's deliberately invalid test key, not a secret"),
          "POST", f"{base}/chat/completions",
          {"model": OA_MODEL_REQ, "messages": HELLO, "max_tokens": 24, "temperature": 0},
          401, OA_JSON,
          {"error": {"message": "Incorrect API key provided: sk-colle*****************************-key. You can find your "
                                "API key at https://platform.openai.com/account/api-keys.",
                     "type": "invalid_request_error", "param": None, "code": "invalid_api_key"}})
    write("openai", "error_rate_limit",
          src(OA_ERR + " and " + OA_RL,
              '"429 - Rate limit reached for requests" quoted from the guide; body composed in the {error:{message,type,param,code}} '
              "form with code rate_limit_exceeded and the guide's \"please try again in …\" wording; retry-after header composed "
              "(the openai SDK honours retry-after / retry-after-ms)"),
          "POST", f"{base}/chat/completions",
          {"model": OA_MODEL_REQ, "messages": HELLO, "max_tokens": 24, "temperature": 0},
          429, {"content-type": "application/json", "retry-after": "20"},
          {"error": {"message": "Rate limit reached for gpt-4o-mini in organization org-exampleorg0000000000000000 on requests "
                                "per min (RPM): Limit 3, Used 3, Requested 1. Please try again in 20s. Visit "
                                "https://platform.openai.com/account/rate-limits to learn more.",
                     "type": "requests", "param": None, "code": "rate_limit_exceeded"}})


# ============================================================================ reasoning text shared by the three providers
REASONING_TOKENS = ["Okay", ",", " the", " user", " asks", " whether", " 17", " is", " prime", ".", " Its", " only",
                    " divisors", " are", " 1", " and", " 17", ",", " so", " it", " is", " prime", "."]
ANSWER_TOKENS = ["Yes", ",", " 17", " is", " a", " prime", " number", "."]


# ============================================================================ OpenRouter
OR_REASONING = '"Reasoning Tokens" (https://openrouter.ai/docs/guides/best-practices/reasoning-tokens)'
OR_STREAM = '"API Streaming" (https://openrouter.ai/docs/api-reference/streaming)'
OR_ERRORS = '"Errors" (https://openrouter.ai/docs/api-reference/errors)'
OR_USAGE = '"Usage Accounting" (https://openrouter.ai/docs/use-cases/usage-accounting)'


class ORStream:
    def __init__(self, gid, created, model, provider):
        self.gid, self.created, self.model, self.provider, self.events = gid, created, model, provider, []

    def base(self):
        return {"id": self.gid, "provider": self.provider, "model": self.model, "object": "chat.completion.chunk",
                "created": self.created}

    def chunk(self, delta, finish=None, native=None, usage=None):
        ev = self.base()
        ev["choices"] = [{"index": 0, "delta": delta, "finish_reason": finish, "native_finish_reason": native,
                          "logprobs": None}]
        if usage is not None:
            ev["usage"] = usage
        self.events.append(ev)

    def comment(self):
        self.events.append(("comment", "OPENROUTER PROCESSING"))


def openrouter():
    base = "/api/v1"
    sse_h = {"content-type": "text/event-stream"}

    # reasoning_stream: reasoning + reasoning_details per delta, keep-alive comments
    s = ORStream("gen-1764089600-Xb3kQ9mRtZ2wLp7VnY4c", 1764089600, "deepseek/deepseek-r1", "DeepInfra")
    s.comment()
    s.comment()
    for i, tok in enumerate(REASONING_TOKENS):
        delta = {"role": "assistant", "content": "", "reasoning": tok,
                 "reasoning_details": [{"type": "reasoning.text", "text": tok, "format": "unknown", "index": 0}]}
        s.chunk(delta)
        if i == 11:
            s.comment()
    for tok in ANSWER_TOKENS:
        s.chunk({"role": "assistant", "content": tok, "reasoning": None, "reasoning_details": []})
    s.chunk({"role": "assistant", "content": "", "reasoning": None, "reasoning_details": []}, finish="stop", native="stop")
    n_reason, n_answer = len(REASONING_TOKENS), len(ANSWER_TOKENS)
    completion = n_reason + n_answer + 2  # + think-tag tokens counted by the model
    s.chunk({"role": "assistant", "content": ""}, usage={
        "prompt_tokens": 21, "completion_tokens": completion, "total_tokens": 21 + completion,
        "cost": 0.0000807, "is_byok": False,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "cost_details": {"upstream_inference_cost": None},
        "completion_tokens_details": {"reasoning_tokens": n_reason + 2},
    })
    write("openrouter", "reasoning_stream",
          src(OR_REASONING + ", " + OR_STREAM + " and " + OR_USAGE,
              "quoted: reasoning text arrives in `reasoning` and, as structured data, in `reasoning_details` "
              '([{"type":"reasoning.text","text","format","index"}] - the same text twice, never to be added up); SSE comment '
              'keep-alives ": OPENROUTER PROCESSING"; usage (with cost) in the last SSE message. Composed: the ids, provider, '
              "text, token counts, cost, where the comments fall, and the exact layout of the last (usage) chunk"),
          "POST", f"{base}/chat/completions",
          {"model": "deepseek/deepseek-r1", "messages": REASON, "max_tokens": 512, "reasoning": {"enabled": True},
           "stream": True, **USAGE_ON},
          200, sse_h, body_text=sse(s.events + ["[DONE]"]))

    # error_midstream: stream starts, then an error event with finish_reason "error"; no [DONE]
    s = ORStream("gen-1764089700-Lm8pR3xZq6TwVb1NcK5y", 1764089700, "openai/gpt-4o-mini", "OpenAI")
    s.comment()
    s.chunk({"role": "assistant", "content": ""})
    for tok in ["Hello", "!", " How"]:
        s.chunk({"role": "assistant", "content": tok})
    err = s.base()
    err["error"] = {"code": "server_error", "message": "Provider disconnected unexpectedly"}
    err["choices"] = [{"index": 0, "delta": {"content": ""}, "finish_reason": "error", "native_finish_reason": None,
                       "logprobs": None}]
    s.events.append(err)
    write("openrouter", "error_midstream",
          src(OR_STREAM + ' (section "Handling Errors During Streaming") and ' + OR_ERRORS,
              "quoted: once tokens have been sent the HTTP status stays 200 and an error is delivered as an SSE data event "
              'with a top-level `error` object and choices[0].finish_reason "error", after which the stream ends (no [DONE]). '
              "Composed: ids, provider, the text before the error and the error code/message values"),
          "POST", f"{base}/chat/completions",
          {"model": "openai/gpt-4o-mini", "messages": HELLO, "max_tokens": 24, "temperature": 0, "stream": True, **USAGE_ON},
          200, sse_h, body_text=sse(s.events))


# ============================================================================ DeepSeek
DS_THINK = '"Thinking Mode" (https://api-docs.deepseek.com/guides/thinking_mode)'
DS_REF = '"Create Chat Completion" (https://api-docs.deepseek.com/api/create-chat-completion)'


def deepseek():
    cid, created, model, fp = "5f2c1d8e-3b7a-4e91-a0c6-9d4e2f7b1a35", 1764089800, "deepseek-reasoner", "fp_ffc7281d48_prod0820_fp8_kvcache"
    events = [("comment", "keep-alive")]

    def chunk(delta, finish=None, usage=None):
        ev = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model, "system_fingerprint": fp,
              "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
        if usage is not None:
            ev["usage"] = usage
        events.append(ev)

    chunk({"role": "assistant", "content": None, "reasoning_content": ""})
    for tok in REASONING_TOKENS:
        chunk({"content": None, "reasoning_content": tok})
    for tok in ANSWER_TOKENS:
        chunk({"content": tok, "reasoning_content": None})
    completion = len(REASONING_TOKENS) + len(ANSWER_TOKENS) + 1
    chunk({"content": "", "reasoning_content": None}, finish="stop", usage={
        "prompt_tokens": 19, "completion_tokens": completion, "total_tokens": 19 + completion,
        "prompt_tokens_details": {"cached_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": len(REASONING_TOKENS)},
        "prompt_cache_hit_tokens": 0, "prompt_cache_miss_tokens": 19,
    })
    events.append("[DONE]")
    write("deepseek", "reasoning_stream",
          src(DS_THINK + " and " + DS_REF,
              "quoted: in thinking mode the chain of thought streams in delta.reasoning_content before the answer in "
              "delta.content (the guide's sample reads chunk.choices[0].delta.reasoning_content, else delta.content); usage "
              "with prompt_cache_hit_tokens/prompt_cache_miss_tokens and completion_tokens_details.reasoning_tokens; SSE "
              '": keep-alive" comments while a request waits. Composed: id, fingerprint, text, counts, and usage placed on the '
              "last chunk together with finish_reason (not in a separate choices:[] chunk)"),
          "POST", "/chat/completions",
          {"model": model, "messages": REASON, "max_tokens": 512, "stream": True, **USAGE_ON},
          200, {"content-type": "text/event-stream; charset=utf-8"}, body_text=sse(events))


# ============================================================================ Groq
GROQ_REASONING = '"Reasoning" (https://console.groq.com/docs/reasoning)'
GROQ_REF = '"API Reference" (https://console.groq.com/docs/api-reference#chat-create)'


def groq():
    cid, created, model, fp = "chatcmpl-7c4e9a21-5d3b-4f8e-b6a2-1e9d0c7f3b54", 1764089900, "qwen/qwen3-32b", "fp_5cf921caa2"
    xid = "req_01kb3m9x2qf7rt5yv8wz4n6p1c"
    events = []

    def chunk(delta, finish=None, x_groq=None, choices=True, usage=None):
        ev = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model, "system_fingerprint": fp,
              "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}] if choices else []}
        if x_groq is not None:
            ev["x_groq"] = x_groq
        if usage is not None:
            ev["usage"] = usage
        events.append(ev)

    chunk({"role": "assistant", "content": ""}, x_groq={"id": xid})
    body = ["<think>", "\n"] + REASONING_TOKENS + ["\n", "</think>", "\n\n"] + ANSWER_TOKENS
    for tok in body:
        chunk({"content": tok})
    completion = len(body)
    usage = {"queue_time": 0.0519, "prompt_tokens": 21, "prompt_time": 0.0031, "completion_tokens": completion,
             "completion_time": 0.0872, "total_tokens": 21 + completion, "total_time": 0.0903}
    chunk({}, finish="stop", x_groq={"id": xid, "usage": usage})
    chunk(None, choices=False, x_groq={"id": xid}, usage=usage)
    events.append("[DONE]")
    write("groq", "reasoning_stream",
          src(GROQ_REASONING + " and " + GROQ_REF,
              'quoted: reasoning_format "raw" (the default unless JSON mode or tools are on) "includes reasoning within <think> '
              'tags in the main text content". Composed: ids, text, timings and counts; x_groq.id on the first chunk and '
              "x_groq.usage on the finish chunk (Groq's older usage location) plus the standard choices:[] usage chunk "
              "requested by stream_options.include_usage, with the same numbers"),
          "POST", "/openai/v1/chat/completions",
          {"model": model, "messages": REASON, "max_tokens": 512, "reasoning_format": "raw", "stream": True, **USAGE_ON},
          200, {"content-type": "text/event-stream"}, body_text=sse(events))


if __name__ == "__main__":
    openai()
    openrouter()
    deepseek()
    groq()
    print("written under", ROOT)
