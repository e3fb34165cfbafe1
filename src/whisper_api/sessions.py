"""Per-request folders: temp/{session_id}/ with metadata.json, download/, chunks/, results/."""

import asyncio
import hashlib
import json
import logging
import os
import re
import shutil
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from whisper_api.errors import InvalidRequestError, SessionClosedError

log = logging.getLogger(__name__)
SESSION_ID = re.compile(r"session_\d{8}_\d{6}_[0-9a-f]{8}_[0-9a-f]{8}")
SUBFOLDERS = ("download", "chunks", "results")
# How long removal waits for a session's thread work to stop: its loops check `closing` per
# chunk or decoded frame, so this only bounds a stuck disk.
CLOSE_WAIT_S = 60.0
STAGING_PREFIX = ".creating_"  # a session folder being built, renamed once its owner is written
T = TypeVar("T")


@dataclass(frozen=True)
class Session:
    """A request's folder. Its thread work (`run`) is counted, so that removal waits for it:
    a cancelled request's threads run on (asyncio cannot stop them), and a chunk writer still
    going made `rmtree` fail on a folder it kept filling. Long loops stop at `closing`."""

    session_id: str
    root: Path
    closing: threading.Event = field(default_factory=threading.Event, compare=False, repr=False)
    _idle: threading.Condition = field(default_factory=threading.Condition, compare=False,
                                       repr=False)
    _running: list[int] = field(default_factory=lambda: [0], compare=False, repr=False)

    async def run(self, work: Callable[..., T], *args: Any) -> T:
        """`work(*args)` in a thread, counted from now (not from when a thread takes it)."""
        taken = [False]  # set, under `_idle`, by whichever comes first: a thread or a cancel
        with self._idle:
            self._running[0] += 1
        try:
            return await asyncio.to_thread(self._counted, taken, work, *args)
        except asyncio.CancelledError:
            self._drop(taken)
            raise

    def _drop(self, taken: list[bool]) -> None:
        """Uncount work cancelled before a thread took it: asyncio then cancels the queued
        call, which never runs to uncount itself, and removal waited CLOSE_WAIT_S for it."""
        with self._idle:
            if not taken[0]:
                taken[0] = True
                self._running[0] -= 1
                self._idle.notify_all()

    def _counted(self, taken: list[bool], work: Callable[..., T], *args: Any) -> T:
        with self._idle:
            if taken[0]:  # dropped by a cancel, already uncounted
                raise SessionClosedError(f"session {self.session_id}: work was cancelled")
            taken[0] = True
        try:
            self.check_open()
            return work(*args)
        finally:
            with self._idle:
                self._running[0] -= 1
                self._idle.notify_all()

    def check_open(self) -> None:
        """For loops in thread work: stop once the request has ended."""
        if self.closing.is_set():
            raise SessionClosedError(f"session {self.session_id} has ended")

    def close(self, timeout_s: float) -> bool:
        """Ask its thread work to stop; True once none runs (False: still running at timeout)."""
        self.closing.set()
        with self._idle:
            return self._idle.wait_for(lambda: self._running[0] == 0, timeout_s)

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
        # Whole or not at all: a server killed mid-write left JSON the sweep could not read.
        write_text_atomically(path, json.dumps(data, indent=2, default=str))


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
        """The folder appears with its owner recorded: it is built under a staging name and
        renamed. Before, a server killed between the mkdir and the metadata left a folder
        whose owner the sweep could not tell (kept until MAX_TEMP_AGE_HOURS)."""
        session_id = new_session_id(client_ip)
        root = self.path_for(session_id)
        staging = root.with_name(f"{STAGING_PREFIX}{session_id}")
        for name in SUBFOLDERS:
            (staging / name).mkdir(parents=True, exist_ok=True)
        pid = os.getpid()
        Session(session_id, staging).update_metadata(
            session_id=session_id, created_at=time.time(), owner_pid=pid,
            owner_started=process_started(pid), **metadata)
        staging.rename(root)
        return Session(session_id, root)

    def remove(self, session: Session) -> None:
        if not session.close(CLOSE_WAIT_S):
            log.warning("session %s: thread work still running after %.0fs; removing anyway",
                        session.session_id, CLOSE_WAIT_S)
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
        creating = asyncio.ensure_future(asyncio.to_thread(self.create, client_ip, **metadata))
        try:
            session = await asyncio.shield(creating)
        except asyncio.CancelledError:  # the thread makes the folder anyway: remove it then
            with suppress(Exception):
                await asyncio.shield(asyncio.to_thread(self.remove, await creating))
            raise
        try:
            yield session
        finally:
            await asyncio.shield(asyncio.to_thread(self.remove, session))

    def sweep(self) -> int:
        """Remove session folders older than MAX_TEMP_AGE_HOURS, and those of a server process
        that is gone (killed mid-request: nobody will finish or remove them); returns how many.
        Folders of live servers sharing this TEMP_DIR are left alone."""
        if not self.temp_dir.is_dir():
            return 0
        cutoff = time.time() - self.max_age_s
        removed = 0
        for entry in self.temp_dir.iterdir():
            name = entry.name.removeprefix(STAGING_PREFIX)
            if not (entry.is_dir() and SESSION_ID.fullmatch(name)):
                continue
            if _touched(entry) < cutoff or _orphaned(entry):
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


def _orphaned(root: Path) -> bool:
    """True when the metadata names an owner process that no longer exists."""
    try:
        data = json.loads((root / "metadata.json").read_text())
    except (OSError, ValueError):
        return False  # being created right now, or not ours to judge: age decides
    pid = data.get("owner_pid")
    if not isinstance(pid, int):
        return False
    recorded: str | None = data.get("owner_started")
    if recorded:  # gone, or its pid reused by a process started at another time
        return process_started(pid) != recorded
    return not _pid_exists(pid)  # no /proc: a live pid is trusted


def process_started(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), None if it does not exist
    or this system has no /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22, counted after the command name


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_text_atomically(path: Path, text: str) -> None:
    """`text` in UTF-8 (whatever the locale), whole or not at all: written beside `path` under
    a name of this process and thread, then renamed over it. Raises OSError."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.part")
    try:
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)  # a no-op after the rename


def folder_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
