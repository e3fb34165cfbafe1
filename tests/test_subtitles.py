"""Subtitle shaping in whisper_api.subtitles, checked cue by cue against the rules users expect."""

import os
import random
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import JFK_TEXT, heard
from whisper_api.errors import InvalidRequestError
from whisper_api.formats import render
from whisper_api.subtitles import SubtitleOptions, build_cues
from whisper_api.transcript import Segment, Transcript, Word

TIME = r"(\d\d):(\d\d):(\d\d)[,.](\d{3})"
EPSILON_S = 0.0015  # timestamps are printed in whole milliseconds


@dataclass(frozen=True)
class ParsedCue:
    start: float
    end: float
    lines: list[str]


def _seconds(match: tuple[str, ...]) -> float:
    hours, minutes, secs, millis = (int(x) for x in match)
    return hours * 3600 + minutes * 60 + secs + millis / 1000


def parse(subtitles: str) -> list[ParsedCue]:
    """SRT or VTT text → cues (the header and SRT's numbers are skipped)."""
    cues = []
    for block in subtitles.strip().split("\n\n"):
        rows = block.split("\n")
        timing = next((i for i, row in enumerate(rows) if "-->" in row), None)
        if timing is None:
            continue  # the WEBVTT header
        start, end = re.findall(TIME, rows[timing])
        cues.append(ParsedCue(_seconds(start), _seconds(end), rows[timing + 1:]))
    return [c for c in cues if c.lines]


def check_rules(subtitles: str, width: int = 42, count: int = 2, duration_s: float = 1e9) -> None:
    cues = parse(subtitles)
    for index, cue in enumerate(cues):
        where = f"cue {index + 1} {cue}"
        assert 0 < len(cue.lines) <= count, where
        for line in cue.lines:
            assert line.strip() == line and line, where
            assert len(line) <= width or " " not in line, where  # one over-long word may stay
        assert cue.end > cue.start, where
        assert cue.end - cue.start <= 7.0 + EPSILON_S, where
        if index + 1 < len(cues):
            following = cues[index + 1]
            assert cue.end <= following.start + EPSILON_S, where
        # Shorter than 0.7 s only where the audio ends first.
        if cue.end - cue.start < 0.7 - EPSILON_S:
            assert cue.start > duration_s - 0.7, where


def transcript(*segments: Segment, duration_s: float = 600.0) -> Transcript:
    return Transcript(" ".join(s.text for s in segments), segments, "en", duration_s)


def with_words(text: str, start: float, seconds_per_word: float = 0.3) -> Segment:
    tokens = text.split()
    words = tuple(Word(start + i * seconds_per_word, start + (i + 1) * seconds_per_word,
                       " " + t, 0.9) for i, t in enumerate(tokens))
    return Segment(start, start + len(tokens) * seconds_per_word, text, words)


LONG_SENTENCE = (
    "So this is the point where we stop and think about what we have done, because every "
    "change we make to the system has a cost that somebody else will pay later, and we should "
    "know who that is before we go on."
)


@pytest.mark.parametrize("fmt", ["srt", "vtt"])
def test_a_long_segment_becomes_readable_cues(fmt: str) -> None:
    out = render(transcript(with_words(LONG_SENTENCE, 1.0)), fmt)
    assert isinstance(out, str)
    check_rules(out)
    cues = parse(out)
    assert len(cues) >= 3
    assert " ".join(" ".join(c.lines) for c in cues).split() == LONG_SENTENCE.split()


def test_lines_are_balanced_and_break_after_punctuation() -> None:
    out = render(transcript(with_words(LONG_SENTENCE, 0.0)), "srt")
    assert isinstance(out, str)
    cues = parse(out)
    two_line = [c for c in cues if len(c.lines) == 2]
    assert two_line
    for cue in two_line:
        assert abs(len(cue.lines[0]) - len(cue.lines[1])) <= 20, cue
    # "...what we have done," ends a cue: the clause break wins over a full cue.
    assert any(c.lines[-1].endswith("done,") for c in cues)


def test_a_cue_too_long_in_time_breaks_at_its_comma_not_before_its_last_word() -> None:
    # JFK's timing: 7.5 s from "ask" to "country.", over the 7 s a cue may last.
    out = render(transcript(with_words("ask not what your country can do for you, ask what "
                                       "you can do for your country.", 3.18, 0.44)), "srt")
    assert isinstance(out, str)
    check_rules(out)
    assert [" ".join(c.lines) for c in parse(out)] == [
        "ask not what your country can do for you,", "ask what you can do for your country."]


def test_options_change_the_shape() -> None:
    seg = with_words(LONG_SENTENCE, 0.0, seconds_per_word=0.1)
    narrow = render(transcript(seg), "srt", SubtitleOptions(max_line_width=20, max_line_count=1))
    assert isinstance(narrow, str)
    check_rules(narrow, width=20, count=1)
    assert all(len(c.lines) == 1 for c in parse(narrow))


def test_segments_without_words_are_spread_by_characters() -> None:
    out = render(transcript(Segment(10.0, 24.0, LONG_SENTENCE)), "vtt")
    assert isinstance(out, str)
    check_rules(out)
    cues = parse(out)
    assert cues[0].start == pytest.approx(10.0) and cues[-1].end == pytest.approx(24.0, abs=0.01)


def test_zero_length_and_overlapping_decoder_times_give_valid_cues() -> None:
    segments = (
        Segment(307.824, 307.824, "A whole sentence that the decoder squeezed into no time."),
        Segment(307.824, 309.0, "Then another one."),
        Segment(308.5, 308.2, "And a third, backwards."),
    )
    out = render(transcript(*segments), "srt")
    assert isinstance(out, str)
    check_rules(out)
    assert len(parse(out)) >= 2


def test_words_squeezed_into_one_instant_still_get_readable_cues() -> None:
    """A chunk's last words timed past its end are clamped to one instant when merged: they
    made cues of two full lines for 1 ms each."""
    squeezed = tuple(Word(9.98, 9.98, " " + t, 0.9) for t in LONG_SENTENCE.split())
    t = transcript(with_words("Before that.", 8.0, 0.5),
                   Segment(8.0, 9.98, LONG_SENTENCE, squeezed), with_words("Next.", 12.0),
                   duration_s=60.0)
    out = render(t, "srt")
    assert isinstance(out, str)
    check_rules(out, duration_s=60.0)
    assert len(parse(out)) >= 4


def test_a_pause_starts_a_new_cue() -> None:
    out = render(transcript(with_words("Hello there.", 0.0), with_words("Bye now", 5.0)), "srt")
    assert isinstance(out, str)
    assert [c.lines for c in parse(out)] == [["Hello there."], ["Bye now"]]


def test_short_cues_stretch_into_silence_but_not_past_the_audio() -> None:
    t = transcript(with_words("Yes.", 1.0, 0.1), with_words("No.", 4.0, 0.1), duration_s=4.3)
    cues = build_cues(t, SubtitleOptions())
    assert cues[0].end - cues[0].start == pytest.approx(0.7)
    assert cues[1].end == pytest.approx(4.3)


def test_random_transcripts_always_follow_the_rules() -> None:
    rng = random.Random(12)
    vocabulary = ["a", "the", "word,", "sentence.", "supercalifragilistic", "why?", "x" * 50]
    for _ in range(200):
        segments, at = [], rng.uniform(0, 5)
        for _ in range(rng.randint(1, 8)):
            tokens = [rng.choice(vocabulary) for _ in range(rng.randint(1, 40))]
            words, t = [], at
            for token in tokens:
                length = rng.choice([0.0, 0.05, 0.3, 1.2, 9.0])
                words.append(Word(t, t + length, " " + token, 0.5))
                t += length + rng.choice([0.0, 0.0, 0.4, 2.0]) - rng.choice([0.0, 0.1])
            end = max(t, at)
            keep_words = rng.random() < 0.7
            segments.append(Segment(at, end, " ".join(tokens), tuple(words) if keep_words else ()))
            at = end + rng.choice([-0.5, 0.0, 0.3, 3.0])
        options = SubtitleOptions(rng.choice([20, 42, 60]), rng.choice([1, 2, 3]))
        out = render(transcript(*segments, duration_s=at + 30), "vtt", options)
        assert isinstance(out, str)
        check_rules(out, options.max_line_width, options.max_line_count, at + 30)


@pytest.mark.parametrize(("width", "count"), [(5, 2), (42, 0), (42, 11)])
def test_options_are_bounded(width: int, count: int) -> None:
    with pytest.raises(InvalidRequestError):
        SubtitleOptions(width, count)


def test_text_and_json_are_not_shaped() -> None:
    t = transcript(with_words(LONG_SENTENCE, 0.0))
    body = render(t, "json")
    assert isinstance(body, dict) and len(body["segments"]) == 1
    assert render(t, "text") == LONG_SENTENCE + "\n"


def test_a_long_real_result_follows_the_rules(several_minutes: Path, tmp_path: Path) -> None:
    """Real worker processes and tiny.en on ~200 s of speech, rendered by the CLI."""
    env = {**os.environ, "TEMP_DIR": str(tmp_path / "temp"), "PARALLEL_WORKERS": "2"}
    done = subprocess.run(
        [sys.executable, "-m", "whisper_api.cli", "transcribe", str(several_minutes),
         "--format", "srt"], capture_output=True, text=True, env=env, timeout=600,
    )
    assert done.returncode == 0, done.stderr
    check_rules(done.stdout, duration_s=200.0)
    cues = parse(done.stdout)
    assert len(cues) >= 24  # 24 clips with 1 s pauses between them: a pause ends a cue
    # Words survive shaping, whatever the punctuation (a sentence may span cues at a pause).
    assert heard(JFK_TEXT, "\n".join(line for c in cues for line in c.lines)) >= 4
