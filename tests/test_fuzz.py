"""Bad input: property-based bodies for every endpoint, and an OpenAPI-driven run, against the
running gateway. Whatever is sent: no 5xx, no hang, every error in the endpoint's shape (Ollama's
`{"error": "..."}`, or OpenAI's on `/v1`), every stream well framed. Unknown paths get Ollama's
plain-text 404 and known paths with a wrong method its plain-text 405.

Examples are derandomized (the same ones on every run, so CI is stable); to explore further, run
with `HYPOTHESIS_PROFILE=explore` (random, more examples).
"""

from __future__ import annotations

import json
import os
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import BaseSchema, GenerationMode

from gateway.http.openapi import request_models
from tests.conftest import RunningGateway

settings.register_profile(
    "ci", max_examples=60, deadline=None, derandomize=True, database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
settings.register_profile(
    "explore", max_examples=500, deadline=None, database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

TIMEOUT = 30  # seconds: a response slower than this is a hang
BODY_ROUTES = sorted(request_models())
# Ollama's own 500 for pulling a model it does not know without streaming (ollama-api.md §12).
EXPECTED_5XX = {("/api/pull", "pull model manifest: file does not exist")}
MODEL_NAMES = ["tiny", "TINY:latest", "embedder", "ghost", "", "fake/other-model", "tiny:7b", "a" * 300]

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
messages = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "assistant", "system", "tool", "USER", ""]) | json_values},
        optional={"content": st.text(max_size=30) | json_values, "images": json_values, "tool_calls": json_values,
                  "thinking": json_values, "tool_call_id": json_values},
    ),
    max_size=3,
)


PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
options = st.dictionaries(
    st.sampled_from(["temperature", "top_p", "top_k", "min_p", "num_predict", "num_ctx", "seed", "stop", "repeat_penalty",
                     "presence_penalty", "frequency_penalty", "mirostat", "num_gpu", "use_mmap", "unknown_option"]),
    json_scalars | st.lists(st.text(max_size=5), max_size=3) | st.integers(-(2**70), 2**70) | st.floats(),
    max_size=4,
)
function = st.fixed_dictionaries({"name": st.text(max_size=12)}, optional={"arguments": json_values, "description": st.text(max_size=10),
                                                                           "parameters": json_values})
tools = st.lists(st.fixed_dictionaries({"type": st.sampled_from(["function", "other"]), "function": function}), max_size=2)
valid_messages = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "assistant", "system", "tool"]), "content": st.text(max_size=40)},
        optional={"images": st.lists(st.sampled_from([PNG, "not-base64!", ""]), max_size=2), "thinking": st.text(max_size=10),
                  "tool_calls": st.lists(st.fixed_dictionaries({"function": function}), max_size=2),
                  "tool_name": st.text(max_size=8), "tool_call_id": st.text(max_size=8)},
    ),
    min_size=1,
    max_size=4,
)
# Values a real client might send for each field (and the edge cases of each).
PLAUSIBLE: dict[str, st.SearchStrategy[Any]] = {
    "messages": valid_messages,
    "stream": st.booleans(),
    "options": options,
    "format": st.sampled_from(["json", "", "xml"]) | st.dictionaries(st.sampled_from(["type", "properties", "required"]), json_values),
    "think": st.sampled_from([True, False, "high", "medium", "low", "max", "none"]),
    "keep_alive": st.sampled_from([0, -1, "5m", "1h30m", "0s", "-1s", 1e308, -1e308, 10**20, "9999999999h", ".5s", "1e3s"]) | json_scalars,
    "tools": tools,
    "prompt": st.text(max_size=40),
    "system": st.text(max_size=20),
    "template": st.text(max_size=20),
    "suffix": st.text(max_size=10),
    "raw": st.booleans(),
    "context": st.lists(st.integers(-1, 2**40), max_size=3),
    "images": st.lists(st.sampled_from([PNG, "not-base64!", ""]), max_size=2),
    "input": st.text(max_size=20) | st.lists(st.text(max_size=10), max_size=3),
    "truncate": st.booleans(),
    "dimensions": st.integers(-2, 5000),
    "logprobs": st.booleans(),
    "top_logprobs": st.integers(-2, 25),
    "verbose": st.booleans(),
    "source": st.sampled_from(["tiny", "ghost", ""]),
    "destination": st.text(max_size=10),
    "max_tokens": st.integers(-1, 10**6),
    "temperature": st.floats(-1, 3),
}


def bodies(method: str, path: str) -> st.SearchStrategy[bytes]:
    """Bodies for one route: plausible ones, its field names with any values, any JSON, raw bytes."""
    model = request_models()[(method, path)]
    fields = sorted(model.get("properties", {}) if isinstance(model, dict) else model.model_fields) + ["name", "stream"]
    plausible = st.fixed_dictionaries(
        {"model": st.sampled_from(["tiny", "tiny:latest", "fake/x", "embedder"])},
        optional={name: PLAUSIBLE.get(name, json_values) for name in fields if name != "model"}
        | ({"messages": valid_messages, "max_tokens": PLAUSIBLE["max_tokens"], "input": PLAUSIBLE["input"],
            "temperature": PLAUSIBLE["temperature"]} if path.startswith("/v1/") else {}),
    )
    known = st.dictionaries(st.sampled_from(fields), json_values, max_size=6)
    shaped = st.builds(
        lambda base, name, msgs, stream: {**base, "model": name, "messages": msgs, "stream": stream},
        known, st.sampled_from(MODEL_NAMES) | st.text(max_size=12), messages, st.sampled_from([True, False, None]),
    )
    as_json = (plausible | plausible | shaped | known | json_values).map(lambda value: json.dumps(value).encode())
    return as_json | st.binary(max_size=64) | st.sampled_from([b"", b"{", b"[]", b"null", b'{"model": NaN}', b"\xff\xfe"])


def check_response(path: str, status: int, content_type: str, text: str, method: str = "POST") -> None:
    """No 5xx (but Ollama's own), errors in the endpoint's shape, streams framed as NDJSON."""
    if method == "HEAD":
        assert status < 500 and not text, (path, status)
        return
    if (status, text) == (404, "404 page not found"):  # a generated path that matches no route
        assert content_type.startswith("text/plain")
        return
    if status >= 500:
        body = json.loads(text) if content_type.startswith("application/json") else {}
        assert (path, body.get("error")) in EXPECTED_5XX, f"{status} on {path}: {text[:500]}"
    if status >= 400:
        assert content_type.startswith("application/json"), (path, status, text[:200])
        body = json.loads(text)
        if path.startswith("/v1/"):
            assert isinstance(body["error"]["message"], str) and body["error"]["message"]
        else:
            assert list(body) == ["error"] and isinstance(body["error"], str) and body["error"], body
        return
    assert status in (200, 204), (path, status)
    if content_type.startswith("application/x-ndjson"):
        assert text.endswith("\n") and "\n\n" not in text
        lines = [json.loads(line) for line in text.splitlines()]
        last = lines[-1]
        assert last.get("done") is True or last.get("status") == "success" or "error" in last, last
        assert sum(bool(line.get("done")) for line in lines) <= 1
    elif content_type.startswith("application/json") and text:
        assert isinstance(json.loads(text), dict)


@pytest.mark.parametrize(("method", "path"), BODY_ROUTES, ids=[f"{m.upper()} {p}" for m, p in BODY_ROUTES])
def test_any_body_gets_a_well_formed_answer(gateway: RunningGateway, method: str, path: str) -> None:
    with httpx.Client(base_url=gateway.url, timeout=TIMEOUT) as client:

        @given(body=bodies(method, path), content_type=st.sampled_from(["application/json", "application/x-www-form-urlencoded", "text/plain", ""]))
        def run(body: bytes, content_type: str) -> None:
            headers = {"Content-Type": content_type} if content_type else {}
            response = client.request(method.upper(), path, content=body, headers=headers)
            check_response(path, response.status_code, response.headers.get("content-type", ""), response.text)

        run()


@given(keep_alive=PLAUSIBLE["keep_alive"] | st.floats(allow_nan=False, allow_infinity=False) | st.integers(),
       endpoint=st.sampled_from(["/api/chat", "/api/generate", "/api/embed", "/api/embeddings"]))
def test_any_keep_alive_leaves_ps_and_tags_working(gateway: RunningGateway, keep_alive: object, endpoint: str) -> None:
    """A request's keep_alive is remembered for /api/ps: no value may break it for everyone after."""
    body = {"model": "tiny", "keep_alive": keep_alive, "stream": False, "prompt": "hi", "input": "hi",
            "messages": [{"role": "user", "content": "hi"}]}
    check_response(endpoint, *_answer(httpx.post(gateway.url + endpoint, content=json.dumps(body), timeout=TIMEOUT)))
    for path in ("/api/ps", "/api/tags"):
        check_response(path, *_answer(httpx.get(gateway.url + path, timeout=TIMEOUT)))


def _answer(response: httpx.Response) -> tuple[int, str, str]:
    return response.status_code, response.headers.get("content-type", ""), response.text


@given(path=st.from_regex(r"\A/[a-zA-Z0-9_.~-]{1,12}(/[a-zA-Z0-9_.~-]{0,12}){0,3}\Z"),
       method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH"]))
def test_unknown_paths_get_ollamas_plain_404(gateway: RunningGateway, path: str, method: str) -> None:
    known = {route_path for _, route_path in request_models()} | {"/", "/api/version", "/api/tags", "/api/ps", "/v1/models",
                                                                  "/v1/audio/transcriptions"}
    if path.rstrip("/") in known or path.startswith(("/api/blobs/", "/v1/models/")) or path in ("/openapi.json",):
        return
    response = httpx.request(method, gateway.url + path, timeout=TIMEOUT, follow_redirects=False)
    assert (response.status_code, response.text) == (404, "404 page not found")
    assert response.headers["content-type"].startswith("text/plain")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/chat"), ("PUT", "/api/chat"), ("DELETE", "/api/generate"), ("GET", "/api/embed"),
        ("POST", "/api/tags"), ("DELETE", "/api/version"), ("POST", "/api/ps"), ("GET", "/api/show"),
        ("POST", "/api/delete"), ("GET", "/api/pull"), ("PUT", "/"), ("GET", "/v1/chat/completions"),
        ("POST", "/v1/models"), ("GET", "/api/blobs/sha256:" + "0" * 64),
    ],
)
def test_wrong_method_gets_ollamas_plain_405(gateway: RunningGateway, method: str, path: str) -> None:
    response = httpx.request(method, gateway.url + path, timeout=TIMEOUT)
    assert (response.status_code, response.text) == (405, "405 method not allowed")
    assert response.headers["content-type"].startswith("text/plain")


# -- OpenAPI-driven (schemathesis) -------------------------------------------------------------------
# Schemathesis' own pytest integration (`from_fixture`) does not work with pytest 9.2 (it sets a
# private node attribute); its per-operation Hypothesis strategies are used with `@given` instead.

OPERATIONS = sorted(
    {(method.upper(), path) for method, path in request_models()}
    | {("GET", "/api/version"), ("HEAD", "/api/version"), ("GET", "/api/tags"), ("HEAD", "/api/tags"),
       ("GET", "/api/ps"), ("HEAD", "/api/ps"), ("HEAD", "/api/blobs/{digest}"), ("POST", "/api/blobs/{digest}"),
       ("GET", "/v1/models"), ("GET", "/v1/models/{model_id}"), ("POST", "/v1/audio/transcriptions")}
)


@pytest.fixture(scope="module")
def gateway_schema(gateway: RunningGateway) -> BaseSchema:
    return schemathesis.openapi.from_url(gateway.url + "/openapi.json")


# Schema-violating requests exist only for operations with a body (string parameters take anything).
OPENAPI_CASES = [
    pytest.param(method, path, mode, id=f"{method} {path} {label}")
    for method, path in OPERATIONS
    for mode, label in ((GenerationMode.POSITIVE, "schema-valid"), (GenerationMode.NEGATIVE, "schema-violating"))
    if mode is GenerationMode.POSITIVE or (method.lower(), path) in request_models()
]


@pytest.mark.parametrize(("method", "path", "mode"), OPENAPI_CASES)
def test_openapi_operations_answer_well(
    gateway: RunningGateway, gateway_schema: BaseSchema, method: str, path: str, mode: GenerationMode
) -> None:
    """Requests generated from /openapi.json for each documented operation."""
    operation = gateway_schema[path][method]

    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        response = case.call(base_url=gateway.url, timeout=TIMEOUT)
        content_type = (response.headers.get("content-type") or [""])[0]
        check_response(case.path, response.status_code, content_type, response.text, method)

    run()


def test_every_documented_operation_is_fuzzed(gateway: RunningGateway) -> None:
    document = httpx.get(gateway.url + "/openapi.json").json()
    documented = {(method.upper(), path) for path, item in document["paths"].items() for method in item}
    assert documented == set(OPERATIONS)


def test_the_schema_describes_every_request_body(gateway: RunningGateway) -> None:
    document = httpx.get(gateway.url + "/openapi.json").json()
    for method, path in request_models():
        operation = document["paths"][path][method]
        schema_of_body = operation["requestBody"]["content"]["application/json"]["schema"]
        assert schema_of_body["type"] == "object" and "$ref" not in json.dumps(schema_of_body), path
        assert operation["responses"]["400"]["content"]["application/json"]["schema"]["required"] == ["error"]
    chat = document["paths"]["/api/chat"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert {"model", "messages", "stream", "options", "format", "think"} <= set(chat["properties"])
    operation_ids = [operation["operationId"] for item in document["paths"].values() for operation in item.values()]
    assert len(operation_ids) == len(set(operation_ids))
