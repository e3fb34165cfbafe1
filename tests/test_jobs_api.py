"""The jobs API against a real uvicorn server with the real tiny.en model."""

import contextlib
import json
import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jiwer
import pytest

from tests.conftest import DATA, JFK_TEXT, heard, spoken
from tests.support.server import Server, run_server, worker_pids

pytestmark = pytest.mark.model

# jfk.flac (11 s) stays on one worker; the ~75 s long_speech clip fans out in 20 s chunks.
FAN_OUT = {"AUDIO_LIMIT_SINGLE_CORE": "15", "PARALLEL_CHUNK_DURATION": "20"}
TERMINAL = ("succeeded", "failed", "cancelled")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with run_server(tmp_path_factory.mktemp("jobs"), MAX_QUEUED_JOBS="1", MAX_SYNC_REQUESTS="1",
                    ALLOW_PRIVATE_URLS="true", **FAN_OUT) as running:
        yield running


def submit(server: Server, path: Path, **fields: str) -> httpx.Response:
    with path.open("rb") as handle:
        return httpx.post(f"{server.url}/api/v1/jobs", timeout=60,
                          files={"file": (path.name, handle)}, data=fields)


def submit_ok(server: Server, path: Path, **fields: str) -> str:
    response = submit(server, path, **fields)
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    assert response.headers["location"] == f"/api/v1/jobs/{job_id}"
    return job_id


def events(server: Server, job_id: str, until: str | None = None) -> list[tuple[str, Any]]:
    """SSE events of a job until `done` (or until a progress event's stage is `until`)."""
    seen: list[tuple[str, Any]] = []
    url = f"{server.url}/api/v1/jobs/{job_id}/events"
    with httpx.stream("GET", url, timeout=httpx.Timeout(5, read=60)) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        name = ""
        for line in response.iter_lines():
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                seen.append((name, json.loads(line.removeprefix("data: "))))
                if name == "done" or seen[-1][1]["progress"]["stage"] == until:
                    return seen
    return seen


def wait_for_status(server: Server, job_id: str, timeout_s: float = 50) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        body: dict[str, Any] = httpx.get(f"{server.url}/api/v1/jobs/{job_id}").json()
        if body["status"] in TERMINAL:
            return body
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not finish")


def test_upload_job_streams_progress_and_matches_sync(server: Server, jfk: Path) -> None:
    job_id = submit_ok(server, jfk, format="srt")
    stream = events(server, job_id)
    assert stream[-1][0] == "done" and stream[-1][1]["status"] == "succeeded"
    assert all(name == "progress" for name, _ in stream[:-1])
    percents = [data["progress"]["percent"] for _, data in stream]
    assert percents == sorted(percents) and percents[-1] == 100.0
    assert stream[-1][1]["request"]["preset"] in ("accurate", "fast")  # named when submitted
    timings = stream[-1][1]["timings"]
    assert timings["started_at"] and timings["finished_at"] and timings["processing_time"] > 0

    srt = httpx.get(f"{server.url}/api/v1/jobs/{job_id}/result", timeout=10)
    with jfk.open("rb") as handle:
        sync = httpx.post(f"{server.url}/api/v1/transcribe", timeout=60,
                          files={"file": ("jfk.flac", handle)}, data={"format": "srt"})
    assert srt.status_code == 200 and srt.text == sync.text
    assert heard(JFK_TEXT, srt.text) == 1
    assert srt.headers["content-disposition"] == \
        "attachment; filename=\"jfk.srt\"; filename*=UTF-8''jfk.srt"
    narrow = httpx.get(f"{server.url}/api/v1/jobs/{job_id}/result",
                       params={"format": "vtt", "max_line_width": 16, "max_line_count": 1})
    assert narrow.status_code == 200 and 'filename="jfk.vtt"' in narrow.headers[
        "content-disposition"]
    lines = [x for x in narrow.text.splitlines()[1:] if x and "-->" not in x]
    assert lines and all(len(x) <= 16 or " " not in x for x in lines)
    assert spoken(narrow.text) == spoken(srt.text)
    bad = httpx.get(f"{server.url}/api/v1/jobs/{job_id}/result", params={"max_line_width": 3})
    assert bad.status_code in (400, 422)
    as_json = httpx.get(f"{server.url}/api/v1/jobs/{job_id}/result?format=json").json()
    with jfk.open("rb") as handle:
        sync_json = httpx.post(f"{server.url}/api/v1/transcribe", timeout=60,
                               files={"file": ("jfk.flac", handle)}).json()
    assert as_json["text"] == sync_json["text"]
    assert heard(JFK_TEXT, as_json["text"]) == 1
    assert as_json["job_id"] == job_id
    assert server.temp_is_empty()


def test_several_minute_job_survives_a_killed_worker_and_matches_sync(
    server: Server, several_minutes: Path
) -> None:
    job_id = submit_ok(server, several_minutes)
    stream = events(server, job_id, until="transcribing")
    os.kill(worker_pids(server.process.pid)[0], signal.SIGKILL)  # mid-job, a chunk is running
    stream += events(server, job_id)
    assert stream[-1][1]["status"] == "succeeded", stream[-1]
    transcribing = [d["progress"] for n, d in stream
                    if n == "progress" and d["progress"]["stage"] == "transcribing"]
    assert len({p["chunks_total"] for p in transcribing}) == 1
    assert transcribing[0]["chunks_total"] > 5
    done = [p["chunks_done"] for p in transcribing]
    assert done == sorted(done) and len(set(done)) > 3
    percents = [d["progress"]["percent"] for _, d in stream]
    assert percents == sorted(percents) and percents[-1] == 100.0

    result = httpx.get(f"{server.url}/api/v1/jobs/{job_id}/result").json()
    assert result["mode"] == "parallel" and result["duration"] > 180
    with several_minutes.open("rb") as handle:
        sync = httpx.post(f"{server.url}/api/v1/transcribe", timeout=300,
                          files={"file": (several_minutes.name, handle)}).json()
    # The same words, nothing lost or doubled by the rerun chunk: a bound, not equality, since
    # a temperature fallback samples and which regions share a redo follows chunk order.
    assert jiwer.wer(spoken(sync["text"]), spoken(result["text"])) <= 0.05
    assert heard(JFK_TEXT, result["text"]) == 8
    assert server.temp_is_empty()


def test_finished_job_serves_its_audio_with_ranges(server: Server, jfk: Path) -> None:
    job_id = submit_ok(server, jfk)
    assert wait_for_status(server, job_id)["status"] == "succeeded"
    audio = httpx.get(f"{server.url}/api/v1/jobs/{job_id}/audio")
    assert audio.status_code == 200 and audio.headers["content-type"] == "audio/wav"
    assert audio.content[:4] == b"RIFF" and len(audio.content) > 16000 * 2 * 10
    part = httpx.get(f"{server.url}/api/v1/jobs/{job_id}/audio", headers={"Range": "bytes=0-99"})
    assert part.status_code == 206 and part.content == audio.content[:100]
    job_folder = server.temp_dir.parent / "data" / "jobs" / job_id
    assert [p.name for p in job_folder.iterdir()] == ["audio.wav"]  # the upload is gone


def test_cancel_running_job(server: Server, long_speech: Path) -> None:
    job_id = submit_ok(server, long_speech)
    early = httpx.get(f"{server.url}/api/v1/jobs/{job_id}/result")
    assert early.status_code == 409 and early.json()["error"]["code"] == "conflict"
    events(server, job_id, until="transcribing")
    cancelled = httpx.delete(f"{server.url}/api/v1/jobs/{job_id}", timeout=30)
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert httpx.get(f"{server.url}/api/v1/jobs/{job_id}").json()["status"] == "cancelled"
    assert events(server, job_id)[-1] == ("done", cancelled.json())
    assert server.temp_is_empty()
    assert httpx.get(f"{server.url}/api/v1/jobs/{job_id}/result").status_code == 409


def test_unknown_job_is_404(server: Server) -> None:
    for method, suffix in (("GET", ""), ("GET", "/result"), ("GET", "/events"), ("GET", "/audio"),
                           ("DELETE", "")):
        response = httpx.request(method, f"{server.url}/api/v1/jobs/nope{suffix}")
        assert response.status_code == 404, (method, suffix)
        assert response.json()["error"]["code"] == "not_found"


def test_queue_full_is_429_with_retry_after(server: Server, jfk: Path) -> None:
    responses = [submit(server, jfk) for _ in range(4)]
    accepted = [r.json()["id"] for r in responses if r.status_code == 202]
    refused = [r for r in responses if r.status_code == 429]
    assert refused and len(accepted) + len(refused) == 4
    assert refused[0].headers["retry-after"].isdigit()
    assert refused[0].json()["error"]["code"] == "queue_full"
    for job_id in accepted:
        httpx.delete(f"{server.url}/api/v1/jobs/{job_id}", timeout=30)
    listed = httpx.get(f"{server.url}/api/v1/jobs", params={"limit": len(accepted)}).json()
    assert [j["id"] for j in listed["jobs"]] == accepted[::-1]
    assert all(j["status"] in TERMINAL for j in listed["jobs"])


def test_sync_requests_beyond_the_limit_get_429(server: Server, long_speech: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    def post(_: int) -> httpx.Response:
        with long_speech.open("rb") as handle:
            return httpx.post(f"{server.url}/api/v1/transcribe", timeout=120,
                              files={"file": (long_speech.name, handle)})

    with ThreadPoolExecutor(3) as threads:
        responses = list(threads.map(post, range(3)))
    statuses = sorted(r.status_code for r in responses)
    assert statuses[0] == 200 and statuses[-1] == 429, statuses
    refused = next(r for r in responses if r.status_code == 429)
    assert refused.headers["retry-after"] == "10" and "MAX_SYNC_REQUESTS" in refused.text
    assert server.temp_is_empty()


def test_bad_job_requests(server: Server) -> None:
    empty = httpx.post(f"{server.url}/api/v1/jobs", files={"file": ("a.mp3", b"")})
    assert empty.status_code == 415 and empty.json()["error"]["message"] == "the file is empty"
    assert not any((server.temp_dir.parent / "data" / "jobs").glob("*/input*"))
    bad = httpx.post(f"{server.url}/api/v1/jobs", json={"url": "file:///etc/passwd"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "url_not_allowed"
    for fields in ({"format": "doc"}, {"response_format": "srt"}, {"preset": "turbo"}):
        unknown = httpx.post(f"{server.url}/api/v1/jobs",
                             json={"url": "http://127.0.0.1:9/a.mp3", **fields})
        assert unknown.status_code == 400, fields
    no_input = httpx.post(f"{server.url}/api/v1/jobs", json={"format": "srt"})
    assert no_input.status_code == 400
    callback = httpx.post(f"{server.url}/api/v1/jobs", json={
        "url": "http://127.0.0.1:9/a.mp3", "callback_url": "ftp://127.0.0.1:9/hook"})
    assert callback.status_code == 400 and callback.json()["error"]["code"] == "url_not_allowed"


@pytest.fixture(scope="module")
def media_and_hook() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A local host serving tests/data by GET and recording JSON POSTed to it (callbacks)."""
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    received: list[dict[str, Any]] = []

    class Handler(SimpleHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers["content-length"])
            received.append(json.loads(self.rfile.read(length)))
            self.send_response(204)
            self.end_headers()

    httpd = ThreadingHTTPServer(("127.0.0.1", 0),
                                functools.partial(Handler, directory=str(DATA)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", received
    httpd.shutdown()
    httpd.server_close()


def test_url_job_posts_its_callback(
    server: Server, media_and_hook: tuple[str, list[dict[str, Any]]]
) -> None:
    host, received = media_and_hook
    response = httpx.post(f"{server.url}/api/v1/jobs", json={
        "url": f"{host}/jfk.flac", "format": "text", "callback_url": f"{host}/hook",
        "preset": "fast", "prompt": " Fellow Americans. "})
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    finished = wait_for_status(server, job_id)
    assert finished["status"] == "succeeded"
    assert finished["request"]["preset"] == "fast"
    assert finished["request"]["prompt"] == "Fellow Americans."
    deadline = time.monotonic() + 10
    while not received and time.monotonic() < deadline:
        time.sleep(0.1)
    assert received and received[-1]["id"] == job_id and received[-1]["status"] == "succeeded"
    text = httpx.get(f"{server.url}/api/v1/jobs/{job_id}/result").text
    assert heard(JFK_TEXT, text) >= 1


def _kill_tree(pid: int) -> None:
    """SIGKILL a process and its children (the worker pool), like a crash or power loss."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            children.append(int(stat.parent.name))
    for target in (pid, *children):
        with contextlib.suppress(ProcessLookupError):
            os.kill(target, signal.SIGKILL)


def test_restart_resumes_jobs_or_fails_them(tmp_path: Path, long_speech: Path) -> None:
    with run_server(tmp_path, **FAN_OUT) as first:
        kept = submit_ok(first, long_speech)
        lost = submit_ok(first, long_speech)
        events(first, kept, until="transcribing")
        _kill_tree(first.process.pid)
        first.process.wait(timeout=10)
    shutil.rmtree(tmp_path / "data" / "jobs" / lost)
    with run_server(tmp_path, **FAN_OUT) as second:
        resumed = wait_for_status(second, kept)
        assert resumed["status"] == "succeeded", resumed
        failed = wait_for_status(second, lost)
        assert failed["status"] == "failed" and "input was lost" in failed["error"]
        result = httpx.get(f"{second.url}/api/v1/jobs/{kept}/result?format=text")
        assert heard(JFK_TEXT, result.text) >= 1


def test_ctrl_c_right_after_a_cancel_stops_the_server_quickly(
    tmp_path: Path, several_minutes: Path
) -> None:
    """A cancelled job's running chunk is stopped with it, so SIGINT to the process group (a
    terminal's Ctrl-C) ends the server in seconds, with a second job running, an event stream
    open and a synchronous request under way: no tracebacks, and no worker outlives it."""
    import threading

    with run_server(tmp_path, **FAN_OUT) as own:
        first = submit_ok(own, several_minutes)
        events(own, first, until="transcribing")
        busy = worker_pids(own.process.pid)
        assert busy
        cancelled = httpx.delete(f"{own.url}/api/v1/jobs/{first}", timeout=30)
        assert cancelled.json()["status"] == "cancelled"
        second = submit_ok(own, several_minutes)
        events(own, second, until="transcribing")
        answers: list[object] = []

        def stream() -> None:
            answers.append(events(own, second))

        def sync() -> None:
            with several_minutes.open("rb") as handle:
                answers.append(httpx.post(f"{own.url}/api/v1/transcribe", timeout=60,
                                          files={"file": ("long.wav", handle)}).status_code)

        clients = [threading.Thread(target=stream), threading.Thread(target=sync)]
        for client in clients:
            client.start()
        time.sleep(2)  # both are in the server now

        os.killpg(own.process.pid, signal.SIGINT)
        started = time.monotonic()
        own.process.wait(timeout=30)
        stopped_s = time.monotonic() - started
        for client in clients:
            client.join(timeout=30)
        log = own.log.read_text()
        assert stopped_s < 5, log[-3000:]
        assert own.process.returncode == 0
        assert 503 in answers  # the synchronous request was told, not dropped
        assert "Traceback" not in log and "KeyboardInterrupt" not in log, log[-3000:]
        deadline = time.monotonic() + 5
        while any(_alive(pid) for pid in busy) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(_alive(pid) for pid in busy)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
