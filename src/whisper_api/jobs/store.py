"""Job records in SQLite, on one dedicated thread (the connection never leaves it), so the event
loop never waits on disk. `DATABASE_URL` names the file; results are stored as transcript JSON.
"""

import asyncio
import json
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar

from whisper_api.config import Settings
from whisper_api.jobs.model import Job, JobInput, JobStatus
from whisper_api.pipeline import Progress
from whisper_api.transcript import Segment, Transcript, Word

T = TypeVar("T")


# --- transcript <-> JSON ----------------------------------------------------------------------
def transcript_to_json(transcript: Transcript) -> str:
    return json.dumps(asdict(transcript), default=str)


def transcript_from_json(text: str) -> Transcript:
    data = json.loads(text)
    segments = tuple(
        Segment(**{**s, "words": tuple(Word(**w) for w in s["words"]),
                   "tokens": tuple(s.get("tokens", ()))}) for s in data["segments"]
    )
    return Transcript(data["text"], segments, data["language"], data["duration_s"], data["extra"],
                      data.get("language_probability", 0.0))



SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    processing_time_s REAL,
    error TEXT,
    input TEXT NOT NULL,
    progress TEXT NOT NULL,
    result TEXT,
    tenant TEXT,
    crashes INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_created ON jobs (created_at);
"""
COLUMNS = ("id, status, created_at, started_at, finished_at, processing_time_s, error, input, "
           "progress, tenant, crashes")


def database_path(settings: Settings) -> Path:
    """DATABASE_URL is `sqlite:///relative.db` or `sqlite:////absolute.db`; default DATA_DIR."""
    url = settings.database_url
    if not url:
        return settings.data_dir / "jobs.db"
    prefix = "sqlite:///"
    if not url.startswith(prefix) or len(url) == len(prefix):
        raise ValueError(f"DATABASE_URL must look like sqlite:///path/jobs.db, got {url!r}")
    return Path(url[len(prefix):])


class JobStore:
    """Job records in SQLite; every call runs on the store's one thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="jobs-db")
        self._db: sqlite3.Connection | None = None

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    async def open(self) -> None:
        await self._call(self._open)

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(jobs)")}
        if "tenant" not in columns:  # a database from before tenants
            self._db.execute("ALTER TABLE jobs ADD COLUMN tenant TEXT")
        if "crashes" not in columns:  # a database from before crash counting
            self._db.execute("ALTER TABLE jobs ADD COLUMN crashes INTEGER NOT NULL DEFAULT 0")

    async def close(self) -> None:
        def close() -> None:
            if self._db is not None:
                self._db.close()
                self._db = None
        await self._call(close)
        self._thread.shutdown(wait=True)

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("the job store is not open")
        return self._db

    async def save(self, job: Job, result: Transcript | None = None) -> None:
        row = (job.id, str(job.status), job.created_at, job.started_at, job.finished_at,
               job.processing_time_s, job.error, job.input.to_json(),
               json.dumps(asdict(job.progress)), job.tenant, job.crashes)
        await self._call(self._save, row, result)

    def _save(self, row: tuple[Any, ...], result: Transcript | None) -> None:
        # Serialised here, on the store's thread: a 4-hour transcript takes 0.7 s.
        row = (*row, transcript_to_json(result) if result is not None else None)
        self.db.execute(
            f"INSERT INTO jobs ({COLUMNS}, result) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT(id) DO UPDATE SET status=excluded.status, started_at=excluded.started_at,"
            " finished_at=excluded.finished_at, processing_time_s=excluded.processing_time_s,"
            " error=excluded.error, progress=excluded.progress, crashes=excluded.crashes,"
            " result=COALESCE(excluded.result, jobs.result)", row)

    async def get(self, job_id: str) -> Job | None:
        rows = await self._call(self._select, "WHERE id = ?", (job_id,))
        return rows[0] if rows else None

    async def recent(self, limit: int, tenant: str | None = None,
                     every_tenant: bool = True) -> list[Job]:
        if every_tenant:
            return await self._call(self._select, "ORDER BY created_at DESC LIMIT ?", (limit,))
        return await self._call(self._select, "WHERE tenant IS ? ORDER BY created_at DESC "
                                "LIMIT ?", (tenant, limit))

    async def unfinished(self) -> list[Job]:
        return await self._call(self._select, "WHERE status IN ('queued', 'running') "
                                "ORDER BY created_at", ())

    def _select(self, where: str, args: tuple[Any, ...]) -> list[Job]:
        rows = self.db.execute(f"SELECT {COLUMNS} FROM jobs {where}", args).fetchall()
        return [_job_from_row(row) for row in rows]

    async def result(self, job_id: str) -> Transcript | None:
        def load() -> Transcript | None:
            row = self.db.execute("SELECT result FROM jobs WHERE id = ?", (job_id,)).fetchone()
            return transcript_from_json(row[0]) if row and row[0] else None
        return await self._call(load)

    async def delete_finished_before(self, cutoff: float) -> list[str]:
        """Remove finished jobs older than `cutoff` (epoch seconds); returns their ids."""
        def delete() -> list[str]:
            ids = [r[0] for r in self.db.execute(
                "SELECT id FROM jobs WHERE status IN ('succeeded', 'failed', 'cancelled') "
                "AND COALESCE(finished_at, created_at) < ?", (cutoff,))]
            self.db.executemany("DELETE FROM jobs WHERE id = ?", [(i,) for i in ids])
            return ids
        return await self._call(delete)

    async def known_ids(self) -> set[str]:
        def ids() -> set[str]:
            return {r[0] for r in self.db.execute("SELECT id FROM jobs")}
        return await self._call(ids)


def _job_from_row(row: tuple[Any, ...]) -> Job:
    job_id, status, created, started, finished, processing, error, inp, progress, tenant, \
        crashes = row
    return Job(job_id, JobInput.from_json(inp), JobStatus(status), created, started,
               finished, processing, error, Progress(**json.loads(progress)), tenant, crashes)
