"""Issue 9 points 3 and 10 (YAML): the `Host` check against DNS rebinding, the CORS same-origin
shortcut, no redirect built from the Host, and routes.yaml syntax errors that give a position but
never the file's text. End to end under Granian with two workers, plus the pure rules."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.cli import main
from gateway.http.hosts import HostPolicy, allowed_hosts, host_name
from gateway.routing.loader import RouteMapError, load_route_map
from tests.conftest import RunningGateway, routes_yaml
from tests.fake_upstream import FakeUpstream

WORKERS = 2
USER_HI = [{"role": "user", "content": "hi"}]
CHAT_BODY = {"model": "tiny", "messages": USER_HI, "stream": False}
ATTACKER = {"Host": "attacker.example", "Origin": "http://attacker.example"}
# What a literal key on the broken line looks like; it must never be echoed.
LEAKED = "sk-live-LEAKME0123456789abcdef"


def start(upstream: FakeUpstream, folder: Path, env: dict[str, str] | None = None) -> RunningGateway:
    routes = folder / "routes.yaml"
    routes.write_text(routes_yaml(upstream.url))
    return RunningGateway(routes, folder / "gateway.log", workers=WORKERS, env=env)


@pytest.fixture(scope="module")
def guarded(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    """The default configuration: no auth, no GATEWAY_ALLOWED_HOSTS."""
    running = start(upstream, tmp_path_factory.mktemp("hosts"))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def proxied(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    running = start(upstream, tmp_path_factory.mktemp("proxied"), {"GATEWAY_ALLOWED_HOSTS": "llm.example.com, *.corp.example"})
    yield running
    running.stop()


@pytest.fixture(scope="module")
def unchecked(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    """GATEWAY_ALLOWED_HOSTS=*: any Host is served (Ollama's behaviour off loopback)."""
    running = start(upstream, tmp_path_factory.mktemp("unchecked"), {"GATEWAY_ALLOWED_HOSTS": "*"})
    yield running
    running.stop()


def log_lines(gateway: RunningGateway, event: str) -> list[dict[str, Any]]:
    lines = []
    for raw in gateway.log_text().splitlines():
        if raw.startswith("{"):
            line = json.loads(raw)
            if line.get("event") == event:
                lines.append(line)
    return lines


# -- the Host check, end to end ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/api/tags"), ("POST", "/api/chat"), ("GET", "/"), ("POST", "/v1/chat/completions"), ("OPTIONS", "/api/chat")],
)
def test_a_rebound_name_gets_403_with_an_empty_body(guarded: RunningGateway, upstream: FakeUpstream, method: str, path: str) -> None:
    """DNS rebinding: the page's own name in Host and Origin. As Ollama: 403, empty body, nothing runs."""
    extra = {"Access-Control-Request-Method": "POST"} if method == "OPTIONS" else {}
    body = CHAT_BODY if method == "POST" else None
    response = httpx.request(method, guarded.url + path, json=body, headers={**ATTACKER, **extra})
    assert (response.status_code, response.content) == (403, b"")
    assert "access-control-allow-origin" not in response.headers
    assert upstream.received == []


def test_a_rebound_name_without_origin_is_refused_too(guarded: RunningGateway, upstream: FakeUpstream) -> None:
    """A same-origin GET carries no Origin at all, so only the Host gives the page away."""
    for path in ("/api/tags", "/api/ps", "/api/version", "/v1/models"):
        response = httpx.get(guarded.url + path, headers={"Host": "attacker.example"})
        assert (response.status_code, response.content) == (403, b""), path
    chat = httpx.post(guarded.url + "/api/chat", json=CHAT_BODY, headers={"Host": "attacker.example:11434"})
    assert chat.status_code == 403 and upstream.received == []


@pytest.mark.parametrize(
    "host",
    [
        pytest.param("localhost:{port}", id="localhost-port"),
        pytest.param("localhost", id="localhost"),
        pytest.param("LocalHost:{port}", id="any-case"),
        pytest.param("127.0.0.1:{port}", id="loopback-v4-port"),
        pytest.param("127.0.0.1", id="loopback-v4"),
        pytest.param("[::1]:{port}", id="loopback-v6-port"),
        pytest.param("[::1]", id="loopback-v6"),
        pytest.param("192.168.1.20:{port}", id="private-ip"),
        pytest.param("203.0.113.7:{port}", id="public-ip-literal"),
        pytest.param("app.localhost:{port}", id="dot-localhost"),
        pytest.param("nas.local", id="dot-local"),
        pytest.param("host.docker.internal:{port}", id="dot-internal"),
        pytest.param("gateway:11434", id="compose-service-name"),
        pytest.param("localhost.:{port}", id="trailing-dot"),
    ],
)
def test_this_machines_names_pass(guarded: RunningGateway, host: str) -> None:
    response = httpx.get(guarded.url + "/api/tags", headers={"Host": host.format(port=guarded.port)})
    assert response.status_code == 200, response.text
    assert "models" in response.json()


def test_the_machines_hostname_passes(guarded: RunningGateway) -> None:
    response = httpx.get(guarded.url + "/api/tags", headers={"Host": f"{socket.gethostname()}:{guarded.port}"})
    assert response.status_code == 200


@pytest.mark.parametrize(
    "host",
    [
        pytest.param("attacker.example", id="public-name"),
        pytest.param("localhost.attacker.example", id="localhost-prefix"),
        pytest.param("attacker.example.", id="trailing-dot"),
        pytest.param("127.0.0.1.nip.io", id="ip-looking-name"),
        pytest.param("localhost:abc", id="bad-port"),
        pytest.param("[::1]x", id="junk-after-bracket"),
        pytest.param("[attacker.example]", id="bracketed-name"),
    ],
)
def test_foreign_or_malformed_hosts_fail(guarded: RunningGateway, host: str) -> None:
    assert httpx.get(guarded.url + "/api/tags", headers={"Host": host}).status_code == 403


def test_the_refusal_is_logged_with_the_setting_to_change(guarded: RunningGateway) -> None:
    httpx.get(guarded.url + "/api/tags?refusal-log", headers={"Host": "proxy-name.example.net"})
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        refused = [line for line in log_lines(guarded, "request") if line["status"] == 403 and "proxy-name" in line.get("error", "")]
        if refused:
            break
        time.sleep(0.05)
    assert refused and "GATEWAY_ALLOWED_HOSTS" in refused[0]["error"] and refused[0]["path"] == "/api/tags"


def test_gateway_allowed_hosts_admits_a_proxys_names(proxied: RunningGateway) -> None:
    def status(host: str) -> int:
        return httpx.get(proxied.url + "/api/tags", headers={"Host": host}).status_code

    assert status("llm.example.com") == 200
    assert status("LLM.example.com:443") == 200
    assert status("chat.corp.example") == 200
    assert status("corp.example") == 403  # `*.` is the subdomains, not the name itself
    assert status("attacker.example") == 403
    assert status(f"localhost:{proxied.port}") == 200  # the built-in names still pass
    chat = httpx.post(proxied.url + "/api/chat", json=CHAT_BODY, headers={"Host": "llm.example.com"})
    assert chat.status_code == 200


def test_a_proxys_own_page_is_same_origin(proxied: RunningGateway) -> None:
    """A listed name vouches for its Origin: a web app served by the proxy on that name needs no CORS."""
    response = httpx.get(proxied.url + "/api/tags", headers={"Host": "llm.example.com", "Origin": "https://llm.example.com"})
    assert response.status_code == 200 and "access-control-allow-origin" not in response.headers


def test_star_serves_any_host_but_never_trusts_it_for_cors(unchecked: RunningGateway, upstream: FakeUpstream) -> None:
    """With the check off, a Host proves nothing: Origin == Host is no longer same-origin."""
    assert httpx.get(unchecked.url + "/api/tags", headers={"Host": "anything.example"}).status_code == 200
    rebound = httpx.post(unchecked.url + "/api/chat", json=CHAT_BODY, headers=ATTACKER)
    assert (rebound.status_code, rebound.content) == (403, b"")
    tags = httpx.get(unchecked.url + "/api/tags", headers=ATTACKER)
    assert tags.status_code == 403
    assert upstream.received == []


def test_same_origin_from_a_local_host_is_still_not_cors(guarded: RunningGateway) -> None:
    for host in (f"127.0.0.1:{guarded.port}", f"localhost:{guarded.port}"):
        response = httpx.get(guarded.url + "/api/tags", headers={"Host": host, "Origin": f"http://{host}"})
        assert response.status_code == 200 and "access-control-allow-origin" not in response.headers


# -- trailing slashes: served, never redirected ---------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/api/tags/", 200),
        ("HEAD", "/api/tags/", 200),
        ("GET", "/api/version/", 200),
        ("POST", "/api/chat/", 200),
        ("POST", "/v1/chat/completions/", 200),
        ("GET", "/v1/models/", 200),
        ("GET", "/v1/models/tiny/", 200),
        ("GET", "/api/tags//", 404),
        ("GET", "/nowhere/", 404),
    ],
)
def test_a_trailing_slash_is_served_without_a_redirect(unchecked: RunningGateway, method: str, path: str, status: int) -> None:
    """Starlette answered 307 with `Location: http://<Host>/...`; the Host is the client's text."""
    body = {"model": "tiny", "messages": USER_HI, "stream": False} if method == "POST" else None
    response = httpx.request(method, unchecked.url + path, json=body, headers={"Host": "evil.example"}, follow_redirects=False)
    assert response.status_code == status, response.text
    assert "location" not in response.headers
    if status == 404:
        assert response.text == "404 page not found"


def test_a_trailing_slash_is_served_with_the_default_settings(guarded: RunningGateway) -> None:
    response = httpx.get(guarded.url + "/api/tags/", headers={"Host": f"localhost:{guarded.port}"}, follow_redirects=False)
    assert response.status_code == 200 and "location" not in response.headers and "models" in response.json()


# -- the pure rules ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "name"),
    [
        ("localhost:11434", "localhost"),
        ("LOCALHOST", "localhost"),
        ("[::1]:11434", "::1"),
        ("[::1]", "::1"),
        ("::1", "::1"),
        ("example.com.", "example.com"),
        ("", ""),
        ("localhost:", None),
        ("localhost:x", None),
        ("[::1", None),
        ("[::1]:", None),
        ("[example.com]", None),
        ("a:b:c", None),
    ],
)
def test_host_name_strips_the_port(header: str, name: str | None) -> None:
    assert host_name(header) == name


def test_host_policy_names() -> None:
    policy = HostPolicy(allowed_hosts("proxy.example.com,*.corp.example"), listen_host="gw.example.org", hostname="Box.Example.Net")
    for host in ("proxy.example.com", "a.b.corp.example", "gw.example.org:1", "box.example.net", "", "10.0.0.1", "[fe80::1]"):
        assert policy.allows(host) and policy.vouches_for(host), host
    for host in ("corp.example", "example.com", "proxy.example.com.evil.example", "a b", "x.example.com:99999999"):
        assert not policy.allows(host), host
    everything = HostPolicy(allowed_hosts("*"), hostname="box")
    assert everything.allows("attacker.example") and not everything.vouches_for("attacker.example")


@pytest.mark.parametrize("value", ["http://proxy.example.com", "proxy.example.com:8080", "*example.com", "a/b", "*.*"])
def test_an_allowed_hosts_entry_that_is_no_name_is_refused_at_start(value: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_ALLOWED_HOSTS", f"ok.example, {value}")
    assert main(["check", "--routes", "nonexistent.yaml"]) == 2
    err = capsys.readouterr().err
    assert "invalid settings" in err and "not a host name" in err


# -- routes.yaml syntax errors: the position, never the text ------------------------------------

BROKEN = f"""upstreams:
  up:
    base_url: http://127.0.0.1:9/v1
    api_key: {LEAKED}: oops
models:
  - {{name: alpha, upstream: up}}
"""


@pytest.mark.parametrize(
    ("text", "position"),
    [
        pytest.param(BROKEN, "line 4, column", id="mapping-value-in-a-plain-key"),
        pytest.param(f'upstreams:\n  up: {{api_key: "{LEAKED}\n', "line 3, column 1", id="unterminated-quote"),
        pytest.param(f"upstreams:\n  up:\n    api_key: {LEAKED}\n   base_url: x\n", "line 4, column 4", id="bad-indentation"),
        pytest.param(f"upstreams:\n  up:\n    api_key: !!int {LEAKED}\n", "line 3, column 14", id="explicit-int-tag"),
        pytest.param(f"upstreams:\n  up:\n    api_key: *{LEAKED}\n", "line 3, column 14", id="undefined-alias"),
        pytest.param(f"upstreams:\n  up:\n    api_key: !{LEAKED} x\n", "line 3, column 14", id="unknown-tag"),
        pytest.param(f"upstreams:\n  up:\n    api_key: {LEAKED}\x07\n", "line 3, column 44", id="control-character"),
    ],
)
def test_a_yaml_error_gives_the_position_not_the_line(text: str, position: str, tmp_path: Path) -> None:
    routes = tmp_path / "routes.yaml"
    routes.write_text(text)
    with pytest.raises(RouteMapError) as caught:
        load_route_map(routes)
    message = str(caught.value)
    assert "not valid YAML" in message and position in message
    assert LEAKED not in message and LEAKED[:12] not in message
    assert caught.value.__cause__ is None and caught.value.__suppress_context__  # no chained PyYAML text


def test_check_shows_the_position_but_not_the_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    routes = tmp_path / "routes.yaml"
    routes.write_text(BROKEN)
    assert main(["check", "--routes", str(routes)]) == 1
    out, err = capsys.readouterr()
    assert "not valid YAML" in err and "line 4, column" in err
    assert LEAKED not in out + err and "api_key" not in out + err


def test_a_file_that_is_not_utf8_is_an_error_not_a_crash(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    routes = tmp_path / "routes.yaml"
    routes.write_bytes(b"upstreams: {}\nmodels: []\n# \xff\xfe\n")
    assert main(["check", "--routes", str(routes)]) == 1
    assert "not UTF-8" in capsys.readouterr().err


def test_the_reload_log_shows_the_position_but_not_the_key(upstream: FakeUpstream, tmp_path: Path) -> None:
    gateway = start(upstream, tmp_path)
    try:
        (tmp_path / "routes.yaml").write_text(BROKEN)
        deadline = time.monotonic() + 30
        rejected: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            rejected = log_lines(gateway, "routes_reload_rejected")
            if len({line["worker_pid"] for line in rejected}) >= WORKERS:
                break
            time.sleep(0.05)
        assert len({line["worker_pid"] for line in rejected}) >= WORKERS, gateway.log_text()
        assert all("not valid YAML" in line["error"] and "line 4, column" in line["error"] for line in rejected)
        assert httpx.get(gateway.url + "/api/tags").status_code == 200  # the old map stays
        assert LEAKED not in gateway.log_text()
    finally:
        gateway.stop()
