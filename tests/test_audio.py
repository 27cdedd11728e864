"""Audio input (issue 11 item 5): WAV and MP3 entries of `images` go upstream as `input_audio` parts
for a route that declares `audio`, and `/v1/audio/transcriptions` is relayed with only `model`
rewritten. End to end: gateway under Granian, loopback upstream, the official `openai` SDK."""

from __future__ import annotations

import base64
import email.parser
import email.policy
import io
import wave
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from gateway.errors import BadRequest
from gateway.translators.messages import sniff_audio_format
from gateway.upstream.forms import MultipartForm
from tests.conftest import API_KEY, RunningGateway, routes_yaml
from tests.fake_upstream import FakeUpstream, Reply

CHAT = "/v1/chat/completions"
TRANSCRIBE = "/v1/audio/transcriptions"
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
MAX_BODY = 1024 * 1024
EXTRA_MODELS = """
  - name: listener
    upstream: fake
    model: up-audio
    capabilities: [completion, vision, audio]
  - name: whisper
    upstream: fake
    model: up-whisper
    capabilities: [audio]
  - name: deaf-fallbacks
    upstream: dead
    capabilities: [completion, audio]
    fallbacks: [tiny, listener]
"""


def wav_bytes(frames: int = 800) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(8000)
        writer.writeframes(bytes(range(256)) * (frames * 2 // 256) + b"\r\n--x\r\n" * 4)
    return out.getvalue()


WAV = wav_bytes()
MP3_FRAME = b"\xff\xfb\x90\x64" + bytes(413)  # MPEG-1 Layer III, 128 kbit/s, 44.1 kHz: one frame
MP3_ID3 = b"ID3\x04\x00\x00\x00\x00\x00\x00" + MP3_FRAME


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def gateway(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    folder = tmp_path_factory.mktemp("audio")
    routes = folder / "routes.yaml"
    routes.write_text(routes_yaml(upstream.url, EXTRA_MODELS))
    running = RunningGateway(routes, folder / "gateway.log", env={"GATEWAY_MAX_BODY_BYTES": str(MAX_BODY)})
    yield running
    running.stop()


def chat(gateway: RunningGateway, model: str, images: list[str], content: str = "what is this?") -> httpx.Response:
    body = {"model": model, "stream": False, "messages": [{"role": "user", "content": content, "images": images}]}
    return httpx.post(gateway.url + "/api/chat", json=body, timeout=30)


# -- audio in `images` -----------------------------------------------------------------------------


def test_wav_and_mp3_entries_go_up_as_input_audio_and_an_image_stays_an_image(gateway: RunningGateway, upstream: FakeUpstream) -> None:
    response = chat(gateway, "listener", [b64(WAV), b64(MP3_FRAME), "data:audio/mpeg;base64," + b64(MP3_ID3), PNG])
    assert response.status_code == 200, response.text
    assert response.json()["message"]["content"] == "Hello there."
    sent = upstream.last(CHAT).json
    assert sent["model"] == "up-audio"
    assert sent["messages"] == [{"role": "user", "content": [
        {"type": "text", "text": "what is this?"},
        {"type": "input_audio", "input_audio": {"data": b64(WAV), "format": "wav"}},
        {"type": "input_audio", "input_audio": {"data": b64(MP3_FRAME), "format": "mp3"}},
        {"type": "input_audio", "input_audio": {"data": b64(MP3_ID3), "format": "mp3"}},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
    ]}]


def test_generate_sends_audio_too(gateway: RunningGateway, upstream: FakeUpstream) -> None:
    body = {"model": "listener", "stream": False, "prompt": "transcribe", "images": [b64(WAV)]}
    response = httpx.post(gateway.url + "/api/generate", json=body, timeout=30)
    assert response.status_code == 200, response.text
    assert upstream.last(CHAT).json["messages"][-1]["content"][1] == {"type": "input_audio",
                                                                      "input_audio": {"data": b64(WAV), "format": "wav"}}


@pytest.mark.parametrize("model", ["tiny", "fake/some-model"])  # declared without audio; nothing declared
def test_audio_for_a_route_without_the_capability_is_a_400_saying_what_to_add(
    gateway: RunningGateway, upstream: FakeUpstream, model: str
) -> None:
    response = chat(gateway, model, [PNG, b64(MP3_FRAME)])
    assert response.status_code == 400
    error = response.json()["error"]
    assert set(response.json()) == {"error"}
    assert "image 1 is MP3 audio" in error and "add `audio` to the `capabilities`" in error and "routes.yaml" in error
    assert not [r for r in upstream.received if r.path == CHAT]


def test_a_fallback_without_audio_is_skipped_for_one_with_it(gateway: RunningGateway, upstream: FakeUpstream) -> None:
    response = chat(gateway, "deaf-fallbacks", [b64(WAV)])  # its own upstream is down; `tiny` cannot take audio
    assert response.status_code == 200, response.text
    sent = [r.json for r in upstream.received if r.path == CHAT]
    assert [body["model"] for body in sent] == ["up-audio"]
    assert sent[0]["messages"][0]["content"][1]["type"] == "input_audio"


def test_other_bytes_are_still_refused_and_say_audio_is_an_option_where_it_is(gateway: RunningGateway, upstream: FakeUpstream) -> None:
    layer_two = b64(b"\xff\xfd\x90\x64" + bytes(60))  # MPEG-1 Layer II: not MP3
    response = chat(gateway, "listener", [layer_two])
    assert response.status_code == 400
    assert response.json() == {"error": "image 0 is not a PNG, JPEG, GIF or WebP image, or WAV or MP3 audio"}
    assert chat(gateway, "tiny", [layer_two]).json() == {"error": "image 0 is not a PNG, JPEG, GIF or WebP image"}


def test_show_lists_the_audio_capability(gateway: RunningGateway) -> None:
    shown = httpx.post(gateway.url + "/api/show", json={"model": "listener"}).json()
    assert "audio" in shown["capabilities"]
    tags = {entry["name"]: entry for entry in httpx.get(gateway.url + "/api/tags").json()["models"]}
    assert "audio" in tags["listener:latest"]["capabilities"]


@pytest.mark.parametrize(("data", "expected"), [
    (WAV, "wav"), (MP3_FRAME, "mp3"), (MP3_ID3, "mp3"), (b"\xff\xf3\x90\x00", "mp3"),  # MPEG-2 Layer III
    (b"RIFF\x00\x00\x00\x00WEBPVP8 ", None), (b"\xff\xf1\x50\x80", None),  # WebP; AAC (ADTS)
    (b"\xff\xfb\xf0\x00", None), (b"\xff\xfb\x9c\x00", None), (b"\xff\xeb\x90\x00", None),  # bad bitrate, rate, version
    (b"\xff\xd8\xff\xe0", None), (b"ID", None), (b"", None),
])
def test_audio_sniffing(data: bytes, expected: str | None) -> None:
    assert sniff_audio_format(data) == expected


# -- /v1/audio/transcriptions ----------------------------------------------------------------------


def form_fields(received_headers: dict[str, str], raw: bytes) -> dict[str, tuple[str | None, bytes]]:
    """The upstream's form parsed by the standard library: name -> (filename, content)."""
    document = b"Content-Type: " + received_headers["Content-Type"].encode() + b"\r\n\r\n" + raw
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(document)
    fields: dict[str, tuple[str | None, bytes]] = {}
    for part in message.iter_parts():
        payload = part.get_payload(decode=True)
        assert isinstance(payload, bytes)
        fields[str(part.get_param("name", header="content-disposition"))] = (part.get_filename(), payload)
    return fields


def sdk(gateway: RunningGateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)


def test_a_transcription_from_the_sdk_reaches_the_upstream_with_the_model_rewritten_and_the_file_intact(
    gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    upstream.enqueue(TRANSCRIBE, Reply.json({"text": "hello world", "usage": {"type": "duration", "seconds": 1}}))
    with sdk(gateway) as client:
        result = client.audio.transcriptions.create(model="whisper", file=("speech.wav", WAV, "audio/wav"), language="en")
    assert result.text == "hello world"
    received = upstream.last(TRANSCRIBE)
    assert received.headers["Content-Type"].startswith("multipart/form-data; boundary=")
    assert received.headers["Authorization"] == f"Bearer {API_KEY}"
    fields = form_fields(received.headers, received.raw)
    assert fields["model"] == (None, b"up-whisper")
    assert fields["file"] == ("speech.wav", WAV)
    assert fields["language"] == (None, b"en")


def test_a_text_answer_is_relayed_as_is(gateway: RunningGateway, upstream: FakeUpstream) -> None:
    upstream.enqueue(TRANSCRIBE, Reply(raw=b"hello world\n", content_type="text/plain; charset=utf-8"))
    with sdk(gateway) as client:
        text = client.audio.transcriptions.create(model="whisper", file=("a.mp3", MP3_ID3), response_format="text")
    assert text == "hello world\n"
    assert form_fields(upstream.last(TRANSCRIBE).headers, upstream.last(TRANSCRIBE).raw)["response_format"] == (None, b"text")


def test_the_body_goes_up_byte_for_byte_but_for_the_model(gateway: RunningGateway, upstream: FakeUpstream) -> None:
    boundary = "----edge case'()+_,-./:=?"  # every character RFC 2046 allows, quoted as it must be
    body = (b"preamble to ignore\r\n"
            b'--' + boundary.encode() + b'\r\nContent-Disposition: form-data; name="file"; filename="model"\r\n'
            b"Content-Type: audio/wav\r\n\r\n" + WAV + b"\r\n"
            b'--' + boundary.encode() + b'\r\nContent-Disposition: form-data; name=model\r\n\r\nwhisper\r\n'
            b'--' + boundary.encode() + b'\r\nContent-Disposition: form-data; name="prompt"\r\n\r\nmodel whisper\r\n'
            b'--' + boundary.encode() + b"--\r\nepilogue")
    content_type = f'multipart/form-data; boundary="{boundary}"'
    upstream.enqueue(TRANSCRIBE, Reply.json({"text": "ok"}))
    response = httpx.post(gateway.url + TRANSCRIBE, content=body, headers={"Content-Type": content_type})
    assert response.status_code == 200, response.text
    received = upstream.last(TRANSCRIBE)
    assert received.headers["Content-Type"] == content_type
    assert received.raw == body.replace(b"name=model\r\n\r\nwhisper", b"name=model\r\n\r\nup-whisper")


def test_errors_are_in_openais_shape(gateway: RunningGateway, upstream: FakeUpstream) -> None:
    with sdk(gateway) as client, pytest.raises(openai.NotFoundError) as missing:
        client.audio.transcriptions.create(model="ghost", file=("a.wav", WAV))
    assert missing.value.body == {"message": "model 'ghost' not found", "type": "not_found_error", "param": None, "code": None}
    upstream.enqueue(TRANSCRIBE, Reply.json({"error": {"message": "audio too short", "type": "invalid_request_error",
                                                       "param": "file", "code": "audio_too_short"}}, status=400))
    with sdk(gateway) as client, pytest.raises(openai.BadRequestError) as refused:
        client.audio.transcriptions.create(model="whisper", file=("a.wav", WAV))
    assert refused.value.body == {"message": "audio too short", "type": "invalid_request_error", "param": "file",
                                  "code": "audio_too_short"}
    for content, headers, message in [
        (b'{"model": "whisper"}', {"Content-Type": "application/json"}, "must be multipart/form-data"),
        (b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a\"\r\n\r\nx\r\n--b--",
         {"Content-Type": "multipart/form-data; boundary=b"}, "model is required"),
        (b"--b\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper", {"Content-Type": "multipart/form-data; boundary=b"},
         "without its closing boundary"),
    ]:
        response = httpx.post(gateway.url + TRANSCRIBE, content=content, headers=headers)
        assert response.status_code == 400, response.text
        error: dict[str, Any] = response.json()["error"]
        assert message in error["message"] and error["type"] == "invalid_request_error"


def test_the_body_limit_holds(gateway: RunningGateway, upstream: FakeUpstream) -> None:
    response = httpx.post(gateway.url + TRANSCRIBE, files={"file": ("big.wav", bytes(MAX_BODY + 1))}, data={"model": "whisper"})
    assert response.status_code == 413
    assert not [r for r in upstream.received if r.path == TRANSCRIBE]


@pytest.mark.parametrize(("content_type", "body", "message"), [
    ("multipart/form-data", b"", "has no boundary"),
    ("multipart/form-data; boundary=b", b"no parts here", "holds no part"),
    ("multipart/form-data; boundary=b", b"--bjunk\r\n\r\nx\r\n--b--", "malformed after a boundary"),
    ("multipart/form-data; boundary=b", b"--b\r\nContent-Disposition: form-data; name=model", "no end to its headers"),
])
def test_malformed_forms_are_refused(content_type: str, body: bytes, message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        MultipartForm.parse(content_type, body)


def test_a_form_reads_only_plain_fields_and_the_first_of_a_name() -> None:
    body = (b"--b\r\nContent-Disposition: form-data; name=\"model\"; filename=\"m\"\r\n\r\nfile-content\r\n"
            b"--b\r\n\r\nheaderless\r\n"
            b"--b\r\ncontent-disposition: form-data; name=\"model\"\r\n\r\nfirst\r\n"
            b"--b\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nsecond\r\n--b--")
    form = MultipartForm.parse("Multipart/Form-Data; charset=utf-8; boundary=b", body)
    assert form.field("model") == "first"
    assert form.field("file") is None
    assert form.with_field("model", "up") == body.replace(b"first", b"up")
