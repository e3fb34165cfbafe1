"""Persistent worker processes: each loads the model once, then decodes chunk tasks.

One supervisor thread in the parent owns all pool state: it hands tasks to idle workers (round
robin across requests, so a long file cannot starve short ones), routes each result to the future
of the task that asked for it, replaces dead workers (retrying their chunk once) and kills workers
whose chunk exceeds the timeout. Each worker has its own inbox, so the parent always knows which
chunk a dead worker was holding.
"""

import logging
import multiprocessing as mp
import queue
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, replace
from enum import StrEnum
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from whisper_api.errors import ChunkTimeoutError, TranscriptionError
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
from whisper_api.transcript import ChunkResult, ChunkTask, DecodeOptions, Segment

log = logging.getLogger("whisper_api.pool")
MAX_ATTEMPTS = 2
PROGRESS_EVERY_S = 0.25


class ChunkTranscriber(Protocol):
    def transcribe(
        self, audio: np.ndarray, options: DecodeOptions,
        on_progress: Callable[[float], None] | None = None,
    ) -> tuple[list[Segment], str, int]: ...


TranscriberFactory = Callable[[WorkerConfig], ChunkTranscriber]


def load_real_transcriber(config: WorkerConfig) -> ChunkTranscriber:
    from whisper_api.transcriber import Transcriber

    return Transcriber(config.model, config.device, config.compute_type, config.cpu_threads)


def worker_main(
    worker_id: int, config: WorkerConfig, factory: TranscriberFactory, inbox: Any, outbox: Any
) -> None:
    """Runs in the child process: load once, report ready, then serve tasks until None."""
    from whisper_api.audio import read_wav

    started = time.perf_counter()
    try:
        transcriber = factory(config)
    except Exception as exc:
        outbox.put(("failed", worker_id, f"{type(exc).__name__}: {exc}"))
        return
    outbox.put(("ready", worker_id, time.perf_counter() - started))
    while (task := inbox.get()) is not None:
        began = time.perf_counter()
        try:
            audio = read_wav(Path(task.audio_path))
            report = _progress_reporter(worker_id, task.task_id, outbox)
            segments, language, redone = transcriber.transcribe(audio, task.options, report)
            result = ChunkResult(
                task.task_id, tuple(segments), language, worker_id,
                time.perf_counter() - began, redone,
            )
            outbox.put(("done", worker_id, result))
        except Exception as exc:
            log.debug("worker %d failed: %s", worker_id, traceback.format_exc())
            outbox.put(("error", worker_id, (task.task_id, f"{type(exc).__name__}: {exc}")))


def _progress_reporter(worker_id: int, task_id: str, outbox: Any) -> Callable[[float], None]:
    """Sends how much of the chunk is decoded, at most every PROGRESS_EVERY_S of wall time
    (a batch of windows finishes in one burst)."""
    last_sent = -PROGRESS_EVERY_S

    def report(done_s: float) -> None:
        nonlocal last_sent
        if time.monotonic() - last_sent >= PROGRESS_EVERY_S:
            last_sent = time.monotonic()
            outbox.put(("progress", worker_id, (task_id, done_s)))

    return report


class WorkerState(StrEnum):
    starting = "starting"
    idle = "idle"
    busy = "busy"


@dataclass
class _Worker:
    worker_id: int
    process: BaseProcess
    inbox: Any
    state: WorkerState = WorkerState.starting
    task: ChunkTask | None = None
    task_started: float = 0.0


class WorkerPool:
    """The local ChunkExecutor."""

    def __init__(
        self,
        size: int,
        config: WorkerConfig,
        chunk_timeout_s: float = 600.0,
        factory: TranscriberFactory = load_real_transcriber,
    ) -> None:
        self._size, self._config, self._factory = size, config, factory
        self._timeout_s = chunk_timeout_s
        self._ctx = mp.get_context("spawn")
        self._outbox: Any = self._ctx.Queue()
        self._workers: dict[int, _Worker] = {}
        self._queues = RequestQueues()
        self._running: dict[str, Pending] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._stats = ExecutorStats(workers=size)
        self._load_failure: str | None = None

    # --- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        for worker_id in range(self._size):
            self._spawn(worker_id)
        self._thread = threading.Thread(target=self._supervise, name="pool-supervisor", daemon=True)
        self._thread.start()

    def wait_ready(self, timeout_s: float = 300.0) -> None:
        wait_until_ready(lambda: self.ready, lambda: self._load_failure, timeout_s)

    def stop(self, drain_timeout_s: float = 30.0) -> None:
        """Stage one: stop taking work and let running chunks finish. Stage two: force."""
        self._stopping.set()
        deadline = time.monotonic() + drain_timeout_s
        while self._running and time.monotonic() < deadline:
            time.sleep(POLL_S)
        with self._lock:
            for worker in self._workers.values():
                worker.inbox.put(None)
        if self._thread:
            self._thread.join(timeout=drain_timeout_s + 5)
        for worker in self._workers.values():
            worker.process.join(timeout=5)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join(timeout=5)
        self._fail_all("the service is shutting down")

    @property
    def ready(self) -> bool:
        workers = list(self._workers.values())
        return bool(workers) and all(w.state != WorkerState.starting for w in workers)

    def stats(self) -> ExecutorStats:
        with self._lock:
            workers = list(self._workers.values())
            self._stats.ready_workers = sum(w.state != WorkerState.starting for w in workers)
            self._stats.busy_workers = sum(w.state == WorkerState.busy for w in workers)
            self._stats.queued_tasks = len(self._queues)
            return replace(self._stats, chunk_seconds=self._stats.chunk_seconds.copy())

    def worker_pids(self) -> dict[int, int | None]:
        return {i: w.process.pid for i, w in self._workers.items()}

    def busy_worker_pid(self, task_id: str) -> int | None:
        with self._lock:
            for worker in self._workers.values():
                if worker.task and worker.task.task_id == task_id:
                    return worker.process.pid
        return None

    # --- tasks -----------------------------------------------------------------------------
    def submit(
        self, task: ChunkTask, on_progress: ChunkProgress | None = None
    ) -> "Future[ChunkResult]":
        future: Future[ChunkResult] = Future()
        if self._stopping.is_set():
            future.set_exception(TranscriptionError("the service is shutting down"))
            return future
        with self._lock:
            self._queues.push(Pending(task, future, on_progress=on_progress))
            self._dispatch()  # an idle worker starts now, not at the supervisor's next poll
        return future

    def cancel(self, request_id: str) -> int:
        """Drop a request's queued chunks; a running chunk finishes and its result is dropped."""
        with self._lock:
            dropped = self._queues.drop(request_id)
        for pending in dropped:
            pending.future.cancel()
        return len(dropped)

    # --- supervisor ------------------------------------------------------------------------
    def _supervise(self) -> None:
        while not self._stopping.is_set() or any(
            w.process.is_alive() for w in list(self._workers.values())
        ):
            try:
                self._handle(self._outbox.get(timeout=POLL_S))
            except queue.Empty:
                pass
            except (EOFError, OSError):
                break
            with self._lock:
                self._reap_dead()
                self._enforce_timeouts()
                self._dispatch()

    def _handle(self, message: tuple[str, int, Any]) -> None:
        kind, worker_id, payload = message
        if kind == "progress":
            self._report_progress(*payload)
            return
        with self._lock:
            worker = self._workers.get(worker_id)
            if kind == "ready" and worker:
                worker.state = WorkerState.idle
                log.info("[WORKER %d] Model loaded in %.2fs", worker_id, payload)
            elif kind == "failed":
                self._load_failure = str(payload)
                log.error("[WORKER %d] cannot load the model: %s", worker_id, payload)
            elif kind == "done":
                self._finish(worker, payload.task_id, result=payload)
            elif kind == "error":
                task_id, message_text = payload
                self._finish(worker, task_id, error=TranscriptionError(message_text))

    def _report_progress(self, task_id: str, done_s: float) -> None:
        with self._lock:
            pending = self._running.get(task_id)
        if pending is None or pending.on_progress is None:
            return
        try:
            pending.on_progress(done_s)
        except Exception:  # a caller's callback must never stop the supervisor thread
            log.exception("progress callback for %s failed", task_id)

    def _finish(
        self,
        worker: _Worker | None,
        task_id: str,
        result: ChunkResult | None = None,
        error: Exception | None = None,
    ) -> None:
        if worker and worker.task and worker.task.task_id == task_id:
            worker.state, worker.task = WorkerState.idle, None
        pending = self._running.pop(task_id, None)
        if pending is None or pending.future.done():
            return
        if result is not None:
            self._stats.chunk_seconds.observe(result.elapsed_s)
            log_chunk_done(result, pending.task)
            pending.future.set_result(result)
        else:
            pending.future.set_exception(error or TranscriptionError("chunk failed"))

    def _dispatch(self) -> None:
        for worker in self._workers.values():
            if worker.state != WorkerState.idle or self._stopping.is_set():
                continue
            pending = self._queues.pop()
            if pending is None:
                return
            pending.attempts += 1
            worker.state, worker.task = WorkerState.busy, pending.task
            worker.task_started = time.monotonic()
            self._running[pending.task.task_id] = pending
            worker.inbox.put(pending.task)

    def _reap_dead(self) -> None:
        for worker_id, worker in list(self._workers.items()):
            if worker.process.is_alive():
                continue
            if self._stopping.is_set() or self._load_failure:
                # Stopping, or the model cannot load: a replacement would die the same way.
                if worker.task is not None:
                    self._retry_or_fail(worker.task.task_id, "the worker stopped", retry=False)
                    worker.task = None
                continue
            log.warning(
                "[WORKER %d] died (exit code %s); starting a replacement",
                worker_id, worker.process.exitcode,
            )
            self._stats.restarts += 1
            if worker.task is not None:
                self._retry_or_fail(worker.task.task_id, "the worker process died")
            self._spawn(worker_id)

    def _enforce_timeouts(self) -> None:
        now = time.monotonic()
        for worker in self._workers.values():
            if worker.task is None or now - worker.task_started < self._timeout_s:
                continue
            pending = self._running.pop(worker.task.task_id, None)
            if pending and not pending.future.done():
                pending.future.set_exception(
                    ChunkTimeoutError(f"a chunk took longer than {self._timeout_s:.0f}s")
                )
            worker.task = None
            worker.process.kill()

    def _retry_or_fail(self, task_id: str, reason: str, retry: bool = True) -> None:
        pending = self._running.pop(task_id, None)
        if pending is None or pending.future.done():
            return
        if retry and pending.attempts < MAX_ATTEMPTS:
            log.warning("Chunk %s: %s; retrying", task_id.rsplit(":", 1)[-1], reason)
            self._queues.push(pending, retry=True)
        else:
            pending.future.set_exception(TranscriptionError(f"{reason} (after a retry)"))

    def _spawn(self, worker_id: int) -> None:
        inbox = self._ctx.Queue()
        process = self._ctx.Process(
            target=worker_main,
            args=(worker_id, self._config, self._factory, inbox, self._outbox),
            name=f"whisper-worker-{worker_id}",
            daemon=True,
        )
        process.start()
        self._workers[worker_id] = _Worker(worker_id, process, inbox)

    def _fail_all(self, reason: str) -> None:
        with self._lock:
            running, self._running = self._running, {}
            queued = self._queues.clear()
        for pending in [*running.values(), *queued]:
            if not pending.future.done():
                pending.future.set_exception(TranscriptionError(reason))
