"""Hardening against inputs (issue 9, points 8, 9 and 10's booleans), through the real gateway.

Each test runs Granian with two workers (the `limited` gateway, limits set low through the
environment) against the loopback fake upstream, except the checks of the defaults, which use
the shared gateway. Points covered:

- numbers out of Go's int64 range, a malformed chunked body, a client leaving mid-upload and an
  unhandled exception are Ollama-shaped 4xx/500 answers with one log line each, no traceback, and
  the request line records the status the client got;
- what one request may hold (messages, embedding inputs, JSON values) and what a non-streamed
  upstream answer may be are capped, and log fields are bounded;
- booleans are booleans: `stream: "yes"` is a 400, as Go's decoder makes it in Ollama.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.settings import Settings
from tests.client_support import wait_for
from tests.conftest import RunningGateway
from tests.fake_upstream import FakeUpstream, Reply, chat_completion

CHAT = "/v1/chat/completions"
EMBEDDINGS = "/v1/embeddings"
USER_HI = [{"role": "user", "content": "hi"}]
MAX_MESSAGES, MAX_INPUTS, MAX_ITEMS, MAX_ANSWER = 50, 8, 2000, 64 * 1024
INT64_RANGE = "must be an integer between -9223372036854775808 and 9223372036854775807"
INCOMPLETE = "request body incomplete: malformed chunked encoding, or the client closed the connection"


@pytest.fixture(scope="module")
def limited(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    folder = tmp_path_factory.mktemp("hardening")
    routes = folder / "routes.yaml"
    routes.write_text(f"""
upstreams:
  fake: {{base_url: "{upstream.url}", api_key: "${{TEST_UPSTREAM_KEY}}", max_retries: 0, timeout: 30, provider: openai, cooldown: false}}
models:
  - {{name: tiny, upstream: fake, model: up-model}}
  - {{name: embedder, upstream: fake, model: up-embed, capabilities: [embedding]}}
""")
    env = {
        "GATEWAY_MAX_MESSAGES": str(MAX_MESSAGES),
        "GATEWAY_MAX_INPUTS": str(MAX_INPUTS),
        "GATEWAY_MAX_JSON_ITEMS": str(MAX_ITEMS),
        "GATEWAY_MAX_UPSTREAM_ANSWER_BYTES": str(MAX_ANSWER),
    }
    running = RunningGateway(routes, folder / "gateway.log", workers=2, env=env)
    yield running
    running.stop()


def post(gateway: RunningGateway, path: str, body: object, **headers: str) -> httpx.Response:
    content = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return httpx.post(gateway.url + path, content=content, headers=headers, timeout=60)


def assert_error(response: httpx.Response, status: int, message: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json; charset=utf-8"
    assert response.json() == {"error": message}


def request_line(gateway: RunningGateway, request_id: str) -> dict[str, Any]:
    """The `request` log line of one request (its id sent as X-Request-Id); waits for it."""
    marker = f'"request_id":"{request_id}"'

    def find() -> dict[str, Any] | None:
        for line in gateway.log_text().splitlines():
            if marker in line and '"event":"request"' in line:
                found: dict[str, Any] = json.loads(line)
                return found
        return None

    assert wait_for(lambda: find() is not None), gateway.log_text()[-3000:]
    line = find()
    assert line is not None
    return line


def raw_exchange(port: int, data: bytes) -> bytes:
    """Send `data` on a fresh connection and read until the gateway closes it."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(data)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


# -- point 8: numbers out of range, broken bodies, unhandled errors --------------------------------


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        pytest.param("/api/chat", '{"model": "tiny", "stream": false, "messages": [{"role": "user", "content": "hi"}], '
                     '"options": {"seed": 18446744073709551616}}', f'option "seed" {INT64_RANGE}', id="seed-2**64"),
        pytest.param("/api/chat", '{"model": "tiny", "stream": false, "messages": [{"role": "user", "content": "hi"}], '
                     '"options": {"seed": 1e20}}', f'option "seed" {INT64_RANGE}', id="seed-1e20"),
        pytest.param("/api/chat", '{"model": "tiny", "stream": false, "messages": [{"role": "user", "content": "hi"}], '
                     '"options": {"num_predict": 9223372036854775808}}', f'option "num_predict" {INT64_RANGE}', id="num_predict-2**63"),
        pytest.param("/api/generate", '{"model": "tiny", "stream": false, "prompt": "hi", "options": {"num_predict": 1e20}}',
                     f'option "num_predict" {INT64_RANGE}', id="generate-num_predict-1e20"),
        pytest.param("/api/generate", '{"model": "tiny", "prompt": "hi", "options": {"top_k": -1e19}}',
                     f'option "top_k" {INT64_RANGE}', id="top_k-minus-1e19"),
        pytest.param("/api/embed", '{"model": "embedder", "input": "hi", "dimensions": 9223372036854775808}',
                     "invalid value for dimensions: Input should be less than or equal to 9223372036854775807", id="dimensions-2**63"),
        pytest.param("/api/chat", '{"model": "tiny", "stream": false, "messages": [{"role": "assistant", "content": "", '
                     '"tool_calls": [{"function": {"name": "f", "arguments": {}, "index": 9223372036854775808}}]}]}',
                     "invalid value for messages.0.tool_calls.0.function.index: Input should be less than or equal to "
                     "9223372036854775807", id="tool-call-index-2**63"),
    ],
)
def test_an_integer_beyond_int64_is_a_400(limited: RunningGateway, upstream: FakeUpstream, path: str, body: str, message: str) -> None:
    """Ollama's integers are Go int64: beyond that, a 400 (it used to be a plain-text 500 from orjson)."""
    assert_error(post(limited, path, body), 400, message)
    assert upstream.received == []


def test_a_malformed_chunked_body_is_a_400(limited: RunningGateway, upstream: FakeUpstream) -> None:
    answer = raw_exchange(limited.port, b"POST /api/chat HTTP/1.1\r\nHost: gateway\r\nX-Request-Id: bad-chunks\r\n"
                                        b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 "), answer
    assert b"content-type: application/json; charset=utf-8" in head.lower()
    assert json.loads(body) == {"error": INCOMPLETE}
    line = request_line(limited, "bad-chunks")
    assert (line["status"], line["outcome"], line["error"]) == (400, "error", INCOMPLETE)
    assert "Traceback" not in limited.log_text()
    assert upstream.received == []


def test_a_client_leaving_mid_upload_is_one_log_line(limited: RunningGateway, upstream: FakeUpstream) -> None:
    """Half a declared body, then the client hangs up: the request line, and no traceback."""
    with socket.create_connection(("127.0.0.1", limited.port), timeout=30) as sock:
        sock.sendall(b"POST /api/chat HTTP/1.1\r\nHost: gateway\r\nX-Request-Id: left-mid-upload\r\n"
                     b'Content-Length: 1000\r\n\r\n{"model": "tiny", "messages": [')
        time.sleep(0.2)  # not a timing claim: the test holds whenever the hang-up reaches the gateway
    line = request_line(limited, "left-mid-upload")
    assert (line["status"], line["outcome"], line["error"]) == (400, "error", INCOMPLETE)
    # A traceback would follow the request line at once; this wait only bounds the check.
    assert not wait_for(lambda: "Traceback" in limited.log_text() or "ClientDisconnect" in limited.log_text(), seconds=1)
    assert httpx.post(limited.url + "/api/chat", json={"model": "tiny", "messages": USER_HI, "stream": False}).status_code == 200


def test_an_unhandled_exception_is_a_json_500_logged_as_sent(limited: RunningGateway, upstream: FakeUpstream) -> None:
    """A bug (here: the embed translator trips on an answer without `embedding`) is Ollama's JSON
    500, and the request line says 500 and `error` (it said `status 0, outcome crashed`), with one
    `unhandled_exception` line instead of a traceback. When that translator learns to answer such
    an upstream with a 502, this test needs another way to reach an unhandled exception."""
    upstream.enqueue(EMBEDDINGS, Reply.json({"object": "list", "data": [{"index": 0}], "usage": {"prompt_tokens": 1}}))
    response = post(limited, "/api/embed", {"model": "embedder", "input": ["hi"]}, **{"X-Request-Id": "will-crash"})
    assert_error(response, 500, "internal error in the gateway (request id will-crash)")
    line = request_line(limited, "will-crash")
    assert (line["status"], line["outcome"]) == (500, "error")
    log = limited.log_text()
    crash = [json.loads(text) for text in log.splitlines() if '"unhandled_exception"' in text and "will-crash" in text]
    assert len(crash) == 1 and crash[0]["exception"] == "KeyError: 'embedding'" and crash[0]["level"] == "error"
    assert "translators/embed.py" in crash[0]["where"]
    assert "Traceback" not in log


# -- point 9: what a request may hold, what an answer may be, what a log line may hold ----------------


def test_more_messages_than_the_limit_is_a_413(limited: RunningGateway, upstream: FakeUpstream) -> None:
    body = {"model": "tiny", "stream": False, "messages": USER_HI * (MAX_MESSAGES + 1)}
    assert_error(post(limited, "/api/chat", body), 413, f"too many messages: {MAX_MESSAGES + 1} (the limit is {MAX_MESSAGES})")
    response = post(limited, CHAT, {"model": "tiny", "messages": USER_HI * (MAX_MESSAGES + 1)})
    assert response.status_code == 413 and "too many messages" in response.json()["error"]["message"]
    assert upstream.received == []
    assert post(limited, "/api/chat", {**body, "messages": USER_HI * MAX_MESSAGES}).status_code == 200


def test_the_message_count_is_checked_before_validation(limited: RunningGateway, upstream: FakeUpstream) -> None:
    """Counted on the parsed body: invalid messages past the limit get the 413, no object is built."""
    body = {"model": "tiny", "messages": [{"role": 5, "content": []}] * 100_000}
    assert_error(post(limited, "/api/chat", body), 413, f"too many messages: 100000 (the limit is {MAX_MESSAGES})")
    assert upstream.received == []


def test_more_embedding_inputs_than_the_limit_is_a_413(limited: RunningGateway, upstream: FakeUpstream) -> None:
    inputs = ["a"] * (MAX_INPUTS + 1)
    message = f"too many inputs: {MAX_INPUTS + 1} (the limit is {MAX_INPUTS})"
    assert_error(post(limited, "/api/embed", {"model": "embedder", "input": inputs}), 413, message)
    response = post(limited, EMBEDDINGS, {"model": "embedder", "input": inputs})
    assert response.status_code == 413 and response.json()["error"]["message"] == message
    assert upstream.received == []
    assert len(post(limited, "/api/embed", {"model": "embedder", "input": inputs[1:]}).json()["embeddings"]) == MAX_INPUTS


@pytest.mark.parametrize(
    ("path", "body"),
    [
        pytest.param("/api/generate", {"model": "tiny", "prompt": "hi", "context": list(range(MAX_ITEMS))}, id="generate-context"),
        pytest.param("/api/chat", {"model": "tiny", "messages": [
            {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "f"}}] * MAX_ITEMS}]}, id="chat-tool-calls"),
        pytest.param("/api/chat", {"model": "tiny", "messages": USER_HI, "tools": [{"type": "function"}] * MAX_ITEMS},
                     id="chat-tools"),
        pytest.param("/api/chat", {"model": "tiny", "messages": USER_HI, "options": {f"o{n}": n for n in range(MAX_ITEMS)}},
                     id="chat-options"),
    ],
)
def test_more_json_values_than_the_limit_is_a_413(limited: RunningGateway, upstream: FakeUpstream, path: str, body: object) -> None:
    """Any list or object counts (a million `context` ints or tool calls cost as much as messages)."""
    assert_error(post(limited, path, body), 413, f"request body holds more than {MAX_ITEMS} JSON values")
    assert upstream.received == []


def _big_completion() -> dict[str, Any]:
    return chat_completion("x" * (MAX_ANSWER + 1))


@pytest.mark.parametrize(
    "reply",
    [
        pytest.param(Reply.json(_big_completion()), id="content-length"),
        # Written in pieces without a Content-Length: counted as it arrives.
        pytest.param(Reply(events=[json.dumps(_big_completion())[n : n + 4096] for n in range(0, MAX_ANSWER + 4096, 4096)]),
                     id="chunked"),
    ],
)
def test_an_upstream_answer_over_the_limit_is_a_502(limited: RunningGateway, upstream: FakeUpstream, reply: Reply) -> None:
    upstream.enqueue(CHAT, reply, reply)
    message = f"upstream 'fake' sent an answer over the gateway's limit of {MAX_ANSWER} bytes"
    assert_error(post(limited, "/api/chat", {"model": "tiny", "messages": USER_HI, "stream": False}), 502, message)
    relayed = post(limited, CHAT, {"model": "tiny", "messages": USER_HI})
    assert relayed.status_code == 502 and relayed.json()["error"]["message"] == message
    upstream.enqueue(CHAT, Reply.json(chat_completion("y" * (MAX_ANSWER // 2))))
    under = post(limited, "/api/chat", {"model": "tiny", "messages": USER_HI, "stream": False})
    assert under.status_code == 200 and under.json()["message"]["content"] == "y" * (MAX_ANSWER // 2)


def test_log_fields_are_bounded(limited: RunningGateway) -> None:
    """A 1 MB model name is 256 characters and a marker in the log, the error quoting it 1024."""
    name = "m" * 1_000_000
    error = f"model '{name}' not found"
    response = post(limited, "/api/chat", {"model": name, "messages": USER_HI}, **{"X-Request-Id": "long-name"})
    assert_error(response, 404, error)
    line = request_line(limited, "long-name")
    assert line["model"] == "m" * 256 + f"...[{1_000_000 - 256} more chars]"
    assert line["error"] == error[:1024] + f"...[{len(error) - 1024} more chars]"
    assert max(len(text) for text in limited.log_text().splitlines()) < 4096


# -- the defaults (the shared gateway) ------------------------------------------------------------------


def test_the_defaults_are_documented_and_reach_the_workers() -> None:
    settings = Settings()
    defaults = (settings.max_messages, settings.max_inputs, settings.max_json_items, settings.max_upstream_answer_bytes)
    assert defaults == (10_000, 2048, 250_000, 256 * 1024 * 1024)
    environ = settings.to_environ()
    for name in ("MAX_MESSAGES", "MAX_INPUTS", "MAX_JSON_ITEMS", "MAX_UPSTREAM_ANSWER_BYTES"):
        assert environ[f"GATEWAY_{name}"] == str(getattr(settings, name.lower()))
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    for name in ("MAX_MESSAGES", "MAX_INPUTS", "MAX_JSON_ITEMS", "MAX_UPSTREAM_ANSWER_BYTES"):
        assert f"| `GATEWAY_{name}` |" in readme


def test_a_million_messages_get_a_413_under_the_defaults(gateway: RunningGateway, upstream: FakeUpstream) -> None:
    """The issue's 30 MB body of a million messages: refused from its length, not validated."""
    body = {"model": "tiny", "messages": [{"role": "user", "content": "x"}] * 1_000_000}
    assert_error(post(gateway, "/api/chat", body), 413, "too many messages: 1000000 (the limit is 10000)")
    assert upstream.received == []
    assert post(gateway, "/api/chat", {"model": "tiny", "stream": False, "messages": USER_HI * 10_000}).status_code == 200


# -- point 10: booleans are booleans -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        pytest.param("/api/chat", {"model": "tiny", "messages": USER_HI, "stream": "yes"},
                     "invalid value for stream: Input should be a valid boolean", id="chat-stream-yes"),
        pytest.param("/api/chat", {"model": "tiny", "messages": USER_HI, "stream": 0},
                     "invalid value for stream: Input should be a valid boolean", id="chat-stream-0"),
        pytest.param("/api/chat", {"model": "tiny", "messages": USER_HI, "think": 1}, "think must be a boolean or string",
                     id="chat-think-1"),
        pytest.param("/api/chat", {"model": "tiny", "messages": USER_HI, "logprobs": "true"},
                     "invalid value for logprobs: Input should be a valid boolean", id="chat-logprobs-string"),
        pytest.param("/api/generate", {"model": "tiny", "prompt": "hi", "stream": "false"},
                     "invalid value for stream: Input should be a valid boolean", id="generate-stream-string"),
        pytest.param("/api/generate", {"model": "tiny", "prompt": "hi", "raw": "true"},
                     "invalid value for raw: Input should be a valid boolean", id="generate-raw-string"),
        pytest.param("/api/embed", {"model": "embedder", "input": "hi", "truncate": "no"},
                     "invalid value for truncate: Input should be a valid boolean", id="embed-truncate-string"),
        pytest.param("/api/show", {"model": "tiny", "verbose": "yes"},
                     "invalid value for verbose: Input should be a valid boolean", id="show-verbose-string"),
        pytest.param("/api/pull", {"model": "tiny", "stream": "no"},
                     "invalid value for stream: Input should be a valid boolean", id="pull-stream-string"),
    ],
)
def test_a_boolean_field_takes_only_true_or_false(
    limited: RunningGateway, upstream: FakeUpstream, path: str, body: dict[str, Any], message: str
) -> None:
    """Ollama (Go's decoder) answers 400 for a string or number in a bool field; pydantic's lax
    mode used to read "yes", "false" and 0 as booleans."""
    assert_error(post(limited, path, body), 400, message)
    assert upstream.received == []


def test_real_booleans_still_work(limited: RunningGateway, upstream: FakeUpstream) -> None:
    streamed = post(limited, "/api/chat", {"model": "tiny", "messages": USER_HI, "stream": True, "logprobs": False})
    assert streamed.status_code == 200 and json.loads(streamed.text.splitlines()[-1])["done"] is True
    answered = post(limited, "/api/generate", {"model": "tiny", "prompt": "hi", "stream": False, "raw": True, "think": False})
    assert answered.status_code == 200, answered.text
    assert post(limited, "/api/embed", {"model": "embedder", "input": "hi", "truncate": True}).status_code == 200
