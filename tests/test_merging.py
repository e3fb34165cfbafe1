"""Chunk results onto the file timeline: whisper_api.merging."""

import pytest

from whisper_api.merging import join_text, merge_results
from whisper_api.transcript import ChunkResult, Segment, Word


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
        [(0.0, 3.0, "a"), (3.0, 3.0, "b"), (3.0, 5.0, "c")], id="monotonic-overlap",
    ),
    pytest.param(
        [(0.0, chunk((1.0, 0.5, "a")))], [10.0], [(1.0, 1.0, "a")], id="end-before-start",
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
