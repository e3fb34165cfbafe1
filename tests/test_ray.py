"""RayExecutor on a real local Ray instance (2 CPUs) started by the executor itself.

One module-scoped executor with the fake transcriber owns the Ray instance; the other tests add
small executors to the same instance and stop them. Each actor asks for half a CPU so the fake,
the timeout and the real-model executors fit on two cores at once.
"""

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import jiwer
import pytest

from tests.conftest import JFK_TEXT, heard, spoken
from tests.support.chunks import CONFIG, make_task
from tests.support.fakes import echo_factory
from tests.support.processes import (
    alive,
    descendants,
    kill_all,
    listening_ips,
    pids_mentioning,
)
from tests.support.server import free_port
from whisper_api.config import Settings
from whisper_api.errors import TranscriptionError, WhisperApiError
from whisper_api.executors import build_executor, worker_config
from whisper_api.executors.base import ChunkExecutor
from whisper_api.executors.local import WorkerPool
from whisper_api.executors.ray_actors import (
    INSTALL_HINT,
    PRIVATE_RAY_LOOPBACK,
    RayExecutor,
    _wait_until_answers,
)
from whisper_api.executors.worker import MALLOC_TUNABLES
from whisper_api.pipeline import Pipeline, TranscribeRequest
from whisper_api.sessions import SessionManager
from whisper_api.transcript import Transcript

pytestmark = [pytest.mark.ray, pytest.mark.slow]

pytest.importorskip("ray", reason="pip install 'whisper-api[ray]'")

REPO = Path(__file__).resolve().parent.parent
# Ray workers must import `tests.support.fakes` to unpickle the fake factory.
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


@pytest.mark.parametrize("host", ["127.0.0.1", "[::1]"])
def test_an_address_is_awaited_until_it_answers_and_refused_if_it_never_does(host: str) -> None:
    family = socket.AF_INET6 if host.startswith("[") else socket.AF_INET
    try:
        listener = socket.socket(family)
        listener.bind((host.strip("[]"), 0))
    except OSError:
        pytest.skip(f"no {host} on this machine")
    with listener:
        port = listener.getsockname()[1]
        started = time.monotonic()
        with pytest.raises(WhisperApiError, match="nothing answered"):
            _wait_until_answers(f"ray://{host}:{port}", 1.0)  # bound, never listening
        assert time.monotonic() - started < 10
        head_comes_up = threading.Timer(1.0, listener.listen)  # a head still starting
        head_comes_up.start()
        try:
            _wait_until_answers(f"{host}:{port}", 20.0)
        finally:
            head_comes_up.join()
        _wait_until_answers(f"ray://{host}:{port}", 1.0)
    _wait_until_answers("local", 0.0)
    _wait_until_answers("auto", 0.0)


def test_serve_with_nothing_at_ray_address_says_so_in_one_line(tmp_path: Path) -> None:
    """Refused before Ray tries it (Ray would, for minutes), and said as every CLI error is:
    one line and exit 2, not uvicorn's traceback of the lifespan."""
    address = f"127.0.0.1:{free_port()}"  # bound and released: nothing listens there
    environment = {**os.environ, "EXECUTOR": "ray", "RAY_ADDRESS": address,
                   "RAY_CONNECT_TIMEOUT_S": "2",
                   "TEMP_DIR": str(tmp_path / "temp"), "DATA_DIR": str(tmp_path / "data")}
    run = subprocess.run(
        [sys.executable, "-m", "whisper_api.cli", "serve", "--port", str(free_port())],
        env=environment, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2, run.stderr
    assert (f"error: cannot join Ray at RAY_ADDRESS='{address}': nothing answered at "
            f"{address} within 2 s") in run.stderr
    assert "Traceback" not in run.stderr and "Application startup failed" not in run.stderr


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
    assert expected.extra["chunks"] >= 3 and heard(JFK_TEXT, expected.text) >= 1

    executor = RayExecutor(2, config, num_cpus_per_worker=HALF_CPU)
    executor.start()
    try:
        executor.wait_ready(timeout_s=120)
        transcript = run_pipeline(executor, long_speech, tmp_path / "ray")
    finally:
        executor.stop()

    assert transcript.extra["chunks"] == expected.extra["chunks"]
    assert transcript.duration_s == expected.duration_s
    # Same chunks, same model; a Ray actor runs 1 CTranslate2 thread where a local worker runs
    # 2, and another thread count may pick another word now and then: compare words, loosely.
    assert jiwer.wer(spoken(expected.text), spoken(transcript.text)) < 0.1


def test_actors_start_with_malloc_tuned_and_the_jobs_own_variables(fake_ray: RayExecutor) -> None:
    """Ray's threads run before an actor's constructor, so its malloc settings come from the
    environment its process starts with; the job's runtime_env variables stay."""
    pids = [pid for pid in fake_ray.worker_pids().values() if pid]
    assert len(pids) == 2
    for pid in pids:
        environment = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        # glibc 2.36 cuts the variable at its first ':' in the process's own copy, as it
        # parses it; later versions may not.
        first = f"GLIBC_TUNABLES={MALLOC_TUNABLES.split(':')[0]}".encode()
        assert any(v.startswith(first) for v in environment)
        paths = [v for v in environment if v.startswith(b"PYTHONPATH=")]
        assert str(REPO) in paths[0].decode()[len("PYTHONPATH="):].split(os.pathsep)


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
    """`whisper-api serve` with EXECUTOR=ray: the same API, jobs, SSE and metrics as locally,
    and its private Ray instance listens on loopback alone (without the variable the test
    session sets, see conftest)."""
    import httpx

    from tests.support.server import run_server
    from tests.test_jobs_api import events, submit_ok
    from tests.test_metrics import scrape, value

    with run_server(tmp_path, unset=(PRIVATE_RAY_LOOPBACK,), EXECUTOR="ray",
                    RAY_NUM_CPUS_PER_WORKER="1", AUDIO_LIMIT_SINGLE_CORE="15",
                    PARALLEL_CHUNK_DURATION="20") as server:
        assert "PARALLEL MODE ENABLED: 2 workers (Ray actors" in server.log.read_text()
        ours = descendants(server.process.pid) | {server.process.pid}
        ips = listening_ips(ours)
        assert ips and all(ip.is_loopback for ip in ips), ips
        job_id = submit_ok(server, long_speech)
        stream = events(server, job_id)
        assert stream[-1][1]["status"] == "succeeded", stream[-1]
        done = [d["progress"]["chunks_done"] for n, d in stream
                if n == "progress" and d["progress"]["stage"] == "transcribing"]
        assert done == sorted(done) and len(set(done)) > 1
        result = httpx.get(f"{server.url}/api/v1/jobs/{job_id}/result").json()
        assert result["mode"] == "parallel" and heard(JFK_TEXT, result["text"]) == 3
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
from tests.support.fakes import echo_factory
from tests.support.chunks import CONFIG, make_task
from whisper_api.executors.ray_actors import RayExecutor

env = {"env_vars": {"PYTHONPATH": sys.argv[3]}}
executor = RayExecutor(1, CONFIG, factory=echo_factory, address=sys.argv[1],
                       num_cpus_per_worker=0.5, runtime_env=env)
executor.start()
executor.wait_ready(timeout_s=120)
futures = [executor.submit(make_task(Path(sys.argv[2]), "client", i, 500)) for i in range(3)]
print(" ".join(f.result(timeout=60).task_id for f in futures))
executor.stop()
"""


def kill_ray(*markers: str) -> None:
    """Stop the Ray processes naming a marker and their children: Ray's agents rename
    themselves, so only the raylet's tree finds them."""
    named = set().union(*(pids_mentioning(marker) for marker in markers))
    kill_all(named.union(*(descendants(pid) for pid in named)))


def client_server_logs(ray_temp: Path) -> str:
    """The tails of the logs of Ray's client proxy and the servers it started, for a failure."""
    tails = [f"\n--- {log.name}\n{log.read_text(errors='replace')[-2000:]}"
             for log in sorted(ray_temp.glob("session_latest/logs/ray_client_server*"))]
    return "".join(tails)


# What Ray prints when its client server, or the server it starts for this client, failed to
# start: on a loaded machine the latter has died at once (psutil.ZombieProcess in Ray's proxier).
RAY_CLIENT_STARTUP_FAILURES = ("Starting Ray client server failed",
                               "Initialization failure from server")


def drive_fresh_cluster(tmp_path: Path) -> tuple[subprocess.CompletedProcess[str], str]:
    """Run CLIENT_DRIVER against a new `ray start --head` cluster; its client logs if it failed.

    The cluster gets a temp dir and ports of its own, and only the processes naming them are
    stopped after: never `ray stop`, which would stop every Ray process on the machine.
    """
    ray_temp = tempfile.mkdtemp(prefix="rt")  # short: Ray's socket paths must stay under 108
    ray_cli = str(Path(sys.executable).with_name("ray"))
    client_port, gcs_port = free_port(), free_port()
    # The head starts one "specific server" per client; on a loaded 2-core machine that can take
    # longer than Ray's default 30 s check.
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_CLIENT_SERVER_CHECK_CHANNEL_TIMEOUT_S": "90"}
    try:
        subprocess.run([ray_cli, "start", "--head", f"--port={gcs_port}", "--num-cpus=1",
                        f"--ray-client-server-port={client_port}", "--node-ip-address=127.0.0.1",
                        "--include-dashboard=false", "--disable-usage-stats",
                        f"--temp-dir={ray_temp}"],
                       env=env, check=True, capture_output=True, timeout=120)
        # `ray start` turns token authentication on; the client must present the token too.
        driver = subprocess.run(
            [sys.executable, "-c", CLIENT_DRIVER, f"ray://127.0.0.1:{client_port}",
             str(tmp_path), str(REPO)],
            env={**env, "RAY_AUTH_MODE": "token", "PYTHONPATH": str(REPO)},
            capture_output=True, text=True, timeout=240)
        return driver, client_server_logs(Path(ray_temp)) if driver.returncode else ""
    finally:
        # The client proxy and the servers it starts name the head's address, not the temp dir.
        kill_ray(ray_temp, f"127.0.0.1:{gcs_port}\0")  # \0 ends the argument: not :{port}1
        shutil.rmtree(ray_temp, ignore_errors=True)


def test_ray_client_address_works(tmp_path: Path) -> None:
    """RAY_ADDRESS=ray://head:port against a `ray start --head` cluster, from a separate driver."""
    # Ray's own startup failure has come back on the same cluster under CI load (twice in a
    # row), so each try gets a fresh cluster; three at most.
    for _ in range(3):
        driver, logs = drive_fresh_cluster(tmp_path)
        if not any(failure in driver.stderr for failure in RAY_CLIENT_STARTUP_FAILURES):
            break
    assert driver.returncode == 0, driver.stderr[-3000:] + logs
    assert driver.stdout.split() == ["client:0", "client:1", "client:2"]

