"""scripts/collect_examples.py records fixtures through the `openai` SDK: run for real against the
loopback upstream, it sends each feature with the SDK's typed methods and writes what the SDK sent
and the raw answer."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.conftest import ROOT
from tests.fake_upstream import FakeUpstream, Reply, chat_chunks

KEY = "sk-collector-test-key-0123456789"


def collect(upstream: FakeUpstream, out: Path, *features: str, extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "scripts/collect_examples.py", "--provider", "fake", "--base-url", upstream.url, "--out", str(out),
         "--chat-model", "up-model", "--embed-model", "up-embed", "--only", *features, *extra],
        cwd=ROOT, capture_output=True, text=True, timeout=120, env={"COLLECT_API_KEY": KEY, "PATH": ""},
    )


def fixture(out: Path, feature: str) -> dict[str, Any]:
    return json.loads((out / f"{feature}.json").read_text())


def test_features_go_through_the_sdk_and_are_recorded_as_sent_and_answered(upstream: FakeUpstream, tmp_path: Path) -> None:
    events = [f"data: {json.dumps(chunk)}\n\n" for chunk in chat_chunks(["Hi", "!"], usage=(3, 2))] + ["data: [DONE]\n\n"]
    upstream.enqueue("/v1/chat/completions", Reply.json({"id": "c1", "object": "chat.completion", "created": 1, "model": "up-model",
                                                         "choices": [{"index": 0, "finish_reason": "stop",
                                                                      "message": {"role": "assistant", "content": "Hello."}}]}),
                     Reply.sse(events, done=False))
    upstream.enqueue("/v1/chat/completions", Reply.json({"choices": [{"message": {"content": "x", "reasoning_content": "r"}}]}))
    result = collect(upstream, tmp_path, "chat", "chat_stream", "reasoning", "embeddings", "models",
                     extra=("--reasoning-extra", '{"reasoning": {"enabled": true}}'))
    assert result.returncode == 0, result.stderr + result.stdout

    chat, stream, reasoning, embeddings = (upstream.received[i] for i in range(4))
    assert all(r.headers["User-Agent"].startswith("OpenAI/Python") for r in upstream.received), "sent by the SDK"
    assert chat.headers["Authorization"] == f"Bearer {KEY}"
    recorded = fixture(tmp_path, "chat")
    assert recorded["request"] == {"method": "POST", "path": "/v1/chat/completions", "json": chat.json}
    assert chat.json["model"] == "up-model" and chat.json["max_tokens"] == 24 and chat.json["temperature"] == 0
    assert recorded["response"]["body"]["choices"][0]["message"]["content"] == "Hello."
    assert "source" in recorded and KEY not in (tmp_path / "chat.json").read_text()
    # A stream is kept verbatim, as the server framed it.
    assert stream.json["stream"] is True and stream.json["stream_options"] == {"include_usage": True}
    assert fixture(tmp_path, "chat_stream")["response"]["body_text"] == "".join(events)
    # A field the SDK does not define goes as its extra_body, and is recorded as sent.
    assert reasoning.json["reasoning"] == {"enabled": True}
    assert fixture(tmp_path, "reasoning")["request"]["json"] == reasoning.json
    assert embeddings.path == "/v1/embeddings" and embeddings.json["encoding_format"] == "float"
    assert fixture(tmp_path, "models")["request"] == {"method": "GET", "path": "/v1/models"}
    assert fixture(tmp_path, "models")["response"]["body"]["data"][0]["id"] == "up-model"


def test_error_answers_are_recorded_with_status_and_body(upstream: FakeUpstream, tmp_path: Path) -> None:
    error = {"error": {"message": "Invalid API key", "type": "invalid_request_error", "code": "invalid_api_key"}}
    upstream.enqueue("/v1/chat/completions", Reply.json(error, status=401),
                     Reply.json({"error": {"message": "slow down"}}, status=429, headers={"Retry-After": "7"}))
    result = collect(upstream, tmp_path, "error_bad_key", "error_bad_request")
    assert result.returncode == 0, result.stderr + result.stdout
    assert upstream.received[0].headers["Authorization"] == "Bearer sk-collector-deliberately-invalid-key"
    bad_key = fixture(tmp_path, "error_bad_key")
    assert bad_key["response"] == {"status": 401, "headers": {"content-type": "application/json"}, "body": error}
    assert bad_key["request"]["json"] == upstream.received[0].json
    limited = fixture(tmp_path, "error_bad_request")["response"]
    assert (limited["status"], limited["headers"]["retry-after"]) == (429, "7")
    assert upstream.received[1].json["messages"] == [{"role": "wizard", "content": "Say hello."}]
    assert "unexpected" in result.stdout  # the summary says a 429 is not the 400 the feature wants
