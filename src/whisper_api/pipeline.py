"""Media file → transcript: convert, plan chunks at pauses, fan out, merge."""

import asyncio
import bisect
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from itertools import pairwise
from pathlib import Path
from typing import Any

from whisper_api.audio import concat_wav_slices, convert_to_wav, copy_wav_slice
from whisper_api.chunking import ChunkSpan, frame_energies_db, plan_chunks, spread_regions
from whisper_api.config import Preset, Settings
from whisper_api.executors.base import ChunkExecutor
from whisper_api.merging import join_text, merge_results
from whisper_api.sessions import Session
from whisper_api.transcript import (
    SPANS_REDO_PAUSE_S,
    ChunkResult,
    ChunkTask,
    DecodeOptions,
    Pending,
    Segment,
    Transcript,
)

log = logging.getLogger(__name__)
CONVERTED_NAME = "audio_16k.wav"  # the converted audio in a session's download/ folder
SPACE_FACTOR = 2.0  # the converted WAV and, for long files, its chunk copies
REDO_GAP_S = 0.5  # silence between the regions of the redo pass's audio
# ... but suspect neighbours (`Pending.first`) keep their own pause, up to this: with 0.5 s
# between them, base skipped "you can call me Abbie" there again; with its 2.7 s, not.
MAX_REDO_GAP_S = 2.0
# A region a chunk left pending this close to its end and the next chunk's this close to its
# start are one region cut by the chunk plan (`_continues`).
CUT_TOUCH_S = 0.05
# Pending regions this close in the file come from one place (a last-try window's span):
# `fast`'s last try in the redo pass windows them apart from the rest (`Pending.near`).
ONE_PLACE_S = DecodeOptions.redo_window_s  # 10 s, the span the last try decodes

# Measured per model (tiny.en, base) on long files built from the shared corpus
# (docs/benchmarks.md): windows filled to ~30 s (the encoder's fixed input); beam 5 costs little
# in a batch and wins WER; failing regions are first decoded again in short windows in one batch.
# `accurate` then gives what still fails to the sequential decoder (temperature fallback).
# `fast` packs speech only (pauses shortened to 0.3 s), as faster-whisper's batched pipeline
# does, and decodes failing regions again in full windows: ~20 % less time, ~1 point more WER.
# It encodes each batch of windows from the longest one's audio and 3 s of silence, not from
# 30 s: its short redo windows cost a third as much (English: 6-13 % less wall, same WER).
FAST_PAUSE_S = 0.3  # `fast`'s silence between packed regions, first pass and redo alike
FAST_ENCODER_PAD_S = 3.0
PRESETS: dict[str, DecodeOptions] = {
    "accurate": DecodeOptions(window_s=29.0, beam_size=5, batch_size=8, batched_redo=True),
    "fast": DecodeOptions(window_s=29.0, beam_size=5, batch_size=8, batched_redo=True,
                          sequential_redo=False, pause_s=FAST_PAUSE_S,
                          redo_pause_s=FAST_PAUSE_S, redo_window_s=29.0,
                          encoder_pad_s=FAST_ENCODER_PAD_S),
}
# Models whose measurements chose other settings than PRESETS (matched by model name). `base`
# `accurate`, in every language but English: windows of at most 20 s, each cut at its longest
# pause, so that a window holds about one sentence: on the pt/fr/de/es files several sentences
# in one window made `base` garble the hard ones (WER 20.3 -> 18.5 % over 16 files, pt and fr
# within 1.10 x the per-clip oracle). The redo windows are cut the same way, and quiet regions
# are packed into 20 s windows for their redo. English keeps 29 s windows: the same WER
# (10.6 / 10.0 / 10.8 % against 10.8 / 10.3 / 10.5 % on three files) in 25-35 % less time.
# `base` `fast`, in every language, decodes spans of the audio first, pauses kept: packed
# speech gave 25.0 % WER on pt seed 7 (sequential: 18.2 %, spans: 17.3 %) and 34-35 % on fr
# (spans: 30-34 %); on five English files, 803 words wrong against 760 (sequential: 871).
# In every language but English its spans are sentence windows of at most 15 s, encoded as
# such (above): short windows skip less and cost little, so 29 s spans took 1.37 x the wall
# and 1.18 x the WER summed over eight pt/fr/de/es files. English takes `accurate`'s 29 s
# windows, at least half full: over twelve English files (two of them 23 minutes), 2136
# words wrong against 2197 with 15 s sentence windows, in about the same wall (sequential:
# 2340). Its redo still packs, a second apart: 8-22 % less time than 10 s spans of the audio,
# WER summed over nine 166.2 -> 163.0 %.
MODEL_PRESETS: dict[str, dict[str, DecodeOptions]] = {
    "tiny.en": PRESETS,
    "base": {"accurate": replace(PRESETS["accurate"], sentence_window_s=20.0),
             "fast": replace(PRESETS["fast"], pause_s=None, redo_pause_s=SPANS_REDO_PAUSE_S,
                             sentence_window_s=15.0)},
}


def preset_options(model: str, preset: str) -> DecodeOptions:
    """A preset's decoding options for a model: a size name, or a directory named after one."""
    name = Path(model).name
    return MODEL_PRESETS.get(name, PRESETS)[preset]


@dataclass(frozen=True)
class TranscribeRequest:
    """`model` None is the default model; `language` None detects it once per file."""

    language: str | None = None
    model: str | None = None
    task: str = "transcribe"
    word_timestamps: bool = False
    initial_prompt: str | None = None
    temperature: float = 0.0
    preset: Preset | None = None


@dataclass(frozen=True)
class Progress:
    stage: str
    chunks_done: int = 0
    chunks_total: int = 0
    audio_done_s: float = 0.0
    audio_total_s: float = 0.0


ProgressCallback = Callable[[Progress], None]


def _ignore(_: Progress) -> None:
    return None


class _ChunkTracker:
    """Audio decoded so far across a file's chunks: finished chunks count whole, running ones
    by what their worker reported (per decoded window), so one-chunk files move too."""

    def __init__(self, tasks: list[ChunkTask], duration_s: float, on_progress: ProgressCallback,
                 loop: asyncio.AbstractEventLoop) -> None:
        self._tasks, self._duration_s, self._on_progress = tasks, duration_s, on_progress
        self._loop = loop
        self._decoded_s = [0.0] * len(tasks)
        self._done = [False] * len(tasks)
        self._closed = False

    def reporter(self, index: int) -> Callable[[float], None]:
        """Called on the executor's thread: hop to the event loop before touching state."""
        def report(done_s: float) -> None:
            if not self._loop.is_closed():  # a late report from a cancelled file's chunk
                self._loop.call_soon_threadsafe(self._decoded, index, done_s)

        return report

    def _decoded(self, index: int, done_s: float) -> None:
        # Never backwards: a chunk retried on a fresh worker (after a crash) reports from 0
        # again. Never after the run: a report still in flight would undo "merging".
        if not self._done[index] and not self._closed:
            done_s = min(max(done_s, 0.0), self._tasks[index].duration_s)
            self._decoded_s[index] = max(self._decoded_s[index], done_s)
            self.publish()

    def close(self) -> None:
        self._closed = True

    def chunks_done(self, done: list[bool]) -> None:
        self._done = done
        self.publish()

    def publish(self) -> None:
        decoded_s = sum(
            t.duration_s if finished else partial
            for t, finished, partial in zip(self._tasks, self._done, self._decoded_s, strict=True)
        )
        self._on_progress(Progress("transcribing", sum(self._done), len(self._tasks),
                                   min(decoded_s, self._duration_s), self._duration_s))


Redone = list[tuple[int, Segment]]  # (chunk index, segment in that chunk's time)


def _place(owners: list[tuple[int, Pending]], placed: list[tuple[float, float]],
           segments: tuple[Segment, ...]) -> Redone:
    """Each segment of a redo pass to the chunk that left its region, in that chunk's time
    (`placed`: where each owner's region lies in the redo pass's audio). A segment belongs to
    the region its middle lies nearest: two halves of one region cut between two chunks lie
    back to back there, and each chunk takes the words on its side of the cut."""
    bounds = [(a[1] + b[0]) / 2 for a, b in pairwise(placed)]
    redone = []
    for segment in segments:
        index = bisect.bisect(bounds, (segment.start + segment.end) / 2)
        owner, region = owners[index]
        redone.append((owner, segment.shifted(region.start_s - placed[index][0])))
    return redone


def _gaps(owners: list[tuple[int, Pending]], regions: list[tuple[float, float]],
          spans: list[ChunkSpan]) -> list[float]:
    """The silence after each region in the redo pass's audio: REDO_GAP_S; the file's own
    pause between two suspect neighbours (`Pending.joined`: one chunk's, in order); none
    between the two halves of a region the chunk plan cut (`_continues`)."""
    gaps = [REDO_GAP_S] * len(owners)
    for j in range(len(owners) - 1):
        if owners[j + 1][1].joined:
            pause_s = regions[j + 1][0] - regions[j][1]
            gaps[j] = min(max(pause_s, REDO_GAP_S), MAX_REDO_GAP_S)
        elif _continues(owners[j], owners[j + 1], spans):
            gaps[j] = 0.0
    return gaps


def _near(regions: list[tuple[float, float]]) -> list[bool]:
    """Whether each region of a redo pass starts at most ONE_PLACE_S after the end of the one
    before it in the list, in the file (the list follows the order chunks finished in)."""
    return [False] + [0.0 <= b[0] - a[1] <= ONE_PLACE_S for a, b in pairwise(regions)]


def _continues(before: tuple[int, Pending], after: tuple[int, Pending],
               spans: list[ChunkSpan]) -> bool:
    """Whether `after` is the rest of `before`, cut off by the chunk plan: the next chunk's
    region at its start, `before` at its chunk's end. Both pending, they are decoded as one
    (a whispered sentence cut in two came back as "i i i" and "There There"; whole, right)."""
    (k, first), (next_k, second) = before, after
    return next_k == k + 1 and _at_end(first, spans[k]) and _at_start(second) \
        and not first.first and not second.first


def _beside(owners: list[tuple[int, Pending]], spans: list[ChunkSpan]
            ) -> list[tuple[int, Pending]]:
    """The regions in the order given (the order their chunks finished: the windows they share
    then are those measured), but each second half of a region the chunk plan cut right after
    its first half, so that the two are decoded as one (`_continues`)."""
    rest = {i: j for i, before in enumerate(owners) for j, after in enumerate(owners)
            if _continues(before, after, spans)}
    ordered: list[tuple[int, Pending]] = []
    for i in range(len(owners)):
        if i in rest.values():
            continue  # placed after its first half
        at: int | None = i
        while at is not None:
            ordered.append(owners[at])
            at = rest.get(at)
    return ordered


def _at_start(region: Pending) -> bool:
    return region.start_s <= CUT_TOUCH_S


def _at_end(region: Pending, span: ChunkSpan) -> bool:
    return region.end_s >= span.duration_s - CUT_TOUCH_S


def _decoded_as(pending: list[Pending], gaps: list[float]) -> tuple[Pending, ...]:
    """The regions the redo pass decodes: two halves of a cut region (no gap between) as one,
    a quiet one only if both halves are quiet."""
    joined = [pending[0]]
    for gap, region in zip(gaps[:-1], pending[1:], strict=True):  # the gap before each
        if gap == 0.0:
            joined[-1] = joined[-1].through(region)
        else:
            joined.append(region)
    return tuple(joined)


def _put_back(results: list[ChunkResult], redone: Redone) -> list[ChunkResult]:
    """The redone segments into their chunks' results, which have nothing pending then."""
    segments: list[list[Segment]] = [list(r.segments) for r in results]
    for owner, segment in redone:
        segments[owner].append(segment)
    return [replace(r, segments=tuple(sorted(s, key=lambda x: x.start)), pending=())
            for r, s in zip(results, segments, strict=True)]


class Pipeline:
    def __init__(self, settings: Settings, executor: ChunkExecutor, workers: int) -> None:
        self._settings, self._executor, self._workers = settings, executor, workers

    def _preset(self, request: TranscribeRequest) -> Preset:
        return request.preset or self._settings.transcribe_preset

    def decode_options(self, request: TranscribeRequest) -> DecodeOptions:
        base = preset_options(request.model or self._settings.whisper_model,
                              self._preset(request))
        return replace(
            base, language=request.language, task=request.task,
            word_timestamps=request.word_timestamps, initial_prompt=request.initial_prompt,
            temperature=request.temperature, model=request.model or "",
        )

    async def transcribe(
        self,
        media: Path,
        session: Session,
        request: TranscribeRequest,
        on_progress: ProgressCallback = _ignore,
    ) -> Transcript:
        started = time.perf_counter()
        on_progress(Progress("converting"))
        wav = session.download / CONVERTED_NAME
        # Refuses media over MAX_AUDIO_DURATION_S itself, from metadata or while decoding.
        duration_s = await session.run(convert_to_wav, media, wav,
                                       self._settings.max_audio_duration_s, SPACE_FACTOR,
                                       session.check_open)
        spans = await session.run(self._plan, wav, duration_s, request)
        mode = "parallel" if len(spans) > 1 else "single"
        await session.run(partial(session.update_metadata, duration_s=duration_s,
                                  chunks=len(spans), mode=mode))
        tasks = await session.run(self._write_chunks, wav, spans, session, request)
        probability = 0.0
        if len(tasks) > 1 and request.language is None:
            on_progress(Progress("detecting language", 0, len(tasks), 0.0, duration_s))
            tasks, probability = await self._detect_language(wav, duration_s, session, tasks)
        results = await self._run(_Redo(wav, spans, tasks, session), duration_s, on_progress)
        on_progress(Progress("merging", len(tasks), len(tasks), duration_s, duration_s))
        segments = merge_results(
            [(span.start_s, r) for span, r in zip(spans, results, strict=True)],
            [span.end_s for span in spans],
        )
        language = tasks[0].options.language or results[0].language
        probability = probability or results[0].language_probability
        log.info("Merged %d segments from %d chunks (language=%s)", len(segments), len(spans),
                 language)
        elapsed = time.perf_counter() - started
        extra = {"processing_time": round(elapsed, 3), "mode": mode, "chunks": len(spans),
                 "task": request.task, "preset": self._preset(request),
                 "redone_regions": sum(r.redone_utterances for r in results)}
        return Transcript(join_text(segments), tuple(segments), language, duration_s, extra,
                          round(probability, 4))

    async def _detect_language(
        self, wav: Path, duration_s: float, session: Session, tasks: list[ChunkTask]
    ) -> tuple[list[ChunkTask], float]:
        """Detect the file's language once, from regions spread over it, before fan-out: each
        chunk deciding alone gave one 45-minute video three languages."""
        probe = session.chunks / "language_probe.wav"
        regions = spread_regions(duration_s)
        await session.run(concat_wav_slices, wav, probe, regions)
        options = replace(tasks[0].options, detect_only=True, fan_out=False)  # alone on the pool
        task = ChunkTask(f"{tasks[0].request_id}:language", tasks[0].request_id, str(probe), 0.0,
                         sum(b - a for a, b in regions), options)
        result = await asyncio.wrap_future(self._executor.submit(task))
        log.info("Detected language %s (p=%.2f) from %d regions in %.2fs", result.language,
                 result.language_probability, len(regions), result.elapsed_s)
        fixed = [replace(t, options=replace(t.options, language=result.language)) for t in tasks]
        return fixed, result.language_probability

    def _plan(self, wav: Path, duration_s: float, request: TranscribeRequest) -> list[ChunkSpan]:
        settings = self._settings
        if not settings.enable_parallel_transcription or self._workers < 2:
            return [ChunkSpan(0.0, duration_s)]
        if duration_s <= settings.audio_limit_single_core:
            return [ChunkSpan(0.0, duration_s)]
        energies = frame_energies_db(wav)
        # `fast` wants its workers to finish together; `accurate`, sentences kept whole.
        balanced = self._preset(request) == "fast"
        return plan_chunks(energies, duration_s, settings.parallel_chunk_duration, self._workers,
                           balanced)

    def _write_chunks(
        self, wav: Path, spans: list[ChunkSpan], session: Session, request: TranscribeRequest
    ) -> list[ChunkTask]:
        options = replace(self.decode_options(request), fan_out=len(spans) > 1)
        if len(spans) == 1:
            return [ChunkTask(f"{session.session_id}:0", session.session_id, str(wav), 0.0,
                              spans[0].duration_s, options)]
        tasks = []
        for index, span in enumerate(spans):
            session.check_open()  # a cancelled request's writer must not outlive its folder
            path = session.chunks / f"chunk_{index:03d}.wav"
            copy_wav_slice(wav, path, span.start_s, span.duration_s)
            tasks.append(ChunkTask(f"{session.session_id}:{index}", session.session_id,
                                   str(path), span.start_s, span.duration_s, options))
        return tasks

    async def _run(
        self, redo: "_Redo", duration_s: float, on_progress: ProgressCallback
    ) -> list[ChunkResult]:
        """Every chunk, then the regions they left (`ChunkResult.pending`) decoded again. A
        redo pass starts whenever a worker would otherwise idle (fewer chunks left than
        workers): it takes what the finished chunks left, while the other workers finish."""
        tasks = redo.tasks
        tracker = _ChunkTracker(tasks, duration_s, on_progress, asyncio.get_running_loop())
        # Longest chunk first: a long chunk left for last would keep one worker busy alone.
        order = sorted(range(len(tasks)), key=lambda i: -tasks[i].duration_s)
        index_of = {asyncio.wrap_future(self._executor.submit(tasks[i], tracker.reporter(i))): i
                    for i in order}
        results: dict[int, ChunkResult] = {}
        passes: list[asyncio.Task[Redone]] = []
        taken: set[tuple[int, int]] = set()  # (chunk, pending region) given to a redo pass
        tracker.publish()
        try:
            running = set(index_of)
            while running:
                done, running = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for future in done:
                    results[index_of[future]] = future.result()
                tracker.chunks_done([i in results for i in range(len(tasks))])
                ready = redo.ready(results, taken)
                if ready and len(running) < self._workers:
                    passes.append(asyncio.create_task(redo.run(self._executor, ready, len(passes))))
                    taken |= {(k, j) for k, regions in ready.items() for j, _ in regions}
            if passes:
                on_progress(Progress("redoing", len(tasks), len(tasks), duration_s, duration_s))
            redone = [r for done_pass in await asyncio.gather(*passes) for r in done_pass]
        finally:
            tracker.close()
            self._cancel_unfinished(tasks[0].request_id, [*index_of, *passes])
        return _put_back([results[i] for i in range(len(tasks))], redone)

    def _cancel_unfinished(self, request_id: str, futures: "list[asyncio.Future[Any]]") -> None:
        """A chunk failed or the caller went away: nothing of this request runs on."""
        if not all(f.done() for f in futures):
            self._executor.cancel(request_id)
            for future in futures:
                future.cancel()


@dataclass(frozen=True)
class _Redo:
    """A file's redo passes: pending regions of finished chunks, cut from the file's audio and
    decoded again in one task on every lane of its worker: full windows instead of a
    part-filled one per chunk, and no worker finishing its own chunk's redo alone."""

    wav: Path
    spans: list[ChunkSpan]
    tasks: list[ChunkTask]
    session: Session

    def ready(self, results: dict[int, ChunkResult], taken: set[tuple[int, int]]
              ) -> dict[int, list[tuple[int, Pending]]]:
        """Each finished chunk's pending regions no pass has taken yet, (index, region), but a
        region at an edge of its chunk waits for the neighbour there to finish: its other half
        may be pending too (`_continues`)."""
        ready: dict[int, list[tuple[int, Pending]]] = {}
        for k, result in results.items():  # in the order the chunks finished
            for j, region in enumerate(result.pending):
                if (k, j) not in taken and not self._waits(k, region, results):
                    ready.setdefault(k, []).append((j, region))
        return ready

    def _waits(self, k: int, region: Pending, results: dict[int, ChunkResult]) -> bool:
        before = k > 0 and _at_start(region) and k - 1 not in results
        after = k + 1 < len(self.spans) and _at_end(region, self.spans[k]) \
            and k + 1 not in results
        return before or after

    async def run(self, executor: ChunkExecutor, chunks: dict[int, list[tuple[int, Pending]]],
                  number: int) -> Redone:
        owners = _beside([(k, p) for k, regions in chunks.items() for _, p in regions],
                         self.spans)
        path = self.session.chunks / f"redo_{number}.wav"
        regions = [(self.spans[k].start_s + p.start_s, self.spans[k].start_s + p.end_s)
                   for k, p in owners]
        gaps = _gaps(owners, regions, self.spans)
        # Silence before the first region too: a whisper at the very start of the audio,
        # encoded short (`fast`), came back as "There There There"; 0.2 s before it, right.
        placed = await self.session.run(concat_wav_slices, self.wav, path, regions, gaps,
                                        REDO_GAP_S)
        pending = [replace(p, start_s=a, end_s=b, near=n)
                   for (_, p), (a, b), n in zip(owners, placed, _near(regions), strict=True)]
        first = self.tasks[0]
        task = ChunkTask(f"{first.request_id}:redo{number}", first.request_id, str(path), 0.0,
                         placed[-1][1], replace(first.options, fan_out=False),
                         _decoded_as(pending, gaps))
        redone = await asyncio.wrap_future(executor.submit(task))
        return _place(owners, placed, redone.segments)
