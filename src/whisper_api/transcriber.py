"""The only module that imports faster_whisper: loading models, language detection, decoding.

Language detection (`Transcriber.detect_language`) looks at up to six 30 s windows of speech
(Silero VAD) spread over the audio and averages the language probabilities of all of them, so a
file that opens with music or silence, or with a foreign-language jingle, is still detected by
what most of its speech is. The pipeline runs it once per file and gives every chunk its answer.

Decoding strategy (measured in docs/benchmarks.md): Silero VAD splits the chunk into utterances,
neighbouring utterances are packed into decoder windows of at most `window_s` seconds and decoded
in one batch with timestamps. tiny.en sometimes skips a whole sentence inside a window; an
utterance that the returned timestamps do not cover is decoded again on its own.
"""

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from whisper_api.chunking import spread_regions
from whisper_api.errors import ModelNotFoundError
from whisper_api.executors.base import WorkerConfig
from whisper_api.models import resolve_model
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

    def transcribe(
        self, audio: np.ndarray, options: DecodeOptions
    ) -> tuple[list[Segment], str, int]:
        """Segments (relative to `audio`), the language, and how many utterances were redone."""
        utterances = self.find_utterances(audio)
        if not utterances:
            return [], options.language or "en", 0
        windows = pack_windows(utterances, options.window_s)
        segments, language = self._decode(audio, windows, options, with_timestamps=True)
        missing = [u for u in utterances if not is_covered(u, segments, options.coverage_min)]
        if missing:
            kept, missing = split_for_redo(utterances, segments, missing)
            redone, _ = self._decode(audio, missing, options, with_timestamps=False)
            segments = sorted([*kept, *redone], key=lambda s: s.start)
        return [s for s in segments if not _hallucinated(s)], language, len(missing)

    def find_utterances(self, audio: np.ndarray) -> list[tuple[float, float]]:
        from faster_whisper.vad import VadOptions, get_speech_timestamps

        vad = VadOptions(min_silence_duration_ms=300, speech_pad_ms=200, max_speech_duration_s=20)
        spans = get_speech_timestamps(audio, vad)
        return [(s["start"] / SAMPLE_RATE_HZ, s["end"] / SAMPLE_RATE_HZ) for s in spans]

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
        for start_s, end_s in spread_regions(len(audio) / SAMPLE_RATE_HZ):
            region = audio[int(start_s * SAMPLE_RATE_HZ):int(end_s * SAMPLE_RATE_HZ)]
            spans = self.find_utterances(region)
            if not spans:
                continue
            speech = np.concatenate([region[int(a * SAMPLE_RATE_HZ):int(b * SAMPLE_RATE_HZ)]
                                     for a, b in spans])
            windows += [speech[i:i + window] for i in range(0, len(speech), window)
                        if len(speech) - i >= MIN_DETECT_SPEECH_S * SAMPLE_RATE_HZ]
        return pick_spread(windows, DETECT_WINDOWS)

    def _decode(
        self,
        audio: np.ndarray,
        clips: list[tuple[float, float]],
        options: DecodeOptions,
        with_timestamps: bool,
    ) -> tuple[list[Segment], str]:
        raw, info = self._batched.transcribe(
            audio,
            language=options.language,
            task=options.task,
            clip_timestamps=[{"start": a, "end": b} for a, b in clips],
            vad_filter=False,
            batch_size=options.batch_size,
            beam_size=options.beam_size,
            temperature=options.temperature,
            initial_prompt=options.initial_prompt,
            word_timestamps=options.word_timestamps,
            without_timestamps=not with_timestamps,
        )
        # Materialise here: generators must never cross a process boundary.
        return [_segment(s) for s in raw if s.text.strip()], info.language


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
        self, audio: np.ndarray, options: DecodeOptions
    ) -> tuple[list[Segment], str, int]:
        return self._pick(options.model).transcribe(audio, options)

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


def pack_windows(
    utterances: list[tuple[float, float]], window_s: float
) -> list[tuple[float, float]]:
    """Merge consecutive utterances while the merged span fits in `window_s` seconds."""
    windows: list[tuple[float, float]] = []
    for start, end in utterances:
        if windows and end - windows[-1][0] <= window_s:
            windows[-1] = (windows[-1][0], end)
        else:
            windows.append((start, end))
    return windows


def split_for_redo(
    utterances: list[tuple[float, float]], segments: list[Segment],
    missing: list[tuple[float, float]],
) -> tuple[list[Segment], list[tuple[float, float]]]:
    """The segments to keep, and every utterance to decode again.

    A segment overlapping a missing utterance is dropped (its text may hold part of it), so
    every other utterance that segment overlapped must be decoded again too, or its words would
    be lost with it: grow both sets until they no longer change.
    """
    redo = set(missing)
    while True:
        dropped = [s for s in segments if any(_overlap(u, s) > 0 for u in redo)]
        grown = redo | {u for u in utterances if any(_overlap(u, s) > 0 for s in dropped)}
        if grown == redo:
            kept = [s for s in segments if s not in dropped]
            return kept, sorted(redo)
        redo = grown


def is_covered(utterance: tuple[float, float], segments: list[Segment], minimum: float) -> bool:
    covered = sum(_overlap(utterance, s) for s in segments)
    return covered >= minimum * (utterance[1] - utterance[0])


def _overlap(utterance: tuple[float, float], segment: Segment) -> float:
    return max(0.0, min(utterance[1], segment.end) - max(utterance[0], segment.start))


def _hallucinated(segment: Segment) -> bool:
    return segment.no_speech_prob > NO_SPEECH_PROB and segment.avg_logprob < LOW_LOGPROB


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
