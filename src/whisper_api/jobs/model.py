"""A job as the API and the store see it: status, input (the whole request), progress."""

import json
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from whisper_api.pipeline import Progress, TranscribeRequest
from whisper_api.subtitles import SubtitleOptions


class JobStatus(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled)


@dataclass(frozen=True)
class JobInput:
    """What to transcribe and how: the request every surface builds, passed on whole, and what
    the result is rendered as by default. The media is `url`, or an upload saved as
    `upload_name` in the job's folder."""

    request: TranscribeRequest = TranscribeRequest()
    format: str = "json"
    subtitles: SubtitleOptions = SubtitleOptions()  # srt/vtt shaping, the result's default
    callback_url: str | None = None
    url: str | None = None
    upload_name: str | None = None
    filename: str | None = None  # the client's name for the upload: shown, never used as a path

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "JobInput":
        data = json.loads(text)
        if "request" not in data:  # a record written before the request was kept whole
            data = _nest_legacy_fields(data)
        return cls(**{**data, "request": TranscribeRequest(**data["request"]),
                      "subtitles": SubtitleOptions(**data["subtitles"])})


def _nest_legacy_fields(flat: dict[str, Any]) -> dict[str, Any]:
    request = {k: flat.pop(k) for k in ("language", "word_timestamps", "model", "task")
               if k in flat}
    subtitles = {k: flat.pop(k) for k in ("max_line_width", "max_line_count") if k in flat}
    return {**flat, "request": request, "subtitles": subtitles}


@dataclass
class Job:
    id: str
    input: JobInput
    status: JobStatus = JobStatus.queued
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    processing_time_s: float | None = None
    error: str | None = None
    progress: Progress = field(default_factory=lambda: Progress("queued"))
    tenant: str | None = None  # a hash of the API key that made it (API_KEYS), never the key
    crashes: int = 0  # starts that found it running: the server died while it ran

    def to_dict(self) -> dict[str, Any]:
        """The status body of GET /api/v1/jobs/{id}, the SSE events and the callback."""
        p = self.progress
        percent = 100.0 if self.status == JobStatus.succeeded else (
            round(100 * p.audio_done_s / p.audio_total_s, 1) if p.audio_total_s else 0.0)
        return {
            "id": self.id, "status": str(self.status), "error": self.error,
            "progress": {
                "stage": p.stage, "chunks_done": p.chunks_done, "chunks_total": p.chunks_total,
                "percent": percent, "audio_seconds_done": round(p.audio_done_s, 3),
                "audio_seconds_total": round(p.audio_total_s, 3),
            },
            "timings": {
                "created_at": _iso(self.created_at), "started_at": _iso(self.started_at),
                "finished_at": _iso(self.finished_at), "processing_time": self.processing_time_s,
            },
            "request": {"source": self.input.url or self.input.filename or "upload",
                        "language": self.input.request.language,
                        "model": self.input.request.model, "task": self.input.request.task,
                        "format": self.input.format,
                        "word_timestamps": self.input.request.word_timestamps,
                        "preset": self.input.request.preset,
                        "prompt": self.input.request.initial_prompt},
        }


def display_name(filename: str) -> str | None:
    """The last path part of a client's file name, at most 100 characters."""
    name = filename.replace("\\", "/").rsplit("/", 1)[-1].strip()
    return name[:100] or None


def _iso(stamp: float | None) -> str | None:
    return None if stamp is None else datetime.fromtimestamp(stamp, UTC).isoformat()
