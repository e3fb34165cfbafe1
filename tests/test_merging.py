"""Chunk results onto the file timeline: whisper_api.merging."""

import itertools
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from whisper_api.formats import render
from whisper_api.merging import join_text, merge_results
from whisper_api.transcript import ChunkResult, Segment, Transcript, Word


def chunk(*segments: tuple[float, float, str]) -> ChunkResult:
    return ChunkResult("t", tuple(Segment(a, b, text) for a, b, text in segments), "en")


def spans(segments: list[Segment]) -> list[tuple[float, float, str]]:
    return [(s.start, s.end, s.text) for s in segments]


CASES = [
    pytest.param(
        [(0.0, chunk((0.0, 2.0, "a"), (2.5, 4.0, "b")))], [10.0],
        [(0.0, 2.0, "a"), (2.5, 4.0, "b")], id="single-chunk-unchanged",
    ),
    pytest.param(
        [(0.0, chunk((0.0, 3.0, "a"))), (10.0, chunk((0.5, 2.0, "b"), (2.0, 4.25, "c")))],
        [10.0, 20.0],
        [(0.0, 3.0, "a"), (10.5, 12.0, "b"), (12.0, 14.25, "c")], id="offsets",
    ),
    pytest.param(
        [(0.0, chunk((0.0, 12.5, "a"))), (10.0, chunk((0.0, 1.0, "b")))], [10.0, 20.0],
        [(0.0, 10.0, "a"), (10.0, 11.0, "b")], id="clamp-end-past-chunk",
    ),
    pytest.param(
        [(0.0, chunk((0.0, 3.0, "a"), (2.0, 2.5, "b"), (2.8, 5.0, "c")))], [10.0],
        [(0.0, 3.0, "a"), (3.0, 3.05, "b"), (3.05, 5.0, "c")], id="monotonic-overlap",
    ),
    pytest.param(
        [(0.0, chunk((1.0, 0.5, "a")))], [10.0], [(1.0, 1.05, "a")], id="end-before-start",
    ),
    pytest.param(
        [(0.0, chunk((0.0, 9.99, "a"), (9.99, 10.0, "b"), (10.0, 11.0, "c")))], [10.0],
        [(0.0, 9.99, "a b c")], id="no-room-left-joins-the-previous-segment",
    ),
    pytest.param(
        [(0.0, chunk((5.0, 5.0, "a"))), (5.0, chunk((0.0, 1.0, "b")))], [5.0, 10.0],
        [(5.0, 6.0, "a b")], id="no-room-and-nothing-before-joins-the-next",
    ),
    pytest.param(
        [(5.0, chunk((-0.4, 1.0, "a")))], [9.0], [(5.0, 6.0, "a")], id="negative-start-clamped",
    ),
    pytest.param(
        [(0.0, chunk((0.0, 1.0, "  "), (1.0, 2.0, ""), (2.0, 3.0, " keep ")))], [10.0],
        [(2.0, 3.0, "keep")], id="empty-text-dropped",
    ),
    pytest.param(
        [(0.0, chunk()), (10.0, chunk((1.0, 2.0, "b")))], [10.0, 20.0],
        [(11.0, 12.0, "b")], id="empty-chunk",
    ),
    pytest.param(
        [(1.0 / 3, chunk((0.1, 0.2, "a")))], [5.0], [(0.433, 0.533, "a")], id="rounded-to-ms",
    ),
]


@pytest.mark.parametrize(("results", "ends", "expected"), CASES)
def test_merge_results(
    results: list[tuple[float, ChunkResult]],
    ends: list[float],
    expected: list[tuple[float, float, str]],
) -> None:
    assert spans(merge_results(results, ends)) == expected


@pytest.mark.parametrize(("results", "ends", "expected"), CASES)
def test_merge_is_monotonic(
    results: list[tuple[float, ChunkResult]],
    ends: list[float],
    expected: list[tuple[float, float, str]],
) -> None:
    merged = merge_results(results, ends)
    assert all(s.start <= s.end for s in merged)
    assert all(a.end <= b.start for a, b in zip(merged, merged[1:], strict=False))


def test_segment_wholly_past_chunk_end_is_clamped() -> None:
    merged = merge_results([(0.0, chunk((11.0, 12.0, "a")))], [10.0])
    assert merged[0].start <= 10.0
    assert merged[0].end <= 10.0


def test_words_shifted_by_offset() -> None:
    words = (Word(0.25, 0.5, " hi", 0.9), Word(0.5, 1.0, " there", 0.7))
    result = ChunkResult("t", (Segment(0.25, 1.0, "hi there", words, -0.2, 0.1),), "en")
    (merged,) = merge_results([(30.0, result)], [40.0])
    assert [(w.start, w.end, w.word, w.probability) for w in merged.words] == [
        (30.25, 30.5, " hi", 0.9), (30.5, 31.0, " there", 0.7),
    ]
    assert (merged.avg_logprob, merged.no_speech_prob) == (-0.2, 0.1)


def test_mismatched_lengths_raise() -> None:
    with pytest.raises(ValueError):
        merge_results([(0.0, chunk((0.0, 1.0, "a")))], [])


@pytest.mark.parametrize(
    ("texts", "expected"),
    [([" a ", "b"], "a b"), (["", "  ", "x"], "x"), ([], "")],
)
def test_join_text(texts: list[str], expected: str) -> None:
    assert join_text([Segment(0.0, 1.0, t) for t in texts]) == expected


# --- properties: any merge gives a timeline subtitles can use -------------------------------

WORDS = st.sampled_from(["", " ", "a", "the cat", "sat on", "mat.", "-->", "x y z"])
RAW_SEGMENT = st.tuples(
    st.floats(-5.0, 70.0), st.floats(-5.0, 70.0), WORDS,
    st.lists(st.tuples(st.floats(-5.0, 70.0), st.floats(-5.0, 70.0)), max_size=3),
)
CHUNKS = st.lists(st.tuples(st.floats(0.05, 60.0), st.lists(RAW_SEGMENT, max_size=8)),
                  min_size=1, max_size=4)
CUE_TIMES = re.compile(r"(\d\d):(\d\d):(\d\d)[.,](\d\d\d) --> (\d\d):(\d\d):(\d\d)[.,](\d\d\d)")


def build(chunks: list[tuple[float, list[Any]]]) -> tuple[list[tuple[float, ChunkResult]],
                                                         list[float]]:
    results, ends, offset = [], [], 0.0
    for length, raw in chunks:
        segments = tuple(
            Segment(a, b, text, tuple(Word(ws, we, "w", 0.9) for ws, we in words))
            for a, b, text, words in raw
        )
        results.append((offset, ChunkResult("t", segments, "en")))
        offset += length
        ends.append(offset)
    return results, ends


def cue_times(rendered: str) -> list[tuple[float, float]]:
    def seconds(h: str, m: str, s: str, ms: str) -> float:
        return int(h) * 3600 + int(m) * 60 + int(s) + int(ms) / 1000

    return [(seconds(*m.groups()[:4]), seconds(*m.groups()[4:]))
            for m in CUE_TIMES.finditer(rendered)]


@settings(max_examples=300, deadline=None)
@given(CHUNKS)
def test_any_merge_is_a_usable_timeline(chunks: list[tuple[float, list[Any]]]) -> None:
    results, ends = build(chunks)
    merged = merge_results(results, ends)
    previous_end = 0.0
    for segment in merged:
        assert segment.end - segment.start >= 0.049
        assert segment.start >= previous_end and segment.end <= ends[-1] + 0.001
        assert all(segment.start <= w.start <= w.end <= segment.end for w in segment.words)
        previous_end = segment.end
    # No words lost: the merged text holds every input word, in order.
    given_words = [w for _, r in results for s in r.segments for w in s.text.split()]
    assert join_text(merged).split() == given_words


@settings(max_examples=200, deadline=None)
@given(CHUNKS)
def test_every_format_renders_positive_non_overlapping_cues(
    chunks: list[tuple[float, list[Any]]],
) -> None:
    results, ends = build(chunks)
    merged = merge_results(results, ends)
    transcript = Transcript(join_text(merged), tuple(merged), "en", ends[-1])
    for fmt in ("srt", "vtt"):
        rendered = render(transcript, fmt)
        assert isinstance(rendered, str)
        times = cue_times(rendered)
        # Cues are shaped from words, so several short segments may share one cue.
        assert times or not merged
        assert all(start < end for start, end in times)
        assert all(a[1] <= b[0] for a, b in itertools.pairwise(times))
    tsv = render(transcript, "tsv")
    assert isinstance(tsv, str)
    rows = [line.split("\t") for line in tsv.splitlines()[1:]]
    assert all(int(start) < int(end) for start, end, _ in rows)
    body = render(transcript, "verbose_json")
    assert isinstance(body, dict)
    assert all(s["start"] < s["end"] for s in body["segments"])
