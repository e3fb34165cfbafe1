"""The seam between the pipeline and whatever runs chunks: the local pool or Ray actors."""

from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Protocol

from whisper_api.transcript import ChunkResult, ChunkTask


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

    def submit(self, task: ChunkTask) -> "Future[ChunkResult]": ...

    def cancel(self, request_id: str) -> int: ...

    @property
    def ready(self) -> bool: ...

    def stats(self) -> ExecutorStats: ...
