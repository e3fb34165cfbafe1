"""WorkerPool specifics (round robin, stopping) with real spawned worker processes.

The contract both executors share is tested in test_executor_contract.py.
"""

import contextlib
import os
import signal
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path

import pytest

from tests.support.chunks import CONFIG, RESULT_TIMEOUT_S, assert_belongs, make_task
from tests.support.fakes import echo_factory
from tests.support.processes import alive, wait_for
from whisper_api.errors import TranscriptionError
from whisper_api.executors import local as pool_module
from whisper_api.executors.base import settle
from whisper_api.executors.local import WorkerPool
from whisper_api.executors.worker import TranscriberFactory
from whisper_api.transcript import ChunkResult

MakePool = Callable[..., WorkerPool]

@pytest.fixture
def make_pool() -> Iterator[MakePool]:
    pools: list[WorkerPool] = []

    def make(
        size: int = 1,
        factory: TranscriberFactory = echo_factory,
        chunk_timeout_s: float = 600.0,
        ready: bool = True,
    ) -> WorkerPool:
        pool = WorkerPool(size, CONFIG, chunk_timeout_s=chunk_timeout_s, factory=factory)
        pools.append(pool)
        pool.start()
        if ready:
            pool.wait_ready(timeout_s=60)
        return pool

    yield make
    for pool in pools:
        with contextlib.suppress(Exception):
            pool.stop(drain_timeout_s=0.5)
        # Whatever stop() left behind: kill our own children.
        for worker in list(pool._workers.values()):
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join(timeout=5)


def test_round_robin_lets_a_short_request_through_a_long_one(
    make_pool: MakePool, tmp_path: Path
) -> None:
    pool = make_pool(size=1)
    order: list[str] = []
    a_tasks = [make_task(tmp_path, "A", i, 2000 + i, "sleep=0.2") for i in range(6)]
    b_task = make_task(tmp_path, "B", 0, 3000, "sleep=0.2")
    futures = [pool.submit(t) for t in [*a_tasks, b_task]]
    for future in futures:
        future.add_done_callback(lambda f: order.append(f.result().task_id))

    for task, future in zip([*a_tasks, b_task], futures, strict=True):
        assert_belongs(future.result(timeout=RESULT_TIMEOUT_S), task)
    wait_for(lambda: len(order) == 7)
    # B waits for at most the A chunk already running plus one more, never for all of A.
    assert order.index("B:0") < order.index("A:2")
    assert [t for t in order if t.startswith("A")] == [f"A:{i}" for i in range(6)]


def test_stop_ends_every_worker_and_refuses_new_work(make_pool: MakePool, tmp_path: Path) -> None:
    pool = make_pool(size=2)
    tasks = [make_task(tmp_path, "req", i, 800 + i) for i in range(4)]
    for task, future in [(t, pool.submit(t)) for t in tasks]:
        assert_belongs(future.result(timeout=RESULT_TIMEOUT_S), task)
    pids = list(pool.worker_pids().values())
    assert all(alive(pid) for pid in pids)

    pool.stop(drain_timeout_s=5)

    assert not any(alive(pid) for pid in pids)
    assert not Path(f"/proc/{pids[0]}").exists()
    late = pool.submit(make_task(tmp_path, "req", 9, 900))
    assert isinstance(late.exception(timeout=1), TranscriptionError)


def test_stop_does_not_respawn_the_workers_it_just_stopped(
    make_pool: MakePool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A longer poll widens the window in which the supervisor, still in its loop, sees the
    # workers that stop() just ended as dead and starts replacements nobody will ever stop.
    monkeypatch.setattr(pool_module, "POLL_S", 1.0)
    pool = make_pool(size=1)
    task = make_task(tmp_path, "req", 0, 1234)
    assert_belongs(pool.submit(task).result(timeout=RESULT_TIMEOUT_S), task)
    time.sleep(0.2)  # the supervisor is now blocked in outbox.get(timeout=POLL_S)

    pool.stop(drain_timeout_s=5)

    assert not any(alive(pid) for pid in pool.worker_pids().values())


def test_stop_past_the_drain_timeout_fails_the_running_chunk(
    make_pool: MakePool, tmp_path: Path
) -> None:
    pool = make_pool(size=1)
    task = make_task(tmp_path, "req", 0, 1234, "sleep=20")
    future = pool.submit(task)
    wait_for(lambda: pool.busy_worker_pid(task.task_id) is not None)

    pool.stop(drain_timeout_s=0.2)

    assert isinstance(future.exception(timeout=1), TranscriptionError)


def test_stop_tolerates_a_queued_future_cancelled_by_its_caller(
    make_pool: MakePool, tmp_path: Path
) -> None:
    pool = make_pool(size=1)
    running = make_task(tmp_path, "req", 0, 1000, "sleep=0.3")
    running_future = pool.submit(running)
    wait_for(lambda: pool.busy_worker_pid(running.task_id) is not None)
    queued_future = pool.submit(make_task(tmp_path, "req", 1, 1001))
    assert queued_future.cancel()  # what asyncio.wrap_future does when the awaiting task ends

    pool.stop(drain_timeout_s=5)

    assert_belongs(running_future.result(timeout=1), running)
    assert not any(alive(pid) for pid in pool.worker_pids().values())


def test_a_worker_killed_in_the_middle_of_a_message_stops_no_other_worker(
    make_pool: MakePool, tmp_path: Path
) -> None:
    # With one queue shared by all workers, the victim died holding its write lock, and the
    # supervisor waited forever for the rest of the message: the whole pool hung.
    pool = make_pool(size=2)
    mark = tmp_path / "decoding"
    big = make_task(tmp_path, "big", 0, 1000, f"mark={mark};sleep=0.5;pad=8000000")
    big_future = pool.submit(big)
    wait_for(mark.exists)
    victim = pool.busy_worker_pid(big.task_id)
    assert victim is not None
    with pool._lock:  # the supervisor stops reading: the 8 MB answer fills the pipe, then blocks
        time.sleep(1.5)
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: not alive(victim))

    small = make_task(tmp_path, "small", 0, 2000)
    assert_belongs(pool.submit(small).result(timeout=RESULT_TIMEOUT_S), small)
    assert big_future.result(timeout=RESULT_TIMEOUT_S).segments[0].text.endswith("." * 100)
    pool.wait_ready(timeout_s=60)
    assert pool.stats().restarts == 1


def test_the_supervisor_survives_a_failed_spawn(
    make_pool: MakePool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A replacement that cannot start (EAGAIN: too many processes) is tried again on the next
    turn; before, the exception ended the supervisor thread and every chunk waited forever."""
    pool = make_pool(size=1)
    real_spawn, failures = pool._spawn, [OSError(11, "Resource temporarily unavailable")]

    def spawn_once_failing(worker_id: int) -> None:
        if failures:
            raise failures.pop()
        real_spawn(worker_id)

    monkeypatch.setattr(pool, "_spawn", spawn_once_failing)
    victim = pool.worker_pids()[0]
    assert victim is not None
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: not failures)

    task = make_task(tmp_path, "req", 0, 1234)
    assert_belongs(pool.submit(task).result(timeout=RESULT_TIMEOUT_S), task)
    assert pool._thread is not None and pool._thread.is_alive()


def test_a_result_for_a_future_cancelled_meanwhile_is_dropped_quietly() -> None:
    """The caller's thread may cancel a future between the executor's done() check and its
    set_result: settle must not raise there (it would stop the executor's thread)."""
    future: Future[ChunkResult] = Future()
    assert future.cancel()
    settle(future, ChunkResult("t", (), "en"))
    settle(future, TranscriptionError("late"))
    assert future.cancelled()
