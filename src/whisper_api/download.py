"""Fetch media from a URL into a session folder, behind an SSRF guard and size/duration limits.

Direct media links are streamed with httpx: redirects are followed by hand so every hop passes
the guard, and the byte limit is enforced while reading. Everything else (YouTube and the other
sites yt-dlp knows, pages that embed media) goes through yt-dlp's Python API rather than its CLI,
so no shell is involved and failures arrive as exceptions we can translate.

Known gaps, stated honestly:
- The guard resolves the host itself; the HTTP client resolves it again when connecting, so a
  DNS answer that changes in between (DNS rebinding) is not caught.
- yt-dlp follows redirects inside its own request handlers. `_GuardedYoutubeDL` checks each URL
  before yt-dlp requests it and the final URL after redirects, before any body is read; so an
  internal address reached by a redirect receives the request but its answer is never used.
"""

import ipaddress
import logging
import mimetypes
import shutil
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache, partial
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import SplitResult, urlsplit

import httpx
import yt_dlp
from yt_dlp.extractor import gen_extractor_classes

from whisper_api.errors import (
    DownloadError,
    InvalidRequestError,
    MediaTooLargeError,
    UrlNotAllowedError,
)

log = logging.getLogger(__name__)

ALLOWED_SCHEMES = frozenset({"http", "https"})
MAX_REDIRECTS = 5
CHUNK_BYTES = 64 * 1024
MEDIA_TYPES = ("audio/", "video/", "application/octet-stream")
# Protocols yt-dlp downloads through its own urlopen, where the guard sits; others (rtmp, rtsp,
# mms...) are handed to external programs that would connect without any check.
GUARDED_PROTOCOLS = ("http", "https", "m3u8", "http_dash_segments")
USER_AGENT = "whisper-api/0.1"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class DownloadLimits:
    """Limits for one download.

    max_bytes: largest file accepted. max_duration_s: longest media accepted, checked when the
    site reports a duration (direct files are measured later, when decoded). timeout_s: per
    network operation (connect, each read), not a deadline for the whole download.
    allow_private: skip the SSRF guard (tests, deployments that fetch from their own LAN).
    """

    max_bytes: int
    max_duration_s: float
    timeout_s: float
    allow_private: bool


# --- SSRF guard -------------------------------------------------------------------------------


def check_url(url: str, allow_private: bool) -> None:
    """Refuse non-http(s) URLs and, unless allow_private, hosts with any non-public address."""
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


# --- strategy ---------------------------------------------------------------------------------


def fetch_media(url: str, target_dir: Path, limits: DownloadLimits) -> Path:
    """Download url into target_dir and return the file; blocking, so run it in a thread."""
    check_url(url, limits.allow_private)
    if is_known_site(url):
        return fetch_with_ytdlp(url, target_dir, limits)
    with make_client(limits) as client:
        path = fetch_direct(client, url, target_dir, limits)
    # Not media itself (an HTML page, say): yt-dlp's generic extractor may find media in it.
    return path if path is not None else fetch_with_ytdlp(url, target_dir, limits)


def is_known_site(url: str) -> bool:
    """True when a site-specific yt-dlp extractor (not the generic one) claims the URL."""
    return any(extractor.suitable(url) for extractor in _site_extractors())


@cache
def _site_extractors() -> tuple[Any, ...]:
    return tuple(ie for ie in gen_extractor_classes() if ie.ie_key() != "Generic")


# --- direct fetch with httpx ------------------------------------------------------------------


def make_client(
    limits: DownloadLimits, transport: httpx.BaseTransport | None = None
) -> httpx.Client:
    """The client fetch_direct expects; tests pass an httpx.MockTransport."""
    return httpx.Client(
        timeout=limits.timeout_s,
        follow_redirects=False,  # open_checked follows them, checking each hop
        transport=transport,
        headers={"User-Agent": USER_AGENT},
    )


def fetch_direct(
    client: httpx.Client, url: str, target_dir: Path, limits: DownloadLimits
) -> Path | None:
    """Stream url into target_dir if it answers with media; None for any other content."""
    with _httpx_errors(url):
        response = open_checked(client, url, limits.allow_private)
        try:
            if response.status_code >= 400:
                host = response.url.host
                raise DownloadError(f"the remote site {host} answered HTTP {response.status_code}")
            if not _is_media(response):
                return None
            _check_declared_size(response, limits.max_bytes)
            return _stream_to_file(response, target_dir / _direct_name(response), limits.max_bytes)
        finally:
            response.close()


def open_checked(client: httpx.Client, url: str, allow_private: bool) -> httpx.Response:
    """GET url, following up to MAX_REDIRECTS redirects by hand so every hop passes check_url.

    The response is streamed and its body not yet read; the caller closes it.
    """
    for _ in range(MAX_REDIRECTS + 1):
        check_url(url, allow_private)
        response = client.send(client.build_request("GET", url), stream=True)
        if not response.is_redirect:
            return response
        response.close()
        url = _redirect_target(response)
    raise DownloadError(f"more than {MAX_REDIRECTS} redirects")


def _redirect_target(response: httpx.Response) -> str:
    location = response.headers.get("location")
    if not location:
        raise DownloadError(f"HTTP {response.status_code} redirect without a Location header")
    return str(response.url.join(location))


def _is_media(response: httpx.Response) -> bool:
    content_type: str = response.headers.get("content-type", "")
    return content_type.lower().startswith(MEDIA_TYPES)


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


def _stream_to_file(response: httpx.Response, path: Path, max_bytes: int) -> Path:
    """Write the body to path, counting bytes: Content-Length can be absent or lie."""
    partial_path = path.with_name(path.name + ".part")
    written = 0
    try:
        with partial_path.open("wb") as out:
            for chunk in response.iter_bytes(CHUNK_BYTES):
                written += len(chunk)
                if written > max_bytes:
                    raise MediaTooLargeError(f"media is over the limit of {max_bytes} bytes")
                out.write(chunk)
        return partial_path.replace(path)
    finally:
        partial_path.unlink(missing_ok=True)  # a no-op after the rename


@contextmanager
def _httpx_errors(url: str) -> Iterator[None]:
    host = urlsplit(url).hostname
    try:
        yield
    except httpx.TimeoutException as exc:
        raise DownloadError(f"timed out fetching from {host}") from exc
    except httpx.HTTPError as exc:
        raise DownloadError(f"could not fetch from {host}: {_short(str(exc))}") from exc


def _short(message: str, limit: int = 200) -> str:
    return message if len(message) <= limit else message[: limit - 1] + "…"


# --- yt-dlp -----------------------------------------------------------------------------------


class _GuardedYoutubeDL(yt_dlp.YoutubeDL):  # type: ignore[misc]  # yt-dlp ships no types
    """YoutubeDL whose every HTTP request (extractor pages, the media itself) passes the guard.

    urlopen is yt-dlp's single entry point for its own requests. Redirects happen inside it, so
    the final URL can only be checked once the answer's headers are in, before its body is read.
    """

    def __init__(self, params: dict[str, Any], allow_private: bool) -> None:
        super().__init__(params)
        self._allow_private = allow_private

    def urlopen(self, req: Any) -> Any:
        url = req if isinstance(req, str) else getattr(req, "url", None) or req.full_url
        check_url(url, self._allow_private)
        response = super().urlopen(req)
        try:
            check_url(response.url, self._allow_private)
        except Exception:
            response.close()
            raise
        return response


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


def fetch_with_ytdlp(url: str, target_dir: Path, limits: DownloadLimits) -> Path:
    """Download through yt-dlp; its partial files stay in a scratch folder removed afterwards."""
    check_url(url, limits.allow_private)
    scratch = Path(tempfile.mkdtemp(prefix="ytdlp-", dir=target_dir))
    try:
        media = _run_ytdlp(url, scratch, limits)
        return media.replace(target_dir / media.name)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _run_ytdlp(url: str, scratch: Path, limits: DownloadLimits) -> Path:
    ytdlp_log = _YtdlpLog()
    params = _ytdlp_params(scratch, limits, ytdlp_log)
    with _ytdlp_errors(url, scratch), _GuardedYoutubeDL(params, limits.allow_private) as ydl:
        # Look before downloading, so an over-long video is refused without fetching it.
        info = ydl.extract_info(url, download=False)
        _check_info(info, limits)
        ydl.process_ie_result(info, download=True)
    files = [p for p in scratch.iterdir() if p.is_file() and p.suffix not in (".part", ".ytdl")]
    if files:
        return files[0]
    if ytdlp_log.over_size_limit:
        raise MediaTooLargeError(f"media is over the limit of {limits.max_bytes} bytes")
    raise DownloadError("yt-dlp finished without producing a file")


def _ytdlp_params(scratch: Path, limits: DownloadLimits, ytdlp_log: _YtdlpLog) -> dict[str, Any]:
    return {
        "format": "bestaudio/best",
        "outtmpl": {"default": str(scratch / "media.%(ext)s")},
        "noplaylist": True,
        "extract_flat": "in_playlist",  # a playlist is refused, so don't resolve its entries
        "socket_timeout": limits.timeout_s,
        "max_filesize": limits.max_bytes,  # checked against Content-Length only
        "progress_hooks": [partial(_enforce_byte_limit, limits.max_bytes)],
        "external_downloader": {"default": "native"},  # ffmpeg would fetch past the guard
        "retries": 1,
        "fragment_retries": 1,
        "extractor_retries": 1,
        "cachedir": False,
        "logger": ytdlp_log,
        "quiet": True,
        "no_warnings": True,
        "noprogress": True,
    }


def _enforce_byte_limit(max_bytes: int, progress: dict[str, Any]) -> None:
    # max_filesize trusts Content-Length; this catches bodies that are longer or undeclared.
    if (progress.get("downloaded_bytes") or 0) > max_bytes:
        raise MediaTooLargeError(f"media is over the limit of {max_bytes} bytes")


def _check_info(info: dict[str, Any], limits: DownloadLimits) -> None:
    if info.get("_type") == "playlist" or "entries" in info:
        raise InvalidRequestError("playlist URLs are not supported; pass a single item's URL")
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
def _ytdlp_errors(url: str, scratch: Path) -> Iterator[None]:
    try:
        yield
    except yt_dlp.utils.DownloadError as exc:
        # Name the remote site: its "HTTP Error 404" must not read as our own 404.
        message = _ytdlp_message(str(exc.msg), scratch)
        raise DownloadError(f"downloading from {urlsplit(url).hostname}: {message}") from exc


def _ytdlp_message(message: str, scratch: Path) -> str:
    """yt-dlp's error text minus its prefix, bug-report advice, causes and our folder names."""
    message = message.removeprefix("ERROR: ")
    for tail in ("; please report this issue", " (caused by"):
        message = message.split(tail)[0]
    message = message.replace(str(scratch), "<download folder>")
    return _short(message.strip() or "yt-dlp could not download the URL")
