"""Per-request folders: temp/{session_id}/ with metadata.json, download/, chunks/, results/."""

import asyncio
import hashlib
import json
import logging
import re
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from whisper_api.errors import InvalidRequestError

log = logging.getLogger(__name__)
SESSION_ID = re.compile(r"session_\d{8}_\d{6}_[0-9a-f]{8}_[0-9a-f]{8}")
SUBFOLDERS = ("download", "chunks", "results")


@dataclass(frozen=True)
class Session:
    session_id: str
    root: Path

    @property
    def download(self) -> Path:
        return self.root / "download"

    @property
    def chunks(self) -> Path:
        return self.root / "chunks"

    @property
    def results(self) -> Path:
        return self.root / "results"

    def update_metadata(self, **fields: object) -> None:
        path = self.root / "metadata.json"
        data = json.loads(path.read_text()) if path.exists() else {}
        data.update(fields)
        data["size_bytes"] = folder_size(self.root)
        path.write_text(json.dumps(data, indent=2, default=str))


def new_session_id(client_ip: str = "local") -> str:
    stamp = datetime.now(UTC).strftime("%Y%m%d_%H%M%S")
    ip_hash = hashlib.sha256(client_ip.encode()).hexdigest()[:8]
    return f"session_{stamp}_{uuid.uuid4().hex[:8]}_{ip_hash}"


class SessionManager:
    """The seed's TempSessionManager: create, clean in `finally`, sweep stale leftovers."""

    def __init__(self, temp_dir: Path, max_age_hours: float) -> None:
        self.temp_dir = temp_dir.resolve()
        self.max_age_s = max_age_hours * 3600

    def path_for(self, session_id: str) -> Path:
        if not SESSION_ID.fullmatch(session_id):
            raise InvalidRequestError(f"invalid session id {session_id!r}")
        path = (self.temp_dir / session_id).resolve()
        if path.parent != self.temp_dir:
            raise InvalidRequestError(f"invalid session id {session_id!r}")
        return path

    def create(self, client_ip: str = "local", **metadata: object) -> Session:
        session_id = new_session_id(client_ip)
        root = self.path_for(session_id)
        for name in SUBFOLDERS:
            (root / name).mkdir(parents=True, exist_ok=True)
        session = Session(session_id, root)
        session.update_metadata(session_id=session_id, created_at=time.time(), **metadata)
        return session

    def remove(self, session: Session) -> None:
        shutil.rmtree(self.path_for(session.session_id), ignore_errors=True)

    @contextmanager
    def session(self, client_ip: str = "local", **metadata: object) -> Iterator[Session]:
        session = self.create(client_ip, **metadata)
        try:
            yield session
        finally:
            self.remove(session)

    @asynccontextmanager
    async def open(self, client_ip: str = "local", **metadata: object) -> AsyncIterator[Session]:
        """`session()` for the event loop: creating and removing the folder (up to gigabytes of
        chunk files) run in a thread. Removal runs to the end even if the request is cancelled."""
        session = await asyncio.to_thread(self.create, client_ip, **metadata)
        try:
            yield session
        finally:
            await asyncio.shield(asyncio.to_thread(self.remove, session))

    def sweep(self) -> int:
        """Remove session folders older than MAX_TEMP_AGE_HOURS; returns how many."""
        if not self.temp_dir.is_dir():
            return 0
        cutoff = time.time() - self.max_age_s
        removed = 0
        for entry in self.temp_dir.iterdir():
            if entry.is_dir() and SESSION_ID.fullmatch(entry.name) and _touched(entry) < cutoff:
                shutil.rmtree(entry, ignore_errors=True)
                removed += 1
        if removed:
            log.info("Removed %d stale session folders from %s", removed, self.temp_dir)
        return removed


def _touched(root: Path) -> float:
    """Last activity: metadata.json is rewritten as a session progresses."""
    metadata = root / "metadata.json"
    stamps = [root.stat().st_mtime, *([metadata.stat().st_mtime] if metadata.exists() else [])]
    return max(stamps)


def folder_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
