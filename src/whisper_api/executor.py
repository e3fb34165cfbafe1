"""The seam between the pipeline and whatever runs chunks: the local pool or Ray actors."""

import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Protocol

from whisper_api.errors import TranscriptionError
from whisper_api.transcript import ChunkResult, ChunkTask

POLL_S = 0.05
# Seconds of a chunk's audio decoded so far; called from the executor's own thread.
ChunkProgress = Callable[[float], None]
chunk_log = logging.getLogger("whisper_api.chunks")


@dataclass(frozen=True)
class WorkerConfig:
    """What each worker needs to load its model, once."""

    model: str
    device: str
    compute_type: str
    cpu_threads: int


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

    def stop(self, drain_timeout_s: float = 30.0) -> None: ...

    def submit(
        self, task: ChunkTask, on_progress: "ChunkProgress | None" = None
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
            raise TranscriptionError(f"workers cannot load the model: {failure}")
        if time.monotonic() > deadline:
            raise TranscriptionError("workers did not load the model in time")
        time.sleep(POLL_S)


def log_chunk_done(result: ChunkResult, task: ChunkTask) -> None:
    """The one structured line per chunk, whichever executor ran it."""
    chunk_log.info(
        "chunk_done task_id=%s worker_id=%d elapsed_s=%.3f segments=%d audio_s=%.3f "
        "redone_regions=%d",
        task.task_id, result.worker_id, result.elapsed_s, len(result.segments), task.duration_s,
        result.redone_utterances,
    )
