"""The executors the benchmark drives, and what one chunk costs to dispatch on each.

The Ray rows run the same fan-out path as the local "fan-out" rows, on a private local Ray
instance with 2 actors x 1 CPU, so the difference is what Ray adds: actor calls, chunk audio
through the object store, and one CTranslate2 thread per actor where a local worker gets
2 x cores / workers (2 on a 2-core machine).
"""

import statistics
import time
import wave
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from whisper_api.config import Settings
from whisper_api.executors import ChunkExecutor, worker_config
from whisper_api.executors.ray_actors import RayExecutor
from whisper_api.pipeline import PRESETS
from whisper_api.service import start_service
from whisper_api.transcript import ChunkTask

RAY_ACTORS = 2
RAY_LABEL = f"whisper-api accurate, fan-out, Ray {RAY_ACTORS}x1 CPU"
SILENCE_S = 0.5
ROUND_TRIP_TIMEOUT_S = 60.0


@dataclass
class Overhead:
    """Seconds a chunk costs beyond the worker's own `elapsed_s`."""

    one_at_a_time_s: list[float]  # per chunk: what a lone short request waits
    all_at_once_s: float  # mean idle time of a worker between chunks: what a fan-out pays


def ray_installed() -> bool:
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


@contextmanager
def local_pool(settings: Settings) -> Iterator[tuple[ChunkExecutor, int]]:
    """The pool `whisper-api serve` starts with these settings (start_service), models loaded."""
    service = start_service(settings)
    try:
        service.executor.wait_ready()
        yield service.executor, service.workers
    finally:
        service.close()
        service.executor.stop()


@contextmanager
def ray_executor(settings: Settings) -> Iterator[tuple[RayExecutor, int]]:
    """RAY_ACTORS actors x 1 CPU on a private Ray instance, models loaded.

    One thread per actor is what `build_executor` gives for RAY_NUM_CPUS_PER_WORKER=1. No
    dashboard and no actor log forwarding: neither is part of the work being timed.
    """
    config = replace(worker_config(settings, RAY_ACTORS), cpu_threads=1)
    executor = RayExecutor(
        RAY_ACTORS, config, settings.chunk_timeout_s, num_cpus_per_worker=1.0,
        init_options={"num_cpus": RAY_ACTORS, "include_dashboard": False,
                      "log_to_driver": False},
    )
    executor.start()
    try:
        executor.wait_ready()
        yield executor, RAY_ACTORS
    finally:
        executor.stop()


def write_silence(path: Path, seconds: float) -> Path:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16000)
        out.writeframes(b"\0\0" * int(16000 * seconds))
    return path


def measure_overhead(executor: ChunkExecutor, workers: int, folder: Path,
                     chunks: int) -> Overhead:
    """Silent chunks: the worker's VAD finds nothing, so what is left is the executor's cost
    (submit, hand-over to the worker, result routing, and the dispatcher's polling)."""
    wav = write_silence(folder / "silence.wav", SILENCE_S)
    return Overhead(one_at_a_time(executor, wav, chunks),
                    all_at_once(executor, workers, wav, chunks))


def silent_task(wav: Path, request_id: str, index: int) -> ChunkTask:
    return ChunkTask(f"{request_id}:{index}", request_id, str(wav), 0.0, SILENCE_S,
                     PRESETS["accurate"])


def one_at_a_time(executor: ChunkExecutor, wav: Path, chunks: int) -> list[float]:
    overheads = []
    for index in range(chunks):
        started = time.perf_counter()
        result = executor.submit(silent_task(wav, "lone", index)).result(ROUND_TRIP_TIMEOUT_S)
        overheads.append(time.perf_counter() - started - result.elapsed_s)
    return overheads


def all_at_once(executor: ChunkExecutor, workers: int, wav: Path, chunks: int) -> float:
    started = time.perf_counter()
    futures = [executor.submit(silent_task(wav, "batch", i)) for i in range(chunks)]
    worker_s = sum(f.result(ROUND_TRIP_TIMEOUT_S).elapsed_s for f in futures)
    return ((time.perf_counter() - started) * workers - worker_s) / max(1, chunks)


def report_overheads(overheads: dict[str, Overhead]) -> None:
    chunks = max(len(o.one_at_a_time_s) for o in overheads.values())
    if not chunks:  # --overhead-chunks 0
        return
    print(f"\ndispatch overhead per chunk ({chunks} silent {SILENCE_S} s chunks, worker time "
          "subtracted)\n"
          f"  {'executor':12s} {'one at a time: median':>22s} {'p90':>8s} {'all at once':>12s}")
    for label, overhead in overheads.items():
        milliseconds = sorted(1000 * s for s in overhead.one_at_a_time_s)
        p90 = milliseconds[min(len(milliseconds) - 1, int(0.9 * len(milliseconds)))]
        print(f"  {label:12s} {statistics.median(milliseconds):19.1f} ms {p90:5.1f} ms "
              f"{1000 * overhead.all_at_once_s:9.1f} ms")
