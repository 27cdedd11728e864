"""Issue 9, points 4-7: no configured secret leaves the gateway, in a body, a header or a log line.

The gateway runs under Granian with two workers against the loopback fake upstream, which
echoes secrets back in every place an upstream can: extra fields of an error object, a 200 body
(JSON or HTML) that is an error, an SSE error event (split across network reads too), a message
long enough that the key straddles the gateway's cut, and the value of a configured header or
a `base_url` password. A secret counts as leaked if its first or last 8 characters show (so any
long prefix or suffix of it counts as the secret).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway.logs import RedactingFilter
from gateway.upstream.redact import CLIENT_KEY, Secrets
from gateway.routing.loader import RouteMapError, load_route_map
from tests.client_support import wait_for
from tests.conftest import ROOT, RunningGateway
from tests.fake_upstream import FakeUpstream, Reply, chat_chunks, chat_completion

CHAT = "/v1/chat/completions"
KEY = "sk-harden-key-5d0c7e1f9a2b4c3d8e6f"
HEADER = "hdr-token-7a8b9c0d1e2f3a4b5c6d"
PASSWORD = "pw-basic-3c4d5e6f7a8b9c0d"
CLIENT = "sk-client-own-1f2e3d4c5b6a7988"
BASIC = base64.b64encode(f"gwuser:{PASSWORD}".encode()).decode()
SECRETS = {"api key": KEY, "header value": HEADER, "password": PASSWORD, "basic credentials": BASIC, "client key": CLIENT}
USER_HI = [{"role": "user", "content": "hi"}]


def routes(upstream: FakeUpstream) -> str:
    return f"""
upstreams:
  fake:
    base_url: "{upstream.url}"
    cooldown: false
    api_key: "${{HARDEN_KEY}}"
    headers: {{X-Upstream-Token: "${{HARDEN_HEADER}}", HTTP-Referer: "https://referer.example/app"}}
    max_retries: 0
  basic:
    base_url: "http://gwuser:${{HARDEN_PASSWORD}}@127.0.0.1:{upstream.port}/v1"
    cooldown: false
    max_retries: 0
  passthrough:
    base_url: "{upstream.url}"
    cooldown: false
    pass_client_key: true
    max_retries: 0
models:
  - {{name: tiny, upstream: fake, model: up-model}}
  - {{name: basic, upstream: basic, model: up-model}}
  - {{name: passthrough, upstream: passthrough, model: up-model}}
"""


ENV = {"HARDEN_KEY": KEY, "HARDEN_HEADER": HEADER, "HARDEN_PASSWORD": PASSWORD}


@pytest.fixture(scope="module")
def gateway(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    folder = tmp_path_factory.mktemp("secrets")
    path = folder / "routes.yaml"
    path.write_text(routes(upstream))
    running = RunningGateway(path, folder / "gateway.log", workers=2, env=ENV, log_level="debug")
    yield running
    running.stop()


def leaks(text: str) -> list[str]:
    """The secrets `text` shows, in full or by a long prefix or suffix."""
    return [name for name, secret in SECRETS.items() if secret[:8] in text or secret[-8:] in text]


def assert_clean(gateway: RunningGateway, response: httpx.Response) -> None:
    """No secret in the body, the headers, or any log line of the request (once it is over)."""
    assert leaks(response.text) == [], response.text
    assert leaks(" ".join(f"{name}: {value}" for name, value in response.headers.items())) == []
    request_id = response.headers["x-request-id"]

    def lines() -> list[str]:
        return [line for line in gateway.log_text().splitlines() if request_id in line]

    assert wait_for(lambda: any('"event":"request"' in line for line in lines()))
    logged = "\n".join(lines())
    assert leaks(logged) == [], logged


def post(gateway: RunningGateway, path: str, body: dict[str, object], key: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(gateway.url + path, json=body, headers=headers, timeout=30)


def _headers(upstream: FakeUpstream) -> dict[str, str]:
    """The headers of the last chat request the upstream received, by lower-case name."""
    return {name.lower(): value for name, value in upstream.last(CHAT).headers.items()}


def read_stream(gateway: RunningGateway, model: str = "tiny") -> httpx.Response:
    body = {"model": model, "messages": USER_HI, "stream": True}
    with httpx.stream("POST", gateway.url + CHAT, json=body, timeout=30) as response:
        response.read()
    return response


# -- point 4: /v1 relays nothing unscrubbed -----------------------------------------------------


@pytest.mark.parametrize(
    ("model", "client_key", "secret"),
    [
        pytest.param("tiny", None, KEY, id="api-key"),
        pytest.param("tiny", None, HEADER, id="header-value"),
        pytest.param("passthrough", CLIENT, CLIENT, id="client-key"),
    ],
)
@pytest.mark.parametrize("status", [400, 429, 500])
def test_v1_error_object_is_scrubbed_in_every_field(
    gateway: RunningGateway, upstream: FakeUpstream, model: str, client_key: str | None, secret: str, status: int
) -> None:
    error = {"message": "bad request", "type": "invalid_request_error", "param": secret, "code": f"key:{secret}",
             "key": secret, "details": [{"value": secret}], secret: "as a name"}
    upstream.enqueue(CHAT, Reply.json({"error": error}, status=status))
    response = post(gateway, CHAT, {"model": model, "messages": USER_HI}, key=client_key)
    assert response.status_code == status
    relayed = response.json()["error"]
    assert (relayed["message"], relayed["type"], relayed["param"], relayed["code"]) == ("bad request", "invalid_request_error", "***", "key:***")
    assert relayed["details"] == [{"value": "***"}]
    assert_clean(gateway, response)


@pytest.mark.parametrize(
    ("reply", "stream"),
    [
        pytest.param(Reply.json({"error": {"message": f"invalid api key {KEY}", "param": HEADER}}), False, id="json-error"),
        pytest.param(Reply.json({"error": {"message": f"invalid api key {KEY}"}}), True, id="json-error-to-a-stream-request"),
        pytest.param(Reply(raw=f"<html><body><p>token {HEADER} refused</p><p>{KEY}</p></body></html>".encode(),
                           content_type="text/html"), False, id="html-page"),
        pytest.param(Reply.json(chat_completion(f"your key is {KEY}")), False, id="completion-quoting-the-key"),
    ],
)
def test_v1_non_stream_200_body_is_scrubbed(gateway: RunningGateway, upstream: FakeUpstream, reply: Reply, stream: bool) -> None:
    upstream.enqueue(CHAT, reply)
    response = post(gateway, CHAT, {"model": "tiny", "messages": USER_HI, "stream": stream})
    assert response.status_code == 200
    assert response.headers["content-type"].split(";")[0] == reply.content_type
    assert "***" in response.text
    assert_clean(gateway, response)


def _error_event(secret: str) -> str:
    return "data: " + json.dumps({"error": {"message": f"provider failed with key {secret}", "code": 502, "param": secret}}) + "\n\n"


@pytest.mark.parametrize(
    "fault",
    [
        pytest.param([_error_event(KEY)], id="data-error-event"),
        pytest.param([f"event: error\ndata: {{\"message\": \"bad token {HEADER}\"}}\n\n"], id="event-error"),
        pytest.param([_error_event(KEY)[:40].encode(), _error_event(KEY)[40:64].encode(), _error_event(KEY)[64:].encode()],
                     id="error-event-split-across-reads"),
    ],
)
def test_v1_sse_error_event_is_scrubbed(gateway: RunningGateway, upstream: FakeUpstream, fault: list[str | bytes]) -> None:
    healthy = [f"data: {json.dumps(chunk)}\n\n" for chunk in chat_chunks(["Hel", "lo"])[:3]]
    upstream.enqueue(CHAT, Reply(events=[*healthy, *fault], content_type="text/event-stream", delay=0.02))
    response = read_stream(gateway)
    assert response.status_code == 200
    assert response.text.startswith("".join(healthy))  # the healthy part, byte for byte
    assert "***" in response.text[len("".join(healthy)):]
    assert_clean(gateway, response)


# -- point 5: scrub first, then cut ---------------------------------------------------------------


def _straddling(limit: int, secret: str = KEY) -> str:
    """Filler, then `secret` across position `limit`: a cut there keeps all of it but two characters."""
    return "x" * (limit - len(secret) + 2) + secret


@pytest.mark.parametrize(
    ("path", "reply"),
    [
        pytest.param("/api/chat", Reply.json({"error": {"message": _straddling(1000)}}, status=400), id="api-message-1000"),
        pytest.param("/api/chat", Reply.json({"error": {"message": _straddling(1000, HEADER)}}, status=503), id="api-header-1000"),
        pytest.param("/api/chat", Reply(raw=f"<html><body>{_straddling(200)}</body></html>".encode(), content_type="text/html"),
                     id="api-excerpt-200"),
        pytest.param(CHAT, Reply.json({"error": {"message": _straddling(1000)}}, status=400), id="v1-message-1000"),
    ],
)
def test_key_straddling_the_cut_is_masked(gateway: RunningGateway, upstream: FakeUpstream, path: str, reply: Reply) -> None:
    upstream.enqueue(CHAT, reply)
    response = post(gateway, path, {"model": "tiny", "messages": USER_HI, "stream": False})
    assert response.status_code >= 400
    assert "***" in response.text
    assert_clean(gateway, response)


# -- point 6: nothing reaches the log unscrubbed --------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "stream"),
    [
        pytest.param(Reply.json({"error": {"message": f"the key {KEY} is not valid"}}), False, id="200-error-body"),
        pytest.param(Reply.sse([{"error": {"message": f"the token {HEADER} is not valid"}}]), True, id="first-event-is-an-error"),
    ],
)
def test_upstream_error_in_a_200_is_not_logged_unscrubbed(
    gateway: RunningGateway, upstream: FakeUpstream, reply: Reply, stream: bool
) -> None:
    upstream.enqueue(CHAT, reply)
    response = post(gateway, "/api/chat", {"model": "tiny", "messages": USER_HI, "stream": stream})
    assert response.status_code == 502
    assert "***" in response.json()["error"]
    assert_clean(gateway, response)


# -- point 7: header values and base_url passwords are secrets ------------------------------------


@pytest.mark.parametrize("path", ["/api/chat", CHAT])
def test_configured_header_value_is_a_secret(gateway: RunningGateway, upstream: FakeUpstream, path: str) -> None:
    upstream.enqueue(CHAT, Reply.json({"error": {"message": f"X-Upstream-Token {HEADER} is revoked"}}, status=400))
    response = post(gateway, path, {"model": "tiny", "messages": USER_HI})
    assert response.status_code == 400
    assert _headers(upstream)["x-upstream-token"] == HEADER  # still sent
    assert_clean(gateway, response)


def test_base_url_password_is_sent_as_basic_auth(gateway: RunningGateway, upstream: FakeUpstream) -> None:
    response = post(gateway, "/api/chat", {"model": "basic", "messages": USER_HI, "stream": False})
    assert response.status_code == 200, response.text
    assert response.json()["message"]["content"] == "Hello there."
    assert _headers(upstream)["authorization"] == f"Basic {BASIC}"
    assert_clean(gateway, response)


@pytest.mark.parametrize("path", ["/api/chat", CHAT])
def test_base_url_password_is_a_secret(gateway: RunningGateway, upstream: FakeUpstream, path: str) -> None:
    upstream.enqueue(CHAT, Reply.json({"error": {"message": f"proxy: user gwuser password {PASSWORD} (Basic {BASIC})",
                                                 "param": PASSWORD}}, status=400))
    response = post(gateway, path, {"model": "basic", "messages": USER_HI})
    assert response.status_code == 400, response.text
    assert_clean(gateway, response)


def test_wrong_base_url_names_it_with_the_password_masked(gateway: RunningGateway, upstream: FakeUpstream) -> None:
    upstream.enqueue(CHAT, Reply(status=404, raw=b"404 page not found", content_type="text/plain"))
    response = post(gateway, "/api/chat", {"model": "basic", "messages": USER_HI, "stream": False})
    assert response.status_code == 502
    assert f"answered 404 at http://gwuser:***@127.0.0.1:{upstream.port}/v1" in response.json()["error"]
    assert_clean(gateway, response)


def test_check_shows_base_urls_with_the_password_masked(upstream: FakeUpstream, tmp_path: Path) -> None:
    path = tmp_path / "routes.yaml"
    path.write_text(routes(upstream))
    result = subprocess.run([sys.executable, "-m", "gateway", "check", "--routes", str(path)], cwd=ROOT,
                            env={**os.environ, **ENV}, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert f"http://gwuser:***@127.0.0.1:{upstream.port}/v1" in result.stdout
    assert leaks(result.stdout + result.stderr) == []


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        pytest.param('api_key: "sk-other-key-0123456789"', "api_key", id="with-api-key"),
        pytest.param('headers: {Authorization: "Bearer sk-other-key-0123456789"}', "Authorization", id="with-authorization-header"),
        pytest.param("pass_client_key: true", "pass_client_key", id="with-pass-client-key"),
    ],
)
def test_basic_auth_that_cannot_be_sent_is_a_clear_error(tmp_path: Path, extra: str, problem: str) -> None:
    path = tmp_path / "routes.yaml"
    path.write_text(f"""
upstreams:
  proxy:
    base_url: "https://gwuser:{PASSWORD}@proxy.example/v1"
    {extra}
models:
  - {{name: m, upstream: proxy}}
""")
    with pytest.raises(RouteMapError) as caught:
        load_route_map(path, environ={})
    message = str(caught.value)
    assert "upstreams.proxy" in message and "user and password" in message and problem in message
    assert leaks(message) == []


# -- the masking rules themselves (redact.Secrets, pure) ------------------------------------------


REFERER = "https://referer.example/app"


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        pytest.param(f"key {KEY} here", "key *** here", id="whole"),
        pytest.param(f"cut: {KEY[:-2]}", "cut: ***", id="prefix-at-the-end"),
        pytest.param(f"quoted {KEY[:12]}...{KEY[-4:]}", f"quoted ***...{KEY[-4:]}", id="prefix-before-an-ellipsis"),
        pytest.param(f"{KEY[10:]} was the rest", "*** was the rest", id="suffix"),
        pytest.param(REFERER.replace("/", "\\/"), "***", id="slash-escaped"),
        pytest.param(f"see {REFERER}/x and https://api.example.com/v1", "see ***/x and https://api.example.com/v1",
                     id="weak-whole-but-not-a-common-start"),
        pytest.param("at https://referer.example/other", "at https://referer.example/other", id="weak-prefix-inside-a-word"),
        pytest.param("at https://referer.exam", "at ***", id="weak-prefix-at-the-end"),
        pytest.param("upstream 'ollama' is down", "upstream '***' is down", id="short-key-whole"),
        pytest.param("abc and ab", "abc and ab", id="placeholder-too-short"),
    ],
)
def test_masking_rules(text: str, masked: str) -> None:
    secrets = Secrets([(KEY, True), (REFERER, False), ("ollama", True), ("abc", True)])
    assert secrets.scrub(text) == masked
    assert secrets.scrub_bytes(text.encode()) == masked.encode()


def test_a_secret_is_found_as_json_escapes_it() -> None:
    password = "pässwörd-0123456789"
    body = json.dumps({"error": {"message": f"bad password {password}"}}).encode()  # \u00e4 and \u00f6
    assert password.encode() not in body
    assert Secrets([(password, True)]).scrub_bytes(body) == b'{"error": {"message": "bad password ***"}}'


def test_clip_scrubs_before_it_cuts() -> None:
    secrets = Secrets([(KEY, True)])
    clipped = secrets.clip(_straddling(200), 200, "...")
    assert len(clipped) <= 203 and leaks(clipped) == []


def test_client_key_is_masked_only_in_its_request() -> None:
    secrets = Secrets([(KEY, True)])
    assert secrets.scrub(f"echo {CLIENT}") == f"echo {CLIENT}"
    token = CLIENT_KEY.set(CLIENT)
    try:
        assert secrets.scrub(f"echo {CLIENT[:-3]}") == "echo ***"
        assert secrets.scrub_json({"param": [CLIENT]}) == {"param": ["***"]}
    finally:
        CLIENT_KEY.reset(token)


def test_granian_log_records_are_scrubbed() -> None:
    """Granian's own lines (an unhandled exception's traceback) go through a filter on its handlers."""
    secrets = Secrets([(KEY, True)])
    try:
        raise ValueError(f"upstream said {KEY}")
    except ValueError:
        record = logging.LogRecord("_granian", logging.ERROR, __file__, 1, "crash with %s", (KEY[:-1],), sys.exc_info())
    assert RedactingFilter(lambda: secrets).filter(record)
    formatted = logging.Formatter("[%(levelname)s] %(message)s").format(record)
    assert "ValueError: upstream said ***" in formatted and "crash with ***" in formatted
    assert leaks(formatted) == []
