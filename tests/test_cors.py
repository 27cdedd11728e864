"""CORS as Ollama answers it: the allow-list (pure), then end to end against the gateway under
Granian, with browser-style `Origin` and preflight requests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway.http.cors import OriginPolicy, allowed_origins
from tests.conftest import RunningGateway, routes_yaml
from tests.fake_upstream import FakeUpstream

USER_HI = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(
    ("configured", "origin", "allowed"),
    [
        pytest.param("", "http://localhost", True, id="localhost"),
        pytest.param("", "http://localhost:3000", True, id="localhost-port"),
        pytest.param("", "https://127.0.0.1:8443", True, id="loopback-https-port"),
        pytest.param("", "http://0.0.0.0:80", True, id="unspecified"),
        pytest.param("", "HTTP://LOCALHOST:3000", True, id="any-case"),
        pytest.param("", "app://obsidian.md", True, id="app"),
        pytest.param("", "tauri://localhost", True, id="tauri"),
        pytest.param("", "vscode-webview://1a2b3c", True, id="vscode-webview"),
        pytest.param("", "vscode-file://vscode-app", True, id="vscode-file"),
        pytest.param("", "file://", True, id="file"),
        pytest.param("", "http://localhost.evil.example", False, id="localhost-prefix-is-not-localhost"),
        pytest.param("", "http://localhost:3000.evil.example", False, id="port-is-digits"),
        pytest.param("", "https://evil.example", False, id="other-site"),
        pytest.param("", "null", False, id="opaque-origin"),
        pytest.param("", "chrome-extension://abcdef", False, id="extension-not-by-default"),
        pytest.param("chrome-extension://*", "chrome-extension://abcdef", True, id="extension-configured"),
        pytest.param("https://*.example.org", "https://app.example.org", True, id="subdomain-wildcard"),
        pytest.param("https://*.example.org", "https://example.org.evil.example", False, id="wildcard-keeps-suffix"),
        pytest.param(" 'https://a.example, https://b.example' ", "https://b.example", True, id="quoted-spaced-list"),
        pytest.param("*", "https://anything.example", True, id="star"),
    ],
)
def test_origin_policy(configured: str, origin: str, allowed: bool) -> None:
    assert OriginPolicy(allowed_origins(configured)).allows(origin) is allowed


@pytest.fixture
def custom_gateway(upstream: FakeUpstream, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[RunningGateway]:
    routes = tmp_path / "routes.yaml"
    routes.write_text(routes_yaml(upstream.url))
    running = RunningGateway(routes, tmp_path / "gateway.log", env=request.param)
    yield running
    running.stop()


def preflight(url: str, origin: str) -> httpx.Response:
    return httpx.options(url, headers={
        "Origin": origin, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type,x-stainless-os,openai-beta",
    })


def test_preflight_from_an_allowed_origin_is_204_with_ollamas_headers(gateway: RunningGateway) -> None:
    response = preflight(gateway.url + "/api/chat", "http://localhost:3000")
    assert (response.status_code, response.content) == (204, b"")
    headers = response.headers
    assert headers["access-control-allow-origin"] == "http://localhost:3000"
    assert set(headers["access-control-allow-methods"].split(",")) >= {"GET", "POST", "DELETE", "HEAD"}
    allowed = {name.lower() for name in headers["access-control-allow-headers"].split(",")}
    assert allowed >= {"authorization", "content-type", "user-agent", "accept", "x-requested-with", "openai-beta",
                       "x-stainless-os", "x-stainless-retry-count", "x-stainless-timeout"}
    assert headers["access-control-max-age"] == "43200"
    assert "Origin" in headers.get_list("vary")


def test_preflight_works_on_v1_paths_too(gateway: RunningGateway) -> None:
    response = preflight(gateway.url + "/v1/chat/completions", "vscode-webview://abc")
    assert response.status_code == 204 and response.headers["access-control-allow-origin"] == "vscode-webview://abc"


def test_requests_from_allowed_origins_get_allow_origin(gateway: RunningGateway, upstream: FakeUpstream) -> None:
    origin = "app://obsidian.md"
    tags = httpx.get(gateway.url + "/api/tags", headers={"Origin": origin})
    assert tags.status_code == 200 and tags.headers["access-control-allow-origin"] == origin
    assert "Origin" in tags.headers.get_list("vary")
    chat = httpx.post(gateway.url + "/api/chat", json={"model": "tiny", "messages": USER_HI}, headers={"Origin": origin})
    assert chat.status_code == 200 and chat.headers["access-control-allow-origin"] == origin
    v1 = httpx.post(gateway.url + "/v1/chat/completions", json={"model": "tiny", "messages": USER_HI}, headers={"Origin": origin})
    assert v1.status_code == 200 and v1.headers["access-control-allow-origin"] == origin
    missing = httpx.post(gateway.url + "/api/chat", json={"model": "ghost", "messages": USER_HI}, headers={"Origin": origin})
    assert missing.status_code == 404 and missing.headers["access-control-allow-origin"] == origin


def test_disallowed_origin_is_refused_before_anything_runs(gateway: RunningGateway, upstream: FakeUpstream) -> None:
    """As Ollama: 403 with an empty body for any method, so a web page cannot drive the gateway."""
    evil = {"Origin": "https://evil.example"}
    chat = httpx.post(gateway.url + "/api/chat", json={"model": "tiny", "messages": USER_HI}, headers=evil)
    assert (chat.status_code, chat.content) == (403, b"")
    assert "access-control-allow-origin" not in chat.headers
    assert httpx.get(gateway.url + "/api/tags", headers=evil).status_code == 403
    assert preflight(gateway.url + "/api/pull", "http://localhost.evil.example").status_code == 403
    assert upstream.received == []


def test_requests_without_origin_or_from_the_gateway_itself_are_not_cors(gateway: RunningGateway) -> None:
    plain = httpx.get(gateway.url + "/api/tags")
    assert plain.status_code == 200 and "access-control-allow-origin" not in plain.headers
    same = httpx.get(gateway.url + "/api/tags", headers={"Origin": gateway.url})
    assert same.status_code == 200 and "access-control-allow-origin" not in same.headers


@pytest.mark.parametrize(
    "custom_gateway", [{"OLLAMA_ORIGINS": "https://app.example.com,https://*.example.org"}], indirect=True
)
def test_ollama_origins_extends_the_defaults(custom_gateway: RunningGateway) -> None:
    def status(origin: str) -> int:
        return httpx.get(custom_gateway.url + "/api/version", headers={"Origin": origin}).status_code

    assert status("https://app.example.com") == 200
    assert status("https://chat.example.org") == 200
    assert status("http://localhost:5173") == 200
    assert status("https://example.com") == 403


@pytest.mark.parametrize("custom_gateway", [{"GATEWAY_ORIGINS": "*", "OLLAMA_ORIGINS": "https://only.example"}], indirect=True)
def test_gateway_origins_wins_and_star_allows_all(custom_gateway: RunningGateway) -> None:
    response = httpx.get(custom_gateway.url + "/api/version", headers={"Origin": "https://anywhere.example"})
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "*"
    assert "vary" not in response.headers
    assert preflight(custom_gateway.url + "/api/chat", "https://anywhere.example").headers["access-control-allow-origin"] == "*"
