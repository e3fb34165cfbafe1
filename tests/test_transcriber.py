"""The worker's decoding plan: packing utterances into windows and choosing what to redo."""

from whisper_api.transcriber import is_covered, pack_windows, split_for_redo
from whisper_api.transcript import Segment


def seg(start: float, end: float, text: str = "x") -> Segment:
    return Segment(start, end, text)


def test_pack_windows_merges_while_the_span_fits() -> None:
    utterances = [(0.0, 4.0), (5.0, 9.0), (10.0, 13.0), (20.0, 21.0)]
    assert pack_windows(utterances, 12.0) == [(0.0, 9.0), (10.0, 21.0)]
    assert pack_windows(utterances, 3.0) == utterances


def test_is_covered_by_share_of_the_utterance() -> None:
    assert is_covered((0.0, 10.0), [seg(0.0, 7.0)], 0.6)
    assert not is_covered((0.0, 10.0), [seg(0.0, 5.0)], 0.6)
    assert is_covered((0.0, 10.0), [seg(0.0, 3.0), seg(4.0, 7.0)], 0.6)


def test_redo_takes_every_utterance_a_dropped_segment_touched() -> None:
    # The decoder put "A B" in one segment spanning utterances a and b, then skipped c.
    a, b, c, d = (0.0, 4.0), (4.5, 8.0), (8.5, 12.0), (13.0, 15.0)
    segments = [seg(0.0, 8.6, "A B"), seg(13.0, 15.0, "D")]
    kept, redo = split_for_redo([a, b, c, d], segments, missing=[c])
    # Dropping "A B" (it overlaps c) would lose A and B unless a and b are decoded again too.
    assert redo == [a, b, c]
    assert kept == [segments[1]]


def test_redo_leaves_untouched_segments_alone() -> None:
    a, b = (0.0, 4.0), (6.0, 9.0)
    segments = [seg(0.0, 4.0, "A")]
    assert split_for_redo([a, b], segments, missing=[b]) == (segments, [b])
