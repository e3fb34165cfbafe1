"""Chunk tasks for executor tests: each WAV has a distinct length, so a result names its task."""

import threading
import wave
from concurrent.futures import Future
from pathlib import Path

from tests.support.fakes import text_for
from whisper_api.executors.base import ChunkExecutor, WorkerConfig
from whisper_api.transcript import ChunkResult, ChunkTask, DecodeOptions

CONFIG = WorkerConfig(model="fake", device="cpu", compute_type="int8", cpu_threads=1)
RESULT_TIMEOUT_S = 30.0


def write_silence(path: Path, samples: int) -> Path:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16000)
        out.writeframes(bytes(2 * samples))
    return path


def make_task(
    tmp_path: Path, request_id: str, index: int, samples: int, prompt: str | None = None
) -> ChunkTask:
    wav = write_silence(tmp_path / f"{request_id}_{index}.wav", samples)
    return ChunkTask(
        f"{request_id}:{index}", request_id, str(wav), 0.0, samples / 16000,
        DecodeOptions(initial_prompt=prompt),
    )


def assert_belongs(result: ChunkResult, task: ChunkTask) -> None:
    samples = round(task.duration_s * 16000)
    assert result.task_id == task.task_id
    assert [s.text for s in result.segments] == [text_for(samples)]


def submit_concurrently(
    executor: ChunkExecutor, tmp_path: Path
) -> list[tuple[ChunkTask, "Future[ChunkResult]"]]:
    """Two requests of 12 chunks each, submitted from two threads at once."""
    tasks = {
        "req-a": [make_task(tmp_path, "req-a", i, 1000 + 37 * i, "sleep=0.02") for i in range(12)],
        "req-b": [make_task(tmp_path, "req-b", i, 5000 + 41 * i, "sleep=0.01") for i in range(12)],
    }
    submitted: list[tuple[ChunkTask, Future[ChunkResult]]] = []
    lock = threading.Lock()

    def submit_all(request_tasks: list[ChunkTask]) -> None:
        for task in request_tasks:
            future = executor.submit(task)
            with lock:
                submitted.append((task, future))

    threads = [threading.Thread(target=submit_all, args=(t,)) for t in tasks.values()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    return submitted
