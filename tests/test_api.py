"""The HTTP service against a real uvicorn server with the real tiny.en model."""

import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from openai import OpenAI

from tests.conftest import DATA, JFK_TEXT, ffmpeg, heard, write_wav
from tests.support.server import Server, run_server

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with run_server(tmp_path_factory.mktemp("api"), ALLOW_PRIVATE_URLS="true",
                    TRANSCRIBE_PRESET="accurate") as running:
        yield running


def post_file(server: Server, path: Path, name: str | None = None,
              **fields: str | list[str]) -> httpx.Response:
    with path.open("rb") as handle:
        return httpx.post(f"{server.url}/api/v1/transcribe", timeout=120,
                          files={"file": (name or path.name, handle)}, data=fields)


def test_seed_upload_json_shape(server: Server, jfk: Path) -> None:
    response = post_file(server, jfk)
    assert response.status_code == 200, response.text
    body = response.json()
    assert heard(JFK_TEXT, body["text"]) == 1
    assert body["language"] == "en" and body["duration"] == pytest.approx(11.0, abs=0.1)
    assert body["mode"] == "single" and body["model"] == "tiny.en"
    assert body["preset"] == "accurate"  # the server's TRANSCRIBE_PRESET
    assert body["processing_time"] > 0
    assert [s["id"] for s in body["segments"]] == list(range(len(body["segments"])))
    assert server.temp_is_empty()


@pytest.mark.parametrize("fmt", ["srt", "vtt", "tsv", "text"])
def test_seed_upload_text_formats(server: Server, jfk: Path, fmt: str) -> None:
    response = post_file(server, jfk, format=fmt)
    assert response.status_code == 200
    assert heard(JFK_TEXT, response.text) == 1
    marker = {"srt": "-->", "vtt": "WEBVTT", "tsv": "start\tend\ttext"}.get(fmt)
    assert marker in response.text if marker else "-->" not in response.text


def test_openai_sdk(server: Server, jfk: Path) -> None:
    client = OpenAI(base_url=f"{server.url}/v1", api_key="unused")
    with jfk.open("rb") as audio:
        text = client.audio.transcriptions.create(model="whisper-1", file=audio,
                                                  response_format="text")
    assert heard(JFK_TEXT, str(text)) == 1
    with jfk.open("rb") as audio:
        srt = client.audio.transcriptions.create(model="whisper-1", file=audio,
                                                 response_format="srt")
    assert str(srt).startswith("1\n00:00:")
    assert heard(JFK_TEXT, str(srt)) == 1
    with jfk.open("rb") as audio:
        verbose = client.audio.transcriptions.create(
            model="whisper-1", file=audio, response_format="verbose_json",
            timestamp_granularities=["word"])
    words = [w.word for w in verbose.words or []]
    assert heard(JFK_TEXT, " ".join(words)) == 1
    assert all(w and w == w.strip(",.?!\"' ") for w in words)  # no punctuation, like OpenAI
    segment = (verbose.segments or [])[0]
    assert segment.tokens and segment.compression_ratio > 0 and segment.avg_logprob < 0
    assert verbose.duration == pytest.approx(11.0, abs=0.1)
    assert [m.id for m in client.models.list()][0] == "whisper-1"


def _bad_files(tmp: Path) -> list[tuple[str, Path, int, str]]:
    empty = tmp / "empty.mp3"
    empty.write_bytes(b"")
    text = tmp / "notes.mp3"
    text.write_text("plain text, renamed\n" * 20)
    mp3 = tmp / "full.mp3"
    ffmpeg("-i", str(DATA / "jfk.flac"), "-c:a", "libmp3lame", str(mp3))
    truncated = tmp / "cut.mp3"
    truncated.write_bytes(mp3.read_bytes()[:600])
    zero = write_wav(tmp / "zero.wav", np.zeros(0, dtype=np.int16))
    return [("empty", empty, 415, "empty"), ("text", text, 415, "cannot decode"),
            ("truncated", truncated, 415, ""), ("zero", zero, 415, "no samples")]


def test_bad_uploads_are_4xx_and_leave_nothing(server: Server, tmp_path: Path) -> None:
    for label, path, status, message in _bad_files(tmp_path):
        response = post_file(server, path)
        assert response.status_code == status, (label, response.text)
        assert message in response.json()["error"]["message"], label
        assert server.temp_is_empty(), label
    assert httpx.get(f"{server.url}/health").status_code == 200


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b'{"url": "http://127.0.0.1:9/a.mp3", "format": "docx"}', 400, "format"),
        (b'{"url": "http://127.0.0.1:9/a.mp3", "language": "klingon"}', 400, "unknown language"),
        (b"{}", 400, "youtube_url"),
        (b'{"url": "file:///etc/passwd"}', 400, "scheme"),
        (b'{"url": "http://127.0.0.1:9/a.mp3", "response_format": "srt"}', 400,
         "calls it 'format'"),
        (b'{"url": "http://127.0.0.1:9/a.mp3", "preset": "turbo"}', 400, "preset"),
        (b'{"url": "http://127.0.0.1:9/a.mp3", "prompt": "%s"}' % (b"x" * 2001), 400,
         "prompt may be at most"),
    ],
)
def test_bad_json_requests(server: Server, body: bytes, status: int, message: str) -> None:
    response = httpx.post(f"{server.url}/api/v1/transcribe", content=body,
                          headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    assert message in response.json()["error"]["message"]
    assert server.temp_is_empty()


def test_path_like_filename_is_only_a_name(server: Server, jfk: Path) -> None:
    response = post_file(server, jfk, name="../../../etc/passwd.flac")
    assert response.status_code == 200
    assert server.temp_is_empty()
    assert not (server.temp_dir.parent / "etc").exists()


def test_unknown_upload_format_field(server: Server, jfk: Path) -> None:
    response = post_file(server, jfk, format="docx")
    assert response.status_code == 400
    assert "unknown format" in response.json()["error"]["message"]


def test_unknown_upload_fields_are_refused(server: Server, jfk: Path) -> None:
    for fields, message in (({"response_format": "srt"}, "calls it 'format'"),
                            ({"callback_url": "http://127.0.0.1:9/"}, "'callback_url'"),
                            ({"preset": "turbo"}, "unknown preset"),
                            ({"word_timestamps": "yes please"}, "true or false"),
                            ({"preset": ["fast", "accurate"]}, "more than once")):
        response = post_file(server, jfk, **fields)
        assert response.status_code == 400, (fields, response.text)
        assert message in response.json()["error"]["message"], fields
        assert server.temp_is_empty()
    with jfk.open("rb") as handle:  # a prompt sent as a file part
        response = httpx.post(f"{server.url}/api/v1/transcribe", timeout=60,
                              files={"file": ("jfk.flac", handle), "prompt": ("p.txt", b"x")})
    assert response.status_code == 400 and "must be text" in response.json()["error"]["message"]


@pytest.mark.parametrize(("value", "expected"), [("true", True), ("Yes", True), ("1", True),
                                               ("on", True), ("false", False), ("0", False),
                                               ("", False), (None, False)])
def test_form_booleans_read_as_json_bodies_read_them(value: str | None, expected: bool) -> None:
    from whisper_api.api.routes import form_bool

    assert form_bool("word_timestamps", value) is expected


def test_prompt_length_is_checked_once_stripped() -> None:
    from whisper_api.api.routes import MAX_PROMPT_CHARS, form_request
    from whisper_api.errors import InvalidRequestError

    longest = "x" * MAX_PROMPT_CHARS
    assert form_request("json", "auto", "", "", False, None, f"  {longest} ").initial_prompt \
        == longest
    assert form_request("json", "auto", "", "", False, None, " " * 3000).initial_prompt is None
    with pytest.raises(InvalidRequestError, match="at most"):
        form_request("json", "auto", "", "", False, None, longest + "x")


@pytest.mark.parametrize("preset", ["fast", "accurate"])
def test_upload_chooses_its_preset(server: Server, jfk: Path, preset: str) -> None:
    body = post_file(server, jfk, preset=preset, prompt="Fellow Americans.").json()
    assert body["preset"] == preset
    assert heard(JFK_TEXT, body["text"]) == 1


def test_api_keys_and_ssrf_guard(tmp_path: Path, media_host: str) -> None:
    with run_server(tmp_path, API_KEYS="k1,k2", PARALLEL_WORKERS="1") as keyed:
        assert httpx.get(f"{keyed.url}/health").status_code == 200
        denied = httpx.get(f"{keyed.url}/v1/models")
        assert denied.status_code == 401 and denied.json()["error"]["code"] == "unauthorized"
        wrong = httpx.get(f"{keyed.url}/v1/models", headers={"authorization": "Bearer nope"})
        assert wrong.status_code == 401
        ok = httpx.get(f"{keyed.url}/v1/models", headers={"authorization": "Bearer k2"})
        assert ok.status_code == 200
        key = {"authorization": "Bearer k1"}
        for url in (f"{media_host}/jfk.flac", "http://169.254.169.254/latest/meta-data",
                    "http://[::1]/a.mp3", "file:///etc/passwd"):
            refused = httpx.post(f"{keyed.url}/api/v1/transcribe", json={"url": url}, headers=key)
            assert refused.status_code == 400, (url, refused.text)
            assert refused.json()["error"]["code"] == "url_not_allowed", url
        assert keyed.temp_is_empty()


def test_seed_url_request(server: Server, media_host: str) -> None:
    response = httpx.post(f"{server.url}/api/v1/transcribe", timeout=120, json={
        "youtube_url": f"{media_host}/jfk.flac", "language": "en", "format": "json"})
    assert response.status_code == 200, response.text
    assert heard(JFK_TEXT, response.json()["text"]) == 1
    assert server.temp_is_empty()


def test_url_404_is_a_clear_error(server: Server, media_host: str) -> None:
    response = httpx.post(f"{server.url}/api/v1/transcribe", timeout=60,
                          json={"url": f"{media_host}/missing.mp3"})
    assert response.status_code == 422
    assert "404" in response.json()["error"]["message"]
    assert server.temp_is_empty()


def test_huge_uploads_are_refused_before_they_hit_the_disk(tmp_path: Path) -> None:
    with run_server(tmp_path, MAX_UPLOAD_MB="1", PARALLEL_WORKERS="1") as small:
        host, port = small.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(b"POST /api/v1/transcribe HTTP/1.1\r\nHost: x\r\n"
                         b"Content-Type: multipart/form-data; boundary=b\r\n"
                         b"Content-Length: 1000000000000\r\n\r\n--b\r\n")
            answer = b""
            while b"MAX_UPLOAD_MB" not in answer and (block := sock.recv(4096)):
                answer += block
        assert answer.startswith(b"HTTP/1.1 413") and b"MAX_UPLOAD_MB" in answer

        def chunks() -> Iterator[bytes]:  # no Content-Length: counted while it streams
            yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.mp3"\r\n\r\n'
            for _ in range(40):
                yield b"\0" * 65536
        for route in ("/api/v1/transcribe", "/v1/audio/transcriptions"):
            response = httpx.post(f"{small.url}{route}", content=chunks(),
                                  headers={"content-type": "multipart/form-data; boundary=b"})
            assert response.status_code == 413 and "MAX_UPLOAD_MB" in response.text, route
            assert response.json()["error"]["code"] == "media_too_large"
        assert small.temp_is_empty()
        assert httpx.get(f"{small.url}/health").status_code == 200


def test_subtitle_options_on_the_seed_and_openai_routes(server: Server, jfk: Path) -> None:
    seed = post_file(server, jfk, format="srt", max_line_width="20", max_line_count="1")
    assert seed.status_code == 200, seed.text
    with jfk.open("rb") as handle:
        openai = httpx.post(f"{server.url}/v1/audio/transcriptions", timeout=120,
                            files={"file": ("jfk.flac", handle)},
                            data={"response_format": "vtt", "max_line_width": "20",
                                  "max_line_count": "1"})
    assert openai.status_code == 200, openai.text
    for body in (seed.text, openai.text):
        cues = [block.splitlines() for block in body.split("\n\n") if "-->" in block]
        assert len(cues) >= 3
        for cue in cues:
            text = cue[cue.index(next(x for x in cue if "-->" in x)) + 1:]
            assert len(text) == 1 and (len(text[0]) <= 20 or " " not in text[0]), cue
        assert heard(JFK_TEXT, body) == 1
    bad = post_file(server, jfk, format="srt", max_line_width="wide")
    assert bad.status_code == 400 and "max_line_width" in bad.json()["error"]["message"]


def test_docs_work_offline(server: Server) -> None:
    """Every script and stylesheet of /docs and /redoc comes from this server, not a CDN."""
    import re

    for page in ("/docs", "/redoc"):
        html = httpx.get(f"{server.url}{page}", timeout=10)
        assert html.status_code == 200
        assets = re.findall(r"""(?:src|href)=["']([^"']+)["']""", html.text)
        assert assets and all(a.startswith("/") for a in assets), assets
        for asset in assets:
            response = httpx.get(f"{server.url}{asset}", timeout=10)
            assert response.status_code == 200 and response.content, asset


def test_favicon(server: Server) -> None:
    response = httpx.get(f"{server.url}/favicon.ico", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("image/svg+xml")
    assert response.content.startswith(b"<svg")
