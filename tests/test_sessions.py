"""Per-request temp folders: whisper_api.sessions."""

import json
import os
import re
import time
from pathlib import Path

import pytest

from whisper_api.errors import InvalidRequestError, SessionClosedError
from whisper_api.sessions import (
    SESSION_ID,
    SUBFOLDERS,
    Session,
    SessionManager,
    new_session_id,
)

GOOD_ID = "session_20240102_030405_0123abcd_89abcdef"


@pytest.fixture
def manager(tmp_path: Path) -> SessionManager:
    return SessionManager(tmp_path / "temp", max_age_hours=1.0)


def test_new_session_id_format() -> None:
    sid = new_session_id("10.0.0.1")
    assert re.fullmatch(r"session_\d{8}_\d{6}_[0-9a-f]{8}_[0-9a-f]{8}", sid)
    assert SESSION_ID.match(sid)


def test_new_session_id_hashes_ip_and_is_unique() -> None:
    a, b, c = new_session_id("1.2.3.4"), new_session_id("1.2.3.4"), new_session_id("5.6.7.8")
    assert a != b
    assert a.rsplit("_", 1)[1] == b.rsplit("_", 1)[1] != c.rsplit("_", 1)[1]
    assert "1.2.3.4" not in a


def test_path_for_valid_id(manager: SessionManager) -> None:
    assert manager.path_for(GOOD_ID) == manager.temp_dir / GOOD_ID


@pytest.mark.parametrize(
    "bad",
    [
        "../x", "session_..", "..", "", "/etc/passwd", f"../{GOOD_ID}", f"{GOOD_ID}/..",
        f"{GOOD_ID}/../../x", f"x/{GOOD_ID}", "session_20240102_030405_0123ABCD_89abcdef",
        GOOD_ID + "0", GOOD_ID[:-1],
    ],
)
def test_path_for_rejects_bad_ids(manager: SessionManager, bad: str) -> None:
    with pytest.raises(InvalidRequestError):
        manager.path_for(bad)


def test_path_for_rejects_trailing_newline(manager: SessionManager) -> None:
    with pytest.raises(InvalidRequestError):
        manager.path_for(GOOD_ID + "\n")


def test_create_makes_folders_and_metadata(manager: SessionManager) -> None:
    session = manager.create("1.2.3.4", filename="a.wav")
    assert session.root.parent == manager.temp_dir
    assert all((session.root / name).is_dir() for name in SUBFOLDERS)
    meta = json.loads((session.root / "metadata.json").read_text())
    assert meta["session_id"] == session.session_id
    assert meta["filename"] == "a.wav"


def test_update_metadata_merges_and_sizes(manager: SessionManager) -> None:
    session = manager.create()
    (session.download / "f.bin").write_bytes(b"x" * 1000)
    session.update_metadata(duration_s=2.5)
    meta = json.loads((session.root / "metadata.json").read_text())
    assert meta["duration_s"] == 2.5
    assert meta["session_id"] == session.session_id
    assert meta["size_bytes"] >= 1000


def test_context_manager_removes_on_success(manager: SessionManager) -> None:
    with manager.session() as session:
        (session.chunks / "c.wav").write_bytes(b"data")
        assert session.root.is_dir()
    assert not session.root.exists()


def test_context_manager_removes_on_exception(manager: SessionManager) -> None:
    with pytest.raises(RuntimeError, match="boom"), manager.session() as session:
        (session.results / "r.json").write_text("{}")
        raise RuntimeError("boom")
    assert not session.root.exists()


def make_dir(root: Path, name: str, age_hours: float) -> Path:
    path = root / name
    path.mkdir(parents=True)
    stamp = time.time() - age_hours * 3600
    os.utime(path, (stamp, stamp))
    return path


def test_sweep_removes_only_old_session_folders(manager: SessionManager) -> None:
    root = manager.temp_dir
    old = make_dir(root, GOOD_ID, 2.0)
    (old / "download" / "f.wav").parent.mkdir()
    (old / "download" / "f.wav").write_bytes(b"x")
    os.utime(old, (0, 0))
    young = make_dir(root, "session_20240102_030405_0123abcd_00000000", 0.5)
    other_old = make_dir(root, "keep_me", 5.0)
    old_file = root / "session_20240102_030405_0123abcd_11111111"
    old_file.write_text("not a folder")
    os.utime(old_file, (0, 0))
    assert manager.sweep() == 1
    assert not old.exists()
    assert young.is_dir() and other_old.is_dir() and old_file.is_file()


def test_sweep_missing_temp_dir(manager: SessionManager) -> None:
    assert not manager.temp_dir.exists()
    assert manager.sweep() == 0


def test_async_session_is_removed_on_success_error_and_cancel(manager: SessionManager) -> None:
    import asyncio

    async def use(fail: BaseException | None) -> Path:
        async with manager.open(source="x") as session:
            (session.chunks / "chunk_000.wav").write_bytes(b"\0" * 1024)
            if fail:
                raise fail
            return session.root

    async def cancelled() -> None:
        async def hold() -> None:
            async with manager.open() as session:
                assert session.root.is_dir()
                await asyncio.Event().wait()  # until cancelled, like a client that went away

        held = asyncio.create_task(hold())
        await asyncio.sleep(0.05)
        held.cancel()
        await asyncio.gather(held, return_exceptions=True)

    root = asyncio.run(use(None))
    assert not root.exists()
    with pytest.raises(RuntimeError):
        asyncio.run(use(RuntimeError("boom")))
    asyncio.run(cancelled())
    assert not any(manager.temp_dir.iterdir())


def test_a_cancelled_requests_thread_work_stops_before_its_folder_goes(
    manager: SessionManager,
) -> None:
    """asyncio cannot stop a thread: a chunk writer of a cancelled request went on filling the
    folder while rmtree ran, and the folder stayed. Removal now waits for the session's thread
    work, which stops at its next check."""
    import asyncio
    import threading

    written: list[int] = []
    started = threading.Event()

    def write_chunks(folder: Path, session: Session) -> None:
        for index in range(2000):  # bounded: ~20 s if nothing stopped it
            session.check_open()
            (folder / f"chunk_{index:03d}.wav").write_bytes(b"\0" * 1024)
            written.append(index)
            started.set()
            time.sleep(0.01)

    async def request() -> None:
        async with manager.open() as session:
            await session.run(write_chunks, session.chunks, session)

    async def cancel_midway() -> Path:
        task = asyncio.create_task(request())
        await asyncio.to_thread(started.wait, 10)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return manager.temp_dir

    temp = asyncio.run(cancel_midway())
    count = len(written)
    time.sleep(0.1)
    assert len(written) == count < 2000  # the writer stopped, and before its end
    assert not any(temp.iterdir())


def test_no_thread_work_starts_in_a_closed_session(manager: SessionManager) -> None:
    import asyncio

    session = manager.create()
    assert session.close(timeout_s=1)
    calls: list[int] = []
    with pytest.raises(SessionClosedError):
        asyncio.run(session.run(calls.append, 1))
    assert calls == []


def test_work_cancelled_before_a_thread_took_it_does_not_hold_up_removal(
    manager: SessionManager,
) -> None:
    """A job cancelled while its next conversion step waited for a free thread: the step never
    ran, yet stayed counted, so removal waited CLOSE_WAIT_S (60 s) and the page showed
    "converting" for a minute after Cancel. Work no thread has taken is now uncounted."""
    import asyncio
    import threading
    from concurrent.futures import ThreadPoolExecutor

    ran: list[str] = []

    async def cancel_queued() -> bool:
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(1))
        gate = threading.Event()
        busy = asyncio.ensure_future(asyncio.to_thread(gate.wait, 10))  # the one thread
        session = manager.create()
        queued = asyncio.ensure_future(session.run(ran.append, "converted"))
        await asyncio.sleep(0.05)
        queued.cancel()
        await asyncio.gather(queued, return_exceptions=True)
        gate.set()
        await busy
        return await asyncio.to_thread(session.close, 2.0)

    assert asyncio.run(cancel_queued())  # nothing left running: no wait at all
    assert ran == []


def test_a_request_cancelled_while_its_folder_is_made_leaves_no_folder(
    manager: SessionManager, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The thread making the folder runs on after a cancel; the folder used to stay behind
    until MAX_TEMP_AGE_HOURS."""
    import asyncio
    import threading

    gate, making = threading.Event(), threading.Event()
    create = manager.create

    def slow_create(client_ip: str = "local", **metadata: object) -> Session:
        making.set()
        gate.wait(10)
        return create(client_ip, **metadata)

    monkeypatch.setattr(manager, "create", slow_create)

    async def request() -> None:
        async with manager.open():
            raise AssertionError("the request was cancelled before its folder existed")

    async def cancel_while_making() -> None:
        task = asyncio.create_task(request())
        await asyncio.to_thread(making.wait, 10)
        task.cancel()
        await asyncio.sleep(0.05)
        gate.set()
        await asyncio.gather(task, return_exceptions=True)
        assert task.cancelled()

    asyncio.run(cancel_while_making())
    assert not any(manager.temp_dir.iterdir())
