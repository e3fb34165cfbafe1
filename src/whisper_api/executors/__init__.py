"""What runs chunks: worker processes on this machine (`local`) or actors on a Ray cluster (`ray`).

    base.py        the ChunkExecutor protocol and the Dispatcher skeleton both executors share
    worker.py      the worker side: load the model once, decode chunks, typed messages back
    local.py       WorkerPool: spawned processes supervised by one thread
    ray_actors.py  RayExecutor: restartable Ray actors fed by one dispatcher thread
"""

import logging
import os

from whisper_api.config import Settings
from whisper_api.executors.base import ChunkExecutor, ExecutorStats, WorkerConfig

__all__ = ["ChunkExecutor", "ExecutorStats", "WorkerConfig", "build_executor", "worker_config"]
log = logging.getLogger("whisper_api")


def build_executor(settings: Settings, workers: int | None = None) -> ChunkExecutor:
    """EXECUTOR=local: worker processes on this machine; EXECUTOR=ray: actors on a Ray cluster."""
    if settings.executor == "local":
        from whisper_api.executors.local import WorkerPool

        count, reason = settings.worker_count()
        count = workers or count
        log.info("Starting %d workers (%s)", count, reason)
        return WorkerPool(count, worker_config(settings, count), settings.chunk_timeout_s)
    from whisper_api.executors.ray_actors import RayExecutor

    # PARALLEL_WORKERS=auto on Ray: as many actors as the cluster's CPUs (GPUs) allow at start.
    size = workers or (None if settings.parallel_workers == "auto" else settings.parallel_workers)
    threads = settings.worker_cpu_threads or max(1, round(settings.ray_num_cpus_per_worker))
    return RayExecutor(
        size, _config(settings, threads), settings.chunk_timeout_s, address=settings.ray_address,
        num_cpus_per_worker=settings.ray_num_cpus_per_worker,
        num_gpus_per_worker=settings.ray_num_gpus_per_worker,
        connect_timeout_s=settings.ray_connect_timeout_s,
    )


def worker_config(settings: Settings, workers: int) -> WorkerConfig:
    cores = os.cpu_count() or 1
    # A worker may use two core shares (a lone request waits less), as lanes of one share each:
    # two 1-thread decodes at once ran a lone chunk ~20 % faster than one 2-thread decode, and
    # a fanned-out file ~7 % faster on 1-thread lanes (docs/benchmarks.md).
    threads = settings.worker_cpu_threads or max(1, min(cores, 2 * cores // workers))
    share = max(1, min(threads, cores // workers))
    if settings.whisper_device != "cpu":  # lanes are CPU threads; a GPU runs one decode
        share = threads
    return _config(settings, share, threads // share)


def _config(settings: Settings, threads: int, lanes: int = 1) -> WorkerConfig:
    return WorkerConfig(
        settings.whisper_model, settings.whisper_device, settings.compute_type, threads,
        # Unset: each worker uses its own user's cache (a Ray node may have another home).
        settings.model_names, str(settings.model_cache_dir or ""), lanes,
    )
