"""The only module that imports faster_whisper: loading models, language detection, decoding.

Language detection (`Transcriber.detect_language`) looks at up to six 30 s windows of speech
(Silero VAD) spread over the audio and averages the language probabilities of all of them, so a
file that opens with music or silence, or with a foreign-language jingle, is still detected by
what most of its speech is. The pipeline runs it once per file and gives every chunk its answer.

Decoding strategy (measured in docs/benchmarks.md): Silero VAD splits the chunk into speech
regions (utterances), neighbouring regions are packed into decoder windows of at most `window_s`
seconds and decoded in batches with word timestamps. Each region is then judged by what came
back for it (regions.judge: word rate, compression, log-probability, repeated n-grams):
tiny.en sometimes skips or garbles a whole sentence inside a window while its timestamps still
cover it. A failing region is decoded again (in a batch, then alone by the sequential decoder:
beam 5, temperature fallback), and every segment's times are fitted inside its region. The
`fast` preset's windows hold the regions' speech packed without their pauses (`compact`), as
faster-whisper's batched pipeline packs them. Loud stretches between the VAD's regions (the
VAD hears no whispered or falsetto speech: `quiet.quiet_speech`) are decoded as regions too,
and kept only where the decoder is sure of them (`trusted`).
"""

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from whisper_api.chunking import spread_regions
from whisper_api.errors import ModelNotFoundError
from whisper_api.executors.base import WorkerConfig
from whisper_api.models import resolve_model
from whisper_api.quiet import quiet_speech
from whisper_api.regions import Region, RegionLimits, assign, fit_to_region, judge, redo_set
from whisper_api.transcript import DecodeOptions, Segment, Word

__all__ = ["ModelSet", "Transcriber", "resolve_model"]
log = logging.getLogger(__name__)
SAMPLE_RATE_HZ = 16000
DETECT_WINDOW_S = 30.0  # what the encoder sees at once
DETECT_WINDOWS = 6
MIN_DETECT_SPEECH_S = 1.0
# Whisper's own guard against hallucinations on silence (openai/whisper transcribe.py).
NO_SPEECH_PROB = 0.6
LOW_LOGPROB = -1.0
LIMITS = RegionLimits()
# The sequential decoder's own defaults for a region decoded again (faster-whisper transcribe).
REDO_BEAM_SIZE = 5
REDO_TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
QUIET_PAUSE_S = 0.3  # between quiet regions packed for their redo, as `fast` packs speech
ProgressSink = Callable[[float], None]


class Transcriber:
    """Loads the model once; decodes chunk audio into materialised segments."""

    def __init__(
        self, model: str, device: str, compute_type: str, cpu_threads: int,
        cache_dir: Path | None = None,
    ) -> None:
        from faster_whisper import BatchedInferencePipeline, WhisperModel

        resolved = resolve_model(model, cache_dir)
        try:
            self._model = WhisperModel(
                resolved, device=device, compute_type=compute_type, cpu_threads=cpu_threads
            )
        except Exception as exc:  # faster-whisper raises hub, OS and runtime errors alike
            raise ModelNotFoundError(
                f"cannot load model {model!r} (tried local directory, bundled tiny.en/base, "
                f"Hugging Face download of {resolved!r}): {exc}"
            ) from exc
        self._batched = BatchedInferencePipeline(self._model)
        self._vad_memo: tuple[np.ndarray, list[Region]] | None = None

    @classmethod
    def with_decoders(cls, model: Any, batched: Any) -> "Transcriber":
        """A transcriber around given decoders (a test seam: fakes that skip or garble)."""
        transcriber = cls.__new__(cls)
        transcriber._model, transcriber._batched = model, batched
        transcriber._vad_memo = None
        return transcriber

    def transcribe(
        self, audio: np.ndarray, options: DecodeOptions, on_progress: ProgressSink | None = None
    ) -> tuple[list[Segment], str, int]:
        """Segments (relative to `audio`), the language, and how many regions were redone.

        `on_progress` receives how many seconds of `audio` are decoded, once per decoded window.
        """
        report = on_progress or _ignore
        speech = self.find_utterances(audio)
        self._vad_memo = None  # used at most once: detection, then this decode
        quiet = set(quiet_speech(audio, speech))
        regions = sorted([*speech, *quiet])
        if not regions:
            return [], options.language or "en", 0
        groups, language = self._decode_regions(
            audio, regions, list(range(len(regions))), options.window_s, options, report)
        redo = self._regions_to_redo(regions, groups)
        # The language found once is reused: a redo never detects it again.
        self._repair(audio, regions, groups, redo,
                     replace(options, language=options.language or language),
                     {i for i, r in enumerate(regions) if r in quiet})
        kept = [s for region, group in zip(regions, groups, strict=True)
                if region not in quiet or trusted(region, group)
                for s in fit_to_region(region, [s for s in group if not _hallucinated(s)])]
        report(len(audio) / SAMPLE_RATE_HZ)
        if not options.word_timestamps:
            kept = [replace(s, words=()) for s in kept]
        return kept, language, len(redo)

    def _repair(self, audio: np.ndarray, regions: list[Region], groups: list[list[Segment]],
                redo: set[int], options: DecodeOptions, quiet: set[int]) -> None:
        """Replace the failing regions' groups with a new decoding of each region.

        Failing quiet regions (no VAD speech) are decoded again once, their speech packed
        into full windows (most are short, and on a FLEURS file one short window each doubled
        the redo's cost); they never reach the sequential decoder, which on music or noise
        would run up to six decodes (temperature fallback) to find nothing.
        """
        if options.batched_redo and options.pause_s is not None:
            # `fast` redoes every region packed into full windows already: one batch for all.
            left = self._redo_batched(audio, regions, groups, redo, options)
        else:
            spoken = redo - quiet
            left = self._redo_batched(audio, regions, groups, spoken, options) \
                if options.batched_redo else spoken
            packed = replace(options, pause_s=QUIET_PAUSE_S, redo_window_s=options.window_s)
            self._redo_batched(audio, regions, groups, redo & quiet, packed)
        for index in sorted(left - quiet) if options.sequential_redo else []:
            groups[index] = self._decode_alone(audio, regions[index], options)

    def find_utterances(self, audio: np.ndarray) -> list[Region]:
        """Speech regions by Silero VAD. The answer for the last array asked about is kept (the
        array itself, compared by identity): a one-chunk file's language detection and its
        decode then share one VAD pass instead of running it twice."""
        if self._vad_memo is not None and self._vad_memo[0] is audio:
            return self._vad_memo[1]
        from faster_whisper.vad import VadOptions, get_speech_timestamps

        vad = VadOptions(min_silence_duration_ms=300, speech_pad_ms=200, max_speech_duration_s=20)
        spans = get_speech_timestamps(audio, vad)
        regions = [(s["start"] / SAMPLE_RATE_HZ, s["end"] / SAMPLE_RATE_HZ) for s in spans]
        self._vad_memo = (audio, regions)
        return regions

    def detect_language(self, audio: np.ndarray) -> tuple[str, float]:
        """The language of the audio's speech and its mean probability over the windows heard.

        An English-only model answers ("en", 1.0); audio without speech ("en", 0.0).
        """
        if not self._model.model.is_multilingual:
            return "en", 1.0
        windows = self.speech_windows(audio)
        if not windows:
            return "en", 0.0
        totals: dict[str, float] = {}
        for window in windows:
            _, _, ranked = self._model.detect_language(audio=window)
            for language, probability in ranked:
                totals[language] = totals.get(language, 0.0) + probability
        best = max(totals, key=totals.__getitem__)
        return best, totals[best] / len(windows)

    def speech_windows(self, audio: np.ndarray) -> list[np.ndarray]:
        """Up to DETECT_WINDOWS windows of speech only, spread over the audio."""
        window = int(DETECT_WINDOW_S * SAMPLE_RATE_HZ)
        windows: list[np.ndarray] = []
        regions = spread_regions(len(audio) / SAMPLE_RATE_HZ)
        for start_s, end_s in regions:
            # The whole audio when it is one region: the same array the decode will get.
            region = audio if len(regions) == 1 else \
                audio[int(start_s * SAMPLE_RATE_HZ):int(end_s * SAMPLE_RATE_HZ)]
            spans = self.find_utterances(region)
            if not spans:
                continue
            speech = np.concatenate([region[int(a * SAMPLE_RATE_HZ):int(b * SAMPLE_RATE_HZ)]
                                     for a, b in spans])
            windows += [speech[i:i + window] for i in range(0, len(speech), window)
                        if len(speech) - i >= MIN_DETECT_SPEECH_S * SAMPLE_RATE_HZ]
        return pick_spread(windows, DETECT_WINDOWS)

    def _redo_batched(
        self, audio: np.ndarray, regions: list[Region], groups: list[list[Segment]],
        redo: set[int], options: DecodeOptions,
    ) -> set[int]:
        """Decode the failing regions again in short windows, in batches (beam 5); put their
        answers into `groups` and return the regions that still fail.

        Skips come in runs (the decoder stops early and drops the rest of a long window), so
        neighbouring failing regions share a window of at most `redo_window_s`: short windows
        rarely skip, and each window costs a full 30 s encoder pass.
        """
        if not redo:
            return redo
        chosen = sorted(redo)
        again, _ = self._decode_regions(audio, regions, chosen, options.redo_window_s,
                                        replace(options, beam_size=REDO_BEAM_SIZE), _ignore)
        for index, group in zip(chosen, again, strict=True):
            groups[index] = group
        return {i for i in chosen if judge(regions[i], groups[i], LIMITS)}

    def _decode_regions(
        self, audio: np.ndarray, regions: list[Region], chosen: list[int], window_s: float,
        options: DecodeOptions, report: ProgressSink,
    ) -> tuple[list[list[Segment]], str]:
        """The segments of each chosen region (in `audio`'s time) and the language.

        Windows are spans of `audio` over runs of neighbouring chosen regions or, with
        `options.pause_s`, the chosen regions' speech alone (`compact`).
        """
        picked = [regions[i] for i in chosen]
        if options.pause_s is None:
            windows = [w for run in _runs(chosen)
                       for w in pack_windows([regions[i] for i in run], window_s)]
            segments, language = self._decode(audio, windows, options, report)
            return assign(picked, segments), language
        speech, packed = compact(audio, picked, options.pause_s)
        scale = len(audio) / max(1, len(speech))  # progress in `audio`'s seconds
        segments, language = self._decode(speech, pack_windows(packed, window_s), options,
                                          lambda done_s: report(done_s * scale))
        return [[s.shifted(region[0] - at[0]) for s in group] for region, at, group
                in zip(picked, packed, assign(packed, segments), strict=True)], language

    @staticmethod
    def _regions_to_redo(regions: list[Region], groups: list[list[Segment]]) -> set[int]:
        verdicts = [judge(r, g, LIMITS) for r, g in zip(regions, groups, strict=True)]
        failing = {i for i, verdict in enumerate(verdicts) if verdict}
        if failing:
            log.debug("regions to redo: %s", Counter(v for v in verdicts if v))
        return redo_set(regions, groups, failing)

    def _decode(
        self, audio: np.ndarray, windows: list[Region], options: DecodeOptions,
        report: ProgressSink,
    ) -> tuple[list[Segment], str]:
        raw, info = self._batched.transcribe(
            audio,
            language=options.language,
            task=options.task,
            clip_timestamps=[{"start": a, "end": b} for a, b in windows],
            vad_filter=False,
            batch_size=options.batch_size,
            beam_size=options.beam_size,
            temperature=options.temperature,
            initial_prompt=options.initial_prompt,
            # Words always: they cut a window's text at region boundaries. No timestamp tokens:
            # in batched mode faster-whisper drops the text after a window's last timestamp
            # pair (it would seek there sequentially; batched windows never seek).
            word_timestamps=True,
            without_timestamps=True,
        )
        # Materialise here: generators must never cross a process boundary. The generator
        # decodes one batch of windows at a time, so its segments are the progress.
        segments = []
        for segment in raw:
            report(float(segment.end))
            if segment.text.strip():
                segments.append(_segment(segment))
        return segments, info.language

    def _decode_alone(
        self, audio: np.ndarray, region: Region, options: DecodeOptions
    ) -> list[Segment]:
        """The sequential decoder on one region: beam 5, Whisper's temperature fallback."""
        first, last = (int(t * SAMPLE_RATE_HZ) for t in region)
        temperatures = tuple(t for t in REDO_TEMPERATURES if t >= options.temperature)
        raw, _ = self._model.transcribe(
            audio[first:last],
            language=options.language,
            task=options.task,
            beam_size=REDO_BEAM_SIZE,
            temperature=temperatures or (options.temperature,),
            initial_prompt=options.initial_prompt,
            word_timestamps=options.word_timestamps,
            condition_on_previous_text=False,
            vad_filter=False,
        )
        return [_segment(s).shifted(region[0]) for s in raw if s.text.strip()]


class ModelSet:
    """Every model a worker serves, each loaded once; a task picks one by name."""

    def __init__(self, config: WorkerConfig) -> None:
        cache_dir = Path(config.cache_dir) if config.cache_dir else None
        self._default = config.model
        self._models = {
            name: load_transcriber(name, config.device, config.compute_type, config.cpu_threads,
                                   cache_dir)
            for name in config.all_models
        }

    def transcribe(
        self, audio: np.ndarray, options: DecodeOptions,
        on_progress: Callable[[float], None] | None = None,
    ) -> tuple[list[Segment], str, int]:
        return self._pick(options.model).transcribe(audio, options, on_progress)

    def detect_language(self, audio: np.ndarray, options: DecodeOptions) -> tuple[str, float]:
        return self._pick(options.model).detect_language(audio)

    def _pick(self, name: str) -> Transcriber:
        try:
            return self._models[name or self._default]
        except KeyError:  # the API checks names first; this guards a stale or foreign task
            raise ModelNotFoundError(f"this worker has no model {name!r}") from None


def pick_spread(items: list[np.ndarray], count: int) -> list[np.ndarray]:
    """At most `count` items, evenly spaced from first to last."""
    if len(items) <= count:
        return items
    return [items[round(i * (len(items) - 1) / (count - 1))] for i in range(count)]


def pack_windows(regions: list[Region], window_s: float) -> list[Region]:
    """Merge consecutive regions while the merged span fits in `window_s` seconds."""
    windows: list[Region] = []
    for start, end in regions:
        if windows and end - windows[-1][0] <= window_s:
            windows[-1] = (windows[-1][0], end)
        else:
            windows.append((start, end))
    return windows


def compact(
    audio: np.ndarray, regions: list[Region], pause_s: float
) -> tuple[np.ndarray, list[Region]]:
    """The regions' audio back to back with `pause_s` of silence after each, and where each
    region lies in it."""
    pause = np.zeros(int(pause_s * SAMPLE_RATE_HZ), dtype=audio.dtype)
    pieces: list[np.ndarray] = []
    packed: list[Region] = []
    at = 0
    for start_s, end_s in regions:
        piece = audio[int(start_s * SAMPLE_RATE_HZ):int(end_s * SAMPLE_RATE_HZ)]
        pieces += [piece, pause]
        packed.append((at / SAMPLE_RATE_HZ, (at + len(piece)) / SAMPLE_RATE_HZ))
        at += len(piece) + len(pause)
    return (np.concatenate(pieces) if pieces else audio[:0]), packed


def _runs(indices: list[int]) -> list[list[int]]:
    """Sorted indices split into runs of consecutive ones."""
    runs: list[list[int]] = []
    for index in indices:
        if runs and runs[-1][-1] == index - 1:
            runs[-1].append(index)
        else:
            runs.append([index])
    return runs


def _ignore(_: float) -> None:
    return None


def _hallucinated(segment: Segment) -> bool:
    return segment.no_speech_prob > NO_SPEECH_PROB and segment.avg_logprob < LOW_LOGPROB


def trusted(region: Region, group: list[Segment]) -> bool:
    """Whether a quiet region's answer is speech: every segment is sure of speech and of its
    words, and the text is no loop (on noise the decoder answers "you" or "." unsure of both;
    whispered sentences come back with no-speech probability under 0.1). Few words are fine:
    a stretch the VAD left out is often the first word of its sentence ("Nachdem")."""
    return judge(region, group, LIMITS) in (None, "few_words") and all(
        s.no_speech_prob <= NO_SPEECH_PROB and s.avg_logprob >= LOW_LOGPROB for s in group)


def _segment(raw: Any) -> Segment:
    words = tuple(
        Word(float(w.start), float(w.end), str(w.word), float(w.probability))
        for w in (getattr(raw, "words", None) or ())
    )
    return Segment(
        start=float(raw.start),
        end=float(raw.end),
        text=str(raw.text).strip(),
        words=words,
        avg_logprob=float(raw.avg_logprob),
        no_speech_prob=float(raw.no_speech_prob),
        tokens=tuple(int(t) for t in raw.tokens),
        temperature=float(raw.temperature or 0.0),
        compression_ratio=float(raw.compression_ratio),
    )


def load_transcriber(
    model: str, device: str, compute_type: str, cpu_threads: int, cache_dir: Path | None = None
) -> Transcriber:
    started = time.perf_counter()
    transcriber = Transcriber(model, device, compute_type, cpu_threads, cache_dir)
    log.debug("model %s loaded in %.2fs", model, time.perf_counter() - started)
    return transcriber
