"""Hostile input and faults (issue 13): each test reproduces one defect found by probing a running
server, and shows it holds now. Figures printed as `FIGURE ...` lines feed docs/reliability.md
(run with `-s` to see them).

Network traffic goes only to listeners these tests start on 127.0.0.1. "Public" hosts exist only
in a fake resolver; the one socket function downloads use (`download.open_socket`) is watched so
that any connection to an address other than loopback fails the test. Every loop is bounded in
count and in time.
"""

import asyncio
import contextlib
import errno
import ipaddress
import os
import signal
import socket
import sqlite3
import subprocess
import threading
import time
import wave
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast

import httpx
import pytest

from tests.conftest import DATA
from tests.support.network import PUBLIC_IP, guard_sockets
from tests.support.processes import alive
from tests.support.server import Server, run_server, worker_pids
from tests.test_jobs import FakeTranscribe, make_settings, wait_status
from whisper_api import audio, download
from whisper_api.api.auth import authenticate, tenant_of
from whisper_api.audio import convert_to_wav
from whisper_api.download import DownloadLimits, FetchControl, fetch_media, fetch_with_ytdlp
from whisper_api.errors import (
    DownloadError,
    InsufficientStorageError,
    MediaTooLargeError,
    QueueFullError,
    UnauthorizedError,
    UrlNotAllowedError,
)
from whisper_api.executors import ChunkExecutor
from whisper_api.jobs import Job, JobInput, JobRunner, JobStatus, JobStore, database_path
from whisper_api.jobs import runner as job_runner
from whisper_api.pipeline import TranscribeRequest
from whisper_api.service import Service, UrlSource, keep_copy
from whisper_api.sessions import SessionManager
from whisper_api.transcript import Transcript

JFK = DATA / "jfk.flac"
MB = 1024 * 1024


# --- local listeners --------------------------------------------------------------------------


class Listener:
    """A loopback HTTP server whose routes are functions; it records every request it gets and
    how many connections are open right now."""

    def __init__(self, routes: dict[str, Callable[[BaseHTTPRequestHandler], None]]) -> None:
        self.routes, self.requests, self.open = routes, [], 0
        self._lock = threading.Lock()
        listener = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                with listener._lock:
                    listener.requests.append(self.path)
                    listener.open += 1
                try:
                    route = listener.routes.get(self.path)
                    if route is None:
                        self.send_error(404)
                    else:
                        route(self)
                except OSError:
                    pass  # the client hung up: what cancelled downloads do
                finally:
                    with listener._lock:
                        listener.open -= 1

            do_POST = do_GET  # noqa: N815 - job callbacks

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,),
                                       daemon=True)
        self.thread.start()

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.httpd.server_port}{path}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


def trickle(handler: BaseHTTPRequestHandler, content_type: str = "audio/flac",
            bytes_max: int = 600, interval_s: float = 0.1) -> None:
    """One byte per interval, at most bytes_max (60 s): a remote that never finishes."""
    handler.send_response(200)
    handler.send_header("Content-Type", content_type)
    handler.end_headers()
    for _ in range(bytes_max):
        handler.wfile.write(b"x")
        handler.wfile.flush()
        time.sleep(interval_s)


def trickle_headers(handler: BaseHTTPRequestHandler, bytes_max: int = 300,
                    interval_s: float = 0.1) -> None:
    """A status line, then one header byte per interval (at most 30 s): an answer never done."""
    handler.wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
    for _ in range(bytes_max):
        handler.wfile.write(b"x")
        handler.wfile.flush()
        time.sleep(interval_s)


def endless(handler: BaseHTTPRequestHandler, content_type: str, total_bytes: int) -> None:
    """A body of total_bytes, sent in 64 KB blocks without Content-Length."""
    handler.send_response(200)
    handler.send_header("Content-Type", content_type)
    handler.end_headers()
    block = b"<p>" + b"a" * (64 * 1024 - 3)
    for _ in range(total_bytes // len(block)):
        handler.wfile.write(block)


def redirect_to(target: str) -> Callable[[BaseHTTPRequestHandler], None]:
    def answer(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(302)
        handler.send_header("Location", target)
        handler.send_header("Content-Length", "0")
        handler.end_headers()
    return answer


def jfk_route(handler: BaseHTTPRequestHandler) -> None:
    body = JFK.read_bytes()
    handler.send_response(200)
    handler.send_header("Content-Type", "audio/flac")
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


@pytest.fixture
def listener() -> Iterator[Listener]:
    server = Listener({})
    yield server
    server.close()


@pytest.fixture
def watched_sockets(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every address a download connects to; PUBLIC_IP is carried to 127.0.0.1, and any other
    non-loopback address fails the test before a packet is sent."""
    return guard_sockets(monkeypatch)


def limits(timeout_s: float = 10.0, max_bytes: int = 10 * MB,
           allow_private: bool = True) -> DownloadLimits:
    return DownloadLimits(max_bytes=max_bytes, max_duration_s=3600, timeout_s=timeout_s,
                          allow_private=allow_private)


def fetch_through(through: str, url: str, folder: Path, guarded: DownloadLimits) -> None:
    """Download `url` with httpx (plain media) or yt-dlp (its generic extractor)."""
    if through == "httpx":
        fetch_media(url, folder, guarded)
    else:
        fetch_with_ytdlp(url, folder, guarded, extractors=("generic",))


def rss_mb(pid: int | None = None) -> float:
    status = Path(f"/proc/{pid or os.getpid()}/status").read_text()
    line = next(line for line in status.splitlines() if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


# --- 1. downloads: a deadline, their own threads, cancelled with their request ------------------


@pytest.mark.parametrize("through", ["httpx", "yt-dlp"])
def test_download_timeout_is_a_deadline_not_a_per_read_timeout(listener: Listener,
                                                               tmp_path: Path,
                                                               through: str) -> None:
    listener.routes["/trickle.flac"] = trickle  # a byte every 0.1 s: no read ever times out
    started = time.monotonic()
    with pytest.raises(DownloadError, match=r"longer than 1s \(DOWNLOAD_TIMEOUT_S\)"):
        fetch_through(through, listener.url("/trickle.flac"), tmp_path, limits(timeout_s=1.0))
    elapsed = time.monotonic() - started
    print(f"FIGURE trickle download through {through} stopped after {elapsed:.2f} s "
          "(deadline 1 s)")
    assert elapsed < 5.0
    assert list(tmp_path.iterdir()) == []


def _service(tmp: Path, **settings: object) -> Service:
    # No chunk is ever run here: the executor is never touched.
    return Service(make_settings(tmp, **settings), cast(ChunkExecutor, None), 1)


def test_slow_remotes_do_not_delay_other_requests_work(listener: Listener,
                                                       tmp_path: Path) -> None:
    """Six stalled downloads used to fill asyncio's default pool (6 threads on 2 cores), so an
    upload's conversion waited behind them."""
    listener.routes["/trickle.flac"] = trickle

    async def scenario() -> float:
        service = _service(tmp_path, allow_private_urls=True, download_timeout_s=30)
        slow = [asyncio.create_task(service.download(listener.url("/trickle.flac"),
                                                     _folder(tmp_path, i))) for i in range(6)]
        await asyncio.sleep(0.5)  # the downloads have their threads now
        started = time.monotonic()
        for _ in range(20):  # what conversion and file work use
            await asyncio.to_thread(time.sleep, 0.001)
        waited = time.monotonic() - started
        for task in slow:
            task.cancel()
        await asyncio.gather(*slow, return_exceptions=True)
        service.close()
        return waited

    waited = asyncio.run(scenario())
    print(f"FIGURE 20 thread hops during 6 stalled downloads took {waited * 1000:.0f} ms")
    assert waited < 2.0


def _folder(tmp: Path, index: int) -> Path:
    folder = tmp / f"d{index}"
    folder.mkdir()
    return folder


def test_cancelling_a_download_stops_its_thread_and_connection(listener: Listener,
                                                               tmp_path: Path) -> None:
    listener.routes["/trickle.flac"] = trickle

    async def scenario() -> float:
        service = _service(tmp_path, allow_private_urls=True, download_timeout_s=30,
                           max_concurrent_downloads=1)
        task = asyncio.create_task(service.download(listener.url("/trickle.flac"), tmp_path))
        for _ in range(100):
            if listener.open:
                break
            await asyncio.sleep(0.02)
        task.cancel()
        started = time.monotonic()
        await asyncio.gather(task, return_exceptions=True)
        # The only download thread is free again: the next job runs at once.
        await asyncio.wrap_future(service.downloads.submit(lambda: None))
        stopped = time.monotonic() - started
        service.close()
        return stopped

    stopped = asyncio.run(scenario())
    for _ in range(100):  # the remote sees the connection closed
        if not listener.open:
            break
        time.sleep(0.05)
    print(f"FIGURE cancelled download freed its thread in {stopped * 1000:.0f} ms")
    assert listener.open == 0
    assert stopped < 3.0


def test_a_request_past_the_deadline_fails_and_its_session_folder_goes(listener: Listener,
                                                                       tmp_path: Path) -> None:
    """The deadline is kept from the event loop too, not only by checks in the thread."""
    listener.routes["/trickle.flac"] = trickle

    async def scenario() -> None:
        service = _service(tmp_path, allow_private_urls=True, download_timeout_s=0.5)
        with pytest.raises(DownloadError, match="DOWNLOAD_TIMEOUT_S"):
            await service.transcribe(UrlSource(listener.url("/trickle.flac")),
                                     TranscribeRequest())
        service.close()

    asyncio.run(scenario())
    assert not any((tmp_path / "temp").iterdir())  # the session folder is gone


# --- 2. only site extractors, every byte counted --------------------------------------------------


def test_html_page_is_never_read_into_memory(listener: Listener, tmp_path: Path) -> None:
    listener.routes["/big.html"] = lambda h: endless(h, "text/html", 200 * MB)
    before = rss_mb()
    with pytest.raises(DownloadError, match="not audio or video"):
        fetch_media(listener.url("/big.html"), tmp_path, limits(max_bytes=50 * MB))
    grown = rss_mb() - before
    print(f"FIGURE 200 MB HTML page: refused, RSS grew {grown:.1f} MB")
    assert grown < 30


def test_ytdlp_pages_count_against_the_byte_limit(listener: Listener, tmp_path: Path) -> None:
    """Even where yt-dlp reads a page (here its generic extractor, which production never
    enables), the page's bytes count against MAX_UPLOAD_MB."""
    listener.routes["/big.html"] = lambda h: endless(h, "text/html", 64 * MB)
    control = FetchControl(limits(max_bytes=2 * MB))
    before = rss_mb()
    with pytest.raises(MediaTooLargeError):
        fetch_with_ytdlp(listener.url("/big.html"), tmp_path, control.limits, control,
                         extractors=("generic",))
    grown = rss_mb() - before
    print(f"FIGURE 64 MB page through yt-dlp, limit 2 MB: stopped after "
          f"{control.received_bytes / MB:.2f} MB read, RSS grew {grown:.1f} MB")
    assert control.received_bytes <= 2 * MB + 64 * 1024
    assert grown < 30


def test_endless_media_stops_at_the_byte_limit(listener: Listener, tmp_path: Path) -> None:
    listener.routes["/endless.flac"] = lambda h: endless(h, "audio/flac", 64 * MB)
    control = FetchControl(limits(max_bytes=3 * MB))
    with pytest.raises(MediaTooLargeError):
        fetch_media(listener.url("/endless.flac"), tmp_path, control.limits, control)
    assert control.received_bytes <= 3 * MB + 64 * 1024
    assert list(tmp_path.iterdir()) == []


# --- 3. every connection to a vetted address --------------------------------------------------


def rebinding_resolver(monkeypatch: pytest.MonkeyPatch, host: str) -> list[str]:
    """`host` answers PUBLIC_IP twice and 127.0.0.1 ever after (DNS rebinding): the early
    checks pass, and only the lookup made where the socket is opened sees the internal one."""
    answers: list[str] = []

    def resolve(name: str, port: int) -> list[download.IPAddress]:
        if name != host:
            return [ipaddress.ip_address(name)]  # literal addresses only in these tests
        answer = PUBLIC_IP if len(answers) < 2 else "127.0.0.1"
        answers.append(answer)
        return [ipaddress.ip_address(answer)]

    monkeypatch.setattr(download, "_resolve", resolve)
    return answers


@pytest.mark.parametrize("through", ["httpx", "yt-dlp"])
def test_dns_rebinding_cannot_reach_an_internal_listener(
    listener: Listener, watched_sockets: list[str], monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path, through: str,
) -> None:
    listener.routes["/jfk.flac"] = jfk_route
    answers = rebinding_resolver(monkeypatch, "rebind.test")

    def lookup(*args: object, **kwargs: object) -> None:
        raise AssertionError("a lookup the guard did not vet")

    monkeypatch.setattr(socket, "getaddrinfo", lookup)  # every lookup goes through the guard
    url = listener.url("/jfk.flac", host="rebind.test")
    guarded = limits(allow_private=False)
    with pytest.raises(UrlNotAllowedError, match="rebind.test"):
        fetch_through(through, url, tmp_path, guarded)
    assert answers == [PUBLIC_IP, PUBLIC_IP, "127.0.0.1"]  # refused at the connection
    assert watched_sockets == []  # the connection was vetted, and refused, before it opened
    assert listener.requests == []


def test_job_callbacks_are_vetted_where_they_connect(
    listener: Listener, watched_sockets: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    answers = rebinding_resolver(monkeypatch, "hook.test")
    download.check_url(listener.url("/hook", host="hook.test"), allow_private=False)  # at submit
    with pytest.raises(UrlNotAllowedError, match="hook.test"):
        download.post_json(listener.url("/hook", host="hook.test"), {"id": "x"},
                           allow_private=False, timeout_s=5)
    assert answers == [PUBLIC_IP, PUBLIC_IP, "127.0.0.1"]  # refused at the connection
    assert watched_sockets == [] and listener.requests == []


def test_a_callback_receiver_trickling_its_answer_is_cut_off_at_the_deadline(
    listener: Listener,
) -> None:
    """httpx's timeout bounds each read: a byte every 0.1 s held the callback's thread for as
    long as the receiver liked (and the job's DELETE and the shutdown waited on it)."""
    listener.routes["/hook"] = trickle_headers
    started = time.monotonic()
    with pytest.raises(DownloadError, match="did not answer within 1s"):
        download.post_json(listener.url("/hook"), {"id": "x"}, allow_private=True,
                           timeout_s=1.0)
    elapsed = time.monotonic() - started
    print(f"FIGURE trickling callback receiver cut off after {elapsed:.2f} s (deadline 1 s)")
    assert elapsed < 10.0  # the receiver would have gone on for 30 s


@pytest.mark.parametrize("through", ["httpx", "yt-dlp"])
def test_redirects_to_internal_addresses_send_nothing_there(
    listener: Listener, watched_sockets: list[str], monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path, through: str,
) -> None:
    internal = Listener({"/secret": jfk_route})  # must receive zero requests
    try:
        listener.routes["/go"] = redirect_to(internal.url("/secret"))
        real = download._resolve
        monkeypatch.setattr(download, "_resolve", lambda host, port: (
            [ipaddress.ip_address(PUBLIC_IP)] if host == "public.test" else real(host, port)))
        url = listener.url("/go", host="public.test")
        guarded = limits(allow_private=False)
        with pytest.raises(UrlNotAllowedError, match="127.0.0.1"):
            fetch_through(through, url, tmp_path, guarded)
        assert listener.requests == ["/go"]
        assert internal.requests == []
        assert watched_sockets == [PUBLIC_IP]
    finally:
        internal.close()


# --- 4. duration and disk known before work ---------------------------------------------------


@pytest.fixture(scope="module")
def long_silence(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An hour of silence, FLAC at 8 kHz: small to store, 115 MB once converted."""
    path = tmp_path_factory.mktemp("bomb") / "silence.flac"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
                    "anullsrc=r=8000:cl=mono", "-t", "3600", "-c:a", "flac", str(path)],
                   check=True, timeout=120)
    return path


def test_duration_bomb_is_refused_before_converting(long_silence: Path, tmp_path: Path) -> None:
    target = tmp_path / "out.wav"
    started = time.monotonic()
    with pytest.raises(MediaTooLargeError, match=r"3600s; the limit is 60s"):
        convert_to_wav(long_silence, target, max_duration_s=60)
    elapsed = time.monotonic() - started
    print(f"FIGURE 1 h FLAC ({long_silence.stat().st_size / 1024:.0f} KB), limit 60 s: "
          f"refused in {elapsed * 1000:.0f} ms, 0 bytes written")
    assert not target.exists()


def test_undeclared_duration_stops_converting_at_the_limit(
    long_silence: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(audio, "declared_duration_s", lambda container, stream: None)
    target = tmp_path / "out.wav"
    with pytest.raises(MediaTooLargeError, match="at least 6"):
        convert_to_wav(long_silence, target, max_duration_s=60)
    written = target.stat().st_size
    print(f"FIGURE same file, no declared duration: stopped with {written / 1e6:.2f} MB "
          f"written (an hour is {3600 * audio.WAV_BYTES_PER_S / 1e6:.0f} MB)")
    assert written <= 62 * audio.WAV_BYTES_PER_S


def test_too_little_disk_is_507_before_writing(long_silence: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    usage = os.statvfs(tmp_path)
    monkeypatch.setattr(audio.shutil, "disk_usage", lambda _: type("Usage", (), {
        "free": 100 * MB, "total": usage.f_blocks * usage.f_frsize, "used": 0})())
    target = tmp_path / "out.wav"
    with pytest.raises(InsufficientStorageError, match="needs 230 MB") as caught:
        convert_to_wav(long_silence, target, space_factor=2.0)
    assert caught.value.status_code == 507
    assert not target.exists()


def test_disk_full_while_converting_is_507(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    def full(self: wave.Wave_write, data: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(wave.Wave_write, "writeframesraw", full)
    with pytest.raises(InsufficientStorageError, match="filled up"):
        convert_to_wav(JFK, tmp_path / "out.wav")


# --- 5. workers die with their parent; the restart sweeps -------------------------------------


@pytest.mark.slow
def test_killed_server_takes_its_workers_and_leaves_folders_for_the_next(
    tmp_path: Path
) -> None:
    tmp = tmp_path / "run"
    tmp.mkdir()
    with run_server(tmp, PARALLEL_WORKERS="2", WHISPER_MODEL="tiny.en") as server:
        workers = worker_pids(server.process.pid)
        assert len(workers) == 2
        # A request in flight: its session folder exists when the server dies.
        sender = threading.Thread(target=_post_quietly, args=(server, JFK), daemon=True)
        sender.start()
        for _ in range(200):
            if any(server.temp_dir.glob("session_*")):
                break
            time.sleep(0.02)
        orphans = sorted(p.name for p in server.temp_dir.glob("session_*"))
        assert orphans
        server.process.send_signal(signal.SIGKILL)
        server.process.wait(timeout=10)
        started = time.monotonic()
        for _ in range(100):
            if not any(alive(pid) for pid in workers):
                break
            time.sleep(0.1)
        gone_after = time.monotonic() - started
    print(f"FIGURE server SIGKILLed: its {len(workers)} workers exited within "
          f"{gone_after:.1f} s")
    assert not any(alive(pid) for pid in workers)
    assert sorted(p.name for p in (tmp / "temp").glob("session_*")) == orphans
    SessionManager(tmp / "temp", max_age_hours=24).sweep()  # what startup runs
    assert not any((tmp / "temp").glob("session_*"))


def _post_quietly(server: Server, path: Path) -> None:
    with contextlib.suppress(httpx.HTTPError), path.open("rb") as handle:
        httpx.post(f"{server.url}/api/v1/transcribe", files={"file": (path.name, handle)},
                   timeout=30)


def test_sweep_keeps_live_servers_folders(tmp_path: Path) -> None:
    sessions = SessionManager(tmp_path, max_age_hours=24)
    mine = sessions.create()
    dead = sessions.create()
    # A pid that ran once and is gone: a finished child of ours.
    child = subprocess.Popen(["true"])
    child.wait()
    metadata = dead.root / "metadata.json"
    metadata.write_text(metadata.read_text().replace(f'"owner_pid": {os.getpid()}',
                                                     f'"owner_pid": {child.pid}'))
    assert sessions.sweep() == 1
    assert mine.root.exists() and not dead.root.exists()

    # A server killed while building a folder leaves it under its staging name, owner written.
    building = sessions.create()
    staged = building.root.with_name(f".creating_{building.session_id}")
    building.root.rename(staged)
    metadata = staged / "metadata.json"
    metadata.write_text(metadata.read_text().replace(f'"owner_pid": {os.getpid()}',
                                                     f'"owner_pid": {child.pid}'))
    assert sessions.sweep() == 1
    assert not staged.exists() and mine.root.exists()


# --- 6. the transcript first; a record that cannot be written ---------------------------------


def test_the_players_audio_copy_may_fail_without_losing_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(*args: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    converted = tmp_path / "audio_16k.wav"
    converted.write_bytes(b"RIFF")
    monkeypatch.setattr("shutil.move", full)
    keep_copy(converted, tmp_path / "job" / "audio.wav")  # logs, does not raise


class FailingStore(JobStore):
    """A store whose writes fail `failures` times once a job has finished (a full disk)."""

    def __init__(self, path: Path, failures: int) -> None:
        super().__init__(path)
        self.failures = failures

    async def save(self, job: Job, result: Transcript | None = None) -> None:
        if job.status.finished and self.failures > 0:
            self.failures -= 1
            raise sqlite3.OperationalError("database or disk is full")
        await super().save(job, result)


def test_a_job_whose_record_cannot_be_written_fails_and_never_stays_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(job_runner, "RECORD_RETRY_S", 0.05)

    async def scenario() -> tuple[Job | None, Job | None]:
        settings = make_settings(tmp_path)
        store = FailingStore(database_path(settings), failures=3)
        runner = JobRunner(settings, store, FakeTranscribe(), 1)
        await runner.start()
        job = await runner.submit(UrlSource("http://media.test/a.mp3"), JobInput())
        seen = await wait_status(runner, job.id, JobStatus.failed)
        for _ in range(100):  # the retry loop records it once the store takes writes
            if (await store.get(job.id) or job).status == JobStatus.failed:
                break
            await asyncio.sleep(0.02)
        recorded = await store.get(job.id)
        await runner.stop()
        return seen, recorded

    seen, recorded = asyncio.run(scenario())
    assert seen is not None and "could not be written" in (seen.error or "")
    assert recorded is not None and recorded.status == JobStatus.failed
    assert "database or disk is full" in (recorded.error or "")


# --- 7. small bodies stay small; atomic admission ----------------------------------------------


def test_job_admission_is_exact_under_concurrency(tmp_path: Path) -> None:
    async def scenario() -> tuple[int, int]:
        settings = make_settings(tmp_path, max_queued_jobs=5)
        fake = FakeTranscribe()
        fake.gate = asyncio.Event()

        def slow_check(url: str) -> None:
            time.sleep(0.01)  # the awaits between the check and the admission used to race

        runner = JobRunner(settings, JobStore(database_path(settings)), fake, 1, slow_check)
        await runner.start()
        results = await asyncio.gather(*(
            runner.submit(UrlSource(f"http://media.test/{i}.mp3"), JobInput())
            for i in range(40)), return_exceptions=True)
        accepted = sum(isinstance(r, Job) for r in results)
        refused = sum(isinstance(r, QueueFullError) for r in results)
        fake.gate.set()
        await runner.stop()
        return accepted, refused

    accepted, refused = asyncio.run(scenario())
    print(f"FIGURE 40 simultaneous submissions, MAX_QUEUED_JOBS=5: {accepted} admitted, "
          f"{refused} refused")
    assert accepted + refused == 40
    assert accepted <= 5 + 1  # five waiting, and at most one already running


def test_keys_are_compared_as_the_bytes_sent() -> None:
    settings = make_settings(Path("/nonexistent"), api_keys="k1,cl\u00e9", admin_api_key="boss")
    as_sent = "cl\u00e9".encode().decode("latin-1")  # how the server decodes the header
    caller = authenticate(settings, f"Bearer {as_sent}")
    assert caller.tenant == tenant_of("cl\u00e9") and not caller.sees_all
    assert authenticate(settings, "Bearer boss").sees_all
    for value in ("Bearer cl\u00e9", "Bearer \u00ff", "Bearer k2", "bearer", ""):
        with pytest.raises(UnauthorizedError) as refused:
            authenticate(settings, value)
        assert refused.value.status_code == 401


def test_only_one_of_several_keys_is_capped_in_the_queue() -> None:
    several = make_settings(Path("/nonexistent"), api_keys="k1,k2", admin_api_key="boss")
    assert authenticate(several, "Bearer k1").capped
    assert not authenticate(several, "Bearer boss").capped
    lone = make_settings(Path("/nonexistent"), api_keys="k1")
    assert not authenticate(lone, "Bearer k1").capped
    assert not authenticate(make_settings(Path("/nonexistent")), "").capped


# --- over HTTP: a real server -----------------------------------------------------------------

KEYS = {"API_KEYS": "k1,k2", "ADMIN_API_KEY": "boss"}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with run_server(tmp_path_factory.mktemp("reliability"), PARALLEL_WORKERS="1",
                    WHISPER_MODEL="tiny.en", ALLOW_PRIVATE_URLS="true", MAX_UPLOAD_MB="50",
                    MAX_QUEUED_JOBS="4", MAX_QUEUED_JOBS_PER_KEY="3", DOWNLOAD_TIMEOUT_S="30",
                    **KEYS) as running:
        yield running


def raw_exchange(server: Server, head: str, timeout_s: float = 5.0) -> str:
    """Send only a request's head (its body never comes) and read the answer's status line."""
    port = int(server.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        sock.sendall(head.encode("latin-1"))
        try:
            return sock.recv(4096).decode("latin-1").split("\r\n", 1)[0]
        except TimeoutError:
            return "no answer (the server is waiting for the body)"


@pytest.mark.slow
@pytest.mark.parametrize("path", ["/v1/audio/transcriptions", "/api/v1/jobs",
                                  "/api/v1/transcribe"])
def test_no_key_is_refused_before_the_body_is_read(server: Server, path: str) -> None:
    head = (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; "
            "boundary=b\r\nContent-Length: 40000000\r\n\r\n")
    assert raw_exchange(server, head) == "HTTP/1.1 401 Unauthorized"


@pytest.mark.slow
def test_bad_keys_are_401_not_500(server: Server) -> None:
    for value in ("Bearer k\u00e9y", "Bearer \u00ff\u00fe", "Bearer k1\u00e9", "Basic k1",
                  "Bearer", "k1"):
        response = httpx.get(f"{server.url}/api/v1/jobs", timeout=10,
                             headers={"Authorization": value.encode("utf-8")})
        assert response.status_code == 401, value


@pytest.mark.slow
def test_json_bodies_are_capped_and_depth_bounded(server: Server) -> None:
    url, key = f"{server.url}/api/v1/jobs", bearer("k1")
    rss_before = rss_mb(server.process.pid)
    declared = httpx.post(url, content=b"{" + b" " * (2 * MB) + b"}", timeout=30,
                          headers={**key, "Content-Type": "application/json"})
    assert declared.status_code == 413

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        yield b'{"url": "'
        for _ in range(16):
            yield b"a" * (256 * 1024)

    streamed = httpx.post(url, content=chunks(), timeout=30,
                          headers={**key, "Content-Type": "application/json"})
    assert streamed.status_code == 413
    deep = httpx.post(url, content=b"[" * 60_000, timeout=30,
                      headers={**key, "Content-Type": "application/json"})
    assert deep.status_code == 400 and "nested deeper" in deep.text
    deeper = httpx.post(url, content=b"[" * 100_000, timeout=30,
                        headers={**key, "Content-Type": "application/json"})
    assert deeper.status_code == 413
    grown = rss_mb(server.process.pid) - rss_before
    print(f"FIGURE 2 MB declared + 4 MB streamed JSON + 60k/100k brackets: 413/413/400/413, "
          f"server RSS grew {grown:.1f} MB")
    assert grown < 40


@pytest.mark.slow
def test_echoed_input_is_truncated_and_two_files_refused(server: Server) -> None:
    key = bearer("k1")
    language = "x" * 500_000
    answer = httpx.post(f"{server.url}/api/v1/jobs", headers=key, timeout=30,
                        json={"url": "http://127.0.0.1:9/a.mp3", "language": language[:60_000]})
    assert answer.status_code == 400
    assert len(answer.text) < 1000
    with JFK.open("rb") as one, JFK.open("rb") as two:
        files = [("file", ("a.flac", one)), ("file", ("b.flac", two))]
        twice = httpx.post(f"{server.url}/v1/audio/transcriptions", headers=key, files=files,
                           data={"model": "whisper-1"}, timeout=30)
    assert twice.status_code == 400 and "one 'file' part" in twice.text


def wait_job(server: Server, job_id: str, key: str, timeout_s: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        body: dict[str, Any] = httpx.get(f"{server.url}/api/v1/jobs/{job_id}",
                                         headers=bearer(key), timeout=10).json()
        if body["status"] in ("succeeded", "failed", "cancelled"):
            return body
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not finish")


@pytest.mark.slow
def test_tenants_see_only_their_own_jobs(server: Server) -> None:
    with JFK.open("rb") as handle:
        created = httpx.post(f"{server.url}/api/v1/jobs", headers=bearer("k1"), timeout=30,
                             files={"file": ("mine.flac", handle)})
    assert created.status_code == 202
    job_id = created.json()["id"]
    assert wait_job(server, job_id, "k1")["status"] == "succeeded"
    base = f"{server.url}/api/v1/jobs/{job_id}"
    for method, url in (("GET", base), ("GET", f"{base}/result"), ("GET", f"{base}/audio"),
                        ("GET", f"{base}/events"), ("DELETE", base)):
        assert httpx.request(method, url, headers=bearer("k2"), timeout=10).status_code == 404
        assert httpx.request(method, url, headers=bearer("boss"), timeout=10).status_code in (
            200, 409)  # the admin sees it (a finished job cannot be cancelled: 409)
    listed = {j["id"] for j in httpx.get(f"{server.url}/api/v1/jobs", headers=bearer("k2"),
                                         timeout=10).json()["jobs"]}
    assert job_id not in listed
    for key in ("k1", "boss"):
        listed = {j["id"] for j in httpx.get(f"{server.url}/api/v1/jobs",
                                             headers=bearer(key), timeout=10).json()["jobs"]}
        assert job_id in listed
    db = sqlite3.connect(server.temp_dir.parent / "data" / "jobs.db")
    try:
        stored = {row[0] for row in db.execute("SELECT tenant FROM jobs")}
    finally:
        db.close()
    assert "k1" not in stored and all(t is None or len(t) == 64 for t in stored)


@pytest.mark.slow
def test_six_slow_urls_do_not_stall_an_upload(server: Server) -> None:
    """The probe's first finding: six URLs sending a byte a second made an unrelated 11 s
    upload take 42.9 s. Now downloads wait on their own threads and stop with their client."""
    slow = Listener({"/trickle.flac": trickle})
    try:
        def hold(index: int) -> int:
            with contextlib.suppress(httpx.HTTPError):
                return httpx.post(f"{server.url}/api/v1/transcribe", headers=bearer("k1"),
                                  json={"url": slow.url("/trickle.flac")},
                                  timeout=httpx.Timeout(10, read=4)).status_code
            return 0  # gave up waiting: the server sees the client leave

        with ThreadPoolExecutor(6) as clients:
            held = [clients.submit(hold, i) for i in range(6)]
            for _ in range(100):
                if slow.open >= 4:
                    break
                time.sleep(0.05)
            started = time.monotonic()
            with JFK.open("rb") as handle:
                upload = httpx.post(f"{server.url}/api/v1/transcribe", headers=bearer("k2"),
                                    files={"file": ("jfk.flac", handle)}, timeout=60)
            upload_s = time.monotonic() - started
            statuses = [f.result() for f in held]
        for _ in range(200):  # disconnects cancel the downloads: the remote sees them close
            if slow.open == 0:
                break
            time.sleep(0.05)
        print(f"FIGURE 11 s upload during 6 trickling URL downloads: {upload_s:.1f} s; "
              f"remote connections left open after the clients left: {slow.open}")
        assert upload.status_code == 200
        assert upload_s < 20
        assert statuses == [0] * 6
        assert slow.open == 0
    finally:
        slow.close()


@pytest.mark.slow
def test_job_admission_over_http_is_exact(server: Server) -> None:
    slow = Listener({"/trickle.flac": trickle})
    try:
        # One job holds the only slot (one worker), so every admitted job stays waiting.
        holder = httpx.post(f"{server.url}/api/v1/jobs", headers=bearer("k1"), timeout=30,
                            json={"url": slow.url("/trickle.flac")}).json()["id"]
        for _ in range(100):
            if slow.open:
                break
            time.sleep(0.05)
        assert slow.open  # running, so it holds none of k1's waiting places

        def submit(key: str, index: int) -> httpx.Response:
            return httpx.post(f"{server.url}/api/v1/jobs", headers=bearer(key), timeout=30,
                              json={"url": f"http://127.0.0.1:9/{index}.mp3"})

        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(partial(submit, "k1"), range(32)))
        statuses = [a.status_code for a in answers]
        print(f"FIGURE 32 job submissions at once by one key, MAX_QUEUED_JOBS=4, "
              f"MAX_QUEUED_JOBS_PER_KEY=3: {statuses.count(202)} x 202, "
              f"{statuses.count(429)} x 429, {sum(s >= 500 for s in statuses)} x 5xx")
        assert statuses.count(202) + statuses.count(429) == 32
        assert statuses.count(202) == 3
        assert all("MAX_QUEUED_JOBS_PER_KEY" in a.json()["error"]["message"]
                   for a in answers if a.status_code == 429)
        # Another key still gets the queue's last place, and then the queue is full.
        other = [submit("k2", index) for index in range(2)]
        assert [a.status_code for a in other] == [202, 429]
        assert "(MAX_QUEUED_JOBS)" in other[1].json()["error"]["message"]
        answers += other[:1]
        for job_id in [holder, *(a.json()["id"] for a in answers if a.status_code == 202)]:
            httpx.delete(f"{server.url}/api/v1/jobs/{job_id}", headers=bearer("boss"),
                         timeout=30)
    finally:
        slow.close()

