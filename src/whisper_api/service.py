"""Shared by every surface (sync routes, jobs, CLI): settings, executor, sessions, pipeline."""

import asyncio
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO, Protocol

from whisper_api.config import Settings
from whisper_api.errors import MediaTooLargeError
from whisper_api.executor import ChunkExecutor
from whisper_api.models import ModelCatalog
from whisper_api.pipeline import CONVERTED_NAME, Pipeline, Progress, TranscribeRequest
from whisper_api.sessions import Session, SessionManager
from whisper_api.transcript import Transcript

SAFE_SUFFIX = re.compile(r"\.[A-Za-z0-9]{1,8}")
COPY_BLOCK = 1 << 20


@dataclass(frozen=True)
class UploadSource:
    """An uploaded file; `filename` is only used for its extension, never as a path."""

    stream: BinaryIO
    filename: str


@dataclass(frozen=True)
class UrlSource:
    url: str


MediaSource = UploadSource | UrlSource


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
        self.models = ModelCatalog(settings.model_names, settings.whisper_model)

    def check(self, request: TranscribeRequest) -> TranscribeRequest:
        return check_request(self.models, request)

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
                await asyncio.to_thread(shutil.move, session.download / CONVERTED_NAME, keep_audio)
        if self.observer:
            self.observer.transcribed(transcript.duration_s, time.perf_counter() - started)
        return transcript

    async def fetch(
        self, source: MediaSource, session: Session, on_progress: Callable[[Progress], None]
    ) -> Path:
        if isinstance(source, UploadSource):
            target = session.download / f"upload{safe_suffix(source.filename)}"
            await asyncio.to_thread(save_stream, source.stream, target,
                                    self.settings.max_upload_bytes)
            return target
        on_progress(Progress("downloading"))
        from whisper_api.download import DownloadLimits, fetch_media

        limits = DownloadLimits(
            self.settings.max_upload_bytes, self.settings.max_audio_duration_s,
            self.settings.download_timeout_s, self.settings.allow_private_urls,
        )
        return await asyncio.to_thread(fetch_media, source.url, session.download, limits)


def check_request(models: ModelCatalog, request: TranscribeRequest) -> TranscribeRequest:
    """The request with its model named and its language checked against that model: a 400
    before any work starts, on every surface (routes, jobs, CLI)."""
    choice = models.choose(request.model, request.language, request.task)
    return replace(request, model=choice.model, language=choice.language)


def save_stream(stream: BinaryIO, target: Path, max_bytes: int) -> None:
    written = 0
    with target.open("wb") as out:
        while block := stream.read(COPY_BLOCK):
            written += len(block)
            if written > max_bytes:
                raise MediaTooLargeError(f"the upload exceeds {max_bytes // (1024 * 1024)} MB")
            out.write(block)


def safe_suffix(filename: str) -> str:
    suffix = Path(filename.replace("\\", "/")).suffix
    return suffix.lower() if SAFE_SUFFIX.fullmatch(suffix) else ""


def _describe(source: MediaSource) -> str:
    return source.url if isinstance(source, UrlSource) else f"upload{safe_suffix(source.filename)}"
