"""The worker's decoding plan: packing regions into windows, judging each region by what came back
for it, and decoding a failing one again alone (fake decoders: the test is about the plan)."""

import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import DATA, CountsFrames, heard, load_pcm, spoken
from tests.support.signals import QUIET_ROOM, between_syllables
from whisper_api import transcriber as transcriber_module
from whisper_api.models import resolve_model
from whisper_api.pipeline import PRESETS, preset_options
from whisper_api.regions import Region
from whisper_api.transcriber import (
    LEAD_S,
    SAMPLE_RATE_HZ,
    Transcriber,
    compact,
    encoder_frames,
    pack_windows,
    token_cap,
    widen,
)
from whisper_api.transcript import SPANS_REDO_PAUSE_S, DecodeOptions, Pending, Segment

REGIONS: list[Region] = [(0.0, 4.0), (5.0, 12.0), (13.0, 16.0)]
GOOD = {
    REGIONS[0]: "It was a bright cold day in April.",
    REGIONS[1]: "And the clocks were striking thirteen as Winston hurried home through the wind.",
    REGIONS[2]: "The hallway smelt of boiled cabbage.",
}
REDONE_TEXT = "the sentence the sequential decoder heard in the region again"
BATCHED_AGAIN = "the sentence the batched decoder heard in the region alone"
DEFAULTS = DecodeOptions()


@dataclass
class RawSegment:
    start: float
    end: float
    text: str
    avg_logprob: float = -0.2
    no_speech_prob: float = 0.01
    words: list[Any] | None = None
    tokens: tuple[int, ...] = ()
    temperature: float = 0.0
    compression_ratio: float = 1.5


@dataclass
class Info:
    language: str = "en"


class FakeBatched:
    """First call: each region's `answers[region]` (text, logprob), timestamps on the region.
    Later calls (regions decoded again alone): BATCHED_AGAIN for each requested window."""

    def __init__(self, answers: dict[Region, tuple[str, float]]) -> None:
        self.answers = answers
        self.calls: list[list[dict[str, float]]] = []

    def transcribe(self, audio: np.ndarray, **kwargs: Any) -> tuple[Iterator[RawSegment], Info]:
        self.calls.append(kwargs["clip_timestamps"])
        answers = self.answers if len(self.calls) == 1 else {
            (c["start"], c["end"]): (BATCHED_AGAIN, -0.2) for c in kwargs["clip_timestamps"]}

        def segments() -> Iterator[RawSegment]:
            for (start, end), (text, logprob) in answers.items():
                yield RawSegment(start, end, text, logprob)

        return segments(), Info()


class FakeSequential:
    """Records every region it is asked to decode again; answers with a full sentence."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, dict[str, Any]]] = []

    def transcribe(self, audio: np.ndarray, **kwargs: Any) -> tuple[list[RawSegment], Info]:
        self.calls.append((len(audio), kwargs))
        return [RawSegment(0.0, len(audio) / SAMPLE_RATE_HZ, REDONE_TEXT)], Info()


def run(
    answers: dict[Region, tuple[str, float]], options: DecodeOptions = DEFAULTS
) -> tuple[str, int, FakeSequential, list[float]]:
    sequential = FakeSequential()
    transcriber = Transcriber.with_decoders(sequential, FakeBatched(answers))
    transcriber.find_utterances = lambda audio: list(REGIONS)  # type: ignore[method-assign]
    progress: list[float] = []
    audio = np.zeros(17 * SAMPLE_RATE_HZ, dtype=np.float32)
    segments, _, redone, _ = transcriber.transcribe(audio, options, progress.append)
    return " ".join(s.text for s in segments), redone, sequential, progress


def answers_with(middle: str, logprob: float = -0.2) -> dict[Region, tuple[str, float]]:
    return {
        REGIONS[0]: (GOOD[REGIONS[0]], -0.2), REGIONS[1]: (middle, logprob),
        REGIONS[2]: (GOOD[REGIONS[2]], -0.2),
    }


def test_pack_windows_merges_while_the_span_fits() -> None:
    regions = [(0.0, 4.0), (5.0, 9.0), (10.0, 13.0), (20.0, 21.0)]
    assert pack_windows(regions, 12.0) == [(0.0, 9.0), (10.0, 21.0)]
    assert pack_windows(regions, 3.0) == regions


def test_windows_are_cut_at_the_longest_pause_that_leaves_them_full_enough() -> None:
    # Pauses of 0.3 s inside sentences, 2 s between them; a window holds up to 29 s.
    regions = [(0.0, 8.0), (10.0, 16.0), (18.0, 22.0), (22.3, 28.5), (28.8, 35.0)]
    # Not at 28.5 s (all that fits), nor at 8 s (a 2 s pause, but the window 8 s full).
    assert pack_windows(regions, 29.0, 0.5) == [(0.0, 16.0), (18.0, 35.0)]
    assert pack_windows(regions, 10.0, 0.5) == [(0.0, 8.0), (10.0, 16.0), (18.0, 22.0),
                                                (22.3, 28.5), (28.8, 35.0)]
    too_long = [(0.0, 40.0), (41.0, 42.0)]
    assert pack_windows(too_long, 29.0, 0.5) == too_long
    # Fill 0.0: the longest pause in all that fits, however early (one sentence a window).
    early = [(0.0, 8.0), (11.0, 16.0), (16.3, 19.0), (19.3, 25.0)]
    assert pack_windows(early, 20.0, 0.0) == [(0.0, 8.0), (11.0, 25.0)]
    assert pack_windows(early, 20.0, 0.5) == [(0.0, 19.0), (19.3, 25.0)]


def test_a_window_starts_in_the_silence_before_it_but_never_in_another_region() -> None:
    regions = [(0.0, 5.0), (5.3, 9.0), (20.0, 30.0), (30.5, 45.0)]
    windows = [(0.0, 5.0), (5.3, 9.0), (20.0, 30.0), (30.5, 45.0)]
    assert widen(windows, regions) == [(0.0, 5.0), (5.0, 9.0), (20.0 - LEAD_S, 30.0),
                                       (30.0, 45.0)]
    # Never past what the decoder hears at once (30 s).
    assert widen([(10.0, 39.5)], [(10.0, 39.5)]) == [(9.5, 39.5)]


def test_trusted_regions_are_not_decoded_again() -> None:
    text, redone, sequential, _ = run(answers_with(GOOD[REGIONS[1]]))
    assert redone == 0 and sequential.calls == []
    assert text == " ".join(GOOD.values())


@pytest.mark.parametrize("middle, logprob", [
    pytest.param("show", -0.2, id="a 7 s sentence came back as one word"),
    pytest.param("", -0.2, id="dropped"),
    pytest.param("as never been surpassed " * 4, -0.2, id="tail of the previous, repeated"),
    pytest.param(GOOD[REGIONS[1]], -1.6, id="the decoder was unsure"),
])
def test_a_failing_region_is_decoded_again_alone(middle: str, logprob: float) -> None:
    text, redone, sequential, _ = run(answers_with(middle, logprob))
    assert redone == 1
    [(samples, kwargs)] = sequential.calls
    assert samples == 7 * SAMPLE_RATE_HZ  # the region alone
    assert kwargs["beam_size"] == 5 and len(kwargs["temperature"]) > 1
    assert text == f"{GOOD[REGIONS[0]]} {REDONE_TEXT} {GOOD[REGIONS[2]]}"


class Answers(FakeSequential):
    """The sequential decoder's last resort (temperature 1.0) answering `text`."""

    def __init__(self, text: str, logprob: float) -> None:
        super().__init__()
        self.text, self.logprob = text, logprob

    def transcribe(self, audio: np.ndarray, **kwargs: Any) -> tuple[list[RawSegment], Info]:
        self.calls.append((len(audio), kwargs))
        return [RawSegment(0.0, len(audio) / SAMPLE_RATE_HZ, self.text, self.logprob,
                           temperature=1.0)], Info()


@pytest.mark.parametrize("middle, answer, logprob, kept", [
    pytest.param((5.0, 12.0), "see you next time " * 5, -0.4, False, id="a loop"),
    pytest.param((5.0, 5.5), "We'll see you next time.", -1.2, False,
                 id="unsure words on 0.5 s of noise"),
    pytest.param((5.0, 12.0), GOOD[REGIONS[1]], -1.2, True,
                 id="an unsure sentence: better than none"),
    pytest.param((5.0, 6.4), "Review!", -1.05, True, id="an unsure word on 1.4 s: heard"),
])
def test_a_last_answer_worse_than_none_is_dropped(
    middle: Region, answer: str, logprob: float, kept: bool
) -> None:
    regions = [REGIONS[0], middle, REGIONS[2]]
    sequential = Answers(answer, logprob)
    transcriber = Transcriber.with_decoders(sequential, FakeBatched(
        {regions[0]: (GOOD[REGIONS[0]], -0.2), middle: ("", -0.2),
         regions[2]: (GOOD[REGIONS[2]], -0.2)}))
    transcriber.find_utterances = lambda audio: list(regions)  # type: ignore[method-assign]
    audio = np.zeros(17 * SAMPLE_RATE_HZ, dtype=np.float32)
    segments, _, redone, _ = transcriber.transcribe(audio, DEFAULTS)
    assert redone == 1 and len(sequential.calls) == 1
    outer = [GOOD[REGIONS[0]], GOOD[REGIONS[2]]]
    assert [s.text for s in segments] == (outer[:1] + [answer.strip()] + outer[1:] if kept
                                          else outer)


def test_a_segment_shared_with_a_failing_region_takes_its_other_region_along() -> None:
    # One segment holds region 0's sentence but its times spill into region 1, which failed.
    answers = {(0.0, 6.0): (GOOD[REGIONS[0]], -0.2), (6.0, 12.0): ("show", -0.2),
               REGIONS[2]: (GOOD[REGIONS[2]], -0.2)}
    text, redone, sequential, _ = run(answers)
    assert redone == 2 and len(sequential.calls) == 2
    assert text == f"{REDONE_TEXT} {REDONE_TEXT} {GOOD[REGIONS[2]]}"


def test_progress_moves_per_window_and_ends_at_the_chunk_length() -> None:
    _, _, _, progress = run(answers_with(GOOD[REGIONS[1]]))
    assert len(progress) > 2 and progress == sorted(progress)
    assert progress[-1] == 17.0


def test_batched_redo_decodes_failing_regions_alone_in_one_batch() -> None:
    text, redone, sequential, _ = run(answers_with("show"), DecodeOptions(batched_redo=True))
    assert redone == 1 and sequential.calls == []
    assert text == f"{GOOD[REGIONS[0]]} {BATCHED_AGAIN} {GOOD[REGIONS[2]]}"


class AnswersAgain(FakeBatched):
    """Later calls answer every window with `again` (text, logprob)."""

    def __init__(self, answers: dict[Region, tuple[str, float]], again: tuple[str, float]):
        super().__init__(answers)
        self.again = again

    def transcribe(self, audio: np.ndarray, **kwargs: Any) -> tuple[Iterator[RawSegment], Info]:
        if not self.calls:
            return super().transcribe(audio, **kwargs)
        self.calls.append(kwargs["clip_timestamps"])
        return iter([RawSegment(c["start"], c["end"], *self.again)
                     for c in kwargs["clip_timestamps"]]), Info()


@pytest.mark.parametrize(("again", "to_sequential"), [
    # The same words, as unsure (punctuation aside): kept.
    (("Eurowetz ist da, sagte er, und alle wussten es.", -1.5), False),
    # Other words: the sequential decoder decides.
    (("Urabes ist da, sagte er, und alle wussten es.", -1.5), True),
    (("", -0.2), True),  # skipped again
])
def test_a_region_decoded_twice_to_the_same_unsure_words_is_not_decoded_a_third_time(
    again: tuple[str, float], to_sequential: bool,
) -> None:
    answers = answers_with("Eurowetz ist da sagte er und alle wussten es", logprob=-1.5)
    sequential = FakeSequential()
    transcriber = Transcriber.with_decoders(sequential, AnswersAgain(answers, again))
    transcriber.find_utterances = lambda audio: list(REGIONS)  # type: ignore[method-assign]
    audio = np.zeros(17 * SAMPLE_RATE_HZ, dtype=np.float32)
    segments, _, redone, _ = transcriber.transcribe(audio, PRESETS["accurate"])
    assert redone == 1 and len(sequential.calls) == (1 if to_sequential else 0)
    middle = REDONE_TEXT if to_sequential else again[0]
    assert [s.text for s in segments] == [GOOD[REGIONS[0]], middle, GOOD[REGIONS[2]]]


class DropsTwice(FakeBatched):
    """The first pass and the packed redo drop the failing region; a later window hears it."""

    def transcribe(self, audio: np.ndarray, **kwargs: Any) -> tuple[Iterator[RawSegment], Info]:
        if len(self.calls) == 1:
            self.calls.append(kwargs["clip_timestamps"])
            return iter([]), Info()
        return super().transcribe(audio, **kwargs)


def test_fast_tries_a_region_its_packed_redo_dropped_again_in_a_window_of_its_own() -> None:
    sequential, batched = FakeSequential(), DropsTwice(answers_with(""))
    transcriber = Transcriber.with_decoders(sequential, batched)
    transcriber.find_utterances = lambda audio: list(REGIONS)  # type: ignore[method-assign]
    audio = np.zeros(17 * SAMPLE_RATE_HZ, dtype=np.float32)
    segments, _, redone, _ = transcriber.transcribe(audio, replace(PRESETS["fast"],
                                                                   language="en"))
    assert " ".join(s.text for s in segments) == " ".join(
        [GOOD[REGIONS[0]], BATCHED_AGAIN, GOOD[REGIONS[2]]])
    assert redone == 1 and sequential.calls == [] and len(batched.calls) == 3
    # The last try is the region's own audio on the file's timeline, not packed speech.
    [window] = batched.calls[2]
    assert window["end"] == REGIONS[1][1] and REGIONS[0][1] <= window["start"] <= REGIONS[1][0]


class Heard(FakeBatched):
    """FakeBatched that also records how long each audio it was given is."""

    def __init__(self, answers: dict[Region, tuple[str, float]]) -> None:
        super().__init__(answers)
        self.audio_s: list[float] = []

    def transcribe(self, audio: np.ndarray, **kwargs: Any) -> tuple[Iterator[RawSegment], Info]:
        self.audio_s.append(len(audio) / SAMPLE_RATE_HZ)
        return super().transcribe(audio, **kwargs)


@pytest.mark.parametrize("language", ["pt", "en"])
def test_base_fast_decodes_spans_then_packs_its_redo_a_second_apart(language: str) -> None:
    batched = Heard(answers_with(""))
    transcriber = Transcriber.with_decoders(FakeSequential(), batched)
    transcriber.find_utterances = lambda audio: list(REGIONS)  # type: ignore[method-assign]
    audio = np.zeros(17 * SAMPLE_RATE_HZ, dtype=np.float32)
    options = replace(preset_options("base", "fast"), language=language)
    segments, _, redone, _ = transcriber.transcribe(audio, options)
    # The first pass: the file's own timeline. The redo: the failing region's speech alone,
    # then its pause (7 s + 1 s).
    assert batched.audio_s == [17.0, REGIONS[1][1] - REGIONS[1][0] + SPANS_REDO_PAUSE_S]
    assert [s.text for s in segments] == [GOOD[REGIONS[0]], BATCHED_AGAIN, GOOD[REGIONS[2]]]
    assert redone == 1 and segments[1].start >= REGIONS[1][0] and segments[1].end <= REGIONS[1][1]


def test_compact_puts_the_regions_speech_back_to_back() -> None:
    audio = np.arange(6 * SAMPLE_RATE_HZ, dtype=np.float32)
    speech, packed = compact(audio, [(1.0, 2.0), (4.0, 5.5)], pause_s=0.5)
    assert packed == [(0.0, 1.0), (1.5, 3.0)]
    assert len(speech) == int(3.5 * SAMPLE_RATE_HZ)
    assert speech[0] == SAMPLE_RATE_HZ and speech[int(1.5 * SAMPLE_RATE_HZ)] == 4 * SAMPLE_RATE_HZ
    assert not speech[SAMPLE_RATE_HZ:int(1.5 * SAMPLE_RATE_HZ)].any()  # the pause is silence


class WindowEcho:
    """Answers every requested window with one segment over it naming its position."""

    def __init__(self) -> None:
        self.audio_s: list[float] = []

    def transcribe(self, audio: np.ndarray, **kwargs: Any) -> tuple[Iterator[RawSegment], Info]:
        self.audio_s.append(len(audio) / SAMPLE_RATE_HZ)
        clips = kwargs["clip_timestamps"]
        return iter([RawSegment(c["start"], c["end"], f"window {c['start']:.1f} "
                                "held these distinct spoken words") for c in clips]), Info()


def test_speech_only_windows_come_back_on_the_original_timeline() -> None:
    batched = WindowEcho()
    transcriber = Transcriber.with_decoders(FakeSequential(), batched)
    transcriber.find_utterances = lambda audio: list(REGIONS)  # type: ignore[method-assign]
    progress: list[float] = []
    audio = np.zeros(17 * SAMPLE_RATE_HZ, dtype=np.float32)
    options = DecodeOptions(pause_s=0.5, window_s=5.0)  # each region its own window
    segments, _, redone, _ = transcriber.transcribe(audio, options, progress.append)
    assert batched.audio_s == [14.0 + 3 * 0.5]  # speech only: 4 + 7 + 3 s, and the pauses
    assert [(s.start, s.end) for s in segments] == REGIONS
    assert [s.text.split()[1] for s in segments] == ["0.0", "4.5", "12.0"]  # packed positions
    assert redone == 0 and progress[-1] == 17.0 and progress == sorted(progress)


class Said:
    """A decoder that hears what was said where it was said, as batched windows of any packing
    present it: each utterance is a constant level in the audio, `said` maps each level to
    (text, logprob, no-speech probability), and every window answers the levels it holds, at
    their positions in the audio it was given."""

    def __init__(self, said: dict[float, tuple[str, float, float]]) -> None:
        self.said = said

    def transcribe(self, audio: np.ndarray, **kwargs: Any) -> tuple[Iterator[RawSegment], Info]:
        heard = []
        for clip in kwargs["clip_timestamps"]:
            first, last = (int(t * SAMPLE_RATE_HZ) for t in (clip["start"], clip["end"]))
            for level, (text, logprob, no_speech) in self.said.items():
                at = np.flatnonzero(audio[first:last] == np.float32(level))
                if len(at):
                    heard.append(RawSegment((first + at[0]) / SAMPLE_RATE_HZ,
                                            (first + at[-1]) / SAMPLE_RATE_HZ,
                                            text, logprob, no_speech))
        return iter(heard), Info()


@pytest.mark.parametrize("lead_s, heard", [(LEAD_S, True), (0.0, False)])
def test_a_soft_first_word_before_the_vad_region_reaches_the_decoder(
    monkeypatch: pytest.MonkeyPatch, lead_s: float, heard: bool
) -> None:
    # "Um grupo" said softly 0.8 s before the region the VAD found, too short for the
    # quiet-speech pass; only a window that starts before the region hears it.
    audio = np.zeros(14 * SAMPLE_RATE_HZ, dtype=np.float32)
    audio[int(4.2 * SAMPLE_RATE_HZ):int(4.8 * SAMPLE_RATE_HZ)] = 0.004
    audio[int(5.0 * SAMPLE_RATE_HZ):int(12.0 * SAMPLE_RATE_HZ)] = 0.03
    said = {0.004: ("Um grupo", -0.3, 0.1),
            0.03: ("de crianças está andando em um rio perto da margem do rio.", -0.2, 0.01)}
    monkeypatch.setattr("whisper_api.transcriber.LEAD_S", lead_s)
    transcriber = Transcriber.with_decoders(FakeSequential(), Said(said))
    transcriber.find_utterances = lambda audio: [(5.0, 12.0)]  # type: ignore[method-assign]
    segments, _, redone, _ = transcriber.transcribe(audio, replace(PRESETS["accurate"],
                                                                   language="pt"))
    text = " ".join(s.text for s in segments)
    assert text.startswith("Um grupo de crianças") == heard and redone == 0
    assert all(5.0 <= s.start < s.end <= 12.0 for s in segments)  # inside the region


def levels(duration_s: float, *spans: tuple[float, float, float]) -> np.ndarray:
    """Silence, and each (start, end, level) span at its level (which `Said` answers by)."""
    audio = np.zeros(int(duration_s * SAMPLE_RATE_HZ), dtype=np.float32)
    for start_s, end_s, level in spans:
        audio[int(start_s * SAMPLE_RATE_HZ):int(end_s * SAMPLE_RATE_HZ)] = level
    return audio


def two_sentences_and_a_whisper() -> np.ndarray:
    """Levels 0.02 and 0.03 where the VAD hears REGIONS[:2]; 0.05 at 14-17 s, outside every
    region, in syllables (0.2 s on, 0.1 s at -80 dB) as a whisper rises and falls."""
    audio = levels(20.0, (0.5, 3.5, 0.02), (5.5, 11.5, 0.03), (14.0, 17.0, 0.05))
    audio[between_syllables(len(audio)) & (audio == np.float32(0.05))] = QUIET_ROOM
    return audio


@pytest.mark.parametrize("quiet_text, logprob, no_speech, kept", [
    pytest.param("this is all very whispered speech", -0.2, 0.05, True, id="whispered words"),
    pytest.param("you", -0.9, 0.8, False, id="noise the decoder calls 'you'"),
    pytest.param("this is all very whispered speech", -1.4, 0.3, False, id="unsure words"),
])
@pytest.mark.parametrize("preset", ["accurate", "fast"])
def test_a_stretch_the_vad_missed_is_kept_only_when_the_decoder_is_sure(
    quiet_text: str, logprob: float, no_speech: float, kept: bool, preset: str,
) -> None:
    audio = two_sentences_and_a_whisper()
    said = {0.02: (GOOD[REGIONS[0]], -0.2, 0.01), 0.03: (GOOD[REGIONS[1]], -0.2, 0.01),
            0.05: (quiet_text, logprob, no_speech)}  # the last outside every VAD region
    sequential = FakeSequential()
    transcriber = Transcriber.with_decoders(sequential, Said(said))
    transcriber.find_utterances = lambda audio: list(REGIONS[:2])  # type: ignore[method-assign]
    segments, _, _, _ = transcriber.transcribe(audio, PRESETS[preset])
    assert [s.text for s in segments] == [GOOD[REGIONS[0]], GOOD[REGIONS[1]]] + (
        [quiet_text] if kept else [])
    assert all(13.5 < s.start < s.end < 17.5 for s in segments[2:])
    assert sequential.calls == []  # noise is never worth six sequential decodes


WHISPERED = "this is all very whispered speech"


def in_clip(heard: list[RawSegment], clip: dict[str, float]) -> list[RawSegment]:
    """The segments a decoder answered for one of its windows (`clip_timestamps`)."""
    return [s for s in heard if clip["start"] <= s.start <= clip["end"]]


class Drowned(Said):
    """A decoder that does not hear the whisper (level 0.05) in a window with louder speech."""

    def transcribe(self, audio: np.ndarray, **kwargs: Any) -> tuple[Iterator[RawSegment], Info]:
        heard, info = super().transcribe(audio, **kwargs)
        heard = list(heard)
        for clip in kwargs["clip_timestamps"]:
            inside = in_clip(heard, clip)
            if len(inside) > 1:
                heard = [s for s in heard if s not in inside or s.text != WHISPERED]
        return iter(heard), info


@pytest.mark.parametrize("preset", ["accurate", "fast"])
def test_a_whisper_is_decoded_again_apart_from_loud_speech(preset: str) -> None:
    """The first pass packs the whisper with the sentences and loses it; so would a redo
    that packs it with the failing second sentence (one word for 7 s)."""
    said = {0.02: (GOOD[REGIONS[0]], -0.2, 0.01), 0.03: ("show", -0.2, 0.01),
            0.05: (WHISPERED, -0.2, 0.05)}
    transcriber = Transcriber.with_decoders(FakeSequential(), Drowned(said))
    transcriber.find_utterances = lambda audio: list(REGIONS[:2])  # type: ignore[method-assign]
    segments, _, _, _ = transcriber.transcribe(two_sentences_and_a_whisper(), PRESETS[preset])
    assert [s.text for s in segments if 13.5 < s.start < 17.5] == [WHISPERED]


@pytest.mark.parametrize("logprob, kept", [
    pytest.param(-0.97, False, id="'Thank you.' on a chord, unsure"),
    pytest.param(-0.3, True, id="words the decoder is sure of"),
])
def test_words_in_a_region_the_model_calls_no_speech_must_be_sure(
    logprob: float, kept: bool
) -> None:
    """Whisper's own guard keeps them down to -1; the VAD took a chord for speech and tiny.en
    answered "Thank you." at -0.97 (no speech 0.85) on one CPU."""
    said = {0.02: (GOOD[REGIONS[0]], -0.2, 0.01), 0.03: ("Thank you.", logprob, 0.85)}
    transcriber = Transcriber.with_decoders(FakeSequential(), Said(said))
    # A short region, as the chord's onset was (0.5 s): too short to be judged by word rate.
    transcriber.find_utterances = lambda audio: [REGIONS[0], (5.0, 6.0)]  # type: ignore[method-assign]
    audio = np.zeros(8 * SAMPLE_RATE_HZ, dtype=np.float32)
    audio[int(0.5 * SAMPLE_RATE_HZ):int(3.5 * SAMPLE_RATE_HZ)] = 0.02
    audio[int(5.2 * SAMPLE_RATE_HZ):int(5.8 * SAMPLE_RATE_HZ)] = 0.03
    segments, _, _, _ = transcriber.transcribe(audio, PRESETS["accurate"])
    assert [s.text for s in segments] == [GOOD[REGIONS[0]]] + (["Thank you."] if kept else [])


class Batches(Drowned):
    """A Drowned decoder that records the windows of each call (one call: one batch)."""

    def __init__(self, said: dict[float, tuple[str, float, float]]) -> None:
        super().__init__(said)
        self.calls: list[list[str]] = []

    def transcribe(self, audio: np.ndarray, **kwargs: Any) -> tuple[Iterator[RawSegment], Info]:
        heard, info = super().transcribe(audio, **kwargs)
        heard = list(heard)
        self.calls.append(["+".join(s.text for s in in_clip(heard, clip))
                           for clip in kwargs["clip_timestamps"]])
        return iter(heard), info


def test_fast_redoes_a_whisper_and_a_skipped_sentence_in_one_batch_not_one_window() -> None:
    """Two batches of one window each (whisper, then sentence) left a lane idle in the file's
    redo pass; one batch of two windows keeps both lanes busy and the whisper apart."""
    said = {0.02: (GOOD[REGIONS[0]], -0.2, 0.01), 0.03: ("show", -0.2, 0.01),
            0.05: (WHISPERED, -0.2, 0.05)}
    decoder = Batches(said)
    transcriber = Transcriber.with_decoders(FakeSequential(), decoder)
    transcriber.find_utterances = lambda audio: list(REGIONS[:2])  # type: ignore[method-assign]
    segments, _, _, _ = transcriber.transcribe(two_sentences_and_a_whisper(), PRESETS["fast"])
    first_pass, redo = decoder.calls[:2]
    assert len(first_pass) == 1  # all three packed in one window: the whisper drowned
    assert sorted(redo) == sorted(["show", WHISPERED])
    assert [s.text for s in segments if 13.5 < s.start < 17.5] == [WHISPERED]


def test_fast_gives_a_whisper_drowned_again_in_the_quiet_redo_a_window_of_its_own() -> None:
    """`fast` packs the quiet regions that fail into one window for their redo: a whisper
    packed with a noise the decoder loops on ("you you you") is lost again there. base lost a
    whispered sentence that way; alone, it heard it word for word."""
    said = {0.02: (GOOD[REGIONS[0]], -0.2, 0.01), 0.03: (GOOD[REGIONS[1]], -0.2, 0.01),
            0.05: (WHISPERED, -0.2, 0.05), 0.04: ("you you you you you you", -0.9, 0.5)}
    audio = np.concatenate([two_sentences_and_a_whisper(), np.zeros(2 * SAMPLE_RATE_HZ,
                                                                    dtype=np.float32)])
    noise = np.zeros(len(audio), dtype=bool)
    noise[int(17.8 * SAMPLE_RATE_HZ):int(19.6 * SAMPLE_RATE_HZ)] = True
    audio[noise] = 0.04
    audio[between_syllables(len(audio)) & noise] = QUIET_ROOM
    decoder = Batches(said)
    transcriber = Transcriber.with_decoders(FakeSequential(), decoder)
    transcriber.find_utterances = lambda audio: list(REGIONS[:2])  # type: ignore[method-assign]
    segments, _, _, _ = transcriber.transcribe(audio, PRESETS["fast"])
    assert decoder.calls[1] == ["you you you you you you"]  # both quiet regions in one window
    assert sorted(decoder.calls[2]) == sorted([WHISPERED, "you you you you you you"])
    assert [s.text for s in segments if s.start > 13.0] == [WHISPERED]


class LaneEcho(WindowEcho):
    """A WindowEcho that answers only once every lane is decoding (a barrier), so a run that
    does not decode its lanes at the same time fails instead of passing slowly."""

    def __init__(self, together: threading.Barrier | None) -> None:
        super().__init__()
        self.together = together
        self.windows: list[float] = []

    def transcribe(self, audio: np.ndarray, **kwargs: Any) -> tuple[Iterator[RawSegment], Info]:
        self.windows += [c["start"] for c in kwargs["clip_timestamps"]]
        if self.together is not None:
            self.together.wait()
        return super().transcribe(audio, **kwargs)


LANE_REGIONS: list[Region] = [(float(3 * i), 3 * i + 2.0) for i in range(5)]


def decode_on_lanes(
    lanes: list[LaneEcho], options: DecodeOptions
) -> tuple[list[tuple[float, float, str]], list[float]]:
    transcriber = Transcriber.with_decoders(FakeSequential(), *lanes)
    transcriber.find_utterances = lambda audio: list(LANE_REGIONS)  # type: ignore[method-assign]
    progress: list[float] = []
    audio = np.zeros(15 * SAMPLE_RATE_HZ, dtype=np.float32)
    segments, _, _, _ = transcriber.transcribe(audio, options, progress.append)
    return [(s.start, s.end, s.text) for s in segments], progress


def test_a_lone_chunk_spreads_its_windows_over_the_lanes_at_once() -> None:
    options = DecodeOptions(window_s=2.5)  # one window per region: five windows
    alone, _ = decode_on_lanes([LaneEcho(None)], options)
    together = threading.Barrier(2, timeout=10)
    lanes = [LaneEcho(together), LaneEcho(together)]
    spread, progress = decode_on_lanes(lanes, options)
    assert spread == alone and len(spread) == 5  # the same answer, in time order
    # Each window starts a second before its region, in the silence there (`widen`).
    assert lanes[0].windows == [0.0, 2.0, 5.0] and lanes[1].windows == [8.0, 11.0]
    assert progress == sorted(progress) and progress[-1] == 15.0


def test_a_fanned_out_chunk_decodes_on_one_lane() -> None:
    lanes = [LaneEcho(None), LaneEcho(threading.Barrier(2, timeout=0.1))]
    segments, _ = decode_on_lanes(lanes, DecodeOptions(window_s=2.5, fan_out=True))
    assert len(segments) == 5 and len(lanes[0].windows) == 5 and lanes[1].windows == []


def test_a_fanned_out_chunk_leaves_its_last_repair_to_the_files_redo_pass() -> None:
    audio = two_sentences_and_a_whisper()
    # The second sentence comes back as one word however it is packed; the quiet stretch as
    # noise the decoder calls "you".
    said = {0.02: (GOOD[REGIONS[0]], -0.2, 0.01), 0.03: ("show", -0.2, 0.01),
            0.05: ("you", -0.9, 0.8)}
    sequential = FakeSequential()
    transcriber = Transcriber.with_decoders(sequential, Said(said))
    transcriber.find_utterances = lambda audio: list(REGIONS[:2])  # type: ignore[method-assign]
    options = replace(PRESETS["accurate"], language="en", fan_out=True)
    segments, _, redone, pending = transcriber.transcribe(audio, options)
    assert [s.text for s in segments] == [GOOD[REGIONS[0]]] and redone == 2
    assert [(p.start_s, p.end_s, p.quiet) for p in pending][0] == (*REGIONS[1], False)
    assert pending[1].quiet and 13.5 < pending[1].start_s < pending[1].end_s < 17.5
    assert sequential.calls == []  # left for the redo pass
    # The redo pass: both regions in one audio, as the pipeline writes it.
    parts = [audio[int(p.start_s * SAMPLE_RATE_HZ):int(p.end_s * SAMPLE_RATE_HZ)]
             for p in pending]
    spoken_s = len(parts[0]) / SAMPLE_RATE_HZ
    again = (replace(pending[0], start_s=0.0, end_s=spoken_s),
             replace(pending[1], start_s=spoken_s, end_s=spoken_s + len(parts[1]) / SAMPLE_RATE_HZ))
    redone_segments, _, _, left = transcriber.redo(np.concatenate(parts), again,
                                                   replace(options, fan_out=False))
    assert [s.text for s in redone_segments] == [REDONE_TEXT] and left == ()
    assert len(sequential.calls) == 1  # the spoken region alone; the noise never


PIECES = "Look in thy glass, and tell the face thou viewest."


def test_pieces_of_a_sentence_a_short_pause_apart_are_decoded_again_as_one() -> None:
    """The VAD cut a sentence into pieces a pause within a sentence apart, and the first pass
    skipped them. Heard apart (the file's redo pass strings regions together with silence
    between them), each came back as nothing or wrong words: the pieces are decoded again as
    one region, the sound between them included."""
    audio = levels(16.0, (0.5, 4.6, 0.02), (5.0, 5.9, 0.04), (5.9, 6.1, 0.06), (6.1, 7.0, 0.04),
                   (8.5, 13.5, 0.03))
    pieces: list[Region] = [(0.0, 4.7), (4.9, 5.9), (6.1, 7.1), (8.0, 14.0)]
    first = [with_words(GOOD[REGIONS[0]], 0.5, 4.6), with_words(AFTER, 8.5, 13.5)]
    said = {0.02: (GOOD[REGIONS[0]], -0.2, 0.01), 0.03: (AFTER, -0.2, 0.01),
            0.06: (PIECES, -0.2, 0.01)}  # the pieces alone (0.04): nothing heard
    transcriber = Transcriber.with_decoders(FakeSequential(), SkipsFirst(said, first))
    transcriber.find_utterances = lambda audio: list(pieces)  # type: ignore[method-assign]
    options = replace(preset_options("base", "fast"), language="en", fan_out=True)
    segments, _, redone, pending = transcriber.transcribe(audio, options)
    assert [(p.start_s, p.end_s) for p in pending] == [(4.9, 7.1)]
    # The redo pass's audio, as the pipeline writes it: 0.5 s of silence around each region.
    gap = np.zeros(SAMPLE_RATE_HZ // 2, dtype=np.float32)
    cut = audio[int(4.9 * SAMPLE_RATE_HZ):int(7.1 * SAMPLE_RATE_HZ)]
    again = (replace(pending[0], start_s=0.5, end_s=0.5 + len(cut) / SAMPLE_RATE_HZ),)
    redone_segments = transcriber.redo(np.concatenate([gap, cut, gap]), again,
                                       replace(options, fan_out=False))[0]
    segments = [*segments, *(s.shifted(4.4) for s in redone_segments)]
    texts = [s.text for s in sorted(segments, key=lambda s: s.start)]
    assert texts == [GOOD[REGIONS[0]], PIECES, AFTER] and redone == 2


def test_only_neighbours_alike_and_short_enough_together_are_joined() -> None:
    """A quiet region (maybe noise) never joins a spoken one, nor do two pieces longer than
    the VAD's longest region together (a window hears 30 s at most), nor regions with a kept
    one between them, nor a suspect with its first answer."""
    regions: list[Region] = [(0.0, 1.0), (1.2, 2.0), (2.0, 3.0), (3.1, 15.0), (15.1, 25.0),
                             (25.2, 26.0), (26.1, 27.0), (27.1, 28.0), (28.1, 29.0)]
    said = [Segment(28.2, 28.5, "It's")]
    pending = transcriber_module._pending(regions, set(range(9)) - {6}, {2}, {8: said}, {})
    assert [(p.start_s, p.end_s, p.quiet) for p in pending] == [
        (0.0, 2.0, False), (2.0, 3.0, True), (3.1, 15.0, False), (15.1, 26.0, False),
        (27.1, 28.0, False), (28.1, 29.0, False)]


class Detector:
    """A multilingual model's language detection: each window's first sample says which
    ranking it answers."""

    class model:  # noqa: N801 - faster-whisper's attribute name
        is_multilingual = True

    def __init__(self, rankings: list[list[tuple[str, float]]]) -> None:
        self.rankings, self.heard = rankings, 0

    def detect_language(self, audio: np.ndarray) -> tuple[str, float, list[tuple[str, float]]]:
        self.heard += 1
        ranked = self.rankings[int(audio[0])]
        return ranked[0][0], ranked[0][1], ranked


# A glance at both ends (2 windows heard); unless both are sure of one language, every window
# is heard again in full (2 + 6).
@pytest.mark.parametrize(("rankings", "heard", "expected"), [
    ([[("pt", 0.97)]] * 6, 2, ("pt", 0.97)),  # first and last sure of one language: enough
    ([[("es", 0.95), ("pt", 0.05)]] + [[("pt", 0.95), ("es", 0.05)]] * 5, 8, ("pt", 0.8)),
    ([[("pt", 0.6), ("es", 0.4)]] * 6, 8, ("pt", 0.6)),  # unsure: every window is heard
    ([[("pt", 0.97)]] * 5 + [[("pt", 0.85), ("es", 0.15)]], 8, ("pt", 0.95)),  # one end unsure
    ([[("pt", 0.9)]] * 6, 2, ("pt", 0.9)),  # 90 % is sure
    ([[("pt", 0.6), ("es", 0.4)]], 2, ("pt", 0.6)),  # a short file: one window, twice
])
def test_language_detection_stops_early_only_where_the_ends_agree_and_are_sure(
    monkeypatch: pytest.MonkeyPatch, rankings: list[list[tuple[str, float]]], heard: int,
    expected: tuple[str, float],
) -> None:
    detector = Detector(rankings)
    transcriber = Transcriber.with_decoders(detector, FakeSequential())
    windows = [np.full(SAMPLE_RATE_HZ, k, dtype=np.float32) for k in range(len(rankings))]
    monkeypatch.setattr(transcriber, "speech_windows", lambda _: windows)
    language, probability = transcriber.detect_language(np.zeros(1, dtype=np.float32))
    assert (language, round(probability, 4)) == expected
    assert detector.heard == heard


def test_the_sequential_redo_of_a_short_region_stops_a_loop_early() -> None:
    # A decode looping on noise ran to the model's 448 tokens at each of six temperatures.
    sequential = FakeSequential()
    transcriber = Transcriber.with_decoders(sequential, FakeBatched({}))
    audio = np.zeros(30 * SAMPLE_RATE_HZ, dtype=np.float32)
    for region in ((1.0, 1.6), (2.0, 8.0), (2.0, 22.0)):
        transcriber._decode_alone(audio, region, DEFAULTS)
    short, six, twenty = (kwargs["max_new_tokens"] for _, kwargs in sequential.calls)
    # Far under the model's 448, yet long enough for a loop to show in its compression ratio.
    assert 96 <= short < 120 and 6 * 5 < six <= 200  # English runs ~5 tokens/s
    assert twenty is None  # the model's own limit: a user's prompt may take half of it


@pytest.mark.model
def test_a_capped_redo_hears_what_an_uncapped_one_does_and_leaves_room_for_a_prompt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    transcriber = Transcriber(resolve_model("tiny.en", tmp_path), "cpu", "int8", 1)
    audio = load_pcm(DATA / "jfk.flac").astype(np.float32) / 32768
    english = replace(DEFAULTS, language="en")
    assert token_cap((0.0, 6.5)) == 200

    def words() -> str:
        return spoken(" ".join(s.text for s in transcriber._decode_alone(
            audio, (0.0, 6.5), english)))

    capped = words()
    monkeypatch.setattr(transcriber_module, "REDO_MAX_CAPPED_TOKENS", 0)
    assert token_cap((0.0, 6.5)) is None
    assert capped == words()  # the same machine, capped or not
    assert heard("And so my fellow Americans", capped) == 1  # a WER bound, not exact words
    monkeypatch.undo()
    # Whisper keeps the prompt's last 223 tokens: 4 + 224 + 200 is inside its 448, no error.
    # (Temperature 1 alone: such a prompt garbles the answer, and every fallback costs time.)
    prompt = " ".join(["and so my fellow Americans"] * 80)
    long = transcriber._decode_alone(audio, (0.0, 6.5), replace(
        english, initial_prompt=prompt, temperature=1.0))
    # The cap counts generated tokens; the sampled answer's closing one can come on top (201
    # in 2 of 105 runs, never more).
    assert sum(len(s.tokens) for s in long) <= 201


def test_sentence_windows_are_for_every_language_but_english() -> None:
    options = replace(DEFAULTS, window_s=29.0, sentence_window_s=5.0)
    windows = {}
    for language in ("en", "pt"):
        batched = FakeBatched({r: (GOOD[r], -0.2) for r in REGIONS})
        transcriber = Transcriber.with_decoders(FakeSequential(), batched)
        transcriber.find_utterances = lambda audio: list(REGIONS)  # type: ignore[method-assign]
        audio = np.zeros(17 * SAMPLE_RATE_HZ, dtype=np.float32)
        transcriber.transcribe(audio, replace(options, language=language))
        windows[language] = len(batched.calls[0])
    assert windows == {"en": 1, "pt": 3}  # 16 s of regions: one window, or one per sentence


@dataclass
class RawWord:
    start: float
    end: float
    word: str
    probability: float = 0.9


def with_words(text: str, start: float, end: float) -> RawSegment:
    """A segment whose words share its span evenly."""
    words = text.split()
    step = (end - start) / len(words)
    return RawSegment(start, end, text, words=[
        RawWord(start + i * step, start + (i + 1) * step, f" {w}") for i, w in enumerate(words)])


class SkipsFirst(Said):
    """Said, with words; its first call (the packed first pass) answers `first` instead."""

    def __init__(self, said: dict[float, tuple[str, float, float]],
                 first: list[RawSegment]) -> None:
        super().__init__(said)
        self.first, self.calls = first, 0

    def transcribe(self, audio: np.ndarray, **kwargs: Any) -> tuple[Iterator[RawSegment], Info]:
        self.calls += 1
        if self.calls == 1:
            return iter(self.first), Info()
        heard, info = super().transcribe(audio, **kwargs)
        return iter([with_words(s.text, s.start, s.end) for s in heard]), info


SHORT = "You can call me Abbie."
AFTER = "In being comparatively modern, he was not an ill-disposed young man."
SKIP_REGIONS: list[Region] = [(0.0, 4.0), (5.0, 6.5), (8.0, 14.0)]


def a_short_sentence_between_two() -> np.ndarray:
    return levels(16.0, (0.5, 3.5, 0.02), (5.2, 6.3, 0.04), (8.5, 13.5, 0.03))


REST = AFTER.split(" ", 2)[2]  # without "In being"


class HearsTheFirst(SkipsFirst):
    """SkipsFirst, but after its first call each window holding several utterances answers
    the first one only: the decoder stops early and drops the rest of the window."""

    def transcribe(self, audio: np.ndarray, **kwargs: Any) -> tuple[Iterator[RawSegment], Info]:
        heard, info = super().transcribe(audio, **kwargs)
        heard = list(heard)
        firsts = [min(inside, key=lambda s: s.start) for clip in kwargs["clip_timestamps"]
                  if (inside := in_clip(heard, clip))]
        return iter(firsts), info


def test_fast_gives_a_region_its_last_try_dropped_again_a_window_of_its_own() -> None:
    """A 1 s falsetto "this is all" right after a sentence: every window that held both
    dropped it (the packed redo and the last try, which shares a window between failing
    neighbours). Alone, the decoder hears it."""
    audio = levels(12.0, (0.5, 4.5, 0.02), (5.2, 7.9, 0.03), (8.2, 9.0, 0.04))
    regions: list[Region] = [(0.0, 4.7), (5.0, 8.05), (8.1, 9.2)]
    said = {0.02: (GOOD[REGIONS[0]], -0.2, 0.01), 0.03: (AFTER, -0.2, 0.01),
            0.04: ("This is all", -0.2, 0.01)}
    transcriber = Transcriber.with_decoders(FakeSequential(), HearsTheFirst(said, []))
    transcriber.find_utterances = lambda audio: list(regions)  # type: ignore[method-assign]
    segments, _, redone, _ = transcriber.transcribe(audio, replace(PRESETS["fast"],
                                                                   language="en"))
    assert [s.text for s in segments] == [GOOD[REGIONS[0]], AFTER, "This is all"]
    assert redone == 3


@pytest.mark.parametrize("fan_out", [False, True])
@pytest.mark.parametrize("first_answers, heard_again, expected", [
    pytest.param(("In being", REST), SHORT, (SHORT, AFTER), id="a skipped sentence"),
    pytest.param(("Yes indeed", AFTER), "Yes in deed", ("Yes indeed", AFTER),
                 id="one word more: the first answers stay"),
    pytest.param(("In being", REST), "call me " * 6, ("In being", REST),
                 id="a loop: the first answers stay"),
])
def test_fast_hears_again_a_short_answer_that_runs_into_the_next_region(
    first_answers: tuple[str, str], heard_again: str, expected: tuple[str, str], fan_out: bool
) -> None:
    """In the packed first pass (regions at 0-4, 4.3-5.8 and 6.1-12.1 s) a short sentence
    came back as the next one's first two words, the second running 0.8 s into that region,
    and both answers pass the judge. Both regions are decoded again, their pauses kept, and
    take the new answers only when these hold clearly more words."""
    short, after = first_answers
    first = [with_words(GOOD[REGIONS[0]], 0.5, 3.5),
             RawSegment(4.5, 6.6, short, words=[RawWord(4.5, 5.0, f" {short.split()[0]}"),
                                                RawWord(5.0, 6.6, f" {short.split()[1]}")]),
             with_words(after, 6.6, 11.6)]
    said = {0.02: (GOOD[REGIONS[0]], -0.2, 0.01), 0.04: (heard_again, -0.2, 0.01),
            0.03: (AFTER, -0.2, 0.01)}
    transcriber = Transcriber.with_decoders(FakeSequential(), SkipsFirst(said, first))
    transcriber.find_utterances = lambda audio: list(SKIP_REGIONS)  # type: ignore[method-assign]
    options = replace(PRESETS["fast"], word_timestamps=True, fan_out=fan_out)
    audio = a_short_sentence_between_two()
    segments, _, redone, pending = transcriber.transcribe(audio, options)
    if fan_out:  # the file's redo pass gets both, with the first answers
        assert [(p.start_s, p.end_s) for p in pending] == SKIP_REGIONS[1:]
        assert [" ".join(s.text for s in p.first) for p in pending] == list(first_answers)
        assert [p.joined for p in pending] == [False, True]  # one run of suspect neighbours
        assert all(w.start >= 0.0 and w.end <= 7.0 for p in pending for s in p.first
                   for w in s.words)  # seconds from the region's start
        segments = [*segments, *transcriber.redo(audio, pending, options)[0]]
    texts = [s.text for s in sorted(segments, key=lambda s: s.start)]
    assert texts == [GOOD[REGIONS[0]], *expected] and redone == 2
    assert all(5.0 <= s.start < s.end <= 6.5 for s in segments if s.text == expected[0])


@pytest.mark.parametrize("fan_out", [False, True])
@pytest.mark.parametrize("rest_from, expected", [
    pytest.param(9.5, (SHORT, AFTER), id="the next words start 1.5 s late: both redone"),
    pytest.param(8.6, ("In being", REST), id="on time: the first answers stay"),
])
def test_base_fast_hears_again_a_short_answer_before_a_region_whose_words_start_late(
    rest_from: float, expected: tuple[str, str], fan_out: bool
) -> None:
    """Over spans of the audio (`base` `fast`) a short sentence came back as the next one's
    first two words, timed inside its own region, and the next region's words begin well
    after that region does: both answers pass the judge, both regions are decoded again."""
    first = [with_words(GOOD[REGIONS[0]], 0.5, 3.5), with_words("In being", 5.2, 6.3),
             with_words(REST, rest_from, 13.5)]
    said = {0.02: (GOOD[REGIONS[0]], -0.2, 0.01), 0.04: (SHORT, -0.2, 0.01),
            0.03: (AFTER, -0.2, 0.01)}
    transcriber = Transcriber.with_decoders(FakeSequential(), SkipsFirst(said, first))
    transcriber.find_utterances = lambda audio: list(SKIP_REGIONS)  # type: ignore[method-assign]
    options = replace(preset_options("base", "fast"), language="en", fan_out=fan_out)
    audio = a_short_sentence_between_two()
    segments, _, redone, pending = transcriber.transcribe(audio, options)
    if fan_out:
        segments = [*segments, *transcriber.redo(audio, pending, options)[0]]
    texts = [s.text for s in sorted(segments, key=lambda s: s.start)]
    assert texts == [GOOD[REGIONS[0]], *expected]
    assert redone == (2 if rest_from > 9.0 else 0)


SLOG = "I can't think of an animal that's less like a slog."
WHICH = "And which developed more completely on the side of the lower case."


def stray_start_case(audio: np.ndarray, regions: list[Region], spanning: RawSegment,
                     middle: tuple[float, str], fan_out: bool
                     ) -> tuple[str, int, tuple[Pending, ...]]:
    """base `fast` on `audio`: the first pass answers the first region well, then `spanning`;
    every redo answers each level's sentence (0.02; `middle`'s level, its text; 0.03,
    `spanning`'s text). The
    transcript's text (through the file's redo pass when fanned out), the regions redone, and
    the chunk's pending regions."""
    first = [with_words(GOOD[REGIONS[0]], 0.5, 3.5), spanning]
    said = {0.02: (GOOD[REGIONS[0]], -0.2, 0.01), 0.03: (spanning.text, -0.2, 0.01),
            middle[0]: (middle[1], -0.2, 0.05)}
    transcriber = Transcriber.with_decoders(FakeSequential(), SkipsFirst(said, first))
    transcriber.find_utterances = lambda audio: list(regions)  # type: ignore[method-assign]
    options = replace(preset_options("base", "fast"), language="en", fan_out=fan_out)
    segments, _, redone, pending = transcriber.transcribe(audio, options)
    if fan_out:
        segments = [*segments, *transcriber.redo(audio, pending,
                                                 replace(options, fan_out=False))[0]]
    return " ".join(s.text for s in sorted(segments, key=lambda s: s.start)), redone, pending


@pytest.mark.parametrize("fan_out", [False, True])
def test_a_redone_region_keeps_the_next_sentences_first_word_timed_into_it(fan_out: bool) -> None:
    """base skipped a sentence and timed the next one's "And" 1 s early, into the skipped
    sentence's region: one segment over both regions. That region fails (one word in 4 s) and
    its redo hears the skipped sentence, without "And", which the next region lacks too."""
    audio = levels(17.0, (0.5, 3.5, 0.02), (5.2, 8.8, 0.04), (10.2, 15.8, 0.03))
    rest = with_words(WHICH.split(" ", 1)[1], 10.3, 15.5)
    spanning = RawSegment(8.6, 15.5, WHICH, tokens=(50364, 400, 1),
                          words=[RawWord(8.6, 9.3, " And"), *(rest.words or [])])
    text, redone, pending = stray_start_case(audio, [(0.0, 4.0), (5.0, 9.0), (10.0, 16.0)],
                                             spanning, (0.04, SLOG), fan_out)
    assert text == f"{GOOD[REGIONS[0]]} {SLOG} {WHICH}" and redone == 1
    # Fanned out, the file's redo pass gets the stray word with its region.
    assert [[s.text for s in p.tail] for p in pending] == ([["And"]] if fan_out else [])


@pytest.mark.parametrize("fan_out", [False, True])
def test_a_whisper_redone_keeps_the_stray_start_of_the_next_sentence(fan_out: bool) -> None:
    """The same at a whisper the VAD missed (base seed 7: "In being" timed into it). The stray
    words come from a segment the decoder was unsure was speech; the whisper's new answer is
    judged without them, or base would drop it for their doubt."""
    audio = levels(17.0, (0.5, 3.5, 0.02), (5.5, 8.5, 0.05), (10.2, 15.8, 0.03))
    audio[between_syllables(len(audio)) & (audio == np.float32(0.05))] = QUIET_ROOM
    rest = with_words(REST, 10.3, 15.5)
    spanning = RawSegment(7.9, 15.5, AFTER, no_speech_prob=0.7, tokens=(50364, 400, 1),
                          words=[RawWord(7.9, 8.1, " In"), RawWord(8.1, 8.4, " being"),
                                 *(rest.words or [])])
    text, _, pending = stray_start_case(audio, [(0.0, 4.0), (10.0, 16.0)], spanning,
                                        (0.05, WHISPERED), fan_out)
    assert text == f"{GOOD[REGIONS[0]]} {WHISPERED} {AFTER}"
    assert [([s.text for s in p.tail], p.quiet) for p in pending] == (
        [(["In being"], True)] if fan_out else [])


def test_the_redo_pass_judges_each_run_of_suspect_neighbours_on_its_own() -> None:
    """Two runs from two chunks follow each other in the redo pass: the first gets a skipped
    sentence back (5 words more), the second's redo loses a word; taken together they would
    both have been replaced."""
    audio = np.zeros(15 * SAMPLE_RATE_HZ, dtype=np.float32)
    runs = [(0.0, 1.5, 0.04), (3.5, 9.5, 0.03), (10.0, 11.5, 0.05), (12.0, 14.0, 0.06)]
    for start_s, end_s, level in runs:
        audio[int((start_s + 0.2) * SAMPLE_RATE_HZ):int((end_s - 0.2) * SAMPLE_RATE_HZ)] = level
    said = {0.04: (SHORT, -0.2, 0.01), 0.03: (AFTER, -0.2, 0.01),
            0.05: ("Fine.", -0.2, 0.01), 0.06: ("See you all tomorrow.", -0.2, 0.01)}
    first = ["In being", REST, "Fine, thanks.", "See you all tomorrow."]
    pending = tuple(
        Pending(start_s, end_s, joined=index % 2 == 1, first=(
            transcriber_module._segment(with_words(text, 0.2, end_s - start_s - 0.2)),))
        for index, ((start_s, end_s, _), text) in enumerate(zip(runs, first, strict=True)))
    transcriber = Transcriber.with_decoders(FakeSequential(), Said(said))
    segments, *_ = transcriber.redo(audio, pending, replace(PRESETS["fast"], fan_out=False))
    assert [s.text for s in segments] == [SHORT, AFTER, "Fine, thanks.", "See you all tomorrow."]


class EncodedFrom(Batches):
    """A Batches decoder that also records the encoder input each call was given (frames)."""

    def __init__(self, said: dict[float, tuple[str, float, float]]) -> None:
        super().__init__(said)
        self.frames: list[int | None] = []

    def transcribe(self, audio: np.ndarray, **kwargs: Any) -> tuple[Iterator[RawSegment], Info]:
        self.frames.append(getattr(transcriber_module._ENCODER_INPUT, "frames", None))
        return super().transcribe(audio, **kwargs)


def test_the_redo_pass_windows_the_regions_of_one_place_apart_from_the_rest() -> None:
    """Its audio strings regions from all over the file together, 0.5 s apart: a word timed
    across such a gap went to a region 50 s away. The last try windows the regions of one
    place with each other only, and every other region alone, each window encoded from
    Whisper's full 30 s input."""
    audio = np.zeros(13 * SAMPLE_RATE_HZ, dtype=np.float32)
    regions = [(0.5, 3.0, 0.02), (3.5, 6.0, 0.03), (6.5, 9.0, 0.04), (9.5, 12.0, 0.05)]
    for start_s, end_s, level in regions:
        audio[int((start_s + 0.2) * SAMPLE_RATE_HZ):int((end_s - 0.2) * SAMPLE_RATE_HZ)] = level
    said = {0.02: ("We", -0.2, 0.01), 0.03: ("review", -0.2, 0.01),
            0.04: ("profit", -0.2, 0.01), 0.05: ("loss", -0.2, 0.01)}
    # One word in 2.5 s: each fails every try.
    pending = (Pending(0.5, 3.0), Pending(3.5, 6.0, near=True), Pending(6.5, 9.0),
               Pending(9.5, 12.0))
    decoder = EncodedFrom(said)
    transcriber = Transcriber.with_decoders(FakeSequential(), decoder)
    transcriber.redo(audio, pending, replace(PRESETS["fast"], fan_out=False))
    assert decoder.calls[0] == ["We+review+profit+loss"]  # the packed try: one window
    assert sorted(decoder.calls[1]) == ["We+review", "loss", "profit"]
    # Each that still fails and had shared its window, alone: the others would hear the same.
    assert sorted(decoder.calls[2]) == ["We", "review"]
    assert decoder.frames[0] is not None and decoder.frames[1:] == [None, None]


def test_encoder_input_is_the_longest_window_and_the_pad_in_whole_seconds() -> None:
    windows: list[Region] = [(0.0, 9.2), (10.0, 21.5), (30.0, 33.0)]
    assert encoder_frames(windows, 3.0) == 1500  # 11.5 s + 3 s, rounded up
    assert encoder_frames(windows, None) is None  # Whisper's 30 s
    assert encoder_frames([(0.0, 29.0)], 3.0) == 3000  # never past the model's input


@pytest.mark.model
def test_a_window_is_encoded_from_its_own_length_and_the_pad_not_from_30_s(
    tmp_path: Path
) -> None:
    transcriber = Transcriber(resolve_model("tiny.en", tmp_path), "cpu", "int8", 1)
    counts = CountsFrames(transcriber._model.model)
    transcriber._model.model = counts
    audio = load_pcm(DATA / "jfk.flac").astype(np.float32) / 32768  # 11 s, one window
    texts = []
    for pad_s in (None, 3.0):
        options = replace(PRESETS["fast"], language="en", encoder_pad_s=pad_s)
        segments, _, redone, _ = transcriber.transcribe(audio, options)
        texts.append(" ".join(s.text for s in segments))
        assert redone == 0
    whole = (0.0, len(audio) / SAMPLE_RATE_HZ)  # one window holds at most all of it
    assert counts.frames[0] == 3000 and 400 <= counts.frames[1] <= encoder_frames([whole], 3.0)
    said = "ask not what your country can do for you ask what you can do for your country"
    assert all(heard(said, text) == 1 for text in texts)  # a WER bound, not exact words
    # The sequential decoder keeps Whisper's 30 s.
    transcriber._decode_alone(audio, whole, replace(DEFAULTS, language="en"))
    assert counts.frames[-1] == 3000
