"""The job store and runner with a fake transcribe function (no worker processes)."""

import asyncio
import io
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from whisper_api.config import Settings, load_settings
from whisper_api.errors import ConfigError, InvalidAudioError, QueueFullError
from whisper_api.jobs import (
    Job,
    JobInput,
    JobRunner,
    JobStatus,
    JobStore,
    database_path,
    display_name,
    transcript_from_json,
    transcript_to_json,
)
from whisper_api.pipeline import Progress, TranscribeRequest
from whisper_api.service import MediaSource, UploadSource, UrlSource
from whisper_api.subtitles import SubtitleOptions
from whisper_api.transcript import Segment, Transcript, Word

TRANSCRIPT = Transcript("hello there", (Segment(0.0, 1.0, "hello there", (
    Word(0.0, 0.5, " hello", 0.9), Word(0.5, 1.0, " there", 0.8))),), "en", 1.0, {"chunks": 1})


class FakeTranscribe:
    """Reports two chunks of progress; waits on `gate` (when set) between them."""

    def __init__(self) -> None:
        self.gate: asyncio.Event | None = None
        self.started = 0
        self.order: list[str] = []  # the jobs' ids, as they started
        self.fail: Exception | None = None

    async def __call__(self, source: MediaSource, request: TranscribeRequest, client: str,
                       on_progress: Callable[[Progress], None],
                       keep_audio: Path | None = None) -> Transcript:
        self.started += 1
        assert keep_audio is not None and keep_audio.parent.is_dir()
        self.order.append(keep_audio.parent.name)
        if isinstance(source, UploadSource):
            assert source.stream.read() == b"audio bytes"
        on_progress(Progress("transcribing", 0, 2, 0.0, 2.0))
        if self.gate:
            await self.gate.wait()
        if self.fail:
            raise self.fail
        on_progress(Progress("transcribing", 1, 2, 1.0, 2.0))
        keep_audio.write_bytes(b"converted")
        return TRANSCRIPT


def make_settings(tmp: Path, **overrides: object) -> Settings:
    return Settings(data_dir=tmp / "data", temp_dir=tmp / "temp", **overrides)  # type: ignore[arg-type]


def make_runner(settings: Settings, fake: FakeTranscribe, concurrency: int = 1) -> JobRunner:
    return JobRunner(settings, JobStore(database_path(settings)), fake, concurrency)


def upload() -> UploadSource:
    return UploadSource(io.BytesIO(b"audio bytes"), "talk.MP3")


async def wait_status(runner: JobRunner, job_id: str, *statuses: JobStatus) -> Job:
    for _ in range(200):
        job = await runner.get(job_id)
        if job and job.status in statuses:
            return job
        await asyncio.sleep(0.01)
    raise AssertionError(f"job {job_id} never reached {statuses}")


async def gone(path: Path) -> bool:
    """Files are cleaned just after the status is final."""
    for _ in range(200):
        if not path.exists():
            return True
        await asyncio.sleep(0.01)
    return False


def test_transcript_round_trips_through_json() -> None:
    assert transcript_from_json(transcript_to_json(TRANSCRIPT)) == TRANSCRIPT


def test_display_name_is_only_the_last_part() -> None:
    assert display_name("..\\..\\etc/passwd.mp3") == "passwd.mp3"
    assert display_name("a" * 300 + ".wav") == "a" * 100
    assert display_name("dir/") is None


def test_database_url(tmp_path: Path) -> None:
    assert database_path(make_settings(tmp_path)) == tmp_path / "data" / "jobs.db"
    settings = make_settings(tmp_path, database_url=f"sqlite:///{tmp_path}/x.db")
    assert database_path(settings) == tmp_path / "x.db"
    with pytest.raises(ValueError, match="sqlite"):
        database_path(make_settings(tmp_path, database_url="postgres://db/jobs"))


def test_job_runs_and_result_is_stored(tmp_path: Path) -> None:
    async def scenario() -> None:
        runner = make_runner(make_settings(tmp_path), FakeTranscribe())
        await runner.start()
        job = await runner.submit(upload(), JobInput(format="srt"))
        assert job.input.upload_name == "input.mp3"
        assert job.to_dict()["request"]["source"] == "talk.MP3"
        seen = [j.to_dict()["progress"]["chunks_done"] async for j in runner.watch(job.id) if j]
        done = await runner.get(job.id)
        assert done and done.status == JobStatus.succeeded and done.processing_time_s is not None
        assert done.to_dict()["progress"]["percent"] == 100.0
        assert seen == sorted(seen) and seen[-1] == 1
        assert await runner.result(job.id) == TRANSCRIPT
        # The upload was only kept to resume the job; the converted audio stays for the player.
        assert await gone(runner.jobs_dir / job.id / "input.mp3")
        assert runner.audio_path(job.id).read_bytes() == b"converted"
        await runner.stop()

    asyncio.run(scenario())


def test_failure_is_recorded_with_its_message(tmp_path: Path) -> None:
    async def scenario() -> None:
        fake = FakeTranscribe()
        fake.fail = InvalidAudioError("cannot decode the media")
        runner = make_runner(make_settings(tmp_path), fake)
        await runner.start()
        job = await runner.submit(upload(), JobInput())
        failed = await wait_status(runner, job.id, JobStatus.failed)
        assert failed.error == "cannot decode the media"
        assert await runner.result(job.id) is None
        assert await gone(runner.jobs_dir / job.id)
        await runner.stop()

    asyncio.run(scenario())


def test_admission_control_and_bounded_concurrency(tmp_path: Path) -> None:
    async def scenario() -> None:
        fake = FakeTranscribe()
        fake.gate = asyncio.Event()
        runner = make_runner(make_settings(tmp_path, max_queued_jobs=1), fake, concurrency=1)
        await runner.start()
        first = await runner.submit(UrlSource("http://example.com/a.mp3"), JobInput())
        await wait_status(runner, first.id, JobStatus.running)
        second = await runner.submit(UrlSource("http://example.com/b.mp3"), JobInput())
        with pytest.raises(QueueFullError) as refused:
            await runner.submit(upload(), JobInput())
        assert refused.value.headers["Retry-After"].isdigit()
        await asyncio.sleep(0.05)
        assert (await wait_status(runner, second.id, JobStatus.queued)) and fake.started == 1
        fake.gate.set()
        await wait_status(runner, second.id, JobStatus.succeeded)
        assert fake.started == 2
        assert [j.id for j in await runner.recent(10)] == [second.id, first.id]
        await runner.stop()

    asyncio.run(scenario())


def test_one_key_cannot_fill_the_whole_queue(tmp_path: Path) -> None:
    async def scenario() -> None:
        fake = FakeTranscribe()
        fake.gate = asyncio.Event()
        settings = make_settings(tmp_path, max_queued_jobs=3, max_queued_jobs_per_key=2)
        runner = make_runner(settings, fake, concurrency=1)
        await runner.start()
        running = await runner.submit(upload(), JobInput(), "a", capped=True)
        await wait_status(runner, running.id, JobStatus.running)
        for _ in range(2):
            await runner.submit(upload(), JobInput(), "a", capped=True)
        with pytest.raises(QueueFullError, match="MAX_QUEUED_JOBS_PER_KEY"):
            await runner.submit(upload(), JobInput(), "a", capped=True)
        await runner.submit(upload(), JobInput(), "b", capped=True)  # another key: the last place
        with pytest.raises(QueueFullError, match=r"\(MAX_QUEUED_JOBS\)"):
            await runner.submit(upload(), JobInput(), "b", capped=True)
        fake.gate.set()
        await runner.stop()

    asyncio.run(scenario())


def test_an_uncapped_client_may_fill_the_whole_queue(tmp_path: Path) -> None:
    # No API_KEYS, a lone key or the admin: nobody else to leave room for.
    async def scenario() -> None:
        fake = FakeTranscribe()
        fake.gate = asyncio.Event()
        settings = make_settings(tmp_path, max_queued_jobs=3, max_queued_jobs_per_key=1)
        runner = make_runner(settings, fake, concurrency=1)
        await runner.start()
        running = await runner.submit(upload(), JobInput())
        await wait_status(runner, running.id, JobStatus.running)
        for tenant in (None, "admin", "admin"):
            await runner.submit(upload(), JobInput(), tenant)
        assert runner.waiting == 3
        fake.gate.set()
        await runner.stop()

    asyncio.run(scenario())


def test_another_keys_job_starts_before_the_first_keys_backlog(tmp_path: Path) -> None:
    async def scenario() -> list[str]:
        fake = FakeTranscribe()
        fake.gate = asyncio.Event()
        runner = make_runner(make_settings(tmp_path), fake, concurrency=1)
        await runner.start()
        jobs = [await runner.submit(upload(), JobInput(), tenant) for tenant in "aaab"]
        await wait_status(runner, jobs[0].id, JobStatus.running)  # the others wait for its place
        fake.gate.set()
        for job in jobs:
            await wait_status(runner, job.id, JobStatus.succeeded)
        await runner.stop()
        tenant_of = {job.id: job.tenant or "" for job in jobs}
        return [tenant_of[job_id] for job_id in fake.order]

    assert asyncio.run(scenario()) == ["a", "b", "a", "a"]


def test_a_per_key_cap_under_one_stops_startup(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAX_QUEUED_JOBS_PER_KEY", "0")
    with pytest.raises(ConfigError, match="MAX_QUEUED_JOBS_PER_KEY"):
        load_settings()


def test_cancel_running_and_queued(tmp_path: Path) -> None:
    async def scenario() -> None:
        fake = FakeTranscribe()
        fake.gate = asyncio.Event()
        runner = make_runner(make_settings(tmp_path), fake, concurrency=1)
        await runner.start()
        running = await runner.submit(upload(), JobInput())
        queued = await runner.submit(upload(), JobInput())
        while fake.started < 1:
            await asyncio.sleep(0.01)
        for job_id in (queued.id, running.id):
            cancelled = await runner.cancel(job_id)
            assert cancelled and cancelled.status == JobStatus.cancelled
        assert fake.started == 1
        await runner.stop()

    asyncio.run(scenario())


def test_shutdown_requeues_and_restart_resumes_or_fails(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)

    async def first_life() -> tuple[str, str]:
        fake = FakeTranscribe()
        fake.gate = asyncio.Event()
        runner = make_runner(settings, fake, concurrency=2)
        await runner.start()
        kept = await runner.submit(upload(), JobInput())
        lost = await runner.submit(upload(), JobInput())
        await wait_status(runner, kept.id, JobStatus.running)
        await wait_status(runner, lost.id, JobStatus.running)
        await runner.stop()
        store = JobStore(database_path(settings))
        await store.open()
        assert [j.status for j in await store.unfinished()] == [JobStatus.queued] * 2
        await store.close()
        return kept.id, lost.id

    kept, lost = asyncio.run(first_life())
    (settings.data_dir / "jobs" / lost / "input.mp3").unlink()

    async def second_life() -> None:
        runner = make_runner(settings, FakeTranscribe())
        await runner.start()
        assert (await wait_status(runner, kept, JobStatus.succeeded)).error is None
        failed = await wait_status(runner, lost, JobStatus.failed)
        assert failed.error and "input was lost" in failed.error
        await runner.stop()

    asyncio.run(second_life())


def test_result_ttl_sweep(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, result_ttl_hours=1.0)

    async def scenario() -> None:
        runner = make_runner(settings, FakeTranscribe())
        await runner.start()
        old = await runner.submit(upload(), JobInput())
        new = await runner.submit(upload(), JobInput())
        await wait_status(runner, old.id, JobStatus.succeeded)
        await wait_status(runner, new.id, JobStatus.succeeded)
        aged = await runner.get(old.id)
        assert aged is not None
        aged.finished_at = time.time() - 2 * 3600
        await runner.store.save(aged)
        orphan = runner.jobs_dir / "leftover"
        orphan.mkdir()
        assert await runner.sweep() == 1
        assert await runner.get(old.id) is None
        assert not (runner.jobs_dir / old.id).exists() and not orphan.exists()
        assert await runner.result(new.id) == TRANSCRIPT
        assert (runner.jobs_dir / new.id).is_dir()
        await runner.stop()

    asyncio.run(scenario())


def test_a_job_input_keeps_the_whole_request_through_the_store() -> None:
    job_input = JobInput(TranscribeRequest(language="pt", model="base", task="translate",
                                           word_timestamps=True, initial_prompt="olá",
                                           temperature=0.2, preset="fast"),
                         "srt", SubtitleOptions(30, 1), "http://hook.test/done")
    assert JobInput.from_json(job_input.to_json()) == job_input


def test_a_record_written_before_the_request_was_nested_still_reads() -> None:
    legacy = ('{"url": "http://media.test/a.mp3", "upload_name": null, "filename": null, '
              '"language": "de", "word_timestamps": false, "format": "vtt", '
              '"callback_url": null, "max_line_width": 30, "max_line_count": 1}')
    job_input = JobInput.from_json(legacy)
    assert job_input.request == TranscribeRequest(language="de")
    assert job_input.subtitles == SubtitleOptions(30, 1)
    assert (job_input.url, job_input.format) == ("http://media.test/a.mp3", "vtt")


class SlowToRecordSuccess(JobStore):
    """Takes a while to write a succeeded job's record, as a 4-hour transcript does."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.recording = asyncio.Event()

    async def save(self, job: Job, result: Transcript | None = None) -> None:
        if job.status == JobStatus.succeeded:
            self.recording.set()
            await asyncio.sleep(0.3)
        await super().save(job, result)


def test_a_shutdown_while_a_finished_job_is_recorded_keeps_it_finished(tmp_path: Path) -> None:
    """Cancelled half-way through its record, a succeeded job was saved back as queued, and
    ran again at the next start."""
    settings = make_settings(tmp_path)

    async def scenario() -> str:
        store = SlowToRecordSuccess(database_path(settings))
        runner = JobRunner(settings, store, FakeTranscribe(), 1)
        await runner.start()
        job = await runner.submit(upload(), JobInput())
        await asyncio.wait_for(store.recording.wait(), 10)
        await runner.stop()
        return job.id

    job_id = asyncio.run(scenario())

    async def read() -> Job | None:
        store = JobStore(database_path(settings))
        await store.open()
        try:
            return await store.get(job_id)
        finally:
            await store.close()

    job = asyncio.run(read())
    assert job is not None and job.status == JobStatus.succeeded


def test_a_failed_callback_is_tried_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A receiver that answers 500 once (restarting, overloaded) still gets the job."""
    from whisper_api.jobs import runner as runner_module

    monkeypatch.setattr(runner_module, "CALLBACK_RETRY_S", (0.05, 0.05))
    received: list[int] = []

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            self.rfile.read(int(self.headers["Content-Length"]))
            received.append(len(received))
            self.send_response(500 if len(received) == 1 else 200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    hook = f"http://127.0.0.1:{httpd.server_port}/hook"

    async def scenario() -> None:
        runner = make_runner(make_settings(tmp_path, allow_private_urls=True), FakeTranscribe())
        await runner.start()
        job = await runner.submit(upload(), JobInput(callback_url=hook))
        await wait_status(runner, job.id, JobStatus.succeeded)
        for _ in range(200):
            if len(received) >= 2:
                break
            await asyncio.sleep(0.02)
        await runner.stop()

    try:
        asyncio.run(scenario())
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)
    assert received == [0, 1]


def test_a_job_running_whenever_the_server_died_stops_being_resumed(tmp_path: Path) -> None:
    """Found `running` at a start, a job was running when the server died (a clean stop saves
    it `queued`). Resumed every time, a job that kills the server would kill it at every start."""
    settings = make_settings(tmp_path)
    (settings.data_dir / "jobs").mkdir(parents=True)

    async def died_while_running(crashes: int) -> str:
        store = JobStore(database_path(settings))
        await store.open()
        job = Job(f"job{crashes}", JobInput(url="http://127.0.0.1:9/a.mp3"),
                  JobStatus.running, started_at=time.time(), crashes=crashes)
        await store.save(job)
        await store.close()
        return job.id

    async def scenario() -> None:
        resumed, given_up = await died_while_running(0), await died_while_running(2)
        runner = make_runner(settings, FakeTranscribe())
        await runner.start()
        failed = await wait_status(runner, given_up, JobStatus.failed)
        assert failed.error and "stopped unexpectedly 3 times" in failed.error
        done = await wait_status(runner, resumed, JobStatus.succeeded)
        assert done.crashes == 1
        await runner.stop()

    asyncio.run(scenario())


def test_a_database_from_before_crash_counting_opens(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE jobs (id TEXT PRIMARY KEY, status TEXT NOT NULL, created_at REAL"
                   " NOT NULL, started_at REAL, finished_at REAL, processing_time_s REAL, error "
                   "TEXT, input TEXT NOT NULL, progress TEXT NOT NULL, result TEXT, tenant TEXT)")
        db.execute("INSERT INTO jobs VALUES ('old', 'queued', 1.0, NULL, NULL, NULL, NULL, ?, ?, "
                   "NULL, NULL)", ('{"url": "http://127.0.0.1:9/a.mp3"}', '{"stage": "queued"}'))
    db.close()

    async def scenario() -> Job | None:
        store = JobStore(path)
        await store.open()
        try:
            return await store.get("old")
        finally:
            await store.close()

    job = asyncio.run(scenario())
    assert job is not None and job.crashes == 0 and job.status == JobStatus.queued
