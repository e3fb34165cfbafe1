"""The seam between the pipeline and whatever runs chunks, and the skeleton both executors share.

`ChunkExecutor` is the protocol the pipeline sees. `Dispatcher` holds what the local pool and the
Ray executor have in common: the round-robin queues, the futures of running chunks, stats,
cancellation and failing everything at shutdown. A subclass only knows how to start, feed, watch
and stop its own kind of worker; each worker is a `WorkerSlot`.

Locking: every field below is guarded by `Dispatcher._lock`. Callers' threads (submit, cancel,
stats) and the executor's own thread (supervisor or dispatcher) both take it.
"""

import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field, replace
from typing import Protocol

from whisper_api.errors import ChunkTimeoutError, ModelUnavailableError, TranscriptionError
from whisper_api.transcript import ChunkResult, ChunkTask

POLL_S = 0.05
# Seconds of a chunk's audio decoded so far; called on the executor's own thread.
ChunkProgress = Callable[[float], None]
MAX_ATTEMPTS = 2  # a chunk whose worker died or stalled gets one more try on a fresh worker
log = logging.getLogger("whisper_api.executors")
chunk_log = logging.getLogger("whisper_api.chunks")


@dataclass(frozen=True)
class WorkerConfig:
    """What each worker needs to load its models, once: `model` is the default, `models` the
    others (WHISPER_MODELS), `cache_dir` where bundled models are assembled ("" = default).

    A worker decodes on `lanes` decoder lanes of `cpu_threads` threads each: a chunk that has
    the machine to itself spreads its windows over all lanes, a chunk of a file fanned out
    over the pool uses one (the other workers hold the other cores)."""

    model: str
    device: str
    compute_type: str
    cpu_threads: int
    models: tuple[str, ...] = ()
    cache_dir: str = ""
    lanes: int = 1

    @property
    def all_models(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys((self.model, *self.models)))


# Upper bounds of the chunk latency buckets, in seconds: a chunk is 0.1 s to CHUNK_TIMEOUT_S long.
CHUNK_SECONDS_BUCKETS = (0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)


@dataclass
class LatencyHistogram:
    """Per-bucket counts and a sum: fixed memory however long the service runs.

    `counts[i]` holds observations in (bounds_s[i-1], bounds_s[i]]; the last entry is +Inf.
    """

    bounds_s: tuple[float, ...] = CHUNK_SECONDS_BUCKETS
    counts: list[int] = field(default_factory=lambda: [0] * (len(CHUNK_SECONDS_BUCKETS) + 1))
    sum_s: float = 0.0

    @property
    def count(self) -> int:
        return sum(self.counts)

    def observe(self, seconds: float) -> None:
        index = next((i for i, bound in enumerate(self.bounds_s) if seconds <= bound),
                     len(self.bounds_s))
        self.counts[index] += 1
        self.sum_s += seconds

    def copy(self) -> "LatencyHistogram":
        return LatencyHistogram(self.bounds_s, list(self.counts), self.sum_s)


@dataclass
class ExecutorStats:
    workers: int = 0
    ready_workers: int = 0
    busy_workers: int = 0
    queued_tasks: int = 0
    restarts: int = 0
    chunk_seconds: LatencyHistogram = field(default_factory=LatencyHistogram)


class ChunkExecutor(Protocol):
    def start(self) -> None: ...

    def wait_ready(self, timeout_s: float = 300.0) -> None: ...

    def stop(self, drain_timeout_s: float = 30.0) -> None: ...

    def submit(
        self, task: ChunkTask, on_progress: ChunkProgress | None = None
    ) -> "Future[ChunkResult]": ...

    def cancel(self, request_id: str) -> int: ...

    @property
    def ready(self) -> bool: ...

    def stats(self) -> ExecutorStats: ...


@dataclass
class Pending:
    """A submitted chunk and the future its caller awaits."""

    task: ChunkTask
    future: "Future[ChunkResult]"
    attempts: int = 0
    on_progress: ChunkProgress | None = None


class RequestQueues:
    """Chunks waiting for a worker: one FIFO per request, served round robin across requests,
    so a long file's chunks cannot starve a short request. Callers hold their own lock."""

    def __init__(self) -> None:
        self._queues: OrderedDict[str, deque[Pending]] = OrderedDict()

    def __len__(self) -> int:
        return sum(len(q) for q in self._queues.values())

    def push(self, pending: Pending, retry: bool = False) -> None:
        request_id = pending.task.request_id
        queue = self._queues.setdefault(request_id, deque())
        if retry:  # a retried chunk goes first: its request has already waited once
            queue.appendleft(pending)
            self._queues.move_to_end(request_id, last=False)
        else:
            queue.append(pending)

    def pop(self) -> Pending | None:
        """Take from the first request, then move it to the back of the line."""
        while self._queues:
            request_id, tasks = next(iter(self._queues.items()))
            self._queues.move_to_end(request_id)
            while tasks:
                pending = tasks.popleft()
                if not pending.future.cancelled():
                    if not tasks:
                        del self._queues[request_id]
                    return pending
            del self._queues[request_id]
        return None

    def drop(self, request_id: str) -> list[Pending]:
        return list(self._queues.pop(request_id, ()))

    def clear(self) -> list[Pending]:
        queued = [p for q in self._queues.values() for p in q]
        self._queues.clear()
        return queued


def wait_until_ready(
    is_ready: Callable[[], bool], load_failure: Callable[[], str | None], timeout_s: float
) -> None:
    """Block until every worker has loaded its model; raise at once if loading fails."""
    deadline = time.monotonic() + timeout_s
    while not is_ready():
        if failure := load_failure():
            raise ModelUnavailableError(f"workers cannot load the model: {failure}")
        if time.monotonic() > deadline:
            raise TranscriptionError("workers did not load the model in time")
        time.sleep(POLL_S)


def settle(future: "Future[ChunkResult]", outcome: ChunkResult | BaseException) -> None:
    """Complete a chunk's future unless it is done already. Its caller may cancel it at any
    moment from another thread (the event loop's), so a check of done() first is not enough:
    set_result would raise InvalidStateError on the executor's thread and stop it."""
    try:
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)
    except InvalidStateError:
        pass


def log_chunk_done(result: ChunkResult, task: ChunkTask) -> None:
    """The one structured line per chunk, whichever executor ran it."""
    chunk_log.info(
        "chunk_done task_id=%s worker_id=%d elapsed_s=%.3f segments=%d audio_s=%.3f "
        "redone_regions=%d",
        task.task_id, result.worker_id, result.elapsed_s, len(result.segments), task.duration_s,
        result.redone_utterances,
    )


@dataclass
class WorkerSlot:
    """One worker as its executor sees it; `running` is the chunk it holds, if any."""

    worker_id: int
    ready: bool = False
    running: Pending | None = None
    started_at: float = 0.0

    @property
    def pid(self) -> int | None:
        return None


class Dispatcher:
    """Queues, futures and bookkeeping shared by the local pool and the Ray executor."""

    def __init__(self, size: int, chunk_timeout_s: float) -> None:
        self._timeout_s = chunk_timeout_s
        self._queues = RequestQueues()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._stats = ExecutorStats(workers=size)
        self._load_failure: str | None = None

    def _slots(self) -> list[WorkerSlot]:
        raise NotImplementedError

    def _on_queued(self) -> None:
        """Called with the lock held after a chunk was queued: start it if a worker is idle."""

    def _stop_worker(self, slot: WorkerSlot) -> None:
        """Stop a busy worker now and replace it (lock held): its chunk was cancelled."""
        raise NotImplementedError

    def wait_ready(self, timeout_s: float = 300.0) -> None:
        """Returns once every worker has loaded; raises if loading fails or stop() is called."""
        wait_until_ready(lambda: self.ready, self._not_becoming_ready, timeout_s)

    def _not_becoming_ready(self) -> str | None:
        return self._load_failure or ("the executor is stopping" if self._stopping.is_set()
                                      else None)

    @property
    def ready(self) -> bool:
        slots = list(self._slots())
        return bool(slots) and all(s.ready for s in slots)

    def stats(self) -> ExecutorStats:
        with self._lock:
            slots = self._slots()
            self._stats.ready_workers = sum(s.ready for s in slots)
            self._stats.busy_workers = sum(s.running is not None for s in slots)
            self._stats.queued_tasks = len(self._queues)
            return replace(self._stats, chunk_seconds=self._stats.chunk_seconds.copy())

    def worker_pids(self) -> dict[int, int | None]:
        return {s.worker_id: s.pid for s in self._slots()}

    def busy_worker_pid(self, task_id: str) -> int | None:
        with self._lock:
            slot = self._holding(task_id)
            return slot.pid if slot else None

    def submit(
        self, task: ChunkTask, on_progress: ChunkProgress | None = None
    ) -> "Future[ChunkResult]":
        """`on_progress` hears how much of the chunk is decoded, where the executor can tell
        (the local pool, per decoded window); every executor completes the future."""
        future: Future[ChunkResult] = Future()
        if self._stopping.is_set():
            future.set_exception(TranscriptionError("the service is shutting down"))
            return future
        with self._lock:
            if self._unloadable():
                future.set_exception(self._unavailable())
                return future
            self._queues.push(Pending(task, future, on_progress=on_progress))
            self._on_queued()
        return future

    def _survive(self, turn: Callable[[], None], name: str) -> None:
        """One turn of the executor's own thread. An exception (a failed spawn: EAGAIN,
        EMFILE) must not end that thread: every running chunk would then wait forever."""
        try:
            turn()
        except Exception:
            log.exception("%s", name)
            time.sleep(POLL_S)

    def _cannot_load(self, reason: str) -> None:
        """A worker cannot load its model (lock held). Where no worker has, none will take a
        chunk: the queued ones fail now, and later ones at submit (a misspelt WHISPER_MODEL
        once left every request waiting out its whole timeout)."""
        self._load_failure = reason
        if self._unloadable():
            for pending in self._queues.clear():
                settle(pending.future, self._unavailable())

    def _unloadable(self) -> bool:
        return self._load_failure is not None and not any(s.ready for s in self._slots())

    def _unavailable(self) -> ModelUnavailableError:
        return ModelUnavailableError(f"workers cannot load the model: {self._load_failure}")

    def _report_progress(self, task_id: str, decoded_s: float) -> None:
        with self._lock:
            slot = self._holding(task_id)
            report = slot.running.on_progress if slot and slot.running else None
        if report is None:
            return
        try:
            report(decoded_s)
        except Exception:  # a caller's callback must never stop the supervisor thread
            log.exception("progress callback for %s failed", task_id)

    def cancel(self, request_id: str) -> int:
        """Drop a request's queued chunks and stop its running ones at once: their workers are
        stopped and replaced, so a cancelled request frees its CPU now, not when its chunk ends.
        Returns how many chunks were dropped or stopped."""
        with self._lock:
            dropped = self._queues.drop(request_id)
            for slot in self._slots():
                if slot.running and slot.running.task.request_id == request_id:
                    dropped.append(slot.running)
                    slot.running, slot.ready = None, False
                    self._stop_worker(slot)
        for pending in dropped:
            pending.future.cancel()
        return len(dropped)

    def _holding(self, task_id: str) -> WorkerSlot | None:
        return next((s for s in self._slots()
                     if s.running and s.running.task.task_id == task_id), None)

    def _next_for(self, slot: WorkerSlot) -> Pending | None:
        """Hand the next queued chunk to an idle slot (lock held)."""
        pending = self._queues.pop()
        if pending is not None:
            pending.attempts += 1
            slot.running, slot.started_at = pending, time.monotonic()
        return pending

    def _timed_out(self) -> list[WorkerSlot]:
        """Slots whose chunk ran past CHUNK_TIMEOUT_S (lock held); the caller kills their worker.

        A stuck decode may be a one-off (a starved CPU, a stopped process), so the chunk gets
        one more try on a fresh worker, as after a crash.
        """
        now = time.monotonic()
        late = [s for s in self._slots()
                if s.running is not None and now - s.started_at >= self._timeout_s]
        for slot in late:
            # Not ready until its replacement has loaded: the retry must not go to the worker
            # about to be killed.
            pending, slot.running, slot.ready = slot.running, None, False
            assert pending is not None
            self._retry_or_fail(pending, f"a chunk took longer than {self._timeout_s:.0f}s "
                                "(CHUNK_TIMEOUT_S)", error=ChunkTimeoutError)
        return late

    def _retry_or_fail(self, pending: Pending, reason: str, retry: bool = True,
                       error: type[TranscriptionError] = TranscriptionError) -> None:
        """Queue a chunk again at the front, or fail it once its attempts are spent."""
        if pending.future.done():
            return
        if retry and pending.attempts < MAX_ATTEMPTS:
            log.warning("Chunk %s: %s; retrying", pending.task.task_id.rsplit(":", 1)[-1], reason)
            self._queues.push(pending, retry=True)
        else:
            retried = " (after a retry)" if pending.attempts >= MAX_ATTEMPTS else ""
            settle(pending.future, error(f"{reason}{retried}"))

    def _deliver(self, pending: Pending, outcome: ChunkResult | Exception) -> None:
        """Complete a chunk's future, unless its caller cancelled it meanwhile."""
        if pending.future.done():
            return
        if isinstance(outcome, Exception):
            settle(pending.future, outcome)
            return
        self._stats.chunk_seconds.observe(outcome.elapsed_s)
        log_chunk_done(outcome, pending.task)
        settle(pending.future, outcome)

    def _drain(self, timeout_s: float) -> None:
        """Stage one of stopping: take no more work and let running chunks finish."""
        self._stopping.set()
        deadline = time.monotonic() + timeout_s
        while self._busy() and time.monotonic() < deadline:
            time.sleep(POLL_S)

    def _busy(self) -> bool:
        with self._lock:
            return any(s.running is not None for s in self._slots())

    def _fail_all(self, reason: str) -> None:
        with self._lock:
            running = [s.running for s in self._slots() if s.running]
            for slot in self._slots():
                slot.running = None
            queued = self._queues.clear()
        for pending in [*running, *queued]:
            settle(pending.future, TranscriptionError(reason))
