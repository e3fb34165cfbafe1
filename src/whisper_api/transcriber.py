"""The only module that imports faster_whisper: loading models, language detection, decoding.

Language detection (`Transcriber.detect_language`) looks at up to six 30 s windows of speech
(Silero VAD) spread over the audio and averages the language probabilities of all of them, so a
file that opens with music or silence, or with a foreign-language jingle, is still detected by
what most of its speech is. It glances first at the first and last windows' first 15 s, encoded
short: where both are sure of one language, that is the answer, at a third of a 30 s pass each.
The pipeline runs it once per file and gives every chunk its answer.

Decoding strategy (measured in docs/benchmarks.md): Silero VAD splits the chunk into speech
regions (utterances), neighbouring regions are packed into decoder windows of at most `window_s`
seconds and decoded in batches with word timestamps. Each region is then judged by what came
back for it (regions.judge: word rate, compression, log-probability, repeated n-grams):
tiny.en sometimes skips or garbles a whole sentence inside a window while its timestamps still
cover it. A failing region is decoded again (in a batch, then alone by the sequential decoder:
beam 5, temperature fallback, unless the batch wrote the same words, as unsure of them:
`regions.agreed`), and every segment's times are fitted inside its region. The
`fast` preset's windows hold the regions' speech packed without their pauses (`compact`), as
faster-whisper's batched pipeline packs them (`base`'s: spans of the audio, pauses kept). Loud
stretches between the VAD's regions (the VAD hears no whispered or falsetto speech:
`quiet.quiet_speech`) are decoded as regions too, and kept only where the decoder is sure of
them (`trusted`). With `encoder_pad_s` (`fast`), a batch of windows is encoded from the longest
one's audio and that much silence, not from Whisper's 30 s: the encoder is most of the work, and
its cost grows faster than its input.
"""

import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from whisper_api.chunking import spread_regions
from whisper_api.errors import ModelNotFoundError
from whisper_api.executors.base import WorkerConfig
from whisper_api.models import resolve_model
from whisper_api.quiet import MAX_REGION_S, quiet_speech, run_on
from whisper_api.regions import (
    Region,
    RegionLimits,
    agreed,
    assign,
    carry,
    drifted,
    fit_to_region,
    judge,
    redo_set,
    said_once,
    straddling,
    tail,
    unusable,
    word_count,
)
from whisper_api.transcript import Decoded, DecodeOptions, Pending, Segment, Word

__all__ = ["ModelSet", "Transcriber", "resolve_model"]
log = logging.getLogger(__name__)
SAMPLE_RATE_HZ = 16000
MODEL_WINDOW_S = 30.0  # what the model hears at once (Whisper pads every window to 30 s)
FRAMES_PER_S = 100  # log-mel frames the encoder takes per second of audio
DETECT_WINDOWS = 6
MIN_DETECT_SPEECH_S = 1.0
SURE_LANGUAGE = 0.9
# On 80 clips and 12 long files (base), a glance and, where it was unsure, the full windows
# answered the language the 30 s windows alone did on every one, in 57 s against 129 s.
GLANCE_S = 15.0
DETECT_PAD_S = 3.0
# Whisper's own guard against hallucinations on silence (openai/whisper transcribe.py) drops a
# window the model calls no speech (> 0.6) unless it is sure of the words (log-probability
# >= -1). Our windows start at speech, so such a window is music or noise the VAD took for
# speech; "Thank you." on a chord came back at -0.97 on an AMD EPYC, so words there must be
# sure (>= -0.5). No kept segment of real speech on four long files (English with tiny.en,
# pt and de with base, both presets) had a no-speech probability over 0.6 at all.
NO_SPEECH_PROB = 0.6
LOW_LOGPROB = -1.0
SURE_LOGPROB = -0.5
LIMITS = RegionLimits()
# The sequential decoder's own defaults for a region decoded again (faster-whisper transcribe).
REDO_BEAM_SIZE = 5
REDO_TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
# A sequential redo of a short region stops at this many tokens: far more than any language
# speaks (English ~5 tokens/s), so only a loop reaches it, which otherwise runs to the model's
# 448 tokens at each of six temperatures (base took 5.5 s on a 0.6 s region of noise). At
# least 96, so that a loop cut there still compresses past 2.4 and the fallback goes on as
# before: at 32, "see you next time, see you next time, see you" passed and was kept (tiny.en
# seed 42: WER 11.6 -> 12.2 %). Longer regions keep the model's own limit (a user's prompt
# takes up to 224 tokens of it).
REDO_TOKENS_PER_S = 16.0
REDO_MIN_TOKENS = 96
REDO_MAX_CAPPED_TOKENS = 200
LEAD_S = 1.0
SPAN_REDO_S = DecodeOptions.redo_window_s  # `fast`'s last try: `accurate`'s redo windows
# A word of a packed region reaching this far past the pause after it (or before it) makes
# the region and that neighbour suspect; a redo replaces their answers only when it hears at
# least MORE_WORDS more words (a skipped sentence; the redo of a sound region often wrote it
# worse, so it never replaces one on a whim).
STRADDLE_SLACK_S = 0.3
STRADDLE_WORDS = 3
# Whisper's word alignment starts a word that follows a pause early, over the silence before
# it. Over 16 files, 23 suspects whose first word started 0.62-0.98 s early ("darlegen." in
# every German run) had redos that heard nothing more; those that brought a skipped sentence
# back started 1.05 s or more early. A last word running 0.73 s late already can mean a skip.
STRADDLE_EARLY_S = 0.4
# A region's first word starting this long after the region: 1.3 s where the aligner had timed
# its first words into a skipped sentence's region (the VAD's own padding is 0.2 s).
DRIFT_LATE_S = 1.0
MORE_WORDS = 2
# The most words of the next sentence a redone region's first answer may end with and still
# have them kept after its new answer (`regions.tail`): seen were one or two ("And", "For
# although"). base `fast`, fourteen English files: 2434 -> 2411 words wrong, none worse by
# more than run-to-run noise (docs/benchmarks.md, twenty-fourth session).
TAIL_WORDS = 4
# Between quiet regions packed for their redo, as tiny.en `fast` packs speech (`fast` packs
# them with its spoken ones, at its own `redo_pause_s`).
QUIET_PAUSE_S = 0.3
# Pending regions this close leave a chunk as one (`_adjoins`): a pause within a sentence
# (the VAD pads each side by 0.2 s, so 0.3 s here is 0.7 s of silence).
ADJOIN_S = 0.3
ProgressSink = Callable[[float], None]
Suspects = dict[int, list[Segment]]  # a run of suspect neighbours: region -> first answer
T = TypeVar("T")


class Transcriber:
    """Loads the model once; decodes chunk audio into materialised segments."""

    def __init__(
        self, model: str, device: str, compute_type: str, cpu_threads: int,
        cache_dir: Path | None = None, lanes: int = 1,
    ) -> None:
        from faster_whisper import BatchedInferencePipeline, WhisperModel

        resolved = resolve_model(model, cache_dir)
        _size_encoder_input_by_lane()
        try:
            # `num_workers` lanes share one copy of the weights (CTranslate2 replicas).
            self._model = WhisperModel(resolved, device=device, compute_type=compute_type,
                                       cpu_threads=cpu_threads, num_workers=lanes)
        except Exception as exc:  # faster-whisper raises hub, OS and runtime errors alike
            raise ModelNotFoundError(
                f"cannot load model {model!r} (tried local directory, bundled tiny.en/base, "
                f"Hugging Face download of {resolved!r}): {exc}"
            ) from exc
        # One pipeline per lane: a pipeline keeps state between its batches.
        self._lanes = [BatchedInferencePipeline(self._model) for _ in range(max(1, lanes))]
        self._vad_memo: tuple[np.ndarray, list[Region]] | None = None

    @classmethod
    def with_decoders(cls, model: Any, *lanes: Any) -> "Transcriber":
        """A transcriber around given decoders (a test seam: fakes that skip or garble)."""
        transcriber = cls.__new__(cls)
        transcriber._model, transcriber._lanes = model, list(lanes)
        transcriber._vad_memo = None
        return transcriber

    def transcribe(
        self, audio: np.ndarray, options: DecodeOptions, on_progress: ProgressSink | None = None
    ) -> Decoded:
        """Segments (relative to `audio`), the language, how many regions were redone, and
        (a chunk of a fan-out) the regions left for the file's redo pass.

        `on_progress` receives how many seconds of `audio` are decoded, once per decoded window.
        """
        report = on_progress or _ignore
        options = options.for_language(options.language)
        speech = run_on(audio, self.find_utterances(audio))
        self._vad_memo = None  # used at most once: detection, then this decode
        quiet = set(quiet_speech(audio, speech))
        regions = sorted([*speech, *quiet])
        if not regions:
            return [], options.language or "en", 0, ()
        groups, language = self._decode_regions(
            audio, regions, list(range(len(regions))), options.window_s, options, report)
        redo = self._regions_to_redo(regions, groups)
        # The language found once is reused: a redo never detects it again.
        options = replace(options, language=options.language or language)
        quiet_at = {i for i, r in enumerate(regions) if r in quiet}
        first = _suspects(regions, groups, redo | quiet_at, options)
        tails = _tails(groups, redo, redo | first.keys())
        last = self._repair(audio, regions, groups, redo, options, quiet_at) | first.keys()
        pending: tuple[Pending, ...] = ()
        if options.fan_out:  # the file's redo pass decodes them with every other chunk's
            pending = _pending(regions, last, quiet_at, first, tails)
            for index in last:  # their tails travel with them
                groups[index] = []
                tails.pop(index, None)
        else:
            runs = [{i: first[i] for i in run} for run in _runs(sorted(first))]
            self._last_repair(audio, regions, groups, last, options, quiet_at, runs)
        report(len(audio) / SAMPLE_RATE_HZ)
        kept = _kept(regions, groups, quiet_at, options, tails)
        return kept, language, len(redo) + len(first), pending

    def redo(
        self, audio: np.ndarray, pending: tuple[Pending, ...], options: DecodeOptions,
        on_progress: ProgressSink | None = None,
    ) -> Decoded:
        """The redo pass: `audio` holds the pending regions of a file's chunks, decoded again as
        their chunks would have (`_last_repair`), but all at once."""
        options = options.for_language(options.language)
        regions = [(p.start_s, p.end_s) for p in pending]
        groups: list[list[Segment]] = [[] for _ in regions]
        quiet_at = {i for i, p in enumerate(pending) if p.quiet}
        self._last_repair(audio, regions, groups, set(range(len(regions))), options, quiet_at,
                          _suspect_runs(pending), _places(pending))
        tails = {i: [s.shifted(p.start_s) for s in p.tail] for i, p in enumerate(pending)
                 if p.tail}
        (on_progress or _ignore)(len(audio) / SAMPLE_RATE_HZ)
        return _kept(regions, groups, quiet_at, options, tails), options.language or "en", 0, ()

    def _repair(self, audio: np.ndarray, regions: list[Region], groups: list[list[Segment]],
                redo: set[int], options: DecodeOptions, quiet: set[int]) -> set[int]:
        """Decode failing regions again in short windows (`accurate`); the regions left for
        `_last_repair`: all of them for `fast`, what still fails and every quiet one for
        `accurate`."""
        if _packed_redo(options):
            return redo
        spoken = redo - quiet
        left = spoken
        if options.batched_redo:
            first = {i: groups[i] for i in spoken}
            left = self._redo_batched(audio, regions, groups, spoken, options)
            left = {i for i in left if not agreed(regions[i], first[i], groups[i], LIMITS)}
        return (left if options.sequential_redo else set()) | (redo & quiet)

    def _last_repair(self, audio: np.ndarray, regions: list[Region],
                     groups: list[list[Segment]], last: set[int], options: DecodeOptions,
                     quiet: set[int], suspects: list[Suspects] | None = None,
                     places: list[frozenset[int]] | None = None) -> None:
        """Quiet regions (no VAD speech), in both presets: decoded again, their speech packed
        into `window_s` windows of their own (one short window each doubled the redo's cost on
        a FLEURS file; packed with loud speech, a whisper comes back empty: base `fast` lost
        both whispered clips of a file that way), never by the sequential decoder (on music or
        noise it would run up to six decodes, temperature fallback, to find nothing); `fast`
        gives each one still untrusted a last window alone. Spoken regions: `fast` packs them
        into the quiet ones' batch (windows apart), then short windows for those still failing,
        then a window alone for each that fails there too (`_try_alone`);
        `accurate` gives them to the sequential decoder one by one. Each run of suspect
        neighbours (`suspects`: their first answers) keeps them unless the redo heard clearly
        more words. In the file's redo pass, whose audio strings together regions from all over
        the file, the regions of each place (`places`) share their last windows only with each
        other, and every other region of it but the suspects has a last window of its own."""
        pause_s = QUIET_PAUSE_S if options.redo_pause_s is None else options.redo_pause_s
        packed = replace(options, pause_s=pause_s, redo_window_s=options.window_s)
        if _packed_redo(options):
            # `fast` packs its spoken regions as the quiet ones: both in one batch, in windows
            # of their own (two batches of one or two windows each left a lane idle). It has
            # no sequential decoder to fall back on: a spoken region the packed batch drops
            # again (a 3 s sentence, twice) gets one more try in a short window of its own
            # audio, pauses and all; so does a quiet one still untrusted, in a window alone: a
            # whisper packed with a noise the decoder looped on came back as the loop.
            runs = suspects or []
            first = {i for run in runs for i in run}
            left = self._redo_batched(audio, regions, groups, last - first, packed,
                                      (frozenset(last & quiet),)) - quiet
            drowned = {i for i in last & quiet if not trusted(regions[i], groups[i])}
            # The redo pass's audio holds unrelated regions 0.5 s apart: "profit" (base seed
            # 13, 694 s) was timed into the region before it there, 50 s earlier in the file.
            # The last windows are encoded from a full 30 s input: their answer then no longer
            # hangs on the length of the others in their batch (a whisper came back right, or
            # 6 words wrong, with the windows beside it). base, seven English files: 5 words
            # fewer wrong; tiny.en, three: 4 fewer (docs/benchmarks.md, twenty-first session).
            spans = replace(options, pause_s=None, redo_window_s=SPAN_REDO_S, encoder_pad_s=None)
            apart = _last_try_apart(runs, drowned, left, places)
            tried = left | first | drowned
            still = self._redo_batched(audio, regions, groups, tried, spans, apart)
            _keep_unless_more_words(regions, groups, runs)
            self._try_alone(audio, regions, groups, still & _shared(left, tried, apart), spans)
            return
        self._redo_batched(audio, regions, groups, last & quiet, packed)
        alone = sorted(last - quiet)
        again = self._map(lambda i: self._decode_alone(audio, regions[i], options), alone,
                          self._lanes_for(options))
        for index, group in zip(alone, again, strict=True):
            groups[index] = group

    def _try_alone(self, audio: np.ndarray, regions: list[Region], groups: list[list[Segment]],
                   failing: set[int], options: DecodeOptions) -> None:
        """`fast`'s spoken regions still failing after a last try whose window they shared with
        a neighbour (`_shared`: one with a window to itself would hear the same again), each
        once more in a window of its own; a new answer is kept only where it passes the judge.
        The decoder drops a short piece at the end of a window: a falsetto "this is all" (1 s)
        after "... beyond the ridge, asleep." came back empty there, and right alone (base,
        seed 7). Each window's segments go to its own region only: a word heard just before a
        region went to the region before it."""
        chosen = sorted(failing)
        if not chosen:
            return
        windows = widen([regions[i] for i in chosen], regions)
        segments, _ = self._decode(audio, windows, replace(options, beam_size=REDO_BEAM_SIZE),
                                   _ignore)
        for index, (start, end) in zip(chosen, windows, strict=True):
            answer = [s for s in segments if start <= (s.start + s.end) / 2 < end]
            if not judge(regions[index], answer, LIMITS):
                groups[index] = answer

    def _lanes_for(self, options: DecodeOptions) -> int:
        """All lanes, unless the chunk is one of a fan-out (the other workers hold the cores)."""
        return 1 if options.fan_out else len(self._lanes)

    @staticmethod
    def _map(work: Callable[[Any], T], items: list[Any], lanes: int) -> list[T]:
        """`work` over `items`, on up to `lanes` threads at once."""
        lanes = min(lanes, len(items))
        if lanes <= 1:
            return [work(item) for item in items]
        with ThreadPoolExecutor(lanes) as pool:  # CTranslate2 releases the GIL while it decodes
            return list(pool.map(work, items))

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
        # A glance first: the first and last windows' first GLANCE_S of speech, each encoded
        # from its own length and DETECT_PAD_S of silence (a third of a 30 s pass). Where both
        # are sure of one language, the windows between would not change the answer. Where
        # they are not, every window is heard as Whisper hears it, 30 s each.
        glance = int(GLANCE_S * SAMPLE_RATE_HZ)
        ends = [windows[0], windows[-1]] if len(windows) > 1 else windows
        answers = self._hear([w[:glance] for w in ends], DETECT_PAD_S)
        if len({a[0][0] for a in answers}) > 1 or min(a[0][1] for a in answers) < SURE_LANGUAGE:
            answers = self._hear(windows, None)
        return _most_likely(answers)

    def _hear(self, windows: list[np.ndarray],
              pad_s: float | None) -> list[list[tuple[str, float]]]:
        """Each window's languages, most likely first, encoded with `pad_s` (`encoder_frames`)."""
        def hear(window: np.ndarray) -> list[tuple[str, float]]:
            with _encoder_input(encoder_frames([(0.0, len(window) / SAMPLE_RATE_HZ)], pad_s)):
                return self._model.detect_language(audio=window)[2]  # type: ignore[no-any-return]

        return self._map(hear, windows, len(self._lanes))

    def speech_windows(self, audio: np.ndarray) -> list[np.ndarray]:
        """Up to DETECT_WINDOWS windows of speech only, spread over the audio. The VAD hears
        the whole audio: a one-chunk file's decode needs that pass anyway (`find_utterances`
        keeps it), and the pipeline's probe for a longer file holds the spread regions alone."""
        window = int(MODEL_WINDOW_S * SAMPLE_RATE_HZ)
        windows: list[np.ndarray] = []
        utterances = self.find_utterances(audio)
        for start_s, end_s in spread_regions(len(audio) / SAMPLE_RATE_HZ):
            spans = [(max(a, start_s), min(b, end_s)) for a, b in utterances
                     if a < end_s and b > start_s]
            if not spans:
                continue
            speech = np.concatenate([audio[int(a * SAMPLE_RATE_HZ):int(b * SAMPLE_RATE_HZ)]
                                     for a, b in spans])
            windows += [speech[i:i + window] for i in range(0, len(speech), window)
                        if len(speech) - i >= MIN_DETECT_SPEECH_S * SAMPLE_RATE_HZ]
        return pick_spread(windows, DETECT_WINDOWS)

    def _redo_batched(
        self, audio: np.ndarray, regions: list[Region], groups: list[list[Segment]],
        redo: set[int], options: DecodeOptions, apart: tuple[frozenset[int], ...] = (),
    ) -> set[int]:
        """Decode the failing regions again in short windows, in batches (beam 5); put their
        answers into `groups` and return the regions that still fail.

        Skips come in runs (the decoder stops early and drops the rest of a long window), so
        neighbouring failing regions share a window of at most `redo_window_s`: short windows
        rarely skip, and each window costs a full 30 s encoder pass. Regions of a set in `apart`
        share windows only with each other.
        """
        if not redo:
            return redo
        chosen = sorted(redo)
        again, _ = self._decode_regions(audio, regions, chosen, options.redo_window_s,
                                        replace(options, beam_size=REDO_BEAM_SIZE), _ignore,
                                        apart)
        for index, group in zip(chosen, again, strict=True):
            groups[index] = group
        return {i for i in chosen if judge(regions[i], groups[i], LIMITS)}

    def _decode_regions(
        self, audio: np.ndarray, regions: list[Region], chosen: list[int], window_s: float,
        options: DecodeOptions, report: ProgressSink, apart: tuple[frozenset[int], ...] = (),
    ) -> tuple[list[list[Segment]], str]:
        """The segments of each chosen region (in `audio`'s time) and the language.

        Windows are spans of `audio` over runs of neighbouring chosen regions (cut at their
        longest pauses, each starting a little before its first region) or, with
        `options.pause_s`, the chosen regions' speech alone (`compact`). The chosen regions of
        each set in `apart` get windows of their own, decoded in the same batches as the others.
        """
        alone = frozenset().union(*apart)
        parts = [[i for i in chosen if i not in alone]] + [[i for i in chosen if i in group]
                                                           for group in apart]
        if options.pause_s is None:
            windows = sorted(w for part in parts for run in _runs(part)
                             for w in pack_windows([regions[i] for i in run], window_s,
                                                   options.window_fill))
            segments, language = self._decode(audio, widen(windows, regions), options, report)
            return assign([regions[i] for i in chosen], segments), language
        order = [i for part in parts for i in part]
        picked = [regions[i] for i in order]
        speech, packed = compact(audio, picked, options.pause_s)
        windows, at = [], 0
        for part in parts:  # `packed` holds each part's regions in turn
            windows += pack_windows(packed[at:at + len(part)], window_s)
            at += len(part)
        scale = len(audio) / max(1, len(speech))  # progress in `audio`'s seconds
        segments, language = self._decode(speech, windows, options,
                                          lambda done_s: report(done_s * scale))
        found = {index: [s.shifted(region[0] - at[0]) for s in group] for index, region, at, group
                 in zip(order, picked, packed, assign(packed, segments), strict=True)}
        return [found[i] for i in chosen], language

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
        """The windows' segments, in order; the windows are split over the lanes in runs."""
        runs = _split(windows, self._lanes_for(options))
        progress = _LaneProgress(report, [run[0][0] for run in runs])
        parts = self._map(
            lambda lane: self._decode_lane(lane, audio, runs[lane], options,
                                           progress.sink(lane)),
            list(range(len(runs))), len(runs))
        return [s for segments, _ in parts for s in segments], parts[0][1]

    def _decode_lane(
        self, lane: int, audio: np.ndarray, windows: list[Region], options: DecodeOptions,
        report: ProgressSink,
    ) -> tuple[list[Segment], str]:
        with _encoder_input(encoder_frames(windows, options.encoder_pad_s)):
            return self._decode_windows(lane, audio, windows, options, report)

    def _decode_windows(
        self, lane: int, audio: np.ndarray, windows: list[Region], options: DecodeOptions,
        report: ProgressSink,
    ) -> tuple[list[Segment], str]:
        raw, info = self._lanes[lane].transcribe(
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
            max_new_tokens=token_cap(region),
        )
        return [_segment(s).shifted(region[0]) for s in raw if s.text.strip()]


class ModelSet:
    """Every model a worker serves, each loaded once; a task picks one by name."""

    def __init__(self, config: WorkerConfig) -> None:
        cache_dir = Path(config.cache_dir) if config.cache_dir else None
        self._default = config.model
        self._models = {
            name: load_transcriber(name, config.device, config.compute_type, config.cpu_threads,
                                   cache_dir, config.lanes)
            for name in config.all_models
        }

    def transcribe(
        self, audio: np.ndarray, options: DecodeOptions,
        on_progress: Callable[[float], None] | None = None,
    ) -> Decoded:
        return self._pick(options.model).transcribe(audio, options, on_progress)

    def redo(
        self, audio: np.ndarray, pending: tuple[Pending, ...], options: DecodeOptions,
        on_progress: Callable[[float], None] | None = None,
    ) -> Decoded:
        return self._pick(options.model).redo(audio, pending, options, on_progress)

    def detect_language(self, audio: np.ndarray, options: DecodeOptions) -> tuple[str, float]:
        return self._pick(options.model).detect_language(audio)

    def _pick(self, name: str) -> Transcriber:
        try:
            return self._models[name or self._default]
        except KeyError:  # the API checks names first; this guards a stale or foreign task
            raise ModelNotFoundError(f"this worker has no model {name!r}") from None


# The encoder input's length while a lane decodes (`encoder_pad_s`), in frames; None: 30 s.
_ENCODER_INPUT = threading.local()
_SIZED_BY_LANE = False


def _size_encoder_input_by_lane() -> None:
    """faster-whisper's batched pipeline pads every window's features to 30 s before the
    encoder, in a module-level `pad_or_trim` it offers no option for; this makes that call pad
    to the length a lane asks for (`_encoder_input`), and to 30 s everywhere else."""
    global _SIZED_BY_LANE
    if _SIZED_BY_LANE:
        return
    import faster_whisper.transcribe as batched
    from faster_whisper.audio import pad_or_trim as to_full

    full = int(MODEL_WINDOW_S * FRAMES_PER_S)

    def pad_or_trim(array: np.ndarray, length: int = full, *, axis: int = -1) -> Any:
        frames = getattr(_ENCODER_INPUT, "frames", None)
        return to_full(array, frames if frames and length == full else length, axis=axis)

    batched.pad_or_trim = pad_or_trim
    _SIZED_BY_LANE = True


@contextmanager
def _encoder_input(frames: int | None) -> Iterator[None]:
    """This thread's windows are encoded from `frames` frames (None: 30 s)."""
    _ENCODER_INPUT.frames = frames
    try:
        yield
    finally:
        _ENCODER_INPUT.frames = None


def encoder_frames(windows: list[Region], pad_s: float | None) -> int | None:
    """How many frames the encoder needs for these windows with `pad_s` of silence after the
    longest (whole seconds: word alignment reads the window's length rounded up); None: 30 s."""
    if pad_s is None or not windows:
        return None
    longest_s = max(end - start for start, end in windows)
    return min(int(MODEL_WINDOW_S), math.ceil(longest_s + pad_s)) * FRAMES_PER_S


def token_cap(region: Region) -> int | None:
    """How many tokens the sequential decoder may write for a region (None: the model's limit)."""
    cap = int(REDO_MIN_TOKENS + REDO_TOKENS_PER_S * (region[1] - region[0]))
    return cap if cap <= REDO_MAX_CAPPED_TOKENS else None


def pick_spread(items: list[np.ndarray], count: int) -> list[np.ndarray]:
    """At most `count` items, evenly spaced from first to last."""
    if len(items) <= count:
        return items
    return [items[round(i * (len(items) - 1) / (count - 1))] for i in range(count)]


def _split(windows: list[Region], lanes: int) -> list[list[Region]]:
    """The windows in at most `lanes` consecutive runs of nearly equal length."""
    count = max(1, min(lanes, len(windows)))
    size, extra = divmod(len(windows), count)
    cuts = np.cumsum([0] + [size + (i < extra) for i in range(count)]).tolist()
    return [windows[a:b] for a, b in zip(cuts, cuts[1:], strict=False)]


class _LaneProgress:
    """Seconds decoded over all lanes: each lane reports where it is in its own run."""

    def __init__(self, report: ProgressSink, starts: list[float]) -> None:
        self._report, self._starts = report, starts
        self._done = [0.0] * len(starts)
        self._lock = threading.Lock()

    def sink(self, lane: int) -> ProgressSink:
        def report(at_s: float) -> None:
            with self._lock:
                self._done[lane] = max(self._done[lane], at_s - self._starts[lane])
                done = self._starts[0] + sum(self._done)
            self._report(done)

        return report


def pack_windows(regions: list[Region], window_s: float, fill: float = 1.0) -> list[Region]:
    """Windows of consecutive regions spanning at most `window_s` seconds, each cut at the
    longest pause that leaves it at least `fill` full (1.0: as full as it gets).

    `accurate` takes `DecodeOptions.window_fill`: the pauses between sentences are longer than
    those inside one, and a sentence cut between two windows is decoded without its own context
    (a cut at whatever pause came last cost tiny.en 0.4 WER points on average over five long
    files).
    """
    windows: list[Region] = []
    first = 0
    while first < len(regions):
        start, last = regions[first][0], first
        while last + 1 < len(regions) and regions[last + 1][1] - start <= window_s:
            last += 1
        if last + 1 < len(regions):
            full = [j for j in range(first, last + 1)
                    if regions[j][1] - start >= fill * window_s]
            last = max(reversed(full or [last]), key=lambda j: regions[j + 1][0] - regions[j][1])
        windows.append((start, regions[last][1]))
        first = last + 1
    return windows


def widen(windows: list[Region], regions: list[Region]) -> list[Region]:
    """Each window starting up to LEAD_S earlier, in the silence before it (never in another
    region's audio): the VAD starts a region late on a softly spoken first word ("Um grupo"
    came 1 s before its region), and a window that starts at the region never hears it. The
    words heard there go to the nearest region (`assign`)."""
    widened: list[Region] = []
    for start, end in windows:
        taken = widened[-1][1] if widened else 0.0
        before = max([r[1] for r in regions if r[1] <= start] + [taken])
        lead = min(LEAD_S, start - before, MODEL_WINDOW_S - (end - start))
        widened.append((start - max(0.0, lead), end))
    return widened


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


def _keep_unless_more_words(regions: list[Region], groups: list[list[Segment]],
                            runs: list[Suspects]) -> None:
    """Each run of suspect neighbours takes its redo's answers only when they hold MORE_WORDS
    more words in all (judged per region, a word that had strayed into the neighbour would be
    written twice) and none of them is `unusable` (a loop has many)."""
    for run in runs:
        more = sum(word_count(groups[i]) for i in run) >= \
            sum(word_count(answer) for answer in run.values()) + MORE_WORDS
        if not more or any(unusable(regions[i], groups[i], LIMITS) for i in run):
            for index, answer in run.items():
                groups[index] = answer


def _pending(regions: list[Region], last: set[int], quiet: set[int],
             first: dict[int, list[Segment]], tails: dict[int, list[Segment]]
             ) -> tuple[Pending, ...]:
    """The regions a fanned-out chunk leaves for its file's redo pass, with their first
    answers (suspects) and tails in seconds from their starts. Neighbours a short pause apart
    leave as one region, the sound between them included (`_adjoins`): the redo pass's audio
    strings regions together with silence between them, and heard a sonnet's "Look in thy
    glass", cut off by the VAD from the rest of its line, alone as "Lookin' like last." (base
    `fast`, seed 13)."""
    left: list[Pending] = []
    for i in sorted(last):
        start, end = regions[i]
        region = Pending(start, end, i in quiet, tuple(s.shifted(-start) for s in first.get(i, [])),
                         joined=i in first and i - 1 in first,
                         tail=tuple(s.shifted(-start) for s in tails.get(i, [])))
        if i - 1 in last and _adjoins(left[-1], region):
            left[-1] = left[-1].through(region)
        else:
            left.append(region)
    return tuple(left)


def _adjoins(before: Pending, after: Pending) -> bool:
    """Whether two neighbouring pending regions are decoded again as one: at most ADJOIN_S
    apart, neither a suspect (their first answers are kept per region), both spoken or both
    quiet (a quiet one may be noise: it is never given to the sequential decoder, and kept only
    where the decoder is sure), and together no longer than the VAD's longest region (a
    window hears 30 s at most)."""
    return not before.first and not after.first and before.quiet == after.quiet \
        and after.start_s - before.end_s <= ADJOIN_S \
        and after.end_s - before.start_s <= MAX_REGION_S


def _suspect_runs(pending: tuple[Pending, ...]) -> list[Suspects]:
    """The redo pass's runs of suspect neighbours (`Pending.joined`: regions of one chunk; two
    runs can follow each other in the list), their first answers in the redo audio's time."""
    runs: list[Suspects] = []
    for index, region in enumerate(pending):
        if not region.first:
            continue
        answer = [s.shifted(region.start_s) for s in region.first]
        if region.joined and runs and index - 1 in runs[-1]:
            runs[-1][index] = answer
        else:
            runs.append({index: answer})
    return runs


def _places(pending: tuple[Pending, ...]) -> list[frozenset[int]]:
    """The redo pass's runs of two or more regions from one place in the file: each run of
    regions `near` the one before them (`Pending.near`), with that one."""
    near = [index for index, region in enumerate(pending) if region.near and index > 0]
    return [frozenset([run[0] - 1, *run]) for run in _runs(near)]


def _suspects(regions: list[Region], groups: list[list[Segment]], excluded: set[int],
              options: DecodeOptions) -> dict[int, list[Segment]]:
    """`fast`'s regions that passed the judge but whose words run into a packed neighbour
    (`straddling`) or, over windows that span the audio, whose neighbour's words start late
    (`drifted`), with their first answers."""
    if not _packed_redo(options):
        return {}
    if options.pause_s is None:
        found = drifted(regions, groups, DRIFT_LATE_S, STRADDLE_WORDS)
    else:
        late_s = options.pause_s + STRADDLE_SLACK_S
        early_s = late_s + STRADDLE_EARLY_S
        found = straddling(regions, groups, late_s, early_s, STRADDLE_WORDS)
    return {i: groups[i] for i in found - excluded}


def _tails(groups: list[list[Segment]], chosen: set[int],
           redone: set[int]) -> dict[int, list[Segment]]:
    """Each chosen region whose answer ends with the first words of the next region's
    sentence (`regions.tail`): those words. Only where the next region is not `redone` (a
    suspect's redo may replace its answer, and hold them again)."""
    found = {i: tail(groups[i], groups[i + 1], TAIL_WORDS)
             for i in chosen if i + 1 < len(groups) and i + 1 not in redone}
    return {i: words for i, words in found.items() if words}


def _last_try_apart(runs: list[Suspects], drowned: set[int], left: set[int],
                    places: list[frozenset[int]] | None) -> tuple[frozenset[int], ...]:
    """The sets of regions `fast`'s last try windows apart from the rest: each run of suspect
    neighbours, each drowned quiet region alone, and in the file's redo pass (`places`) the
    spoken regions of each place together and every other one alone. There, a word timed
    across the silence between two unrelated regions went to the wrong one ("There's" to a
    region 165 s before its own, base seed 11; "She had" over a falsetto line, tiny.en
    two-pass seed 53), and no sound between them is the file's own."""
    unplaced = left - frozenset().union(*places) if places is not None else set()
    return (*(frozenset(run) for run in runs), *(frozenset({i}) for i in drowned | unplaced),
            *(place & left for place in places or [] if place & left))


def _shared(spoken: set[int], tried: set[int], apart: tuple[frozenset[int], ...]) -> set[int]:
    """The regions of `spoken` whose last try may have shared a window with a neighbour: the
    one before or after it was in its set of `apart` or, outside every set, tried too."""
    rest = frozenset(tried).difference(*apart)
    return {i for i in spoken for group in (*apart, rest)
            if i in group and {i - 1, i + 1} & group}


def _packed_redo(options: DecodeOptions) -> bool:
    """`fast`: failing regions are decoded again packed into full windows, in one batch."""
    return options.batched_redo and options.redo_pause_s is not None


def _kept(regions: list[Region], groups: list[list[Segment]], quiet: set[int],
          options: DecodeOptions, tails: dict[int, list[Segment]]) -> list[Segment]:
    """What is kept of each region's answer (`_answer`) and then its tail (`_tails`), fitted
    inside it. The tail was heard with the next region's sentence, so the answer is judged
    without it: judged together, base dropped a whispered sentence whose new answer was right."""
    kept = [s for index, (region, group) in enumerate(zip(regions, groups, strict=True))
            for s in fit_to_region(region, carry(_answer(region, group, index in quiet),
                                                 tails.get(index, [])))]
    return kept if options.word_timestamps else [replace(s, words=()) for s in kept]


def _answer(region: Region, group: list[Segment], quiet: bool) -> list[Segment]:
    """A quiet region's answer where it is `trusted`, a spoken one's unless it is `unusable`
    (every try, redo included, is over); a loop that wrote it twice over, once."""
    usable = trusted(region, group) if quiet else not unusable(region, group, LIMITS)
    return said_once([s for s in group if not _hallucinated(s)]) if usable else []


def _hallucinated(segment: Segment) -> bool:
    return segment.no_speech_prob > NO_SPEECH_PROB and segment.avg_logprob < SURE_LOGPROB


def _most_likely(answers: list[list[tuple[str, float]]]) -> tuple[str, float]:
    """The language most likely over all windows heard, and its mean probability."""
    totals: dict[str, float] = {}
    for ranked in answers:
        for language, probability in ranked:
            totals[language] = totals.get(language, 0.0) + probability
    best = max(totals, key=totals.__getitem__)
    return best, totals[best] / len(answers)


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
    model: str, device: str, compute_type: str, cpu_threads: int, cache_dir: Path | None = None,
    lanes: int = 1,
) -> Transcriber:
    started = time.perf_counter()
    transcriber = Transcriber(model, device, compute_type, cpu_threads, cache_dir, lanes)
    log.debug("model %s loaded in %.2fs", model, time.perf_counter() - started)
    return transcriber
