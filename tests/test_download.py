"""download.py against a real HTTP server on 127.0.0.1; nothing here talks to any other address.

Guard tests for other addresses replace the socket functions with ones that fail the test, so a
refusal is shown to happen before any lookup or connection. Tests that need a "public" host use
`public_is_local`: the guard sees PUBLIC_IP, and the one socket function downloads use
(`download.open_socket`) carries that address to 127.0.0.1; any other address fails the test.
"""

import ipaddress
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import DATA
from tests.support.network import PUBLIC_IP, guard_sockets
from whisper_api import download
from whisper_api.audio import convert_to_wav
from whisper_api.download import (
    DownloadLimits,
    FetchControl,
    check_url,
    fetch_direct,
    fetch_media,
    fetch_with_ytdlp,
    is_known_site,
    make_client,
)
from whisper_api.errors import (
    DownloadError,
    InvalidRequestError,
    MediaTooLargeError,
    UrlNotAllowedError,
)

JFK = (DATA / "jfk.flac").read_bytes()
LIMITS = DownloadLimits(max_bytes=10 * 1024 * 1024, max_duration_s=600, timeout_s=5,
                        allow_private=True)
GUARDED = DownloadLimits(max_bytes=LIMITS.max_bytes, max_duration_s=600, timeout_s=5,
                         allow_private=False)
GENERIC = ("generic",)  # yt-dlp's generic extractor: only tests enable it, to reach local files


class QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that stop reading at a limit or a refused redirect hang up mid-answer.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class Server:
    """Records the paths it was asked for, so tests can show what was (not) fetched."""

    def __init__(self, httpd: ThreadingHTTPServer) -> None:
        self.httpd = httpd
        self.requests: list[str] = []

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.httpd.server_port}{path}"


def _handler(server: Server) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            server.requests.append(self.path)
            route = ROUTES.get(self.path)
            if route is None:
                self.send_error(404)
            else:
                route(self, server)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass  # keep test output clean

    return Handler


def _send(handler: BaseHTTPRequestHandler, body: bytes, content_type: str,
          declare_length: bool = True) -> None:
    handler.send_response(200)
    handler.send_header("Content-Type", content_type)
    if declare_length:
        handler.send_header("Content-Length", str(len(body)))
    else:
        handler.close_connection = True  # the body ends when the connection does
    handler.end_headers()
    handler.wfile.write(body)


def _redirect(handler: BaseHTTPRequestHandler, location: str) -> None:
    handler.send_response(302)
    handler.send_header("Location", location)
    handler.send_header("Content-Length", "0")
    handler.end_headers()


def _slow(handler: BaseHTTPRequestHandler, server: Server) -> None:
    time.sleep(1.0)
    _send(handler, JFK, "audio/flac")


ROUTES: dict[str, Callable[[BaseHTTPRequestHandler, Server], None]] = {
    "/jfk.flac": lambda h, s: _send(h, JFK, "audio/flac"),
    "/undeclared.flac": lambda h, s: _send(h, JFK, "audio/flac", declare_length=False),
    "/note.txt": lambda h, s: _send(h, b"just text\n", "text/plain"),
    "/page.html": lambda h, s: _send(
        h, b'<html><body><audio src="/jfk.flac"></audio></body></html>', "text/html"),
    "/redirect": lambda h, s: _redirect(h, s.url("/jfk.flac")),
    "/slow.flac": _slow,
}


@pytest.fixture
def server() -> Iterator[Server]:
    httpd = QuietServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    srv = Server(httpd)
    httpd.RequestHandlerClass = _handler(srv)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield srv
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any DNS lookup or connection attempt fails the test."""

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("network used before the guard refused")

    monkeypatch.setattr(socket, "getaddrinfo", forbidden)
    monkeypatch.setattr(socket, "create_connection", forbidden)
    monkeypatch.setattr(socket.socket, "connect", forbidden)


def fake_dns(monkeypatch: pytest.MonkeyPatch, answers: dict[str, list[str]]) -> None:
    """Make the guard see `answers` for these hosts; the real client is unaffected."""
    real = download._resolve

    def resolve(host: str, port: int) -> list[download.IPAddress]:
        if host in answers:
            return [ipaddress.ip_address(a) for a in answers[host]]
        return real(host, port)

    monkeypatch.setattr(download, "_resolve", resolve)


@pytest.fixture
def public_is_local(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """'public.test' and 'localhost' look public to the guard; their connections reach
    127.0.0.1. Returns the addresses downloads connected to."""
    fake_dns(monkeypatch, {"public.test": [PUBLIC_IP], "localhost": [PUBLIC_IP]})
    return guard_sockets(monkeypatch)


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# --- guard ------------------------------------------------------------------------------------


@pytest.mark.parametrize("url", [
    "http://169.254.169.254/latest",
    "http://[::1]/x",
    "http://10.0.0.1/x",
    "http://127.0.0.1/x",
    "http://0.0.0.0/x",
    "http://[::ffff:127.0.0.1]/x",
    "http://[fe80::1]/x",
    "http://224.0.0.1/x",
    "http://100.64.0.1/x",
    "https://192.168.1.1:8443/x",
])
@pytest.mark.usefixtures("no_network")
def test_private_addresses_refused_before_any_network(url: str, tmp_path: Path) -> None:
    with pytest.raises(UrlNotAllowedError, match="private or reserved") as caught:
        fetch_media(url, tmp_path, GUARDED)
    assert "ALLOW_PRIVATE_URLS=true" in str(caught.value)  # says how to allow it
    assert files_in(tmp_path) == []


@pytest.mark.parametrize(("url", "scheme"), [
    ("file:///etc/passwd", "'file'"),
    ("ftp://example.com/a.mp3", "'ftp'"),
    ("data:audio/wav;base64,AAAA", "'data'"),
    ("gopher://example.com/", "'gopher'"),
    ("/relative/path.mp3", "no scheme"),
])
@pytest.mark.usefixtures("no_network")
def test_other_schemes_refused(url: str, scheme: str, tmp_path: Path) -> None:
    expected = f"only http and https URLs are allowed, got.*{scheme}"
    with pytest.raises(UrlNotAllowedError, match=expected):
        fetch_media(url, tmp_path, LIMITS)  # even with private addresses allowed


@pytest.mark.usefixtures("no_network")
def test_url_without_host_or_with_bad_port_refused() -> None:
    with pytest.raises(UrlNotAllowedError, match="no host"):
        check_url("http:///x", allow_private=True)
    with pytest.raises(UrlNotAllowedError, match="invalid port"):
        check_url("http://example.com:99999/x", allow_private=True)


@pytest.mark.parametrize("url", ["http://127.0.0.1/a\x01.mp3", "http://127.0.0.1/a\n.mp3",
                                 "http://127.0.0.1/\x7f"])
def test_url_with_a_control_character_refused(url: str) -> None:
    """httpx's InvalidURL is no HTTPError: such a URL was a 500, now a 400 before any fetch."""
    with pytest.raises(UrlNotAllowedError, match="control character"):
        check_url(url, allow_private=True)


def test_any_private_answer_among_public_ones_refuses(monkeypatch: pytest.MonkeyPatch) -> None:
    answers = [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, 80))
               for ip in (PUBLIC_IP, "10.1.2.3")]
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: answers)
    with pytest.raises(UrlNotAllowedError, match="'mixed.test'"):
        check_url("http://mixed.test/a.mp3", allow_private=False)


def test_public_answers_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    answers = [(socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("2606:2800:220:1::1", 80, 0, 0)),
               (socket.AF_INET, socket.SOCK_STREAM, 6, "", (PUBLIC_IP, 80))]
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: answers)
    check_url("https://public.test/a.mp3", allow_private=False)


def test_unresolvable_host_is_a_download_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: object, **kwargs: object) -> None:
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", fail)
    with pytest.raises(DownloadError, match="cannot resolve host 'nowhere.test'"):
        check_url("http://nowhere.test/x", allow_private=False)


def test_loopback_server_refused_when_private_off(server: Server, tmp_path: Path) -> None:
    with pytest.raises(UrlNotAllowedError):
        fetch_media(server.url("/jfk.flac"), tmp_path, GUARDED)
    assert server.requests == []


# --- redirects --------------------------------------------------------------------------------


def test_redirect_to_loopback_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake_dns(monkeypatch, {"public.test": [PUBLIC_IP]})
    seen: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(302, headers={"Location": "http://127.0.0.1/"})

    with make_client(FetchControl(GUARDED), httpx.MockTransport(answer)) as client, \
            pytest.raises(UrlNotAllowedError, match="'127.0.0.1'"):
        fetch_direct(client, "http://public.test/a.mp3", tmp_path, FetchControl(GUARDED))
    assert seen == ["http://public.test/a.mp3"]


def test_relative_redirect_is_resolved_and_followed(monkeypatch: pytest.MonkeyPatch,
                                                    tmp_path: Path) -> None:
    fake_dns(monkeypatch, {"public.test": [PUBLIC_IP]})

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/start":
            return httpx.Response(301, headers={"Location": "/media/a.mp3"})
        return httpx.Response(200, headers={"Content-Type": "audio/mpeg"}, content=b"ID3 data")

    with make_client(FetchControl(GUARDED), httpx.MockTransport(answer)) as client:
        path = fetch_direct(client, "http://public.test/start", tmp_path,
                            FetchControl(GUARDED))
    assert path == tmp_path / "media.mp3"
    assert path.read_bytes() == b"ID3 data"


def test_redirect_loop_stops_after_five(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake_dns(monkeypatch, {"public.test": [PUBLIC_IP]})
    seen: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        return httpx.Response(302, headers={"Location": f"/hop{len(seen)}"})

    with make_client(FetchControl(GUARDED), httpx.MockTransport(answer)) as client, \
            pytest.raises(DownloadError, match="more than 5 redirects"):
        fetch_direct(client, "http://public.test/start", tmp_path, FetchControl(GUARDED))
    assert len(seen) == 6


def test_real_redirect_to_loopback_refused(server: Server, public_is_local: list[str],
                                           tmp_path: Path) -> None:
    with pytest.raises(UrlNotAllowedError, match="'127.0.0.1'"):
        fetch_media(server.url("/redirect", host="localhost"), tmp_path, GUARDED)
    assert server.requests == ["/redirect"]  # the target was never requested
    assert public_is_local == [PUBLIC_IP]  # one connection, to the vetted address
    assert files_in(tmp_path) == []


def test_real_redirect_followed_when_private_allowed(server: Server, tmp_path: Path) -> None:
    path = fetch_media(server.url("/redirect"), tmp_path, LIMITS)
    assert path.read_bytes() == JFK
    assert server.requests == ["/redirect", "/jfk.flac"]


# --- direct fetch -----------------------------------------------------------------------------


def test_direct_fetch_writes_identical_bytes(server: Server, tmp_path: Path) -> None:
    path = fetch_media(server.url("/jfk.flac"), tmp_path, LIMITS)
    assert path == tmp_path / "media.flac"
    assert path.read_bytes() == JFK
    assert files_in(tmp_path) == ["media.flac"]


@pytest.mark.parametrize("route", ["/jfk.flac", "/undeclared.flac"])
def test_byte_limit_leaves_no_partial_file(server: Server, route: str, tmp_path: Path) -> None:
    small = DownloadLimits(max_bytes=len(JFK) // 2, max_duration_s=600, timeout_s=5,
                           allow_private=True)
    with pytest.raises(MediaTooLargeError, match=str(small.max_bytes)):
        fetch_media(server.url(route), tmp_path, small)
    assert files_in(tmp_path) == []


def test_direct_404_is_a_download_error(tmp_path: Path) -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, headers={"Content-Type": "text/html"})

    with make_client(FetchControl(LIMITS), httpx.MockTransport(answer)) as client, \
            pytest.raises(DownloadError, match="remote site 127.0.0.1 answered HTTP 404"):
        fetch_direct(client, "http://127.0.0.1/a.mp3", tmp_path, FetchControl(LIMITS))


def test_non_media_answer_is_refused(server: Server, tmp_path: Path) -> None:
    with make_client(FetchControl(LIMITS)) as client, \
            pytest.raises(DownloadError, match=r"not audio or video \(text/plain\)"):
        fetch_direct(client, server.url("/note.txt"), tmp_path, FetchControl(LIMITS))
    assert files_in(tmp_path) == []


def test_refused_connection_is_a_download_error(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(DownloadError, match="could not fetch from 127.0.0.1") as caught:
        fetch_media(f"http://127.0.0.1:{port}/a.mp3", tmp_path, LIMITS)
    assert "Traceback" not in str(caught.value)


def test_unresponsive_server_times_out(server: Server, tmp_path: Path) -> None:
    quick = DownloadLimits(max_bytes=LIMITS.max_bytes, max_duration_s=600, timeout_s=0.2,
                           allow_private=True)
    with pytest.raises(DownloadError, match=r"took longer than 0.2s \(DOWNLOAD_TIMEOUT_S\)"):
        fetch_media(server.url("/slow.flac"), tmp_path, quick)
    assert files_in(tmp_path) == []


# --- yt-dlp -----------------------------------------------------------------------------------


def test_ytdlp_downloads_direct_media(server: Server, tmp_path: Path) -> None:
    path = fetch_with_ytdlp(server.url("/jfk.flac"), tmp_path, LIMITS, extractors=GENERIC)
    assert path.parent == tmp_path
    assert path.read_bytes() == JFK
    assert files_in(tmp_path) == [path.name]  # the scratch folder is gone


def test_page_is_not_handed_to_ytdlp_generic(server: Server, tmp_path: Path) -> None:
    # yt-dlp's generic extractor would read the page whole and look for media in it.
    with pytest.raises(DownloadError, match=r"not audio or video \(text/html\)"):
        fetch_media(server.url("/page.html"), tmp_path, LIMITS)
    assert server.requests == ["/page.html"]
    assert files_in(tmp_path) == []


def test_ytdlp_without_generic_refuses_unknown_sites(server: Server, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="No suitable extractor"):
        fetch_with_ytdlp(server.url("/page.html"), tmp_path, LIMITS)
    assert server.requests == []


def test_ytdlp_404_is_a_short_download_error(server: Server, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="404") as caught:
        fetch_with_ytdlp(server.url("/missing.mp3"), tmp_path, LIMITS, extractors=GENERIC)
    message = str(caught.value)
    assert "Traceback" not in message and str(tmp_path) not in message
    assert message.startswith("downloading from 127.0.0.1: ")  # the remote's 404, not ours
    assert files_in(tmp_path) == []


@pytest.mark.parametrize("route", ["/jfk.flac", "/undeclared.flac"])
def test_ytdlp_byte_limit(server: Server, route: str, tmp_path: Path) -> None:
    small = DownloadLimits(max_bytes=len(JFK) // 2, max_duration_s=600, timeout_s=5,
                           allow_private=True)
    with pytest.raises(MediaTooLargeError):
        fetch_with_ytdlp(server.url(route), tmp_path, small, extractors=GENERIC)
    assert files_in(tmp_path) == []


def test_ytdlp_refuses_loopback_before_running(server: Server, tmp_path: Path) -> None:
    with pytest.raises(UrlNotAllowedError):
        fetch_with_ytdlp(server.url("/jfk.flac"), tmp_path, GUARDED, extractors=GENERIC)
    assert server.requests == []


def test_ytdlp_redirect_to_loopback_refused(server: Server, public_is_local: list[str],
                                            tmp_path: Path) -> None:
    with pytest.raises(UrlNotAllowedError, match="'127.0.0.1'"):
        fetch_with_ytdlp(server.url("/redirect", host="localhost"), tmp_path, GUARDED,
                         extractors=GENERIC)
    # yt-dlp's requests go through our handler: the redirect's target is never requested.
    assert server.requests == ["/redirect"]
    assert public_is_local == [PUBLIC_IP]
    assert files_in(tmp_path) == []


def test_info_checks() -> None:
    limits = DownloadLimits(max_bytes=1000, max_duration_s=60, timeout_s=5, allow_private=False)
    download._check_info({"duration": 60, "protocol": "https"}, limits)
    with pytest.raises(MediaTooLargeError, match="61 s long; the limit is 60 s"):
        download._check_info({"duration": 61}, limits)
    with pytest.raises(MediaTooLargeError):
        download._check_info({"filesize_approx": 5000}, limits)
    with pytest.raises(InvalidRequestError, match="playlist"):
        download._check_info({"_type": "playlist", "entries": []}, limits)
    with pytest.raises(UrlNotAllowedError, match="'rtmp'"):
        download._check_info({"protocol": "rtmp"}, limits)


def test_ytdlp_message_is_trimmed(tmp_path: Path) -> None:
    raw = (f"ERROR: [generic] Unable to download webpage: HTTP Error 404: Not Found "
           f"(caused by <HTTPError 404>); please report this issue on {tmp_path}")
    assert download._ytdlp_message(raw, tmp_path) == (
        "[generic] Unable to download webpage: HTTP Error 404: Not Found")
    assert download._ytdlp_message(f"unable to write {tmp_path}/media.flac", tmp_path) == (
        "unable to write <download folder>/media.flac")


@pytest.mark.usefixtures("no_network")
def test_known_sites_are_recognised_offline() -> None:
    assert is_known_site("https://www.youtube.com/watch?v=dQw4w9WgXcQ")
    assert is_known_site("https://youtu.be/dQw4w9WgXcQ")
    assert not is_known_site("http://127.0.0.1:8000/jfk.flac")


@pytest.fixture
def hls(tmp_path: Path) -> Iterator[tuple[Path, Callable[[str], str]]]:
    """A folder served on 127.0.0.1, and the URL of a file in it."""
    folder = tmp_path / "hls"
    folder.mkdir()

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass

    httpd = QuietServer(("127.0.0.1", 0), partial(Quiet, directory=str(folder)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield folder, lambda name: f"http://127.0.0.1:{httpd.server_port}/{name}"
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


def _hls(folder: Path, *options: str) -> None:
    """6 s of tone as HLS segments, written by ffmpeg (a test fixture tool, as elsewhere)."""
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
                    "sine=frequency=440:duration=6", "-ar", "16000", "-ac", "1", "-c:a", "aac",
                    "-f", "hls", "-hls_time", "2", *options, str(folder / "media.m3u8")],
                   check=True, timeout=60)


def test_a_live_stream_is_refused_before_any_segment(
    hls: tuple[Path, Callable[[str], str]], tmp_path: Path
) -> None:
    """yt-dlp gives live HLS to the ffmpeg program, past every limit: it polled the playlist
    until killed, whatever the deadline."""
    folder, url = hls
    _hls(folder, "-hls_playlist_type", "event")
    playlist = folder / "media.m3u8"
    playlist.write_text(playlist.read_text().replace("#EXT-X-ENDLIST\n", ""))  # still going
    (tmp_path / "out").mkdir()
    with pytest.raises(InvalidRequestError, match="live streams are not supported"):
        fetch_with_ytdlp(url("media.m3u8"), tmp_path / "out", LIMITS, extractors=GENERIC)


def test_ytdlp_cannot_reach_the_ffmpeg_program(
    hls: tuple[Path, Callable[[str], str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second guard: a stream yt-dlp would hand to ffmpeg (here a live one the first guard
    is told to let through) fails at once instead of running unguarded."""
    folder, url = hls
    _hls(folder, "-hls_playlist_type", "event")
    playlist = folder / "media.m3u8"
    playlist.write_text(playlist.read_text().replace("#EXT-X-ENDLIST\n", ""))
    real = download._check_info
    monkeypatch.setattr(download, "_check_info", lambda info, limits: real(
        {**info, "is_live": False, "live_status": "not_live"}, limits))
    (tmp_path / "out").mkdir()
    with pytest.raises(DownloadError, match="ffmpeg could not be found"):
        fetch_with_ytdlp(url("media.m3u8"), tmp_path / "out", LIMITS, extractors=GENERIC)


def test_encrypted_hls_is_decrypted_by_ytdlp_itself(
    hls: tuple[Path, Callable[[str], str]], tmp_path: Path
) -> None:
    folder, url = hls
    (folder / "k.key").write_bytes(bytes(range(16)))
    (tmp_path / "k.info").write_text(f"k.key\n{folder / 'k.key'}\n")
    _hls(folder, "-hls_playlist_type", "vod", "-hls_key_info_file", str(tmp_path / "k.info"))
    assert "METHOD=AES-128" in (folder / "media.m3u8").read_text()
    (tmp_path / "out").mkdir()
    media = fetch_with_ytdlp(url("media.m3u8"), tmp_path / "out", LIMITS, extractors=GENERIC)
    assert convert_to_wav(media, tmp_path / "media.wav") == pytest.approx(6.0, abs=0.3)
