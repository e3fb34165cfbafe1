"""The Ray ChunkExecutor: the same contract as the local pool, with workers as Ray actors.

Each worker is a restartable actor that loads the model once in its constructor. Ray restarts an
actor whose process dies and retries the chunk it was running once (`max_task_retries=1`), so a
killed or OOM-ed worker costs one chunk's time, not the request.

A dispatcher thread in the driver, like the local pool's supervisor, hands chunks to idle actors
round robin across requests (not everything at once, so `cancel()` can still drop a request's
queued chunks and a long file cannot starve a short one), waits on the result refs with
`ray.wait` and routes each result to the future of the task that asked for it. Shared state is
guarded by the Dispatcher's lock. Progress inside a chunk: `progress()` runs in a concurrency
group of its own, so an actor answers it while decoding; the dispatcher asks every
PROGRESS_POLL_S while a chunk runs and hands the submitter each increase. Everything else stays
in the default group, one at a time: a ping sent after killing a busy actor must wait for the
restarted process, or the old one would answer it with its old pid.

Chunk audio travels through Ray's object store: the driver reads the chunk WAV and `ray.put`s its
bytes, the actor decodes them, so no filesystem is shared between the API and the cluster.

Ray is an optional dependency (`pip install 'whisper-api[ray]'`); it is imported in `start()`.
"""

import logging
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from whisper_api.errors import TranscriptionError, WhisperApiError
from whisper_api.executors.base import POLL_S, Dispatcher, Pending, WorkerConfig, WorkerSlot
from whisper_api.executors.worker import (
    MALLOC_TUNABLES,
    ChunkTranscriber,
    Done,
    Failed,
    TranscriberFactory,
    decode,
    decode_wav_bytes,
    load_real_transcriber,
)
from whisper_api.transcript import ChunkTask

log = logging.getLogger("whisper_api.ray")
PRIVATE_RAY_LOOPBACK = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
INSTALL_HINT = "EXECUTOR=ray needs Ray: pip install 'whisper-api[ray]'"
PROGRESS_POLL_S = 0.5  # a decoded batch of windows takes seconds: this is smooth enough
PROGRESS_GROUP = "progress"
CONNECT_RETRY_S = 0.5  # between tries to reach a Ray address that does not answer yet


class ChunkWorker:
    """The actor body. Ray runs the constructor again after a restart, so the model reloads."""

    def __init__(self, worker_id: int, config: WorkerConfig, factory: TranscriberFactory) -> None:
        started = time.perf_counter()
        self._worker_id = worker_id
        self._transcriber: ChunkTranscriber = factory(config)
        self._load_s = time.perf_counter() - started
        self._decoded_s: dict[str, float] = {}  # running task id -> seconds decoded

    def ping(self) -> tuple[int, float]:
        """This actor's process id and how long the model took to load."""
        return os.getpid(), self._load_s

    def transcribe(self, task: ChunkTask, wav_bytes: bytes) -> tuple[Done | Failed, int]:
        """The outcome (a model error is not retried) and this actor's process id."""
        def note(decoded_s: float) -> None:
            self._decoded_s[task.task_id] = decoded_s

        try:
            outcome = decode(self._worker_id, self._transcriber, task,
                             lambda: decode_wav_bytes(wav_bytes), note)
        finally:
            self._decoded_s.pop(task.task_id, None)
        return outcome, os.getpid()

    def progress(self, task_id: str) -> float:
        """Seconds of a running chunk decoded so far (0 once it is done)."""
        return self._decoded_s.get(task_id, 0.0)


@dataclass
class _Actor(WorkerSlot):
    handle: Any = None
    actor_pid: int | None = None
    task_ref: Any = None
    pings: list[Any] = field(default_factory=list)
    # The outstanding progress() call, the task it asks about, and what was last reported.
    progress_ref: Any = None
    progress_task: str = ""
    asked_at: float = 0.0
    reported_s: float = 0.0

    @property
    def pid(self) -> int | None:
        return self.actor_pid


def _keep_private_ray_on_loopback() -> None:
    """A private instance serves this process alone, so its ports stay on loopback: on Linux Ray
    listens on every interface unless told multi-node clusters are off (the variable behind its
    Windows and macOS default), which it reads when imported. Too late once imported: Ray's
    processes would disagree on this node's address."""
    if PRIVATE_RAY_LOOPBACK in os.environ:
        return
    if "ray" in sys.modules:
        log.warning("Ray was imported before its private instance started: its ports listen on "
                    "this machine's address; set %s=0 to keep them on loopback",
                    PRIVATE_RAY_LOOPBACK)
        return
    os.environ[PRIVATE_RAY_LOOPBACK] = "0"


class RayExecutor(Dispatcher):
    """`size=None` sizes the pool from the cluster's CPUs (or GPUs) per actor at start."""

    def __init__(
        self,
        size: int | None,
        config: WorkerConfig,
        chunk_timeout_s: float = 600.0,
        factory: TranscriberFactory = load_real_transcriber,
        address: str = "",
        num_cpus_per_worker: float = 1.0,
        num_gpus_per_worker: float = 0.0,
        init_options: dict[str, Any] | None = None,
        runtime_env: dict[str, Any] | None = None,
        connect_timeout_s: float = 30.0,
    ) -> None:
        super().__init__(size or 0, chunk_timeout_s)
        self._size, self._config, self._factory = size, config, factory
        self._address = address
        self._resources = {"num_cpus": num_cpus_per_worker, "num_gpus": num_gpus_per_worker}
        self._init_options = init_options or {}
        self._runtime_env = runtime_env
        self._connect_timeout_s = connect_timeout_s
        self._ray: Any = None
        self._owns_ray = False
        self._actors: list[_Actor] = []
        self._wake = threading.Event()  # set by submit: a chunk waits for an actor
        self._thread: threading.Thread | None = None

    def _slots(self) -> list[_Actor]:  # type: ignore[override]
        return list(self._actors)

    # --- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        # An empty address starts a private local instance ("local"), never joins one found
        # through the RAY_ADDRESS variable by accident.
        address = self._address or "local"
        if address == "local":
            _keep_private_ray_on_loopback()
        try:
            import ray
        except ImportError as exc:
            raise WhisperApiError(INSTALL_HINT) from exc
        self._ray = ray
        if not ray.is_initialized():
            _wait_until_answers(address, self._connect_timeout_s)
            try:
                ray.init(address=address, runtime_env=self._runtime_env, **self._init_options)
            except Exception as exc:  # ConnectionError, timeouts, auth: one line, not a traceback
                raise WhisperApiError(f"cannot start or join Ray at RAY_ADDRESS={address!r}: "
                                      f"{_describe(exc)}") from exc
            self._owns_ray = True
        size = self._size or self._size_from_cluster()
        self._stats.workers = size
        log.info("Starting %d Ray actors (%s each)", size, self._resources)
        # The group is named on the method itself (what @ray.method does; this module cannot
        # import Ray at import time): Ray Client refuses a group given per call.
        self._ray.method(concurrency_group=PROGRESS_GROUP)(ChunkWorker.progress)
        actor_class = self._ray.remote(concurrency_groups={PROGRESS_GROUP: 1})(ChunkWorker)
        # Malloc tuned from the actor process's start (see reuse_freed_memory); Ray merges
        # these variables with the job's own runtime_env.
        tuned = {"env_vars": {"GLIBC_TUNABLES": MALLOC_TUNABLES}}
        remote_class = actor_class.options(max_restarts=-1, max_task_retries=1,
                                           runtime_env=tuned, **self._resources)
        for worker_id in range(size):
            handle = remote_class.remote(worker_id, self._config, self._factory)
            self._actors.append(_Actor(worker_id, handle=handle, pings=[handle.ping.remote()]))
        self._thread = threading.Thread(target=self._dispatch_loop, name="ray-dispatcher",
                                        daemon=True)
        self._thread.start()

    def stop(self, drain_timeout_s: float = 30.0) -> None:
        """Stage one: stop taking work and let running chunks finish. Stage two: kill actors."""
        self._drain(drain_timeout_s)
        self._fail_all("the service is shutting down")
        if self._thread:
            self._thread.join(timeout=5)
        ray = self._ray
        if ray is None or not ray.is_initialized():
            return
        for actor in self._actors:
            ray.kill(actor.handle, no_restart=True)
        if self._owns_ray:
            ray.shutdown()
            self._owns_ray = False

    def _on_queued(self) -> None:
        self._wake.set()

    def _stop_worker(self, slot: WorkerSlot) -> None:
        """Ray cannot interrupt a running task of a regular actor, so the actor is killed and
        Ray restarts it (its model reloads), as the local pool replaces a process."""
        actor = self._actors[slot.worker_id]
        if actor.task_ref is not None:
            self._ray.cancel(actor.task_ref)
        self._ray.kill(actor.handle, no_restart=False)
        actor.task_ref, actor.progress_ref, actor.ready = None, None, False
        actor.pings.append(actor.handle.ping.remote())

    # --- dispatcher ------------------------------------------------------------------------
    def _dispatch_loop(self) -> None:
        while not (self._stopping.is_set() and not self._busy()):
            self._survive(self._dispatch_once, "Ray dispatcher")

    def _dispatch_once(self) -> None:
        ray = self._ray
        with self._lock:
            self._ask_progress()
            waiting = {ref: a for a in self._actors
                       for ref in (a.task_ref, a.progress_ref, *a.pings) if ref}
        # Short waits while a submitted chunk may find an idle actor; POLL_S otherwise.
        timeout = 0.005 if self._wake.is_set() else POLL_S
        self._wake.clear()
        if waiting:
            done, _ = ray.wait(list(waiting), num_returns=1, timeout=timeout)
            for ref in done:
                self._collect(waiting[ref], ref)
        else:
            self._wake.wait(POLL_S)
        with self._lock:
            self._restart_late()
        self._dispatch()

    def _collect(self, actor: _Actor, ref: Any) -> None:
        ray = self._ray
        progress: tuple[str, float] | None = None
        try:
            value, error = ray.get(ref), None
        except Exception as exc:  # RayActorError, TaskCancelledError, RayTaskError ...
            value, error = None, exc
        with self._lock:
            if ref == actor.progress_ref:
                actor.progress_ref = None
                progress = self._progress_to_report(actor, value, error)
            elif ref in actor.pings:
                actor.pings.remove(ref)
                self._on_ping(actor, value, error)
            elif ref == actor.task_ref:  # Ray Client hands back new ref objects: not `is`
                pending, actor.running, actor.task_ref = actor.running, None, None
                if pending is not None:
                    self._on_result(actor, pending, value, error)
        if progress is not None:
            self._report_progress(*progress)

    def _ask_progress(self) -> None:
        """Ask each actor holding a chunk how far it is, at most every PROGRESS_POLL_S."""
        now = time.monotonic()
        for actor in self._actors:
            if actor.running is not None and actor.task_ref is not None \
                    and actor.progress_ref is None and now - actor.asked_at >= PROGRESS_POLL_S:
                actor.progress_task = actor.running.task.task_id
                actor.progress_ref = actor.handle.progress.remote(actor.progress_task)
                actor.asked_at = now

    @staticmethod
    def _progress_to_report(
        actor: _Actor, value: Any, error: Exception | None
    ) -> tuple[str, float] | None:
        """(task id, seconds decoded) when the answer moved forward; a killed actor's is not."""
        if error is not None or not isinstance(value, int | float) or value <= actor.reported_s:
            return None
        actor.reported_s = value
        return actor.progress_task, value

    def _on_ping(self, actor: _Actor, value: Any, error: Exception | None) -> None:
        if error is not None:
            self._cannot_load(_describe(error))
            log.error("[WORKER %d] cannot load the model: %s", actor.worker_id, error)
            return
        pid, load_s = value
        self._note_pid(actor, pid)
        actor.ready = True
        log.info("[WORKER %d] Model loaded in %.2fs (Ray actor, pid %d)",
                 actor.worker_id, load_s, pid)

    def _on_result(
        self, actor: _Actor, pending: Pending, value: Any, error: Exception | None
    ) -> None:
        if error is not None:
            self._deliver(pending, TranscriptionError(
                f"the Ray worker failed (after a retry): {_describe(error)}"))
            return
        outcome, pid = value
        self._note_pid(actor, pid)
        if isinstance(outcome, Failed):
            self._deliver(pending, TranscriptionError(outcome.reason))
        elif isinstance(outcome, Done):
            self._deliver(pending, outcome.result)

    def _note_pid(self, actor: _Actor, pid: int) -> None:
        """A new process id for a known actor means Ray restarted it."""
        if actor.actor_pid is not None and pid != actor.actor_pid:
            self._stats.restarts += 1
            log.warning("[WORKER %d] was restarted by Ray (pid %d -> %d)",
                        actor.worker_id, actor.actor_pid, pid)
        actor.actor_pid = pid

    def _dispatch(self) -> None:
        while not self._stopping.is_set():
            with self._lock:
                idle = next((a for a in self._actors if a.ready and a.running is None), None)
                pending = self._next_for(idle) if idle else None
                if idle is None or pending is None:
                    return
            try:
                audio_ref = self._ray.put(Path(pending.task.audio_path).read_bytes())
                ref = idle.handle.transcribe.remote(pending.task, audio_ref)
            except Exception as exc:
                with self._lock:
                    idle.running = None
                self._deliver(pending, TranscriptionError(f"cannot send the chunk to Ray: {exc}"))
                continue
            with self._lock:
                idle.task_ref, idle.reported_s = ref, 0.0

    def _restart_late(self) -> None:
        """Kill an actor stuck on a chunk; Ray restarts it, and the chunk gets one more try."""
        for slot in self._timed_out():
            self._stop_worker(slot)

    # --- helpers ---------------------------------------------------------------------------
    def _size_from_cluster(self) -> int:
        resources = self._ray.cluster_resources()
        gpus = self._resources["num_gpus"]
        if gpus > 0:
            return max(1, int(resources.get("GPU", 0) // gpus))
        return max(1, int(resources.get("CPU", 1) // max(self._resources["num_cpus"], 0.001)))



def _wait_until_answers(address: str, timeout_s: float) -> None:
    """Wait for a `host:port` or `ray://host:port` address to accept a connection (a head that
    is still starting), and refuse it once `timeout_s` has passed: Ray itself keeps trying an
    address where nothing answers for about fourteen minutes before it says so."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():  # "local", "auto", or a form Ray parses itself
        return
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host.strip("[]"), int(port)),
                                          max(0.1, deadline - time.monotonic())):
                return
        except OSError as exc:
            if time.monotonic() + CONNECT_RETRY_S > deadline:
                raise WhisperApiError(
                    f"cannot join Ray at RAY_ADDRESS={address!r}: nothing answered at "
                    f"{host}:{port} within {timeout_s:g} s ({exc.strerror or exc})") from exc
        time.sleep(CONNECT_RETRY_S)


def _describe(error: BaseException) -> str:
    """The first line of a Ray error: the cause's type and message, not Ray's whole traceback."""
    cause = getattr(error, "cause", None)
    if isinstance(cause, BaseException):
        return f"{type(cause).__name__}: {cause}"
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"
