"""How the pipeline plans its work without a model: presets per model, chunk hand-out order."""

import asyncio
from concurrent.futures import Future
from pathlib import Path

from whisper_api.config import Settings
from whisper_api.pipeline import PRESETS, Pipeline, preset_options
from whisper_api.transcript import ChunkResult, ChunkTask, DecodeOptions


class RecordingExecutor:
    """Answers every chunk at once with no segments, noting the order it was given them in."""

    def __init__(self) -> None:
        self.order: list[str] = []

    def submit(self, task: ChunkTask, on_progress: object = None) -> Future[ChunkResult]:
        self.order.append(task.task_id)
        future: Future[ChunkResult] = Future()
        future.set_result(ChunkResult(task.task_id, (), "en"))
        return future

    def cancel(self, request_id: str) -> int:
        return 0


def test_the_longest_chunks_are_handed_out_first_and_results_come_back_in_file_order() -> None:
    lengths = [60.0, 110.0, 80.0, 115.0]  # cut at pauses: a long chunk may come last
    tasks = [ChunkTask(f"r:{i}", "r", f"{i}.wav", sum(lengths[:i]), length, DecodeOptions())
             for i, length in enumerate(lengths)]
    executor = RecordingExecutor()
    pipeline = Pipeline(Settings(), executor, 2)  # type: ignore[arg-type]
    results = asyncio.run(pipeline._run(tasks, sum(lengths), lambda _: None))
    assert executor.order == ["r:3", "r:1", "r:2", "r:0"]
    assert [r.task_id for r in results] == ["r:0", "r:1", "r:2", "r:3"]


def test_presets_are_picked_by_the_model_name_or_its_directory_name(tmp_path: Path) -> None:
    sentence_windows = preset_options("base", "accurate")
    assert (sentence_windows.window_s, sentence_windows.window_fill) == (20.0, 0.0)
    assert preset_options(str(tmp_path / "models" / "base"), "accurate") == sentence_windows
    assert preset_options("tiny.en", "accurate") == PRESETS["accurate"]
    assert preset_options("/models/whisper-small-ct2", "accurate") == PRESETS["accurate"]
    assert preset_options("base", "fast") == PRESETS["fast"]
