"""The ChunkExecutor contract, run against both executors: the local pool and Ray actors.

Real worker processes (spawned, or Ray actors on a private local Ray instance) with the fake
transcribers of tests.support.fakes; what differs between the executors is tested in
test_pool.py and test_ray.py.
"""

import contextlib
import os
import signal
from collections.abc import Callable, Iterator
from concurrent.futures import CancelledError
from pathlib import Path
from typing import Any

import pytest

from tests.support.chunks import (
    CONFIG,
    RESULT_TIMEOUT_S,
    assert_belongs,
    make_task,
    submit_concurrently,
)
from tests.support.fakes import broken_factory, echo_factory
from tests.support.processes import alive, wait_for
from whisper_api.errors import ChunkTimeoutError, ModelUnavailableError, TranscriptionError
from whisper_api.executors.base import ChunkExecutor
from whisper_api.executors.worker import TranscriberFactory

REPO = Path(__file__).resolve().parent.parent
HALF_CPU = 0.5  # two actors and the driver fit on two cores
MakeExecutor = Callable[..., Any]


@pytest.fixture(scope="module")
def ray_instance() -> Iterator[None]:
    ray = pytest.importorskip("ray", reason="pip install 'whisper-api[ray]'")
    # Ray workers must import `tests.support.fakes` to unpickle the fake factories.
    ray.init(num_cpus=2, include_dashboard=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}})
    yield
    ray.shutdown()


@pytest.fixture(params=["local", pytest.param("ray", marks=[pytest.mark.ray, pytest.mark.slow])])
def make_executor(request: pytest.FixtureRequest) -> Iterator[MakeExecutor]:
    kind = request.param
    if kind == "ray":
        request.getfixturevalue("ray_instance")
    made: list[ChunkExecutor] = []

    def make(size: int = 1, factory: TranscriberFactory = echo_factory,
             chunk_timeout_s: float = 600.0, ready: bool = True) -> Any:
        executor: Any
        if kind == "local":
            from whisper_api.executors.local import WorkerPool

            executor = WorkerPool(size, CONFIG, chunk_timeout_s, factory=factory)
        else:
            from whisper_api.executors.ray_actors import RayExecutor

            executor = RayExecutor(size, CONFIG, chunk_timeout_s, factory=factory,
                                   num_cpus_per_worker=HALF_CPU)
        made.append(executor)
        executor.start()
        if ready:
            executor.wait_ready(timeout_s=120)
        return executor

    yield make
    for executor in made:
        with contextlib.suppress(Exception):
            executor.stop(drain_timeout_s=0.5)


def test_results_are_routed_to_their_futures_under_concurrent_submits(
    make_executor: MakeExecutor, tmp_path: Path
) -> None:
    executor = make_executor(size=2)
    submitted = submit_concurrently(executor, tmp_path)
    assert len(submitted) == 24
    for task, future in submitted:
        assert_belongs(future.result(timeout=RESULT_TIMEOUT_S), task)
    assert {f.result().worker_id for _, f in submitted} == {0, 1}
    stats = executor.stats()
    assert stats.workers == stats.ready_workers == 2
    assert stats.queued_tasks == 0 and stats.restarts == 0 and stats.chunk_seconds.count == 24


def test_a_killed_worker_is_replaced_and_its_chunk_retried(
    make_executor: MakeExecutor, tmp_path: Path
) -> None:
    executor = make_executor(size=1)
    marker = tmp_path / "started"
    task = make_task(tmp_path, "req", 0, 4321, f"sleep=1.5;mark={marker}")
    future = executor.submit(task)
    wait_for(lambda: executor.busy_worker_pid(task.task_id) is not None and marker.exists(),
             timeout_s=60)
    pid = executor.busy_worker_pid(task.task_id)

    os.kill(pid, signal.SIGKILL)

    assert_belongs(future.result(timeout=RESULT_TIMEOUT_S), task)
    assert executor.stats().restarts == 1
    assert pid not in executor.worker_pids().values()
    wait_for(lambda: not alive(pid))


def test_a_transcriber_exception_fails_only_that_future(
    make_executor: MakeExecutor, tmp_path: Path
) -> None:
    executor = make_executor(size=1)
    good_before = make_task(tmp_path, "req", 0, 1500)
    bad = make_task(tmp_path, "req", 1, 1600, "raise")
    good_after = make_task(tmp_path, "other", 0, 1700)
    futures = [executor.submit(t) for t in (good_before, bad, good_after)]

    assert_belongs(futures[0].result(timeout=RESULT_TIMEOUT_S), good_before)
    with pytest.raises(TranscriptionError, match="RuntimeError: fake failure on 1600 samples"):
        futures[1].result(timeout=RESULT_TIMEOUT_S)
    assert not isinstance(futures[1].exception(), ChunkTimeoutError)
    assert_belongs(futures[2].result(timeout=RESULT_TIMEOUT_S), good_after)
    assert executor.stats().restarts == 0


def test_a_chunk_over_the_timeout_is_retried_once_then_fails_and_the_executor_keeps_serving(
    make_executor: MakeExecutor, tmp_path: Path
) -> None:
    executor = make_executor(size=1, chunk_timeout_s=2.0)
    slow = make_task(tmp_path, "req", 0, 1111, "sleep=60")
    with pytest.raises(ChunkTimeoutError, match="after a retry"):
        executor.submit(slow).result(timeout=2 * RESULT_TIMEOUT_S)

    quick = make_task(tmp_path, "req", 1, 2222)
    assert_belongs(executor.submit(quick).result(timeout=RESULT_TIMEOUT_S), quick)
    assert executor.stats().restarts == 2  # one worker killed per attempt


def test_a_chunk_that_stalls_once_succeeds_on_its_retry(
    make_executor: MakeExecutor, tmp_path: Path
) -> None:
    executor = make_executor(size=1, chunk_timeout_s=2.0)
    task = make_task(tmp_path, "req", 0, 1234, f"hang_once={tmp_path / 'hung'}")

    assert_belongs(executor.submit(task).result(timeout=2 * RESULT_TIMEOUT_S), task)
    assert executor.stats().restarts == 1


def test_cancel_drops_queued_chunks_and_stops_the_running_one(
    make_executor: MakeExecutor, tmp_path: Path
) -> None:
    executor = make_executor(size=1)
    running = make_task(tmp_path, "X", 0, 1000, "sleep=60")
    running_future = executor.submit(running)
    wait_for(lambda: executor.busy_worker_pid(running.task_id) is not None, timeout_s=60)
    busy_pid = executor.busy_worker_pid(running.task_id)
    queued_futures = [executor.submit(make_task(tmp_path, "X", i, 1000 + i)) for i in (1, 2, 3)]
    other = make_task(tmp_path, "Y", 0, 3000)
    other_future = executor.submit(other)

    assert executor.cancel("X") == 4

    assert all(f.cancelled() for f in [running_future, *queued_futures])
    with pytest.raises(CancelledError):
        queued_futures[0].result(timeout=1)
    wait_for(lambda: not alive(busy_pid))  # its CPU is free now, not in 60 s
    # The replacement worker serves the other request.
    assert_belongs(other_future.result(timeout=RESULT_TIMEOUT_S), other)
    assert executor.cancel("X") == 0
    wait_for(lambda: executor.stats().busy_workers == 0)
    assert executor.stats().queued_tasks == 0


def test_stop_refuses_new_work(make_executor: MakeExecutor, tmp_path: Path) -> None:
    executor = make_executor(size=1)
    task = make_task(tmp_path, "req", 0, 800)
    assert_belongs(executor.submit(task).result(timeout=RESULT_TIMEOUT_S), task)

    executor.stop(drain_timeout_s=5)

    late = executor.submit(make_task(tmp_path, "req", 9, 900))
    assert isinstance(late.exception(timeout=1), TranscriptionError)


def test_wait_ready_raises_when_the_model_cannot_load(make_executor: MakeExecutor) -> None:
    executor = make_executor(size=1, factory=broken_factory, ready=False)
    with pytest.raises(TranscriptionError, match="cannot load"):
        executor.wait_ready(timeout_s=60)
    assert not executor.ready


def test_chunks_fail_at_once_when_no_worker_can_load_the_model(
    make_executor: MakeExecutor, tmp_path: Path
) -> None:
    """Queued before the failure is known, or submitted after: a 503 now, not a wait for a
    worker that will never come."""
    executor = make_executor(size=1, factory=broken_factory, ready=False)
    early = executor.submit(make_task(tmp_path, "req", 0, 1000))
    with pytest.raises(ModelUnavailableError, match="cannot load"):
        early.result(timeout=RESULT_TIMEOUT_S)

    late = executor.submit(make_task(tmp_path, "req", 1, 1000))
    assert late.done()
    assert isinstance(late.exception(), ModelUnavailableError)


def test_progress_inside_a_chunk_reaches_the_submitter(
    make_executor: MakeExecutor, tmp_path: Path
) -> None:
    executor = make_executor(size=1)
    # The fake reports half its 2 s chunk decoded, then works on long enough for Ray's poll.
    task = make_task(tmp_path, "r", 0, 32000, prompt="progress;sleep=1.5")
    reports: list[float] = []
    result = executor.submit(task, reports.append).result(timeout=RESULT_TIMEOUT_S)
    assert_belongs(result, task)
    assert reports == [1.0]  # reported while it ran, once
