"""The job runner: admission, a bounded number of running jobs, cancel, resume, sweep, callbacks.

Inputs live under DATA_DIR/jobs/{id}/ and records in the store (jobs/store.py), so jobs
survive a restart. At most MAX_QUEUED_JOBS jobs wait, and MAX_QUEUED_JOBS_PER_KEY of one of
several API keys (`QueueFullError` beyond that; the check and the admission happen with no
await between them, so the caps are exact), and as many run at once as there are workers; the
rest really wait, and a freed place goes to the key with the fewest jobs running (`FairSlots`).
With API_KEYS each job records its tenant (a hash of the key that made it). A finished job
whose record cannot be written (a full disk) fails with that reason: served from memory and
written as soon as the store takes writes again, so it never stays `running`. Shutdown cancels
running jobs and puts them back to `queued`; startup resumes queued and running jobs whose
input is still on disk and fails the others with a reason. Finished jobs and their input
folders are swept after RESULT_TTL_HOURS.
"""

import asyncio
import logging
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import BinaryIO, Protocol

from whisper_api.config import Settings
from whisper_api.errors import (
    InputLostError,
    InvalidAudioError,
    InvalidRequestError,
    QueueFullError,
    WhisperApiError,
)
from whisper_api.jobs.model import Job, JobInput, JobStatus, display_name
from whisper_api.jobs.slots import FairSlots
from whisper_api.jobs.store import JobStore
from whisper_api.pipeline import Progress, TranscribeRequest
from whisper_api.service import MediaSource, UploadSource, UrlSource, safe_suffix, save_stream
from whisper_api.transcript import Transcript

log = logging.getLogger("whisper_api.jobs")
SWEEP_INTERVAL_S = 600.0
HEARTBEAT_S = 15.0
CALLBACK_TIMEOUT_S = 10.0  # per try, in all: connect, send, and the answer's headers
CALLBACK_RETRY_S = (2.0, 10.0)  # pauses before the second and third tries
CALLBACK_THREADS = 4
INPUT_NAME = "input"
AUDIO_NAME = "audio.wav"  # the converted audio, kept for the web page's player
# A job that was running whenever the server died this many times (it may be what kills it:
# memory) fails instead of taking the server down at every start.
MAX_CRASHES = 3
RECORD_RETRY_S = 5.0  # how often records that could not be written are tried again


class Transcribe(Protocol):
    """`Service.transcribe`'s shape (a fake in unit tests)."""

    def __call__(self, source: MediaSource, request: TranscribeRequest, client_ip: str,
                 on_progress: Callable[[Progress], None],
                 keep_audio: Path | None = None) -> Awaitable[Transcript]: ...


CheckUrl = Callable[[str], None]


class JobRunner:
    """Admits, runs (at most `concurrency` at once), cancels, resumes and sweeps jobs.

    `transcribe` is `Service.transcribe` in the app and a fake in unit tests; `check_url` is the
    SSRF guard applied to callback URLs (blocking: it resolves the host, so it runs in a thread).
    """

    def __init__(self, settings: Settings, store: JobStore, transcribe: Transcribe,
                 concurrency: int, check_url: CheckUrl = lambda _: None) -> None:
        self.settings, self.store = settings, store
        self._transcribe, self._check_url = transcribe, check_url
        self._slots = FairSlots(max(1, concurrency))
        self.jobs_dir = settings.data_dir / "jobs"
        self._active: dict[str, Job] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._changed: dict[str, asyncio.Event] = {}
        self._cancel_requested: set[str] = set()
        self._stopping = False
        self._sweeper: asyncio.Task[None] | None = None
        self._unrecorded: dict[str, Job] = {}  # finished, but the store refused the record
        self._recorder: asyncio.Task[None] | None = None
        self._callbacks = ThreadPoolExecutor(CALLBACK_THREADS, thread_name_prefix="callback")

    # --- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        await self.store.open()
        await self.sweep()
        for job in await self.store.unfinished():
            await self._recover(job)
        self._sweeper = asyncio.create_task(self._sweep_forever())
        self._recorder = asyncio.create_task(self._record_forever())

    async def stop(self) -> None:
        """Stop taking jobs, cancel running ones (they go back to queued), close the store."""
        self._stopping = True
        background = [t for t in (self._sweeper, self._recorder) if t]
        tasks = list(self._tasks.values())
        for task in [*background, *tasks]:
            task.cancel()
        await asyncio.gather(*tasks, *background, return_exceptions=True)
        await self._record_unrecorded()  # a last chance before the store closes
        await self.store.close()
        self._callbacks.shutdown(wait=False, cancel_futures=True)

    async def _recover(self, job: Job) -> None:
        if job.status == JobStatus.running:  # a clean stop saves it queued: the server died
            job.crashes += 1
        if job.crashes >= MAX_CRASHES:
            await self._fail_on_restart(job, f"the server stopped unexpectedly {job.crashes} "
                                        "times while running this job; it is not resumed again")
            return
        if job.input.upload_name and not await asyncio.to_thread(self._input_path(job).is_file):
            await self._fail_on_restart(
                job, "the job's input was lost when the server restarted; submit it again")
            return
        log.info("resuming job %s (was %s)", job.id, job.status)
        self._enqueue(_requeued(job))
        await self.store.save(self._active[job.id])

    async def _fail_on_restart(self, job: Job, reason: str) -> None:
        job.status, job.finished_at, job.error = JobStatus.failed, time.time(), reason
        await self.store.save(job)
        log.warning("job %s failed on restart: %s", job.id, reason)

    # --- submission ---------------------------------------------------------------------------
    @property
    def waiting(self) -> int:
        return sum(1 for j in self._active.values() if j.status == JobStatus.queued)

    def no_room(self, tenant: str | None, capped: bool = False) -> str | None:
        """Why a new job of `tenant` cannot wait, or None. A `capped` tenant (one of several
        API keys) may hold only MAX_QUEUED_JOBS_PER_KEY of the queue, so a client submitting in
        a loop cannot lock the other keys out."""
        queued = [j.tenant for j in self._active.values() if j.status == JobStatus.queued]
        if len(queued) >= self.settings.max_queued_jobs:
            return f"{len(queued)} jobs are already waiting (MAX_QUEUED_JOBS); try again later"
        mine = queued.count(tenant)
        if capped and mine >= self.settings.max_queued_jobs_per_key:
            return ("this API key already has MAX_QUEUED_JOBS_PER_KEY="
                    f"{self.settings.max_queued_jobs_per_key} jobs waiting; try again later")
        return None

    async def submit(self, source: MediaSource, job_input: JobInput,
                     tenant: str | None = None, capped: bool = False) -> Job:
        job = self._admit(source, job_input, tenant, capped)  # no await before: caps are exact
        try:
            for url in (job_input.callback_url, getattr(source, "url", None)):
                if url:
                    await asyncio.to_thread(self._check_url, url)
            if isinstance(source, UploadSource):
                await asyncio.to_thread(self._save_upload, source.stream, self._input_path(job))
            await self.store.save(job)
        except BaseException:
            self._active.pop(job.id, None)
            await asyncio.to_thread(shutil.rmtree, self._folder(job.id), True)
            raise
        self._enqueue(job)
        return job

    def _admit(self, source: MediaSource, job_input: JobInput, tenant: str | None,
               capped: bool) -> Job:
        """Check room and take it in one step; the job counts as waiting from here on."""
        if self._stopping:
            raise QueueFullError("the server is shutting down", retry_after_s=30)
        no_room = self.no_room(tenant, capped)
        if no_room is not None:
            raise QueueFullError(no_room, retry_after_s=30)
        job = Job(uuid.uuid4().hex, job_input, tenant=tenant)
        if isinstance(source, UploadSource):
            job.input = replace(job_input, upload_name=INPUT_NAME + safe_suffix(source.filename),
                                filename=display_name(source.filename))
        elif isinstance(source, UrlSource):
            job.input = replace(job_input, url=source.url)
        else:
            raise InvalidRequestError("a job takes an upload or a URL")
        self._active[job.id] = job
        return job

    def _save_upload(self, stream: BinaryIO, target: Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        save_stream(stream, target, self.settings.max_upload_bytes)
        if target.stat().st_size == 0:  # refuse now, not as a job that fails a moment later
            raise InvalidAudioError("the file is empty")

    def _enqueue(self, job: Job) -> None:
        self._active[job.id] = job
        self._changed[job.id] = asyncio.Event()
        self._tasks[job.id] = asyncio.create_task(self._run(job), name=f"job-{job.id}")

    # --- queries ------------------------------------------------------------------------------
    async def get(self, job_id: str) -> Job | None:
        return (self._active.get(job_id) or self._unrecorded.get(job_id)
                or await self.store.get(job_id))

    async def recent(self, limit: int, tenant: str | None = None,
                     every_tenant: bool = True) -> list[Job]:
        """The newest jobs: every tenant's, or only `tenant`'s."""
        jobs = await self.store.recent(limit, tenant, every_tenant)
        return [self._active.get(j.id) or self._unrecorded.get(j.id) or j for j in jobs]

    async def result(self, job_id: str) -> Transcript | None:
        return await self.store.result(job_id)

    async def watch(self, job_id: str) -> AsyncIterator[Job | None]:
        """Yield the job on every change until it is finished; None is a heartbeat."""
        while True:
            changed = self._changed.get(job_id)
            job = await self.get(job_id)
            if job is None:
                return
            yield job
            if job.status.finished:
                return
            if changed is None:  # not running here (finished a moment ago, or shutting down)
                await asyncio.sleep(1.0)
                continue
            try:
                await asyncio.wait_for(changed.wait(), HEARTBEAT_S)
            except TimeoutError:
                yield None

    def _notify(self, job_id: str) -> None:
        old = self._changed.get(job_id)
        if job_id in self._active:
            self._changed[job_id] = asyncio.Event()
        else:
            self._changed.pop(job_id, None)
        if old:
            old.set()

    # --- running ------------------------------------------------------------------------------
    async def cancel(self, job_id: str) -> Job | None:
        """Cancel a queued or running job and wait until it has stopped; None if unknown."""
        task = self._tasks.get(job_id)
        if task is None:
            return await self.store.get(job_id)
        self._cancel_requested.add(job_id)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        job = self._active.get(job_id)
        if job is not None:  # cancelled before its task ever ran, so `_run` did not record it
            await self._finish(job, JobStatus.cancelled, error="cancelled by the client")
            self._forget(job_id)
        return await self.store.get(job_id)

    async def _run(self, job: Job) -> None:
        try:
            outcome = await self._outcome(job)
            if outcome is None:  # shutdown: left resumable
                return
            await _to_the_end(self._finish(job, *outcome))
        finally:
            self._forget(job.id)
        if job.input.callback_url:
            await self._post_callback(job)

    async def _outcome(
        self, job: Job
    ) -> tuple[JobStatus, str | None, Transcript | None] | None:
        """How the job ended (status, error, result); None when a shutdown stopped it."""
        try:
            async with self._slots.place(job.tenant):
                await self._start_running(job)
                transcript = await self._execute(job)
            return JobStatus.succeeded, None, transcript
        except asyncio.CancelledError:
            if job.id in self._cancel_requested:
                return JobStatus.cancelled, "cancelled by the client", None
            await self.store.save(_requeued(job))
            return None
        except WhisperApiError as exc:
            return JobStatus.failed, str(exc), None
        except Exception as exc:
            log.exception("job %s failed", job.id)
            return JobStatus.failed, f"{type(exc).__name__}: {exc}", None

    def _forget(self, job_id: str) -> None:
        self._cancel_requested.discard(job_id)
        self._tasks.pop(job_id, None)
        self._active.pop(job_id, None)
        self._notify(job_id)

    async def _start_running(self, job: Job) -> None:
        job.status, job.started_at = JobStatus.running, time.time()
        job.progress = Progress("starting")
        await self.store.save(job)
        self._notify(job.id)

    async def _execute(self, job: Job) -> Transcript:
        def on_progress(progress: Progress) -> None:
            if job.status.finished:  # a report still in flight must not undo the final stage
                return
            job.progress = progress
            self._notify(job.id)

        keep = self.audio_path(job.id)
        await asyncio.to_thread(keep.parent.mkdir, parents=True, exist_ok=True)
        if job.input.url:
            return await self._transcribe(UrlSource(job.input.url), job.input.request, "job",
                                          on_progress, keep_audio=keep)
        path = self._input_path(job)
        try:
            stream = await asyncio.to_thread(path.open, "rb")
        except FileNotFoundError as exc:
            raise InputLostError("the job's input file is missing on the server") from exc
        try:
            return await self._transcribe(UploadSource(stream, path.name), job.input.request,
                                          "job", on_progress, keep_audio=keep)
        finally:
            stream.close()

    async def _finish(self, job: Job, status: JobStatus, error: str | None = None,
                      result: Transcript | None = None) -> None:
        job.status, job.error, job.finished_at = status, error, time.time()
        if job.started_at is not None:
            job.processing_time_s = round(job.finished_at - job.started_at, 3)
        job.progress = replace(job.progress, stage=str(status))
        try:
            await self.store.save(job, result)
        except Exception as exc:  # disk full, database locked or gone...
            await self._record_failure(job, exc)
        # The input is only needed to resume; the converted audio stays for the player.
        await asyncio.to_thread(self._drop_inputs, job, job.status == JobStatus.succeeded)
        log.info("job %s %s%s", job.id, job.status, f": {job.error}" if job.error else "")

    async def _record_failure(self, job: Job, exc: Exception) -> None:
        """The record could not be written: the job fails with the reason, recorded as soon as
        the store takes it (now with the smaller record, or by `_record_forever`)."""
        log.error("job %s: its record could not be written: %s", job.id, exc)
        job.status = JobStatus.failed
        job.error = f"the job's record could not be written ({type(exc).__name__}: {exc})"
        job.progress = replace(job.progress, stage=str(job.status))
        try:
            await self.store.save(job)
        except Exception:
            self._unrecorded[job.id] = job

    async def _record_unrecorded(self) -> None:
        for job_id, job in list(self._unrecorded.items()):
            try:
                await self.store.save(job)
            except Exception as exc:
                log.warning("job %s: its record still cannot be written: %s", job_id, exc)
                return
            self._unrecorded.pop(job_id, None)
            log.info("job %s: its failure is now recorded", job_id)

    async def _record_forever(self) -> None:
        while True:
            await asyncio.sleep(RECORD_RETRY_S)
            await self._record_unrecorded()

    async def _post_callback(self, job: Job) -> None:
        """POST the job to its callback URL: a few tries, each bounded in total time, on
        threads of their own (a receiver trickling its answer held a shared thread for as long
        as it liked, and the conversions and uploads queued behind it)."""
        from whisper_api.download import post_json

        url, body = job.input.callback_url or "", job.to_dict()
        loop = asyncio.get_running_loop()
        for attempt, pause_s in enumerate((*CALLBACK_RETRY_S, None), start=1):
            try:
                await loop.run_in_executor(self._callbacks, self._check_url, url)
                # Through the guard's pinned connection: the host is vetted where it connects.
                await loop.run_in_executor(self._callbacks, post_json, url, body,
                                           self.settings.allow_private_urls, CALLBACK_TIMEOUT_S)
                return
            except Exception as exc:  # a broken callback must not affect the job
                log.warning("callback for job %s to %s failed (try %d): %s", job.id, url,
                            attempt, exc)
                if pause_s is None or isinstance(exc, InvalidRequestError):
                    return
                await asyncio.sleep(pause_s)

    # --- files and sweeping -------------------------------------------------------------------
    def _folder(self, job_id: str) -> Path:
        return self.jobs_dir / job_id

    def _input_path(self, job: Job) -> Path:
        return self._folder(job.id) / (job.input.upload_name or INPUT_NAME)

    def audio_path(self, job_id: str) -> Path:
        return self._folder(job_id) / AUDIO_NAME

    def _drop_inputs(self, job: Job, keep_audio: bool) -> None:
        if job.input.upload_name:
            self._input_path(job).unlink(missing_ok=True)
        if not keep_audio:
            shutil.rmtree(self._folder(job.id), ignore_errors=True)

    async def sweep(self) -> int:
        """Drop finished jobs older than RESULT_TTL_HOURS, their folders and orphan folders."""
        cutoff = time.time() - self.settings.result_ttl_hours * 3600
        expired = await self.store.delete_finished_before(cutoff)
        keep = await self.store.known_ids() | set(self._active)
        removed = await asyncio.to_thread(self._remove_folders, keep)
        if expired or removed:
            log.info("swept %d expired jobs and %d input folders", len(expired), removed)
        return len(expired)

    def _remove_folders(self, keep: set[str]) -> int:
        if not self.jobs_dir.is_dir():
            return 0
        stale = [p for p in self.jobs_dir.iterdir()
                 if p.is_dir() and p.name not in keep]
        for path in stale:
            shutil.rmtree(path, ignore_errors=True)
        return len(stale)

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL_S)
            try:
                await self.sweep()
            except Exception:
                log.exception("job sweep failed")


def _requeued(job: Job) -> Job:
    job.status, job.started_at, job.progress = JobStatus.queued, None, Progress("queued")
    return job


async def _to_the_end(work: Awaitable[None]) -> None:
    """Await `work` to its end even when this task is cancelled meanwhile, then pass the cancel
    on: a shutdown while a finished job was being recorded saved it back as queued (and it ran
    again), and a second DELETE left it "running" until the next start."""
    finishing = asyncio.ensure_future(work)
    cancelled = False
    while not finishing.done():
        try:
            await asyncio.shield(finishing)
        except asyncio.CancelledError:  # this task's (or, re-raised below, the work's own)
            cancelled = True
    finishing.result()
    if cancelled:
        raise asyncio.CancelledError
