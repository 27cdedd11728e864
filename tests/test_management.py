"""End to end: the model management endpoints through the real `ollama` SDK (and raw HTTP where
ollama-js or curl send something the SDK does not), gateway under Granian, loopback upstream.

The gateway stores nothing, so besides what the client got, each test checks that the upstream
received nothing at all.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import ollama
import pytest

from tests.conftest import RunningGateway
from tests.fake_upstream import FakeUpstream

DIGEST = "sha256:" + "ab" * 32


@pytest.fixture
def client(gateway: RunningGateway) -> Iterator[ollama.Client]:
    with ollama.Client(host=gateway.url) as sdk_client:
        yield sdk_client


def ndjson(response: httpx.Response) -> list[dict]:
    assert response.headers["content-type"] == "application/x-ndjson"
    assert response.text.endswith("\n") and "\n\n" not in response.text
    return [json.loads(line) for line in response.text.splitlines()]


def test_pull_of_a_routed_model_streams_ollama_statuses_to_success(client: ollama.Client, upstream: FakeUpstream) -> None:
    statuses = [progress.status for progress in client.pull("tiny", stream=True)]
    assert statuses == ["pulling manifest", "verifying sha256 digest", "writing manifest", "success"]
    assert upstream.received == []


def test_pull_without_stream_is_one_success_object(client: ollama.Client, gateway: RunningGateway) -> None:
    assert client.pull("TINY:latest").status == "success"
    raw = httpx.post(gateway.url + "/api/pull", json={"model": "fake/anything", "stream": False})
    assert (raw.status_code, raw.json()) == (200, {"status": "success"})
    assert raw.headers["content-type"].startswith("application/json")


def test_pull_accepts_name_and_streams_by_default(gateway: RunningGateway, upstream: FakeUpstream) -> None:
    """ollama-js and Continue send `name`; curl users omit `stream` and get the stream."""
    response = httpx.post(gateway.url + "/api/pull", content=json.dumps({"name": "embedder"}),
                          headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert response.status_code == 200
    assert ndjson(response)[-1] == {"status": "success"}
    assert upstream.received == []


def test_pull_of_an_unknown_model_fails_as_ollama_does(client: ollama.Client, gateway: RunningGateway) -> None:
    response = httpx.post(gateway.url + "/api/pull", json={"model": "ghost"})
    assert response.status_code == 200
    assert ndjson(response) == [{"status": "pulling manifest"}, {"error": "pull model manifest: file does not exist"}]
    with pytest.raises(ollama.ResponseError) as streamed:
        list(client.pull("ghost", stream=True))
    assert (streamed.value.status_code, streamed.value.error) == (-1, "pull model manifest: file does not exist")
    with pytest.raises(ollama.ResponseError) as single:
        client.pull("ghost")
    assert (single.value.status_code, single.value.error) == (500, "pull model manifest: file does not exist")


def test_delete_of_a_routed_model_points_at_routes_yaml(client: ollama.Client, upstream: FakeUpstream) -> None:
    with pytest.raises(ollama.ResponseError) as caught:
        client.delete("tiny")
    assert caught.value.status_code == 400
    assert "routes.yaml entry 'tiny'" in caught.value.error and "cannot delete 'tiny'" in caught.value.error
    assert "tiny:latest" in [m.model for m in client.list().models]
    assert upstream.received == []


def test_delete_of_an_unknown_model_is_404_and_accepts_name(client: ollama.Client, gateway: RunningGateway) -> None:
    with pytest.raises(ollama.ResponseError) as caught:
        client.delete("ghost")
    assert (caught.value.status_code, caught.value.error) == (404, "model 'ghost' not found")
    by_name = httpx.request("DELETE", gateway.url + "/api/delete", json={"name": "ghost"})
    assert (by_name.status_code, by_name.json()) == (404, {"error": "model 'ghost' not found"})


def test_copy_names_the_routes_yaml_entry_to_add(client: ollama.Client, upstream: FakeUpstream) -> None:
    with pytest.raises(ollama.ResponseError) as caught:
        client.copy("tiny", "my-tiny:v1")
    assert caught.value.status_code == 400
    assert '{name: "my-tiny:v1", upstream: "fake", model: "up-model"}' in caught.value.error
    assert upstream.received == []


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        pytest.param({"source": "ghost", "destination": "x"}, 404, 'model "ghost" not found', id="unknown-source"),
        pytest.param({"source": "", "destination": "x"}, 400, 'source "" is invalid', id="no-source"),
        pytest.param({"source": "tiny"}, 400, 'destination "" is invalid', id="no-destination"),
    ],
)
def test_copy_errors_use_ollama_wording(gateway: RunningGateway, body: dict, status: int, error: str) -> None:
    response = httpx.post(gateway.url + "/api/copy", json=body)
    assert (response.status_code, response.json()) == (status, {"error": error})


def test_create_is_refused_with_the_entry_that_would_do_it(client: ollama.Client, upstream: FakeUpstream) -> None:
    with pytest.raises(ollama.ResponseError) as caught:
        client.create(model="helper", from_="tiny", system="You are terse.")
    assert caught.value.status_code == 400
    assert "cannot create 'helper'" in caught.value.error
    assert '{name: "helper", upstream: "fake", model: "up-model"}' in caught.value.error
    assert upstream.received == []


def test_push_is_refused_for_routed_and_404_for_unknown(client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as routed:
        client.push("tiny")
    assert routed.value.status_code == 400 and "cannot push 'tiny'" in routed.value.error
    with pytest.raises(ollama.ResponseError) as unknown:
        list(client.push("ghost", stream=True))
    assert (unknown.value.status_code, unknown.value.error) == (404, "model 'ghost' not found")


def test_blobs_head_is_404_and_bad_digest_400(gateway: RunningGateway) -> None:
    head = httpx.head(f"{gateway.url}/api/blobs/{DIGEST}")
    assert head.status_code == 404 and head.content == b""
    assert httpx.head(f"{gateway.url}/api/blobs/sha256:nothex").status_code == 400
    bad = httpx.post(f"{gateway.url}/api/blobs/md5:abc", content=b"x")
    assert (bad.status_code, bad.json()) == (400, {"error": "invalid digest format"})


def test_blob_upload_is_refused_clearly(client: ollama.Client, tmp_path: Path, upstream: FakeUpstream) -> None:
    model_file = tmp_path / "model.gguf"
    model_file.write_bytes(b"GGUF" + bytes(4 * 1024 * 1024))
    with pytest.raises(ollama.ResponseError) as caught:
        client.create_blob(model_file)
    assert caught.value.status_code == 400 and "cannot store blob" in caught.value.error
    assert upstream.received == []


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        pytest.param("POST", "/api/pull", b"", id="pull-empty"),
        pytest.param("POST", "/api/pull", b"{nope", id="pull-malformed"),
        pytest.param("POST", "/api/pull", b'{"model": 5}', id="pull-model-number"),
        pytest.param("POST", "/api/pull", b'{"model": "tiny", "stream": "yes please"}', id="pull-stream-string"),
        pytest.param("POST", "/api/push", b"[]", id="push-array"),
        pytest.param("POST", "/api/create", b"{}", id="create-no-model"),
        pytest.param("POST", "/api/copy", b'{"source": ["tiny"]}', id="copy-source-list"),
        pytest.param("DELETE", "/api/delete", b"", id="delete-empty"),
        pytest.param("DELETE", "/api/delete", b'{"model": ""}', id="delete-no-model"),
    ],
)
def test_bad_bodies_are_400_never_422(gateway: RunningGateway, method: str, path: str, body: bytes) -> None:
    response = httpx.request(method, gateway.url + path, content=body)
    assert response.status_code == 400
    assert response.headers["content-type"].startswith("application/json")
    assert isinstance(response.json()["error"], str) and response.json()["error"]
