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


@dataclass
class ExecutorStats:
    workers: int = 0
    ready_workers: int = 0
    busy_workers: int = 0
    queued_tasks: int = 0
    restarts: int = 0
    chunk_seconds: list[float] = field(default_factory=list)


class ChunkExecutor(Protocol):
    def start(self) -> None: ...

    def stop(self, drain_timeout_s: float = 30.0) -> None: ...

    def submit(self, task: ChunkTask) -> "Future[ChunkResult]": ...

    def cancel(self, request_id: str) -> int: ...

    @property
    def ready(self) -> bool: ...

    def stats(self) -> ExecutorStats: ...
