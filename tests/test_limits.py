"""Limits: idle (not total) timeouts, growing stream buffers, body size, upstream concurrency,
JSON depth and header limits. Each is checked against the real gateway under Granian, with the
limits set low through the environment, except the pure decoder and limiter checks.
"""

from __future__ import annotations

import base64
import json
import socket
from collections.abc import Iterator

import anyio
import httpx
import pytest

from gateway.errors import SERVER_BUSY, ServerBusy
from gateway.upstream.limiter import UpstreamLimiter, json_too_deep
from gateway.settings import Settings
from gateway.upstream.sse import MalformedEvent, SSEDecoder
from tests.client_support import first_line, raw_request, wait_for
from tests.conftest import RunningGateway
from tests.fake_upstream import FakeUpstream, Reply, chat_chunks

CHAT = "/v1/chat/completions"
USER_HI = [{"role": "user", "content": "hi"}]
BODY_LIMIT = 1024 * 1024


@pytest.fixture(scope="module")
def limited(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    folder = tmp_path_factory.mktemp("limits")
    routes = folder / "routes.yaml"
    routes.write_text(f"""
upstreams:
  fake: {{base_url: "{upstream.url}", api_key: "${{TEST_UPSTREAM_KEY}}", max_retries: 0, timeout: 30, cooldown: false}}
  slow: {{base_url: "{upstream.url}", api_key: "${{TEST_UPSTREAM_KEY}}", max_retries: 0, timeout: 1, cooldown: false}}
models:
  - {{name: tiny, upstream: fake, model: up-model}}
  - {{name: slow, upstream: slow, model: up-model}}
""")
    env = {
        "GATEWAY_MAX_BODY_BYTES": str(BODY_LIMIT),
        "GATEWAY_MAX_CONCURRENT_UPSTREAM": "2",
        "GATEWAY_QUEUE_TIMEOUT": "0.5",
        "GATEWAY_MAX_HEADER_BYTES": "16384",
    }
    running = RunningGateway(routes, folder / "gateway.log", env=env)
    yield running
    running.stop()


def chat(gateway: RunningGateway, model: str = "tiny", stream: bool = False, **extra: object) -> httpx.Response:
    return httpx.post(gateway.url + "/api/chat", json={"model": model, "messages": USER_HI, "stream": stream, **extra}, timeout=30)


def assert_error(response: httpx.Response, status: int, message: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json; charset=utf-8"
    assert response.json() == {"error": message}


# -- timeouts between chunks, not in total -----------------------------------------------------------


def test_a_long_healthy_stream_outlives_the_read_timeout(limited: RunningGateway, upstream: FakeUpstream) -> None:
    """timeout: 1 s is the silence allowed between reads: a 3 s stream with a chunk every 0.2 s completes."""
    upstream.enqueue(CHAT, Reply.sse(chat_chunks(["tick"] * 12), delay=0.2))
    response = chat(limited, "slow", stream=True)
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert response.status_code == 200 and lines[-1]["done"] is True
    assert [line["message"]["content"] for line in lines[:-1]] == ["tick"] * 12


def test_no_total_timeout_by_default() -> None:
    """The SDK's 600 s is a per-read timeout here; no total applies unless routes.yaml sets one."""
    from gateway.routing.schema import UpstreamConfig

    config = UpstreamConfig(base_url="http://127.0.0.1:1/v1")
    assert config.total_timeout is None


# -- stream buffers ------------------------------------------------------------------------------------


def test_decoder_buffers_start_empty_and_hold_only_the_unfinished_line() -> None:
    decoder = SSEDecoder()
    assert decoder._parts == [] and decoder._partial == 0 and decoder._data == []
    event = b'data: {"content": "' + b"x" * 100_000 + b'"}\n\n'
    reads = [event[start : start + 4096] for start in range(0, len(event), 4096)]
    for count, data in enumerate(reads[:-1], start=1):
        assert decoder.feed(data) == []
        assert decoder._partial == 4096 * count and len(decoder._parts) == count
    assert decoder.feed(reads[-1]) == [{"content": "x" * 100_000}]
    assert decoder._parts == [] and decoder._partial == 0 and decoder._data == []


def test_decoder_refuses_an_event_beyond_its_limit() -> None:
    decoder = SSEDecoder(max_event_bytes=1000)
    with pytest.raises(MalformedEvent, match="larger than 1000 bytes"):
        for _ in range(10):
            decoder.feed(b"data: " + b"y" * 200)
    with pytest.raises(MalformedEvent, match="larger than 1000 bytes"):
        SSEDecoder(max_event_bytes=1000).feed(b"".join(b"data: " + b"z" * 100 + b"\n" for _ in range(20)))


def test_decoder_joins_a_line_split_into_many_reads_once() -> None:
    line = 'data: {"n": "ü€'.encode() + b"1" * 5000 + b'"}\n\n'
    decoder = SSEDecoder()
    events = [event for byte in range(len(line)) for event in decoder.feed(line[byte : byte + 1])]
    assert events == [{"n": "ü€" + "1" * 5000}]


# -- body size -----------------------------------------------------------------------------------------


def test_a_declared_body_over_the_limit_is_413(limited: RunningGateway, upstream: FakeUpstream) -> None:
    content = json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "x" * (2 * BODY_LIMIT)}]})
    response = httpx.post(limited.url + "/api/chat", content=content, timeout=30)
    assert_error(response, 413, f"request body too large (limit {BODY_LIMIT} bytes)")
    assert upstream.received == []


def test_a_chunked_body_over_the_limit_is_413(limited: RunningGateway, upstream: FakeUpstream) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"model": "tiny", "messages": [{"role": "user", "content": "'
        for _ in range(40):
            yield b"x" * 65536
        yield b'"}]}'

    response = httpx.post(limited.url + "/api/chat", content=chunks(), timeout=30)
    assert_error(response, 413, f"request body too large (limit {BODY_LIMIT} bytes)")
    assert upstream.received == []
    assert chat(limited).status_code == 200


def _png(size: int) -> str:
    """A base64 image of about `size` bytes (a PNG signature, then padding)."""
    return base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(size * 3 // 4)).decode()


def test_a_body_under_the_limit_is_served(limited: RunningGateway) -> None:
    image = _png(BODY_LIMIT // 2)
    response = chat(limited, messages=[{"role": "user", "content": "what is this?", "images": [image]}])
    assert response.status_code == 200


def test_the_default_body_limit_takes_several_images(gateway: RunningGateway, upstream: FakeUpstream) -> None:
    """Three 6 MB base64 images in one request pass the defaults."""
    assert Settings().max_body_bytes == 64 * 1024 * 1024
    images = [_png(6 * 1024 * 1024)] * 3
    response = httpx.post(gateway.url + "/api/chat", timeout=60, json={
        "model": "tiny", "stream": False, "messages": [{"role": "user", "content": "compare", "images": images}],
    })
    assert response.status_code == 200
    assert len(json.dumps(upstream.last(CHAT).json)) > 18 * 1024 * 1024


# -- upstream concurrency ----------------------------------------------------------------------------


def test_over_the_upstream_limit_a_request_waits_then_gets_503(limited: RunningGateway, upstream: FakeUpstream) -> None:
    """Two streams hold both slots; a third request gives up after the queue timeout."""
    upstream.enqueue(CHAT, *[Reply.sse(chat_chunks(["x"] * 100), stall_after=2, stall=60) for _ in range(2)])
    holders = [raw_request(limited.port, {"model": "tiny", "messages": USER_HI, "stream": True}) for _ in range(2)]
    try:
        for sock in holders:
            first_line(sock)
        assert_error(chat(limited), 503, SERVER_BUSY)
        assert_error(chat(limited, stream=True), 503, SERVER_BUSY)
    finally:
        for sock in holders:
            sock.close()
    assert wait_for(lambda: upstream.in_flight == 0)
    assert wait_for(lambda: chat(limited).status_code == 200)


def test_local_replies_need_no_upstream_slot(limited: RunningGateway, upstream: FakeUpstream) -> None:
    upstream.enqueue(CHAT, *[Reply(stall=60) for _ in range(2)])
    holders = [raw_request(limited.port, {"model": "tiny", "messages": USER_HI, "stream": False}) for _ in range(2)]
    try:
        assert wait_for(lambda: upstream.in_flight == 2)
        assert httpx.get(limited.url + "/api/tags").status_code == 200
        load = httpx.post(limited.url + "/api/chat", json={"model": "tiny", "messages": []})
        assert load.status_code == 200 and load.json()["done_reason"] == "load"
    finally:
        for sock in holders:
            sock.close()
    assert wait_for(lambda: upstream.in_flight == 0)


def test_limiter_hands_a_freed_slot_to_the_next_waiter() -> None:
    async def scenario() -> list[str]:
        limiter = UpstreamLimiter(1, queue_timeout=30)
        order: list[str] = []
        release = anyio.Event()

        async def holder() -> None:
            async with limiter.slot():
                order.append("first")
                await release.wait()

        async def waiter() -> None:
            async with limiter.slot():
                order.append("second")

        async with anyio.create_task_group() as group:
            group.start_soon(holder)
            await anyio.wait_all_tasks_blocked()
            group.start_soon(waiter)
            await anyio.wait_all_tasks_blocked()
            assert limiter.in_use == 1 and order == ["first"]
            release.set()
        assert limiter.in_use == 0
        return order

    assert anyio.run(scenario) == ["first", "second"]


def test_limiter_gives_up_after_the_queue_timeout() -> None:
    async def scenario() -> None:
        limiter = UpstreamLimiter(1, queue_timeout=0.01)
        await limiter.acquire()
        with pytest.raises(ServerBusy) as caught:
            await limiter.acquire()
        assert caught.value.status_code == 503 and caught.value.message == SERVER_BUSY
        limiter.release()
        async with limiter.slot():
            assert limiter.in_use == 1

    anyio.run(scenario)


# -- JSON depth ----------------------------------------------------------------------------------------


def _nested(depth: int) -> dict[str, object]:
    node: dict[str, object] = {"type": "string"}
    for _ in range(depth - 1):
        node = {"type": "object", "properties": {"a": node}}
    return node


@pytest.mark.parametrize("depth", [pytest.param(70, id="over-the-limit"), pytest.param(300, id="beyond-orjson-serializer")])
def test_json_nested_too_deep_is_400(limited: RunningGateway, upstream: FakeUpstream, depth: int) -> None:
    response = chat(limited, format=_nested(depth))
    assert_error(response, 400, "request body nests JSON deeper than 64 levels")
    assert upstream.received == []


def test_json_within_the_depth_limit_is_served(limited: RunningGateway, upstream: FakeUpstream) -> None:
    response = chat(limited, format=_nested(25))
    assert response.status_code == 200
    assert "response_format" in upstream.last(CHAT).json


def test_json_depth_counts_objects_and_arrays() -> None:
    assert not json_too_deep({"a": [{"b": [1]}]}, 4)
    assert json_too_deep({"a": [{"b": [[1]]}]}, 4)
    assert not json_too_deep({}, 1) and not json_too_deep("text", 1)


# -- headers -------------------------------------------------------------------------------------------


def test_headers_beyond_the_limit_are_refused_and_the_gateway_lives_on(limited: RunningGateway) -> None:
    assert httpx.get(limited.url + "/api/version", headers={"X-Big": "a" * 20_000}).status_code == 431
    assert httpx.get(limited.url + "/api/version", headers={f"X-Many-{i}": "v" for i in range(120)}).status_code == 431
    assert httpx.get(limited.url + "/api/version", headers={"X-Fine": "a" * 8_000}).status_code == 200


def test_an_endless_header_line_does_not_hang_the_gateway(limited: RunningGateway) -> None:
    with socket.create_connection(("127.0.0.1", limited.port), timeout=30) as sock:
        sock.sendall(b"GET /api/version HTTP/1.1\r\nHost: x\r\nX-Endless: " + b"b" * 40_000)
        answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 431")
    assert httpx.get(limited.url + "/api/version").status_code == 200


def test_settings_read_the_limits_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {"MAX_CONCURRENT_UPSTREAM": "7", "QUEUE_TIMEOUT": "2.5", "MAX_BODY_BYTES": "2048",
                        "MAX_JSON_DEPTH": "10", "MAX_HEADER_BYTES": "9000", "SHUTDOWN_GRACE": "3"}.items():
        monkeypatch.setenv(f"GATEWAY_{name}", value)
    settings = Settings()
    assert (settings.max_concurrent_upstream, settings.queue_timeout, settings.max_body_bytes) == (7, 2.5, 2048)
    assert (settings.max_json_depth, settings.max_header_bytes, settings.shutdown_grace) == (10, 9000, 3.0)
    assert settings.to_environ()["GATEWAY_QUEUE_TIMEOUT"] == "2.5"  # what the workers are given
