"""How the pipeline plans its work without a model: presets per model, chunk hand-out order."""

import asyncio
from concurrent.futures import Future
from dataclasses import replace
from pathlib import Path

import pytest

from tests.support.chunks import write_silence
from whisper_api.chunking import ChunkSpan
from whisper_api.config import Settings
from whisper_api.pipeline import PRESETS, Pipeline, _Redo, preset_options
from whisper_api.sessions import Session
from whisper_api.transcript import (
    SPANS_REDO_PAUSE_S,
    ChunkResult,
    ChunkTask,
    DecodeOptions,
    Pending,
    Segment,
)


def answered(result: ChunkResult) -> Future[ChunkResult]:
    future: Future[ChunkResult] = Future()
    future.set_result(result)
    return future


class RecordingExecutor:
    """Answers every chunk at once with no segments, noting the order it was given them in."""

    def __init__(self) -> None:
        self.order: list[str] = []

    def submit(self, task: ChunkTask, on_progress: object = None) -> Future[ChunkResult]:
        self.order.append(task.task_id)
        return answered(ChunkResult(task.task_id, (), "en"))

    def cancel(self, request_id: str) -> int:
        return 0


def test_the_longest_chunks_are_handed_out_first_and_results_come_back_in_file_order() -> None:
    lengths = [60.0, 110.0, 80.0, 115.0]  # cut at pauses: a long chunk may come last
    tasks = [ChunkTask(f"r:{i}", "r", f"{i}.wav", sum(lengths[:i]), length, DecodeOptions())
             for i, length in enumerate(lengths)]
    executor = RecordingExecutor()
    pipeline = Pipeline(Settings(), executor, 2)  # type: ignore[arg-type]
    redo = _Redo(Path("unused.wav"), [], tasks, None)  # type: ignore[arg-type]  # none pending
    results = asyncio.run(pipeline._run(redo, sum(lengths), lambda _: None))
    assert executor.order == ["r:3", "r:1", "r:2", "r:0"]
    assert [r.task_id for r in results] == ["r:0", "r:1", "r:2", "r:3"]


class LastChunkWaitsExecutor:
    """Answers every chunk at once, each leaving its middle second pending, except the last one
    handed out: that one answers only when a redo pass arrives. Redo passes answer with one
    segment per pending region."""

    def __init__(self) -> None:
        self.last: Future[ChunkResult] = Future()
        self.redos: list[ChunkTask] = []
        self.chunks = 0

    def submit(self, task: ChunkTask, on_progress: object = None) -> Future[ChunkResult]:
        if task.redo:
            self.redos.append(task)
            if not self.last.done():
                self.last.set_result(self.answer(self.held))
            return answered(ChunkResult(task.task_id, tuple(
                Segment(p.start_s, p.end_s, f"redone {p.start_s:.1f}") for p in task.redo),
                "en"))
        self.chunks += 1
        if self.chunks == 4:
            self.held = task
            return self.last
        return answered(self.answer(task))

    @staticmethod
    def answer(task: ChunkTask) -> ChunkResult:
        middle = task.duration_s / 2
        return ChunkResult(task.task_id, (Segment(0.0, 1.0, "first"),), "en",
                           pending=(Pending(middle - 0.5, middle + 0.5),))

    def cancel(self, request_id: str) -> int:
        return 0


def test_an_idle_worker_redoes_what_finished_chunks_left_while_the_last_chunk_runs(
    tmp_path: Path,
) -> None:
    spans = [ChunkSpan(10.0 * i, 10.0 * (i + 1)) for i in range(4)]
    tasks = [ChunkTask(f"r:{i}", "r", f"{i}.wav", s.start_s, 10.0, DecodeOptions(fan_out=True))
             for i, s in enumerate(spans)]
    wav = write_silence(tmp_path / "file.wav", 40 * 16000)
    session = Session("r", tmp_path)
    session.chunks.mkdir()
    executor = LastChunkWaitsExecutor()
    pipeline = Pipeline(Settings(), executor, 2)  # type: ignore[arg-type]

    async def run() -> list[ChunkResult]:  # the old pipeline waited for the last chunk forever
        return await asyncio.wait_for(pipeline._run(
            _Redo(wav, spans, tasks, session), 40.0, lambda _: None), 10)

    results = asyncio.run(run())
    # The first pass takes the three finished chunks' regions, the second the last chunk's.
    assert [len(t.redo) for t in executor.redos] == [3, 1]
    assert len({t.task_id for t in executor.redos}) == 2
    for result in results:
        first, redone = result.segments
        assert first.text == "first" and redone.text.startswith("redone")
        assert (redone.start, redone.end) == pytest.approx((4.5, 5.5), abs=0.01)
        assert result.pending == ()


def test_presets_are_picked_by_the_model_name_or_its_directory_name(tmp_path: Path) -> None:
    base = preset_options("base", "accurate")
    sentence_windows = base.for_language("pt")
    assert (sentence_windows.window_s, sentence_windows.window_fill) == (20.0, 0.0)
    english = base.for_language("en")
    assert (english.window_s, english.window_fill) == (29.0, 0.5)
    assert preset_options(str(tmp_path / "models" / "base"), "accurate") == base
    assert preset_options("tiny.en", "accurate") == PRESETS["accurate"]
    assert preset_options("/models/whisper-small-ct2", "accurate") == PRESETS["accurate"]
    fast = preset_options("base", "fast")
    assert fast.encoder_pad_s is not None and base.encoder_pad_s is None
    # In every language: spans of the audio first, the redo packed a second apart; sentence
    # windows but in English.
    for language, windows in (("en", (29.0, 0.5)), ("pt", (15.0, 0.0))):
        spans = fast.for_language(language)
        assert spans.pause_s is None and spans.redo_pause_s == SPANS_REDO_PAUSE_S
        assert (spans.window_s, spans.window_fill) == windows
    tiny = preset_options("tiny.en", "fast")
    assert tiny.pause_s is not None and tiny.window_s == 29.0  # tiny.en: speech packed
    assert replace(fast, pause_s=tiny.pause_s, redo_pause_s=tiny.redo_pause_s,
                   sentence_window_s=None) == tiny


def test_progress_never_goes_backwards_nor_moves_after_the_run() -> None:
    """A chunk retried on a fresh worker reports from 0 again; a report still in flight when
    the run ends must not overwrite the stage that follows."""
    from whisper_api.pipeline import Progress, _ChunkTracker

    tasks = [ChunkTask(f"r:{i}", "r", f"{i}.wav", 10.0 * i, 10.0, DecodeOptions())
             for i in range(2)]
    seen: list[Progress] = []

    async def scenario() -> None:
        tracker = _ChunkTracker(tasks, 20.0, seen.append, asyncio.get_running_loop())
        report = tracker.reporter(0)
        for done_s in (6.0, 1.0):  # the worker died at 6 s; its replacement starts over
            report(done_s)
            await asyncio.sleep(0)
        tracker.close()
        report(8.0)
        await asyncio.sleep(0)

    asyncio.run(scenario())
    assert [p.audio_done_s for p in seen] == [6.0, 6.0]


class RedoEcho:
    """Answers a redo task with one segment over each of its regions."""

    def __init__(self) -> None:
        self.redos: list[ChunkTask] = []

    def submit(self, task: ChunkTask, on_progress: object = None) -> Future[ChunkResult]:
        self.redos.append(task)
        return answered(ChunkResult(task.task_id, tuple(
            Segment(p.start_s, p.end_s, f"redone {i}") for i, p in enumerate(task.redo)), "en"))

    def cancel(self, request_id: str) -> int:
        return 0


def two_chunks(tmp_path: Path) -> _Redo:
    spans = [ChunkSpan(0.0, 20.0), ChunkSpan(20.0, 40.0)]
    tasks = [ChunkTask(f"r:{i}", "r", f"{i}.wav", s.start_s, 20.0, DecodeOptions(fan_out=True))
             for i, s in enumerate(spans)]
    session = Session("r", tmp_path)
    session.chunks.mkdir()
    return _Redo(write_silence(tmp_path / "file.wav", 40 * 16000), spans, tasks, session)


def test_suspect_neighbours_keep_their_own_pause_in_the_redo_audio(tmp_path: Path) -> None:
    """0.5 s of silence before and between the redo pass's regions, but the file's own pause
    (at most 2 s) between two suspect neighbours of one chunk: with 0.5 s, base skipped the short
    sentence again. Every redone segment still goes back to its chunk, at its time there."""
    said = (Segment(0.1, 0.5, "first answer"),)
    chunks = {0: ChunkResult("r:0", (), "en", pending=(
                  Pending(2.0, 3.0), Pending(5.0, 6.0, first=said),
                  Pending(9.0, 10.0, first=said, joined=True))),  # 3 s apart: 2 s kept
              1: ChunkResult("r:1", (), "en", pending=(
                  Pending(1.0, 2.0, first=said), Pending(2.8, 3.5, first=said, joined=True)))}
    executor = RedoEcho()
    redo = two_chunks(tmp_path)
    redone = asyncio.run(redo.run(executor, redo.ready(chunks, set()), 0))  # type: ignore[arg-type]
    placed = [x for p in executor.redos[0].redo for x in (p.start_s, p.end_s)]
    assert placed == pytest.approx([0.5, 1.5, 2.0, 3.0, 5.0, 6.0, 6.5, 7.5, 8.3, 9.0])
    assert [p.joined for p in executor.redos[0].redo] == [False, False, True, False, True]
    assert [owner for owner, _ in redone] == [0, 0, 0, 1, 1]
    assert [x for _, s in redone for x in (s.start, s.end)] == pytest.approx(
        [2.0, 3.0, 5.0, 6.0, 9.0, 10.0, 1.0, 2.0, 2.8, 3.5])


def test_the_redo_pass_marks_a_region_that_closely_follows_the_one_before_it_in_the_file(
    tmp_path: Path
) -> None:
    """`Pending.near`: the two come from one place, which `fast`'s last try windows apart from
    the rest. Chunk 1 finished first: its regions come first in the list."""
    chunks = {1: ChunkResult("r:1", (), "en", pending=(Pending(5.0, 6.0), Pending(12.0, 13.0))),
              0: ChunkResult("r:0", (), "en", pending=(Pending(2.0, 3.0), Pending(14.0, 15.0)))}
    executor = RedoEcho()
    redo = two_chunks(tmp_path)
    asyncio.run(redo.run(executor, redo.ready(chunks, set()), 0))  # type: ignore[arg-type]
    # 25-26 s and 32-33 s in the file: one place; then 2-3 s (earlier) and 14-15 s (11 s on).
    assert [p.near for p in executor.redos[0].redo] == [False, True, False, False]


class HalvesEcho(RedoEcho):
    """Answers a redo task with two segments over each region of 2.5 s or more (its first
    second and the rest), one over a shorter one."""

    def submit(self, task: ChunkTask, on_progress: object = None) -> Future[ChunkResult]:
        self.redos.append(task)
        segments = [Segment(p.start_s, p.end_s, "whole") if p.end_s - p.start_s < 2.5 else
                    s for p in task.redo
                    for s in (Segment(p.start_s, p.start_s + 1.0, "left"),
                              Segment(p.start_s + 1.2, p.end_s, "right"))]
        return answered(ChunkResult(task.task_id, tuple(dict.fromkeys(segments)), "en"))


def test_a_region_the_chunk_plan_cut_in_two_is_redone_whole(tmp_path: Path) -> None:
    """A whispered sentence cut between two chunks came back as "i i i" and "There There",
    each half decoded alone; decoded whole, word for word. Each chunk takes back the words on
    its side of the cut."""
    redo = two_chunks(tmp_path)
    chunks = {1: ChunkResult("r:1", (), "en", pending=(Pending(0.0, 2.0, quiet=True),
                                                       Pending(8.0, 9.0))),
              0: ChunkResult("r:0", (), "en", pending=(Pending(5.0, 6.0),
                                                       Pending(19.0, 20.0, quiet=True)))}
    executor = HalvesEcho()  # chunk 1 finished first: its regions first, but the cut half
    redone = asyncio.run(redo.run(executor, redo.ready(chunks, set()), 0))  # type: ignore[arg-type]
    decoded = executor.redos[0].redo
    assert [x for p in decoded for x in (p.start_s, p.end_s)] == pytest.approx(
        [0.5, 1.5, 2.0, 3.0, 3.5, 6.5])
    assert [p.quiet for p in decoded] == [False, False, True]
    assert [(owner, s.text) for owner, s in redone] == [
        (1, "whole"), (0, "whole"), (0, "left"), (1, "right")]
    assert [x for _, s in redone[2:] for x in (s.start, s.end)] == pytest.approx(
        [19.0, 20.0, 0.2, 2.0])


def test_a_region_at_a_chunk_edge_waits_for_the_chunk_beside_it(tmp_path: Path) -> None:
    """Its other half may be pending there; the rest goes to the redo pass at once."""
    redo = two_chunks(tmp_path)
    middle, edge = Pending(5.0, 6.0), Pending(19.0, 20.0)
    first = {0: ChunkResult("r:0", (), "en", pending=(middle, edge))}
    assert redo.ready(first, set()) == {0: [(0, middle)]}
    both = {**first, 1: ChunkResult("r:1", (), "en", pending=(Pending(0.0, 2.0),))}
    assert redo.ready(both, {(0, 0)}) == {0: [(1, edge)], 1: [(0, Pending(0.0, 2.0))]}
