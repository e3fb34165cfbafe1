"""RayExecutor on a real local Ray instance (2 CPUs) started by the executor itself.

One module-scoped executor with the fake transcriber owns the Ray instance; the other tests add
small executors to the same instance and stop them. Each actor asks for half a CPU so the fake,
the timeout and the real-model executors fit on two cores at once.
"""

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import CancelledError
from pathlib import Path

import pytest

from tests.fakes import echo_factory
from tests.test_pool import (
    CONFIG,
    RESULT_TIMEOUT_S,
    assert_belongs,
    make_task,
    submit_concurrently,
    wait_for,
)
from whisper_api.cli import build_executor, worker_config
from whisper_api.config import Settings
from whisper_api.errors import ChunkTimeoutError, TranscriptionError, WhisperApiError
from whisper_api.executor import ChunkExecutor
from whisper_api.pipeline import Pipeline, TranscribeRequest
from whisper_api.pool import WorkerPool
from whisper_api.ray_executor import INSTALL_HINT, RayExecutor
from whisper_api.sessions import SessionManager
from whisper_api.transcript import Transcript

pytest.importorskip("ray", reason="pip install 'whisper-api[ray]'")

REPO = Path(__file__).resolve().parent.parent
# Ray workers must import `tests.fakes` to unpickle the fake factory.
TEST_RUNTIME_ENV = {"env_vars": {"PYTHONPATH": str(REPO)}}
HALF_CPU = 0.5


def ray_executor(size: int, **options: object) -> RayExecutor:
    kwargs: dict[str, object] = {"factory": echo_factory, "num_cpus_per_worker": HALF_CPU}
    kwargs.update(options)
    executor = RayExecutor(size, CONFIG, **kwargs)  # type: ignore[arg-type]
    executor.start()
    executor.wait_ready(timeout_s=120)
    return executor


@pytest.fixture(scope="module")
def fake_ray() -> Iterator[RayExecutor]:
    executor = ray_executor(
        2, init_options={"num_cpus": 2, "include_dashboard": False},
        runtime_env=TEST_RUNTIME_ENV,
    )
    yield executor
    executor.stop(drain_timeout_s=1)


def descendants(root: int) -> set[int]:
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z":
            parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = set(), {root}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def run_pipeline(executor: ChunkExecutor, media: Path, tmp: Path) -> Transcript:
    settings = Settings(temp_dir=tmp / "temp", audio_limit_single_core=10,
                        parallel_chunk_duration=30)
    sessions = SessionManager(settings.temp_dir, 24)

    async def go() -> Transcript:
        with sessions.session() as session:
            return await Pipeline(settings, executor, 2).transcribe(
                media, session, TranscribeRequest())

    return asyncio.run(go())


def test_without_ray_startup_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # makes `import ray` raise ImportError
    executor = build_executor(Settings(executor="ray", parallel_workers=1))
    assert isinstance(executor, RayExecutor)
    with pytest.raises(WhisperApiError, match=r"pip install 'whisper-api\[ray\]'"):
        executor.start()


def test_serve_without_ray_exits_with_the_install_hint() -> None:
    code = ("import sys; sys.modules['ray'] = None; from whisper_api.cli import main; "
            "sys.argv = ['whisper-api', 'serve']; raise SystemExit(main())")
    run = subprocess.run([sys.executable, "-c", code], env={**os.environ, "EXECUTOR": "ray"},
                         capture_output=True, text=True, timeout=60)
    assert run.returncode != 0 and INSTALL_HINT in run.stderr and "Traceback" not in run.stderr


def test_results_are_routed_to_their_futures_under_concurrent_requests(
    fake_ray: RayExecutor, tmp_path: Path
) -> None:
    submitted = submit_concurrently(fake_ray, tmp_path)
    assert len(submitted) == 24
    for task, future in submitted:
        assert_belongs(future.result(timeout=RESULT_TIMEOUT_S), task)
    assert {f.result().worker_id for _, f in submitted} == {0, 1}
    stats = fake_ray.stats()
    assert stats.workers == stats.ready_workers == 2 and stats.queued_tasks == 0


def test_a_killed_actor_is_restarted_and_its_chunk_retried(
    fake_ray: RayExecutor, tmp_path: Path
) -> None:
    restarts = fake_ray.stats().restarts
    marker = tmp_path / "started"
    task = make_task(tmp_path, "req", 0, 4321, f"sleep=1.5;mark={marker}")
    future = fake_ray.submit(task)
    wait_for(lambda: fake_ray.busy_worker_pid(task.task_id) is not None and marker.exists())
    pid = fake_ray.busy_worker_pid(task.task_id)
    assert pid is not None

    os.kill(pid, signal.SIGKILL)

    assert_belongs(future.result(timeout=RESULT_TIMEOUT_S), task)
    assert fake_ray.stats().restarts == restarts + 1
    assert pid not in fake_ray.worker_pids().values()


def test_cancel_drops_queued_chunks_and_other_requests_go_on(
    fake_ray: RayExecutor, tmp_path: Path
) -> None:
    running = [make_task(tmp_path, "X", i, 1000 + i, "sleep=0.5") for i in range(2)]
    running_futures = [fake_ray.submit(t) for t in running]
    wait_for(lambda: all(fake_ray.busy_worker_pid(t.task_id) for t in running))
    queued_futures = [fake_ray.submit(make_task(tmp_path, "X", i, 1000 + i)) for i in range(2, 5)]
    other = make_task(tmp_path, "Y", 0, 3000)
    other_future = fake_ray.submit(other)

    assert fake_ray.cancel("X") == 3

    assert all(f.cancelled() for f in [*queued_futures, *running_futures])
    with pytest.raises(CancelledError):
        queued_futures[0].result(timeout=1)
    assert_belongs(other_future.result(timeout=RESULT_TIMEOUT_S), other)
    wait_for(lambda: fake_ray.stats().busy_workers == 0)
    assert fake_ray.stats().queued_tasks == 0


def test_a_transcriber_exception_fails_only_that_future(
    fake_ray: RayExecutor, tmp_path: Path
) -> None:
    bad = make_task(tmp_path, "req", 1, 1600, "raise")
    good = make_task(tmp_path, "other", 0, 1700)
    bad_future, good_future = fake_ray.submit(bad), fake_ray.submit(good)

    with pytest.raises(TranscriptionError, match="RuntimeError: fake failure on 1600 samples"):
        bad_future.result(timeout=RESULT_TIMEOUT_S)
    assert_belongs(good_future.result(timeout=RESULT_TIMEOUT_S), good)


def test_a_chunk_over_the_timeout_fails_and_the_actor_comes_back(
    fake_ray: RayExecutor, tmp_path: Path
) -> None:
    executor = ray_executor(1, chunk_timeout_s=2.0)
    try:
        slow = make_task(tmp_path, "req", 0, 1111, "sleep=60")
        with pytest.raises(ChunkTimeoutError):
            executor.submit(slow).result(timeout=RESULT_TIMEOUT_S)
        # The timed-out chunk is not retried on the restarted actor: the next one is served now.
        quick = make_task(tmp_path, "req", 1, 2222)
        assert_belongs(executor.submit(quick).result(timeout=RESULT_TIMEOUT_S), quick)
        assert executor.stats().restarts == 1
    finally:
        executor.stop(drain_timeout_s=1)


def test_long_file_gives_the_same_transcript_as_the_local_pool(
    fake_ray: RayExecutor, long_speech: Path, tmp_path: Path
) -> None:
    config = worker_config(Settings(parallel_workers=2), 2)
    local = WorkerPool(2, config)
    local.start()
    try:
        local.wait_ready()
        expected = run_pipeline(local, long_speech, tmp_path / "local")
    finally:
        local.stop()
    assert expected.extra["chunks"] >= 3 and "ask not what your country" in expected.text.lower()

    executor = RayExecutor(2, config, num_cpus_per_worker=HALF_CPU)
    executor.start()
    try:
        executor.wait_ready(timeout_s=120)
        transcript = run_pipeline(executor, long_speech, tmp_path / "ray")
    finally:
        executor.stop()

    assert transcript.extra["chunks"] == expected.extra["chunks"]
    assert transcript.text == expected.text
    assert transcript.duration_s == expected.duration_s


def test_stop_leaves_no_ray_process_behind(fake_ray: RayExecutor, tmp_path: Path) -> None:
    ours = {pid for pid in descendants(os.getpid())
            if "ray" in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")}
    assert any("raylet" in Path(f"/proc/{pid}/cmdline").read_text(errors="replace")
               for pid in ours if alive(pid))
    actor_pids = {pid for pid in fake_ray.worker_pids().values() if pid}

    fake_ray.stop(drain_timeout_s=5)

    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in ours | actor_pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [pid for pid in ours | actor_pids if alive(pid)]
    raylets = subprocess.run(["pgrep", "-f", "raylet"], capture_output=True, text=True).stdout
    assert not {int(p) for p in raylets.split()} & ours
    late = fake_ray.submit(make_task(tmp_path, "req", 9, 900))
    assert isinstance(late.exception(timeout=1), TranscriptionError)


def test_the_service_on_ray_reports_readiness_progress_and_metrics(
    tmp_path: Path, long_speech: Path
) -> None:
    """`whisper-api serve` with EXECUTOR=ray: the same API, jobs, SSE and metrics as locally."""
    import httpx

    from tests.server import run_server
    from tests.test_jobs_api import events, submit_ok
    from tests.test_metrics import scrape, value

    with run_server(tmp_path, EXECUTOR="ray", RAY_NUM_CPUS_PER_WORKER="1",
                    AUDIO_LIMIT_SINGLE_CORE="15", PARALLEL_CHUNK_DURATION="20") as server:
        assert "PARALLEL MODE ENABLED: 2 workers (Ray actors" in server.log.read_text()
        job_id = submit_ok(server, long_speech)
        stream = events(server, job_id)
        assert stream[-1][1]["status"] == "succeeded", stream[-1]
        done = [d["progress"]["chunks_done"] for n, d in stream
                if n == "progress" and d["progress"]["stage"] == "transcribing"]
        assert done == sorted(done) and len(set(done)) > 1
        result = httpx.get(f"{server.url}/api/v1/jobs/{job_id}/result").json()
        assert result["mode"] == "parallel" and result["text"].count("your country") == 6
        samples = scrape(server)
        assert value(samples, "whisper_chunk_seconds_count") == result["chunks"]
        assert value(samples, "whisper_workers", state="idle") == 2
        assert server.log.read_text().count("chunk_done task_id=") == result["chunks"]
        raylets = {int(p) for p in subprocess.run(["pgrep", "-f", "raylet"], capture_output=True,
                                                   text=True).stdout.split()}
    # The server's private Ray instance went away with it.
    deadline = time.monotonic() + 20
    while any(alive(pid) for pid in raylets) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert raylets and not [pid for pid in raylets if alive(pid)]


CLIENT_DRIVER = """
import sys
from pathlib import Path
from tests.fakes import echo_factory
from tests.test_pool import CONFIG, make_task
from whisper_api.ray_executor import RayExecutor

env = {"env_vars": {"PYTHONPATH": sys.argv[3]}}
executor = RayExecutor(1, CONFIG, factory=echo_factory, address=sys.argv[1],
                       num_cpus_per_worker=0.5, runtime_env=env)
executor.start()
executor.wait_ready(timeout_s=120)
futures = [executor.submit(make_task(Path(sys.argv[2]), "client", i, 500)) for i in range(3)]
print(" ".join(f.result(timeout=60).task_id for f in futures))
executor.stop()
"""


def test_ray_client_address_works(tmp_path: Path) -> None:
    """RAY_ADDRESS=ray://head:port against a `ray start --head` cluster, from a separate driver.

    Last in this module: `ray stop` stops every Ray process on the machine.
    """
    from tests.server import free_port

    ray_cli = str(Path(sys.executable).with_name("ray"))
    client_port = free_port()
    # The head starts one "specific server" per client; on a loaded 2-core machine that can take
    # longer than Ray's default 30 s check.
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_CLIENT_SERVER_CHECK_CHANNEL_TIMEOUT_S": "90"}
    subprocess.run([ray_cli, "start", "--head", f"--port={free_port()}", "--num-cpus=1",
                    f"--ray-client-server-port={client_port}", "--node-ip-address=127.0.0.1",
                    "--include-dashboard=false", "--disable-usage-stats"],
                   env=env, check=True, capture_output=True, timeout=120)
    try:
        for _ in range(2):  # a second try if Ray's client server itself failed to start
            # `ray start` turns token authentication on; the client must present the token too.
            driver = subprocess.run(
                [sys.executable, "-c", CLIENT_DRIVER, f"ray://127.0.0.1:{client_port}",
                 str(tmp_path), str(REPO)],
                env={**env, "RAY_AUTH_MODE": "token", "PYTHONPATH": str(REPO)},
                capture_output=True, text=True, timeout=240)
            if "Starting Ray client server failed" not in driver.stderr:
                break
    finally:
        subprocess.run([ray_cli, "stop", "--force"], env=env, capture_output=True, timeout=120)
    assert driver.returncode == 0, driver.stderr[-3000:]
    assert driver.stdout.split() == ["client:0", "client:1", "client:2"]
