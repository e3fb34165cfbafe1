"""Fetch media from a URL into a session folder, behind an SSRF guard and size/duration limits.

Direct media links are streamed with httpx. yt-dlp's Python API (no shell) is used only for URLs
a site-specific extractor claims (YouTube and the other sites it knows): its generic extractor,
which reads any page whole into memory looking for media, is never enabled.

Every connection made for a user's URL, whichever client makes it (the first request, each
redirect, yt-dlp's extractor pages and media), goes through `GuardedBackend.connect_tcp`: the host
is resolved once, every answer vetted, and the socket opened to a vetted address, so a DNS answer
that changes between check and connect (rebinding) cannot reach an internal address.

One download is steered by a `FetchControl`: a deadline for the whole download (DOWNLOAD_TIMEOUT_S,
not a per-read timeout), a byte budget shared by every response it reads (MAX_UPLOAD_MB, pages
included), and a cancel switch that shuts its sockets down so a blocked read returns at once.

Known gaps, stated honestly:
- DNS lookups themselves cannot be interrupted; a resolver that hangs holds its download thread
  until the system resolver gives up (the caller stops waiting at the deadline regardless).
- yt-dlp requests go through our handler without its cookie processing: cookies a site sets are
  not sent back. Sites that need them fail with a download error.
"""

import io
import ipaddress
import logging
import mimetypes
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from functools import cache, cached_property
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import SplitResult, urlsplit

import httpcore
import httpx
import yt_dlp
from httpcore._backends.sync import SyncStream
from yt_dlp.extractor import gen_extractor_classes
from yt_dlp.networking import Response as YtdlpResponse
from yt_dlp.networking.common import Features, RequestHandler
from yt_dlp.networking.exceptions import HTTPError as YtdlpHTTPError
from yt_dlp.networking.exceptions import RequestError as YtdlpRequestError
from yt_dlp.networking.exceptions import TransportError as YtdlpTransportError

from whisper_api.errors import (
    DownloadError,
    InvalidRequestError,
    MediaTooLargeError,
    UrlNotAllowedError,
    WhisperApiError,
)

log = logging.getLogger(__name__)

ALLOWED_SCHEMES = frozenset({"http", "https"})
MAX_REDIRECTS = 5
CHUNK_BYTES = 64 * 1024
MEDIA_TYPES = ("audio/", "video/", "application/octet-stream")
MEDIA_SUFFIXES = frozenset({".mp3", ".m4a", ".aac", ".wav", ".flac", ".ogg", ".oga", ".opus",
                            ".webm", ".mp4", ".m4v", ".mkv", ".mov", ".wma", ".amr", ".3gp"})
# Protocols yt-dlp downloads through its own urlopen, where the guard sits; others (rtmp, rtsp,
# mms...) are handed to external programs that would connect without any check.
GUARDED_PROTOCOLS = ("http", "https", "m3u8", "http_dash_segments")
# yt-dlp's site extractors only: "generic" would read arbitrary pages whole into memory.
SITE_EXTRACTORS = ("default", "-generic")
USER_AGENT = "whisper-api/0.1"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class DownloadLimits:
    """Limits for one download.

    max_bytes: every byte read from remotes for it (pages included). max_duration_s: longest
    media accepted, checked when the site reports a duration (direct files are measured when
    decoded). timeout_s: deadline for the whole download, from its start to its last byte.
    allow_private: skip the SSRF guard (tests, deployments that fetch from their own LAN).
    """

    max_bytes: int
    max_duration_s: float
    timeout_s: float
    allow_private: bool


class FetchControl:
    """One download's deadline, byte budget, cancel switch and open sockets.

    Created by the caller (on the event loop) and handed to the download thread; `cancel` may be
    called from any thread and makes the download stop at its next byte or blocked read.
    """

    def __init__(self, limits: DownloadLimits) -> None:
        self.limits = limits
        self.deadline = time.monotonic() + limits.timeout_s
        self.received_bytes = 0
        self.failure: WhisperApiError | None = None  # the first limit or guard refusal
        self._reason: str | None = None
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()

    def cancel(self, reason: str = "the download was cancelled") -> None:
        with self._lock:
            self._reason = self._reason or reason
            sockets = list(self._sockets)
        for sock in sockets:
            _shutdown(sock)

    def check(self) -> None:
        """Raise if cancelled, refused or past the deadline; called before each request and
        read, and again when yt-dlp reports an error (it wraps ours into its own)."""
        if self.failure is not None:
            raise self.failure
        if self._reason is not None:
            raise DownloadError(self._reason)
        if time.monotonic() > self.deadline:
            self.cancel(self.timeout_message)
            raise DownloadError(self.timeout_message)

    @property
    def timeout_message(self) -> str:
        return (f"the download took longer than {self.limits.timeout_s:g}s "
                "(DOWNLOAD_TIMEOUT_S)")

    def remaining_s(self) -> float:
        self.check()
        return max(0.001, self.deadline - time.monotonic())

    def fail(self, error: WhisperApiError) -> WhisperApiError:
        self.failure = self.failure or error
        return self.failure

    def count(self, size: int) -> None:
        self.received_bytes += size
        if self.received_bytes > self.limits.max_bytes:
            raise self.fail(MediaTooLargeError(
                f"media is over the limit of {self.limits.max_bytes} bytes"))

    def connect(self, host: str, port: int, timeout_s: float | None) -> socket.socket:
        """Resolve and vet host once, then connect to a vetted address (never to the name)."""
        self.check()
        addresses = _resolve(host, port)
        if not self.limits.allow_private and not all(_is_public(a) for a in addresses):
            raise UrlNotAllowedError(
                f"host {host!r} resolves to a private or reserved address; a server meant to "
                "fetch from its own network can allow that with ALLOW_PRIVATE_URLS=true")
        timeout = min(timeout_s or self.remaining_s(), self.remaining_s())
        error: OSError = OSError(f"no address for {host!r}")
        for address in addresses:
            try:
                sock = open_socket(str(address), port, timeout)
            except OSError as exc:
                error = exc
                continue
            self._register(sock)
            return sock
        raise error

    def _register(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.add(sock)
            cancelled = self._reason is not None
        if cancelled:
            _shutdown(sock)


def open_socket(ip: str, port: int, timeout_s: float) -> socket.socket:
    """The one place a download opens a socket (tests swap it to observe every connection)."""
    return socket.create_connection((ip, port), timeout_s)


def _shutdown(sock: socket.socket) -> None:
    with suppress(OSError):  # already closed
        sock.shutdown(socket.SHUT_RDWR)  # wakes a read blocked in another thread


# --- SSRF guard -------------------------------------------------------------------------------


def check_url(url: str, allow_private: bool) -> None:
    """Refuse non-http(s) URLs and, unless allow_private, hosts with any non-public address."""
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in url.strip()):
        raise UrlNotAllowedError("URL contains a control character")
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme not in ALLOWED_SCHEMES:
        got = f"scheme {scheme!r}" if scheme else "no scheme"
        raise UrlNotAllowedError(f"only http and https URLs are allowed, got {got}")
    host = parts.hostname
    if not host:
        raise UrlNotAllowedError("URL has no host")
    port = _port(parts)
    if allow_private:
        return
    # ANY bad address refuses: the client may connect to whichever one it likes.
    if not all(_is_public(address) for address in _resolve(host, port)):
        raise UrlNotAllowedError(
            f"host {host!r} resolves to a private or reserved address; a server meant to fetch "
            "from its own network can allow that with ALLOW_PRIVATE_URLS=true")


def _port(parts: SplitResult) -> int:
    try:
        port = parts.port
    except ValueError as exc:
        raise UrlNotAllowedError("URL has an invalid port") from exc
    return port or (443 if parts.scheme.lower() == "https" else 80)


def _resolve(host: str, port: int) -> list[IPAddress]:
    try:
        # A literal address needs no lookup, so nothing leaves the machine before refusing it.
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise DownloadError(f"cannot resolve host {host!r}") from exc
    return [ipaddress.ip_address(str(info[4][0])) for info in infos]


def _is_public(address: IPAddress) -> bool:
    # ::ffff:127.0.0.1 reaches 127.0.0.1; judge the IPv4 address it carries.
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    refused = (
        address.is_loopback
        or address.is_private
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
    )
    # is_global also rules out ranges none of the flags cover, e.g. carrier-grade NAT 100.64/10.
    return address.is_global and not refused


# --- pinned connections -----------------------------------------------------------------------


class GuardedBackend(httpcore.SyncBackend):
    """httpcore's network backend with every TCP connection made by `FetchControl.connect`."""

    def __init__(self, control: FetchControl) -> None:
        self._control = control

    def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                    local_address: str | None = None,
                    socket_options: Any = None) -> httpcore.NetworkStream:
        try:
            sock = self._control.connect(host, port, timeout)
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout(str(exc)) from exc
        except UrlNotAllowedError:
            raise
        except OSError as exc:
            raise httpcore.ConnectError(str(exc)) from exc
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return SyncStream(sock)


def guarded_transport(control: FetchControl) -> httpx.HTTPTransport:
    """An httpx transport whose connections all go through the guard (no proxies, no env)."""
    transport = httpx.HTTPTransport(trust_env=False)
    # httpx has no public hook for the network backend; its pool is rebuilt with ours.
    transport._pool = httpcore.ConnectionPool(
        ssl_context=httpx.create_ssl_context(trust_env=False),
        network_backend=GuardedBackend(control),
    )
    return transport


# --- strategy ---------------------------------------------------------------------------------


def fetch_media(url: str, target_dir: Path, limits: DownloadLimits,
                control: FetchControl | None = None) -> Path:
    """Download url into target_dir and return the file; blocking, so run it in a thread."""
    control = control or FetchControl(limits)
    check_url(url, limits.allow_private)
    if is_known_site(url):
        return fetch_with_ytdlp(url, target_dir, limits, control)
    with make_client(control) as client:
        return fetch_direct(client, url, target_dir, control)


def is_known_site(url: str) -> bool:
    """True when a site-specific yt-dlp extractor (not the generic one) claims the URL."""
    return any(extractor.suitable(url) for extractor in _site_extractors())


@cache
def _site_extractors() -> tuple[Any, ...]:
    return tuple(ie for ie in gen_extractor_classes() if ie.ie_key() != "Generic")


def post_json(url: str, body: object, allow_private: bool, timeout_s: float) -> None:
    """POST body to url (job callbacks) over a guarded connection; redirects are not followed
    and the answer's body is never read. Blocking; raises DownloadError on failure."""
    control = FetchControl(DownloadLimits(0, 0.0, timeout_s, allow_private))
    check_url(url, allow_private)
    # httpx's timeout bounds each read, not the whole answer: a receiver trickling its headers
    # a byte at a time held the thread for hours. At the deadline its socket is shut.
    deadline = threading.Timer(timeout_s, control.cancel, (
        f"{_host(url)} did not answer within {timeout_s:g}s",))
    deadline.daemon = True
    deadline.start()
    try:
        with make_client(control) as client, _httpx_errors(url, control):
            request = client.build_request("POST", url, json=body, timeout=control.remaining_s())
            response = client.send(request, stream=True)
            response.close()
            if response.status_code >= 300:
                raise DownloadError(f"{_host(url)} answered HTTP {response.status_code}")
    finally:
        deadline.cancel()


# --- direct fetch with httpx ------------------------------------------------------------------


def make_client(
    control: FetchControl, transport: httpx.BaseTransport | None = None
) -> httpx.Client:
    """The client fetch_direct expects; tests pass an httpx.MockTransport."""
    return httpx.Client(
        timeout=control.limits.timeout_s,
        follow_redirects=False,  # open_checked follows them, checking each hop
        transport=transport or guarded_transport(control),
        headers={"User-Agent": USER_AGENT},
        trust_env=False,  # a proxy from the environment would connect past the guard
    )


def fetch_direct(
    client: httpx.Client, url: str, target_dir: Path, control: FetchControl
) -> Path:
    """Stream url into target_dir if it answers with media; refuse anything else."""
    with _httpx_errors(url, control):
        response = open_checked(client, url, control)
        try:
            if response.status_code >= 400:
                raise DownloadError(
                    f"the remote site {_host(url)} answered HTTP {response.status_code}")
            if not _is_media(response):
                kind = response.headers.get("content-type", "no content type").split(";")[0]
                raise DownloadError(f"the URL is not audio or video ({_short(kind, 60)}), and "
                                    "no supported site recognises it")
            _check_declared_size(response, control.limits.max_bytes)
            return _stream_to_file(response, target_dir / _direct_name(response), control)
        finally:
            response.close()


def open_checked(client: httpx.Client, url: str, control: FetchControl, method: str = "GET",
                 headers: dict[str, str] | None = None,
                 content: bytes | None = None) -> httpx.Response:
    """Send a request, following up to MAX_REDIRECTS redirects by hand so every hop passes
    check_url (the connection itself is vetted again by the transport).

    The response is streamed and its body not yet read; the caller closes it.
    """
    for _ in range(MAX_REDIRECTS + 1):
        check_url(url, control.limits.allow_private)
        request = client.build_request(method, url, headers=headers, content=content,
                                       timeout=control.remaining_s())
        response = client.send(request, stream=True)
        if not response.is_redirect:
            return response
        response.close()
        url = _redirect_target(response)
        if response.status_code == 303 or method == "POST":
            method, content = ("HEAD" if method == "HEAD" else "GET"), None
    raise DownloadError(f"more than {MAX_REDIRECTS} redirects")


def _redirect_target(response: httpx.Response) -> str:
    location = response.headers.get("location")
    if not location:
        raise DownloadError(f"HTTP {response.status_code} redirect without a Location header")
    return str(response.url.join(location))


def _is_media(response: httpx.Response) -> bool:
    content_type: str = response.headers.get("content-type", "")
    if content_type.lower().startswith(MEDIA_TYPES):
        return True
    # Some hosts send media as text/plain or binary/octet-stream; trust a media file name then.
    suffix = PurePosixPath(response.url.path).suffix.lower()
    return suffix in MEDIA_SUFFIXES and not content_type.lower().startswith("text/html")


def _check_declared_size(response: httpx.Response, max_bytes: int) -> None:
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise MediaTooLargeError(f"media is {int(declared)} bytes; the limit is {max_bytes}")


def _direct_name(response: httpx.Response) -> str:
    suffix = PurePosixPath(response.url.path).suffix.lower()
    if not (1 < len(suffix) <= 6 and suffix[1:].isalnum()):
        content_type = response.headers.get("content-type", "").split(";")[0].strip()
        suffix = mimetypes.guess_extension(content_type) or ".bin"
    return "media" + suffix


def _stream_to_file(response: httpx.Response, path: Path, control: FetchControl) -> Path:
    """Write the body to path, counting bytes: Content-Length can be absent or lie."""
    partial_path = path.with_name(path.name + ".part")
    try:
        with partial_path.open("wb") as out:
            # No chunk size: httpx would hold bytes back until it has a full chunk, and a
            # trickling server would then never reach a deadline check.
            for chunk in response.iter_bytes():
                control.check()
                control.count(len(chunk))
                out.write(chunk)
        return partial_path.replace(path)
    finally:
        partial_path.unlink(missing_ok=True)  # a no-op after the rename


@contextmanager
def _httpx_errors(url: str, control: FetchControl) -> Iterator[None]:
    host = _host(url)
    try:
        yield
    except httpx.TimeoutException as exc:
        control.check()  # the deadline's own message when it is the deadline that passed
        raise DownloadError(f"timed out fetching from {host}") from exc
    except httpx.HTTPError as exc:
        control.check()  # a cancelled download's sockets were shut: say so, not "reset"
        raise DownloadError(f"could not fetch from {host}: {_short(str(exc))}") from exc
    except httpx.InvalidURL as exc:  # not an HTTPError: a redirect to a malformed Location
        raise DownloadError(f"{host} sent an invalid URL: {_short(str(exc))}") from exc


def _host(url: str) -> str:
    return urlsplit(url).hostname or "the remote site"


def _short(message: str, limit: int = 200) -> str:
    return message if len(message) <= limit else message[: limit - 1] + "…"


# --- yt-dlp -----------------------------------------------------------------------------------


class _GuardedHandler(RequestHandler):  # type: ignore[misc]  # yt-dlp ships no types
    """yt-dlp's only request handler here: httpx on the guarded transport, the shared budget.

    A subclass per download carries its `control` (yt-dlp builds handlers from their class).
    """

    _SUPPORTED_URL_SCHEMES = ("http", "https")
    _SUPPORTED_PROXY_SCHEMES = ()
    _SUPPORTED_FEATURES = (Features.NO_PROXY, Features.ALL_PROXY)
    control: FetchControl

    @cached_property
    def _client(self) -> httpx.Client:
        return make_client(self.control)

    def _check_extensions(self, extensions: dict[str, Any]) -> None:
        super()._check_extensions(extensions)
        for name in ("cookiejar", "timeout", "legacy_ssl", "keep_header_casing"):
            extensions.pop(name, None)

    def _send(self, request: Any) -> YtdlpResponse:
        headers = dict(self._merge_headers(request.headers))
        headers.pop("Youtubedl-No-Compression", None)
        data = request.data if isinstance(request.data, bytes | None) else request.data.read()
        try:
            response = open_checked(self._client, request.url, self.control,
                                    request.method, headers, data)
        except WhisperApiError as exc:  # yt-dlp would only report "unexpected error"
            raise self.control.fail(exc) from None
        except httpx.HTTPError as exc:
            self.control.check()
            raise YtdlpTransportError(cause=exc) from exc
        answer = YtdlpResponse(_BodyReader(response, self.control), str(response.url),
                               _plain_headers(response), response.status_code,
                               response.reason_phrase)
        if response.status_code >= 400:
            raise YtdlpHTTPError(answer)
        return answer

    def close(self) -> None:
        if "_client" in self.__dict__:
            self._client.close()


def _plain_headers(response: httpx.Response) -> dict[str, str]:
    headers = dict(response.headers)
    if "content-encoding" in headers:  # httpx decodes the body: the length no longer applies
        headers.pop("content-encoding")
        headers.pop("content-length", None)
    return headers


class _BodyReader(io.RawIOBase):
    """A response body as the file object yt-dlp reads, every byte checked and counted."""

    def __init__(self, response: httpx.Response, control: FetchControl) -> None:
        self._response, self._control = response, control
        self._chunks = response.iter_bytes()
        self._buffer = b""

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        wanted = None if size is None or size < 0 else size
        while wanted is None or len(self._buffer) < wanted:
            chunk = self._next_chunk()
            if not chunk:
                break
            self._buffer += chunk
        if wanted is None:
            data, self._buffer = self._buffer, b""
        else:
            data, self._buffer = self._buffer[:wanted], self._buffer[wanted:]
        return data

    def _next_chunk(self) -> bytes:
        self._control.check()
        try:
            chunk = next(self._chunks, b"")
        except httpx.HTTPError as exc:
            self._control.check()
            raise DownloadError(f"could not read from {self._response.url.host}: "
                                f"{_short(str(exc))}") from exc
        self._control.count(len(chunk))
        return chunk

    def close(self) -> None:
        self._response.close()
        super().close()


class _GuardedYoutubeDL(yt_dlp.YoutubeDL):  # type: ignore[misc]  # yt-dlp ships no types
    """YoutubeDL whose every HTTP request goes through `_GuardedHandler` (and nothing else)."""

    def __init__(self, params: dict[str, Any], control: FetchControl) -> None:
        self._handler = type("WhisperGuardedRH", (_GuardedHandler,), {"control": control})
        super().__init__(params)

    @cached_property
    def _request_director(self) -> Any:
        return self.build_request_director([self._handler])


class _YtdlpLog:
    """yt-dlp's logger protocol: keep its output off stdout/stderr and notice the size abort.

    yt-dlp reports a Content-Length over max_filesize only as a message and skips the file.
    """

    def __init__(self) -> None:
        self.over_size_limit = False

    def debug(self, message: str) -> None:
        if "max-filesize" in message:
            self.over_size_limit = True
        log.debug("yt-dlp: %s", message)

    def info(self, message: str) -> None:
        self.debug(message)

    def warning(self, message: str) -> None:
        log.info("yt-dlp: %s", message)

    def error(self, message: str) -> None:
        log.info("yt-dlp: %s", message)


def fetch_with_ytdlp(url: str, target_dir: Path, limits: DownloadLimits,
                     control: FetchControl | None = None,
                     extractors: tuple[str, ...] = SITE_EXTRACTORS) -> Path:
    """Download through yt-dlp; its partial files stay in a scratch folder removed afterwards.

    `extractors` is yt-dlp's allowed_extractors; tests enable "generic" to reach a local file.
    """
    control = control or FetchControl(limits)
    check_url(url, limits.allow_private)
    scratch = Path(tempfile.mkdtemp(prefix="ytdlp-", dir=target_dir))
    try:
        media = _run_ytdlp(url, scratch, control, extractors)
        return media.replace(target_dir / media.name)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _run_ytdlp(url: str, scratch: Path, control: FetchControl,
               extractors: tuple[str, ...]) -> Path:
    ytdlp_log = _YtdlpLog()
    params = _ytdlp_params(scratch, control, ytdlp_log, extractors)
    with _ytdlp_errors(url, scratch, control), _GuardedYoutubeDL(params, control) as ydl:
        # Look before downloading, so an over-long video is refused without fetching it.
        info = ydl.extract_info(url, download=False)
        _check_info(info, control.limits)
        ydl.process_ie_result(info, download=True)
    files = [p for p in scratch.iterdir() if p.is_file() and p.suffix not in (".part", ".ytdl")]
    if files:
        return files[0]
    if ytdlp_log.over_size_limit:
        raise MediaTooLargeError(f"media is over the limit of {control.limits.max_bytes} bytes")
    raise DownloadError("yt-dlp finished without producing a file")


def _ytdlp_params(scratch: Path, control: FetchControl, ytdlp_log: _YtdlpLog,
                  extractors: tuple[str, ...]) -> dict[str, Any]:
    limits = control.limits
    return {
        "format": "bestaudio/best",
        "outtmpl": {"default": str(scratch / "media.%(ext)s")},
        "noplaylist": True,
        "extract_flat": "in_playlist",  # a playlist is refused, so don't resolve its entries
        "allowed_extractors": list(extractors),
        "proxy": "",  # no proxy from the environment: it would connect past the guard
        "socket_timeout": limits.timeout_s,
        "max_filesize": limits.max_bytes,  # checked against Content-Length only
        "progress_hooks": [lambda _: control.check()],
        "external_downloader": {"default": "native"},  # ffmpeg would fetch past the guard
        # yt-dlp still hands a live stream, or HLS it cannot decode natively, to the ffmpeg
        # program, which obeys no budget, deadline, cancel or guard (a live stream ran until
        # killed): an ffmpeg it cannot find makes those fail instead.
        "ffmpeg_location": str(scratch / "no-ffmpeg"),
        "retries": 1,
        "fragment_retries": 1,
        "extractor_retries": 1,
        "cachedir": False,
        "logger": ytdlp_log,
        "quiet": True,
        "no_warnings": True,
        "noprogress": True,
    }


def _check_info(info: dict[str, Any], limits: DownloadLimits) -> None:
    if info.get("_type") == "playlist" or "entries" in info:
        raise InvalidRequestError("playlist URLs are not supported; pass a single item's URL")
    if info.get("is_live") or info.get("live_status") in ("is_live", "is_upcoming"):
        raise InvalidRequestError("live streams are not supported; pass a recording's URL "
                                  "once the stream has ended")
    duration = info.get("duration")
    if isinstance(duration, int | float) and duration > limits.max_duration_s:
        raise MediaTooLargeError(
            f"media is {duration:.0f} s long; the limit is {limits.max_duration_s:.0f} s"
        )
    size = info.get("filesize") or info.get("filesize_approx")
    if isinstance(size, int | float) and size > limits.max_bytes:
        raise MediaTooLargeError(f"media is about {size:.0f} bytes; limit {limits.max_bytes}")
    for protocol in str(info.get("protocol", "http")).split("+"):
        if not protocol.startswith(GUARDED_PROTOCOLS):
            raise UrlNotAllowedError(f"streaming protocol {protocol!r} is not supported")


@contextmanager
def _ytdlp_errors(url: str, scratch: Path, control: FetchControl) -> Iterator[None]:
    """yt-dlp's errors as DownloadError naming the remote site: its "HTTP Error 404" must not
    read as our own 404."""
    try:
        yield
    except yt_dlp.utils.DownloadError as exc:
        control.check()  # refused, cancelled or past the deadline: say that, not the symptom
        message = _ytdlp_message(str(exc.msg), scratch)
        raise DownloadError(f"downloading from {_host(url)}: {message}") from exc
    except YtdlpRequestError as exc:  # raised past the extractor by yt-dlp's request director
        control.check()
        message = _ytdlp_message(str(exc), scratch)
        raise DownloadError(f"downloading from {_host(url)}: {message}") from exc


def _ytdlp_message(message: str, scratch: Path) -> str:
    """yt-dlp's error text minus its prefix, bug-report advice, causes and our folder names."""
    message = message.removeprefix("ERROR: ")
    for tail in ("; please report this issue", " (caused by"):
        message = message.split(tail)[0]
    message = message.replace(str(scratch), "<download folder>")
    return _short(message.strip() or "yt-dlp could not download the URL")
