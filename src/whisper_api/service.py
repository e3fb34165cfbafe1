"""The composition root and the one transcription entry point every surface uses.

`start_service(settings)` builds settings → executor → sessions → pipeline once; the app, the
CLI and the bench all call it, and nothing below `api/` or `cli` builds these parts itself.
""" 

import asyncio
import logging
import re
import shutil
import time
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO, Protocol

from whisper_api.config import Settings
from whisper_api.errors import (
    DownloadError,
    InsufficientStorageError,
    MediaTooLargeError,
    disk_full,
)
from whisper_api.executors import ChunkExecutor, build_executor
from whisper_api.models import ModelCatalog
from whisper_api.pipeline import CONVERTED_NAME, Pipeline, Progress, TranscribeRequest
from whisper_api.sessions import Session, SessionManager
from whisper_api.transcript import Transcript

log = logging.getLogger("whisper_api")
SAFE_SUFFIX = re.compile(r"\.[A-Za-z0-9]{1,8}")
COPY_BLOCK = 1 << 20
CANCEL_GRACE_S = 5.0  # how long a cancelled download's thread gets to stop before we move on


@dataclass(frozen=True)
class UploadSource:
    """An uploaded file; `filename` is only used for its extension, never as a path."""

    stream: BinaryIO
    filename: str


@dataclass(frozen=True)
class UrlSource:
    url: str


@dataclass(frozen=True)
class FileSource:
    """A file on this machine (the CLI): read in place, never copied."""

    path: Path


MediaSource = UploadSource | UrlSource | FileSource


class TranscriptionObserver(Protocol):
    """Told about each finished transcription (the metrics layer implements it)."""

    def transcribed(self, audio_s: float, processing_s: float) -> None: ...


class Service:
    def __init__(
        self, settings: Settings, executor: ChunkExecutor, workers: int,
        observer: TranscriptionObserver | None = None,
    ) -> None:
        self.settings, self.executor, self.workers = settings, executor, workers
        self.observer = observer
        self.sync_requests = 0  # synchronous requests running now (only touched on the loop)
        self.sessions = SessionManager(settings.temp_dir, settings.max_temp_age_hours)
        self.pipeline = Pipeline(settings, executor, workers)
        # Downloads wait on remote servers: their own bounded pool, so slow remotes can never
        # occupy the threads that conversion and file work (asyncio.to_thread) need.
        self.downloads = ThreadPoolExecutor(settings.max_concurrent_downloads,
                                            thread_name_prefix="download")
        self.models = ModelCatalog(settings.model_names, settings.whisper_model)

    def check(self, request: TranscribeRequest) -> TranscribeRequest:
        """The request checked, its preset named (a job shows the one it runs with)."""
        checked = check_request(self.models, request)
        return replace(checked, preset=checked.preset or self.settings.transcribe_preset)

    async def transcribe(
        self,
        source: MediaSource,
        request: TranscribeRequest,
        client_ip: str = "local",
        on_progress: Callable[[Progress], None] = lambda _: None,
        keep_audio: Path | None = None,
    ) -> Transcript:
        """One request from media to transcript; its session folder is removed whatever happens.

        `keep_audio` moves the converted 16 kHz WAV there first (a job's player needs it).
        """
        request = self.check(request)
        async with self.sessions.open(client_ip, source=_describe(source)) as session:
            media = await self.fetch(source, session, on_progress)
            started = time.perf_counter()
            transcript = await self.pipeline.transcribe(media, session, request, on_progress)
            if keep_audio is not None:
                await session.run(keep_copy, session.download / CONVERTED_NAME, keep_audio)
        if self.observer:
            self.observer.transcribed(transcript.duration_s, time.perf_counter() - started)
        return transcript

    async def fetch(
        self, source: MediaSource, session: Session, on_progress: Callable[[Progress], None]
    ) -> Path:
        if isinstance(source, FileSource):
            return source.path
        if isinstance(source, UploadSource):
            target = session.download / f"upload{safe_suffix(source.filename)}"
            await session.run(save_stream, source.stream, target, self.settings.max_upload_bytes)
            return target
        on_progress(Progress("downloading"))
        return await self.download(source.url, session.download)

    async def download(self, url: str, target_dir: Path) -> Path:
        """A URL's media on the server's bounded download pool (see `download_media`)."""
        return await download_media(self.settings, url, target_dir, self.downloads)

    def close(self) -> None:
        self.downloads.shutdown(wait=False, cancel_futures=True)


async def download_media(settings: Settings, url: str, target_dir: Path,
                         pool: Executor) -> Path:
    """fetch_media on `pool` (the server's bounded download pool), within DOWNLOAD_TIMEOUT_S.

    Cancelling the caller (job cancel, client gone, SYNC_TIMEOUT_S) or reaching the deadline
    stops the download thread too: its sockets are shut and it is awaited briefly, so it
    neither keeps a pool thread nor writes into a session folder being removed.
    """
    from whisper_api.download import DownloadLimits, FetchControl, fetch_media

    limits = DownloadLimits(
        settings.max_upload_bytes, settings.max_audio_duration_s,
        settings.download_timeout_s, settings.allow_private_urls,
    )
    control = FetchControl(limits)
    loop = asyncio.get_running_loop()
    future = loop.run_in_executor(pool, fetch_media, url, target_dir, limits, control)
    try:
        done, _ = await asyncio.wait({future}, timeout=limits.timeout_s)
    except asyncio.CancelledError:
        control.cancel()
        await asyncio.wait({future}, timeout=CANCEL_GRACE_S)
        raise
    if not done:
        control.cancel(control.timeout_message)
        await asyncio.wait({future}, timeout=CANCEL_GRACE_S)
        raise DownloadError(control.timeout_message)
    return future.result()


def check_request(models: ModelCatalog, request: TranscribeRequest) -> TranscribeRequest:
    """The request with its model named and its language checked against that model: a 400
    before any work starts, on every surface (routes, jobs, CLI)."""
    choice = models.choose(request.model, request.language, request.task)
    return replace(request, model=choice.model, language=choice.language)


def save_stream(stream: BinaryIO, target: Path, max_bytes: int) -> None:
    written = 0
    try:
        with target.open("wb") as out:
            while block := stream.read(COPY_BLOCK):
                written += len(block)
                if written > max_bytes:
                    raise MediaTooLargeError(
                        f"the upload exceeds {max_bytes // (1024 * 1024)} MB")
                out.write(block)
    except OSError as exc:
        if disk_full(exc):
            raise InsufficientStorageError(
                f"no space left to store the upload in {target.parent.parent.name}") from exc
        raise


def keep_copy(converted: Path, target: Path) -> None:
    """Move the converted audio for the player; an optional extra, so failure only logs."""
    try:
        shutil.move(converted, target)
    except OSError as exc:
        log.warning("could not keep the audio for the player (%s); the transcript is kept", exc)
        target.unlink(missing_ok=True)


def safe_suffix(filename: str) -> str:
    suffix = Path(filename.replace("\\", "/")).suffix
    return suffix.lower() if SAFE_SUFFIX.fullmatch(suffix) else ""


def _describe(source: MediaSource) -> str:
    if isinstance(source, UrlSource):
        return source.url
    if isinstance(source, FileSource):
        return str(source.path)
    return f"upload{safe_suffix(source.filename)}"


def start_service(
    settings: Settings, executor: ChunkExecutor | None = None,
    observer: TranscriptionObserver | None = None, workers: int | None = None,
) -> Service:
    """Sweep old sessions, build and start the executor, wire the service (blocking).

    `executor` is injectable (tests, the bench); models load in the background, so callers that
    must wait call `service.executor.wait_ready()`.
    """
    if settings.cleanup_on_startup:
        SessionManager(settings.temp_dir, settings.max_temp_age_hours).sweep()
    chunk_executor = executor or build_executor(settings, workers)
    chunk_executor.start()  # a Ray pool knows its size only now (PARALLEL_WORKERS=auto)
    size = chunk_executor.stats().workers
    if settings.enable_parallel_transcription:
        reason = settings.worker_count()[1] if settings.executor == "local" else \
            f"Ray actors, RAY_ADDRESS={settings.ray_address or 'a private local instance'}"
        log.info("PARALLEL MODE ENABLED: %d workers (%s), chunk duration %.0fs, "
                 "single-core below %.0fs", size, reason,
                 settings.parallel_chunk_duration, settings.audio_limit_single_core)
    return Service(settings, chunk_executor, size, observer=observer)
