"""The `/v1` relays count the tokens their answers report (upstream/usage.py): on the request's
summary line and for the key's `tpm`, under Granian with two workers, a loopback upstream, the
`openai` SDK; and the pure reader of a relayed stream's usage, read by read."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from gateway.upstream.usage import StreamUsage, body_usage
from tests.conftest import RunningGateway
from tests.fake_upstream import FakeUpstream, Reply, chat_chunks

JSON_KEY = "gw-relay-json-0123456789"
STREAM_KEY = "gw-relay-stream-0123456789"
NATIVE_KEY = "gw-relay-native-0123456789"
FREE_KEY = "gw-relay-free-0123456789"
ABANDON_KEY = "gw-relay-abandon-0123456789"
USER_HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def limited(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    folder = tmp_path_factory.mktemp("relay-usage")
    routes = folder / "routes.yaml"
    routes.write_text(f"""
upstreams:
  up: {{base_url: "{upstream.url}", max_retries: 0, cooldown: false}}
  native: {{base_url: "{upstream.url}", messages_api: true, max_retries: 0, cooldown: false}}
models:
  - {{name: tiny, upstream: up, model: up-model}}
  - {{name: claude, upstream: native, model: claude-up}}
auth:
  keys:
    - {{key: {JSON_KEY}, limits: {{tpm: 40}}}}
    - {{key: {STREAM_KEY}, limits: {{tpm: 40}}}}
    - {{key: {NATIVE_KEY}, limits: {{tpm: 40}}}}
    - {{key: {FREE_KEY}}}
    - {{key: {ABANDON_KEY}, limits: {{tpm: 40}}}}
""")
    gateway = RunningGateway(routes, folder / "gateway.log", workers=2)
    yield gateway
    gateway.stop()


def summary(gateway: RunningGateway, request_id: str) -> dict[str, object]:
    for line in gateway.log_text_after(request_id).splitlines():
        if f'"request_id":"{request_id}"' in line and '"event":"request"' in line:
            parsed: dict[str, object] = json.loads(line)
            return parsed
    raise AssertionError(f"no summary line for {request_id}")


def test_a_non_streamed_relay_counts_its_usage_for_tpm_and_the_summary_line(limited: RunningGateway) -> None:
    with openai.OpenAI(base_url=limited.url + "/v1", api_key=JSON_KEY, max_retries=0) as client:
        for n in range(3):  # the upstream's usage: 12 + 3 each, so 0, 15, 30 of 40 before each
            answer = client.chat.completions.with_raw_response.create(
                model="tiny", messages=USER_HI, extra_headers={"x-request-id": f"relay-json-{n}"})  # type: ignore[arg-type]
            assert answer.parse().choices[0].message.content == "Hello there."
        line = summary(limited, "relay-json-2")
        assert line["prompt_tokens"] == 12 and line["completion_tokens"] == 3, line
        with pytest.raises(openai.RateLimitError) as refused:
            client.chat.completions.create(model="tiny", messages=USER_HI)  # type: ignore[arg-type]
    assert "40 tokens per minute" in str(refused.value)


def test_a_streamed_relay_with_include_usage_counts_its_last_chunk(limited: RunningGateway, upstream: FakeUpstream) -> None:
    scrape_before = scrape_metrics(limited)
    with openai.OpenAI(base_url=limited.url + "/v1", api_key=STREAM_KEY, max_retries=0) as client:
        for n in range(3):
            upstream.enqueue("/v1/chat/completions", Reply.sse(chat_chunks(["Hel", "lo"], usage=(10, 5))))
            stream = client.chat.completions.create(
                model="tiny", messages=USER_HI, stream=True, stream_options={"include_usage": True},  # type: ignore[arg-type]
                extra_headers={"x-request-id": f"relay-stream-{n}"})
            chunks = list(stream)
            assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens == 10
        line = summary(limited, "relay-stream-2")
        assert line["prompt_tokens"] == 10 and line["completion_tokens"] == 5, line
        with pytest.raises(openai.RateLimitError):
            client.chat.completions.create(model="tiny", messages=USER_HI, stream=True)  # type: ignore[arg-type]
    assert upstream.last().json["stream_options"] == {"include_usage": True}  # passed as the client sent it
    scrape = scrape_metrics(limited)
    assert _tokens(scrape, "prompt") - _tokens(scrape_before, "prompt") == 30  # gateway_tokens_total
    assert _tokens(scrape, "completion") - _tokens(scrape_before, "completion") == 15


def scrape_metrics(gateway: RunningGateway) -> str:
    return httpx.get(gateway.url + "/metrics", headers={"Authorization": f"Bearer {FREE_KEY}"}).text


def _tokens(scrape: str, kind: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in scrape.splitlines()
               if line.startswith("gateway_tokens_total{") and f'kind="{kind}"' in line and 'model="tiny:latest"' in line)


def test_a_stream_without_usage_is_relayed_unchanged_and_counts_an_estimate(limited: RunningGateway, upstream: FakeUpstream) -> None:
    events = [f"data: {json.dumps(chunk)}\n\n" for chunk in chat_chunks(["a"] * 8, usage=None)] + ["data: [DONE]\n\n"]
    upstream.enqueue("/v1/chat/completions", Reply.sse(chat_chunks(["a"] * 8, usage=None)))
    body = {"model": "tiny", "messages": USER_HI, "stream": True}
    headers = {"Authorization": f"Bearer {FREE_KEY}", "x-request-id": "relay-no-usage"}
    with httpx.Client(base_url=limited.url, timeout=10) as client:
        response = client.post("/v1/chat/completions", json=body, headers=headers)
    assert response.status_code == 200 and response.content == "".join(events).encode()  # byte for byte
    line = summary(limited, "relay-no-usage")
    # 11 `data:` events (role, 8 deltas, finish, [DONE]); the prompt: a quarter of the body's bytes
    assert line["completion_tokens"] == 11 and isinstance(line["prompt_tokens"], int) and line["prompt_tokens"] > 5, line


def test_a_relayed_stream_the_client_abandons_counts_its_estimate(limited: RunningGateway, upstream: FakeUpstream) -> None:
    # No include_usage, and the client hangs up after 25 events: the estimate (the body's bytes
    # / 4, one token per event relayed) still takes the key past 40, else closing early would dodge tpm.
    upstream.enqueue("/v1/chat/completions", Reply.sse(chat_chunks(["x"] * 60, usage=None), delay=0.05))
    body = {"model": "tiny", "messages": USER_HI, "stream": True}
    with httpx.Client(base_url=limited.url, headers={"Authorization": f"Bearer {ABANDON_KEY}"}, timeout=20) as client:
        with client.stream("POST", "/v1/chat/completions", json=body) as response:
            lines = response.iter_lines()
            events = 0
            while events < 25:
                events += next(lines).startswith("data:")
        deadline = time.monotonic() + 5
        while upstream.open_connections:  # the gateway has closed the upstream stream: the request is over
            assert time.monotonic() < deadline, "the abandoned stream was never closed upstream"
            time.sleep(0.05)
        time.sleep(0.2)
        refused = client.post("/v1/chat/completions", json={**body, "stream": False})
    assert refused.status_code == 429 and "40 tokens per minute" in refused.json()["error"]["message"]


def test_a_native_anthropic_stream_counts_message_start_and_message_delta(limited: RunningGateway, upstream: FakeUpstream) -> None:
    events = [
        'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant",'
        '"content":[],"model":"claude-up","stop_reason":null,"usage":{"input_tokens":25,"output_tokens":1}}}\n\n',
        'event: content_block_start\ndata: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}\n\n',
        'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"hi"}}\n\n',
        'event: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\n',
        'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":20}}\n\n',
        'event: message_stop\ndata: {"type":"message_stop"}\n\n',
    ]
    upstream.enqueue("/v1/messages", Reply(events=list(events), content_type="text/event-stream"))
    body = {"model": "claude", "max_tokens": 50, "stream": True, "messages": USER_HI}
    headers = {"x-api-key": NATIVE_KEY, "x-request-id": "relay-native"}
    with httpx.Client(base_url=limited.url, timeout=10) as client:
        response = client.post("/v1/messages", json=body, headers=headers)
        assert response.status_code == 200 and response.content == "".join(events).encode()
        line = summary(limited, "relay-native")
        assert line["prompt_tokens"] == 25 and line["completion_tokens"] == 20, line
        refused = client.post("/v1/messages", json={**body, "stream": False}, headers={"x-api-key": NATIVE_KEY})
    assert refused.status_code == 429 and refused.json()["error"]["type"] == "rate_limit_error"


# The pure reader.

def test_body_usage_reads_each_api_shape() -> None:
    assert body_usage(b'{"usage":{"prompt_tokens":12,"completion_tokens":3,"total_tokens":15}}') == (12, 3)
    assert body_usage(b'{"data":[],"usage":{"prompt_tokens":8,"total_tokens":8}}') == (8, 0)  # embeddings
    assert body_usage(b'{"usage":{"total_tokens":9}}') == (9, 0)
    nested = b'{"usage": {"prompt_tokens":5,"prompt_tokens_details":{"cached_tokens":2},"completion_tokens":1},"x":"}"}'
    assert body_usage(nested) == (5, 1)  # the usage object cut out, its nested details included
    assert body_usage(b'{"type":"message","usage":{"input_tokens":7,"output_tokens":4}}') == (7, 4)  # Anthropic, Responses
    assert body_usage(b'{"choices":[]}') == (None, None)
    assert body_usage(b'{"usage": null}') == (None, None)
    assert body_usage(b'not json "usage"') == (None, None)


def test_stream_usage_reads_lines_cut_across_reads_and_skips_null_usage() -> None:
    chunk = b'data: {"choices":[],"usage":{"prompt_tokens":10,"completion_tokens":5}}\n\n'
    head = b'data: {"choices":[{"delta":{"content":"a"}}],"usage":null}\n\n'
    for cuts in ((12, 25), (20, 24), (24, 40), (26, 60), (len(chunk) - 3, len(chunk) - 1)):  # "usage" whole or cut
        usage = StreamUsage()
        usage.feed(head + chunk[:cuts[0]])
        usage.feed(chunk[cuts[0]:cuts[1]])
        usage.feed(chunk[cuts[1]:])
        assert usage.tokens(True) == (10, 5), cuts
    usage = StreamUsage()
    for byte in range(len(chunk)):  # one byte a read
        usage.feed(chunk[byte:byte + 1])
    usage.feed(b"data: [DONE]\n\n")
    assert usage.tokens(True) == (10, 5)
    responses = StreamUsage()
    responses.feed(b'event: response.created\ndata: {"type":"response.created","response":{"usage":null}}\n\n')
    responses.feed(b'event: response.completed\ndata: {"type":"response.completed","response":'
                   b'{"usage":{"input_tokens":30,"output_tokens":6,"total_tokens":36}}}\n\n')
    assert responses.tokens(True) == (30, 6)


def test_stream_usage_estimates_what_a_stream_did_not_report() -> None:
    usage = StreamUsage(prompt_estimate=17)
    assert usage.tokens(False) is None  # nothing relayed: nothing counted
    usage.feed(b'data: {"choices":[{"delta":{"content":"a"}}]}\n\ndata: {"choices":[{"delta":{"content":"b"}}]}\n\n')
    assert usage.tokens(True) == (17, 2)
    anthropic = StreamUsage(prompt_estimate=99)  # cut short after message_start: its input counts, the events estimate the rest
    anthropic.feed(b'event: message_start\ndata: {"type":"message_start","message":{"usage":{"input_tokens":25,"output_tokens":1}}}\n\n')
    anthropic.feed(b'event: ping\ndata: {"type": "ping"}\n\n')
    assert anthropic.tokens(True) == (25, 1)
    assert anthropic.tokens(False) == (25, 2)  # cut short: at least one token per event relayed
