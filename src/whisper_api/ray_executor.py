"""The Ray ChunkExecutor: the same contract as the local pool, with workers as Ray actors.

Each worker is a restartable actor that loads the model once in its constructor. Ray restarts an
actor whose process dies and retries the chunk it was running once (`max_task_retries=1`), so a
killed or OOM-ed worker costs one chunk's time, not the request.

One dispatcher thread in the driver owns all state, like the local pool's supervisor: it hands
chunks to idle actors round robin across requests (not everything at once, so `cancel()` can
still drop a request's queued chunks and a long file cannot starve a short one), waits on the
result refs with `ray.wait` and routes each result to the future of the task that asked for it.

Chunk audio travels through Ray's object store: the driver reads the chunk WAV and `ray.put`s its
bytes, the actor decodes them, so no filesystem is shared between the API and the cluster.

Ray is an optional dependency (`pip install 'whisper-api[ray]'`); it is imported in `start()`.
"""

import io
import logging
import os
import threading
import time
import wave
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from whisper_api.errors import ChunkTimeoutError, TranscriptionError, WhisperApiError
from whisper_api.executor import (
    POLL_S,
    ChunkProgress,
    ExecutorStats,
    Pending,
    RequestQueues,
    WorkerConfig,
    log_chunk_done,
    wait_until_ready,
)
from whisper_api.pool import ChunkTranscriber, TranscriberFactory, load_real_transcriber
from whisper_api.transcript import ChunkResult, ChunkTask

log = logging.getLogger("whisper_api.ray")
INSTALL_HINT = "EXECUTOR=ray needs Ray: pip install 'whisper-api[ray]'"


def decode_wav_bytes(data: bytes) -> np.ndarray:
    """A 16 kHz mono s16 WAV file's bytes as float32 in [-1, 1] (what `audio.read_wav` gives)."""
    with wave.open(io.BytesIO(data), "rb") as wav:
        raw = wav.readframes(wav.getnframes())
    return np.frombuffer(raw, dtype=np.int16).astype(np.float32) / 32768.0


class ChunkWorker:
    """The actor body. Ray runs the constructor again after a restart, so the model reloads."""

    def __init__(self, worker_id: int, config: WorkerConfig, factory: TranscriberFactory) -> None:
        started = time.perf_counter()
        self._worker_id = worker_id
        self._transcriber: ChunkTranscriber = factory(config)
        self._load_s = time.perf_counter() - started

    def ping(self) -> tuple[int, float]:
        """This actor's process id and how long the model took to load."""
        return os.getpid(), self._load_s

    def transcribe(self, task: ChunkTask, wav_bytes: bytes) -> tuple[ChunkResult | str, int]:
        """The result, or the error text (a model error is not retried), and the process id."""
        began = time.perf_counter()
        try:
            segments, language, redone = self._transcriber.transcribe(
                decode_wav_bytes(wav_bytes), task.options
            )
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}", os.getpid()
        result = ChunkResult(
            task.task_id, tuple(segments), language, self._worker_id,
            time.perf_counter() - began, redone,
        )
        return result, os.getpid()


@dataclass
class _Actor:
    worker_id: int
    handle: Any
    pid: int | None = None
    ready: bool = False
    task: Pending | None = None
    task_ref: Any = None
    task_started: float = 0.0
    pings: list[Any] = field(default_factory=list)


class RayExecutor:
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
    ) -> None:
        self._size, self._config, self._factory = size, config, factory
        self._timeout_s = chunk_timeout_s
        self._address = address
        self._resources = {"num_cpus": num_cpus_per_worker, "num_gpus": num_gpus_per_worker}
        self._init_options = init_options or {}
        self._runtime_env = runtime_env
        self._ray: Any = None
        self._owns_ray = False
        self._actors: list[_Actor] = []
        self._queues = RequestQueues()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._wake = threading.Event()  # set by submit: a chunk waits for an actor
        self._thread: threading.Thread | None = None
        self._stats = ExecutorStats(workers=size or 0)
        self._load_failure: str | None = None

    # --- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        try:
            import ray
        except ImportError as exc:
            raise WhisperApiError(INSTALL_HINT) from exc
        self._ray = ray
        if not ray.is_initialized():
            # An empty address starts a private local instance ("local"), never joins one found
            # through the RAY_ADDRESS variable by accident.
            address = self._address or "local"
            try:
                ray.init(address=address, runtime_env=self._runtime_env, **self._init_options)
            except Exception as exc:  # ConnectionError, timeouts, auth: one line, not a traceback
                raise WhisperApiError(f"cannot start or join Ray at RAY_ADDRESS={address!r}: "
                                      f"{_describe(exc)}") from exc
            self._owns_ray = True
        size = self._size or self._size_from_cluster()
        self._stats.workers = size
        log.info("Starting %d Ray actors (%s each)", size, self._resources)
        for worker_id in range(size):
            self._actors.append(self._create_actor(worker_id))
        self._thread = threading.Thread(target=self._dispatch_loop, name="ray-dispatcher",
                                        daemon=True)
        self._thread.start()

    def wait_ready(self, timeout_s: float = 300.0) -> None:
        wait_until_ready(lambda: self.ready, lambda: self._load_failure, timeout_s)

    def stop(self, drain_timeout_s: float = 30.0) -> None:
        """Stage one: stop taking work and let running chunks finish. Stage two: kill actors."""
        self._stopping.set()
        deadline = time.monotonic() + drain_timeout_s
        while self._busy() and time.monotonic() < deadline:
            time.sleep(POLL_S)
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

    @property
    def ready(self) -> bool:
        actors = list(self._actors)
        return bool(actors) and all(a.ready for a in actors)

    def stats(self) -> ExecutorStats:
        with self._lock:
            self._stats.ready_workers = sum(a.ready for a in self._actors)
            self._stats.busy_workers = sum(a.task is not None for a in self._actors)
            self._stats.queued_tasks = len(self._queues)
            return replace(self._stats, chunk_seconds=self._stats.chunk_seconds.copy())

    def worker_pids(self) -> dict[int, int | None]:
        return {a.worker_id: a.pid for a in self._actors}

    def busy_worker_pid(self, task_id: str) -> int | None:
        with self._lock:
            for actor in self._actors:
                if actor.task and actor.task.task.task_id == task_id:
                    return actor.pid
        return None

    # --- tasks -----------------------------------------------------------------------------
    def submit(
        self, task: ChunkTask, on_progress: ChunkProgress | None = None
    ) -> "Future[ChunkResult]":
        """`on_progress` is accepted for the protocol; Ray reports a chunk when it is done."""
        future: Future[ChunkResult] = Future()
        if self._stopping.is_set():
            future.set_exception(TranscriptionError("the service is shutting down"))
            return future
        with self._lock:
            self._queues.push(Pending(task, future))
        self._wake.set()
        return future

    def cancel(self, request_id: str) -> int:
        """Drop a request's queued chunks and ask Ray to cancel its running ones.

        Ray cannot interrupt a running task of a regular actor: that chunk finishes and its
        result is dropped, as in the local pool.
        """
        with self._lock:
            dropped = self._queues.drop(request_id)
            running = [a for a in self._actors if a.task and a.task.task.request_id == request_id]
            for actor in running:
                if actor.task:
                    actor.task.future.cancel()
                if actor.task_ref is not None:
                    self._ray.cancel(actor.task_ref)
        for pending in dropped:
            pending.future.cancel()
        return len(dropped)

    # --- dispatcher ------------------------------------------------------------------------
    def _dispatch_loop(self) -> None:
        ray = self._ray
        while not (self._stopping.is_set() and not self._busy()):
            with self._lock:
                waiting = {ref: a for a in self._actors for ref in (a.task_ref, *a.pings) if ref}
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
                self._enforce_timeouts()
            self._dispatch()

    def _collect(self, actor: _Actor, ref: Any) -> None:
        ray = self._ray
        try:
            value, error = ray.get(ref), None
        except Exception as exc:  # RayActorError, TaskCancelledError, RayTaskError ...
            value, error = None, exc
        with self._lock:
            if ref in actor.pings:
                actor.pings.remove(ref)
                self._on_ping(actor, value, error)
            elif ref == actor.task_ref:  # Ray Client hands back new ref objects: not `is`
                pending = actor.task
                actor.task, actor.task_ref = None, None
                if pending is not None:
                    self._on_result(actor, pending, value, error)

    def _on_ping(self, actor: _Actor, value: Any, error: Exception | None) -> None:
        if error is not None:
            self._load_failure = _describe(error)
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
            if not pending.future.done():
                pending.future.set_exception(TranscriptionError(
                    f"the Ray worker failed (after a retry): {_describe(error)}"))
            return
        outcome, pid = value
        self._note_pid(actor, pid)
        if pending.future.done():
            return
        if isinstance(outcome, str):
            pending.future.set_exception(TranscriptionError(outcome))
            return
        self._stats.chunk_seconds.observe(outcome.elapsed_s)
        log_chunk_done(outcome, pending.task)
        pending.future.set_result(outcome)

    def _note_pid(self, actor: _Actor, pid: int) -> None:
        """A new process id for a known actor means Ray restarted it."""
        if actor.pid is not None and pid != actor.pid:
            self._stats.restarts += 1
            log.warning("[WORKER %d] was restarted by Ray (pid %d -> %d)",
                        actor.worker_id, actor.pid, pid)
        actor.pid = pid

    def _dispatch(self) -> None:
        while not self._stopping.is_set():
            with self._lock:
                idle = next((a for a in self._actors if a.ready and a.task is None), None)
                pending = self._queues.pop() if idle else None
                if idle is None or pending is None:
                    return
                idle.task, idle.task_started = pending, time.monotonic()
            try:
                audio_ref = self._ray.put(Path(pending.task.audio_path).read_bytes())
                ref = idle.handle.transcribe.remote(pending.task, audio_ref)
            except Exception as exc:
                with self._lock:
                    idle.task = None
                pending.future.set_exception(
                    TranscriptionError(f"cannot send the chunk to Ray: {exc}"))
                continue
            with self._lock:
                idle.task_ref = ref

    def _enforce_timeouts(self) -> None:
        """Kill an actor stuck on a chunk; Ray restarts it. The cancelled chunk is not retried."""
        now = time.monotonic()
        for actor in self._actors:
            if actor.task is None or actor.task_ref is None:
                continue
            if now - actor.task_started < self._timeout_s:
                continue
            if not actor.task.future.done():
                actor.task.future.set_exception(
                    ChunkTimeoutError(f"a chunk took longer than {self._timeout_s:.0f}s"))
            self._ray.cancel(actor.task_ref)
            self._ray.kill(actor.handle, no_restart=False)
            actor.task, actor.task_ref, actor.ready = None, None, False
            actor.pings.append(actor.handle.ping.remote())

    # --- helpers ---------------------------------------------------------------------------
    def _create_actor(self, worker_id: int) -> _Actor:
        remote_class = self._ray.remote(ChunkWorker).options(
            max_restarts=-1, max_task_retries=1, **self._resources,
        )
        handle = remote_class.remote(worker_id, self._config, self._factory)
        return _Actor(worker_id, handle, pings=[handle.ping.remote()])

    def _size_from_cluster(self) -> int:
        resources = self._ray.cluster_resources()
        gpus = self._resources["num_gpus"]
        if gpus > 0:
            return max(1, int(resources.get("GPU", 0) // gpus))
        return max(1, int(resources.get("CPU", 1) // max(self._resources["num_cpus"], 0.001)))

    def _busy(self) -> bool:
        with self._lock:
            return any(a.task is not None for a in self._actors)

    def _fail_all(self, reason: str) -> None:
        with self._lock:
            running = [a.task for a in self._actors if a.task]
            for actor in self._actors:
                actor.task, actor.task_ref = None, None
            queued = self._queues.clear()
        for pending in [*running, *queued]:
            if not pending.future.done():
                pending.future.set_exception(TranscriptionError(reason))


def _describe(error: BaseException) -> str:
    """The first line of a Ray error: the cause's type and message, not Ray's whole traceback."""
    cause = getattr(error, "cause", None)
    if isinstance(cause, BaseException):
        return f"{type(cause).__name__}: {cause}"
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"
