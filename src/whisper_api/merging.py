"""Chunk results onto the file's timeline (pure)."""

from dataclasses import replace

from whisper_api.regions import MIN_SEGMENT_S, fit_words
from whisper_api.transcript import ChunkResult, Segment


def merge_results(
    results: list[tuple[float, ChunkResult]], chunk_ends_s: list[float]
) -> list[Segment]:
    """Shift each chunk's segments by its offset and make the timeline one subtitles can use.

    Every segment ends up inside its chunk, after the previous one, and at least MIN_SEGMENT_S
    long (times rounded to the millisecond). Chunks are cut in pauses, so a segment belongs to
    exactly one chunk; clamping only repairs timestamps the decoder placed past the chunk's end.
    A segment left no room at all (squeezed against the chunk's end) is not dropped: its text
    joins the segment before it, so no words are lost.
    """
    if len(results) != len(chunk_ends_s):
        raise ValueError("one chunk end per chunk result")
    merged: list[Segment] = []
    orphans: list[Segment] = []  # no room, and nothing before them to join yet
    for (offset_s, result), end_s in zip(results, chunk_ends_s, strict=True):
        for segment in result.segments:
            if not segment.text.strip():
                continue
            placed = _place(segment.shifted(offset_s), merged, offset_s, end_s)
            if placed is None:
                _join_previous(merged, orphans, segment.shifted(offset_s))
                continue
            merged.append(_prepend(orphans, placed))
            orphans = []
    if orphans:  # only when no chunk had room for anything: one segment at the very start
        merged.append(_prepend(orphans[:-1], replace(orphans[-1], start=0.0, end=MIN_SEGMENT_S)))
    return [fit_words(s) for s in merged]


def _place(
    segment: Segment, merged: list[Segment], offset_s: float, end_s: float
) -> Segment | None:
    floor = max(offset_s, merged[-1].end if merged else 0.0, 0.0)
    start = round(min(max(segment.start, floor), end_s), 3)
    end = round(min(max(segment.end, start + MIN_SEGMENT_S), end_s), 3)
    if end - start < MIN_SEGMENT_S - 0.0005:
        return None
    return replace(segment, start=start, end=end, text=segment.text.strip())


def _join_previous(merged: list[Segment], orphans: list[Segment], segment: Segment) -> None:
    if not merged:
        orphans.append(segment)
        return
    previous = merged[-1]
    merged[-1] = replace(
        previous, text=f"{previous.text} {segment.text.strip()}",
        words=previous.words + segment.words,
    )


def _prepend(orphans: list[Segment], segment: Segment) -> Segment:
    if not orphans:
        return segment
    text = " ".join([*(o.text.strip() for o in orphans), segment.text.strip()])
    words = tuple(w for o in orphans for w in o.words) + segment.words
    return replace(segment, text=text, words=words)


def join_text(segments: list[Segment]) -> str:
    return " ".join(s.text.strip() for s in segments if s.text.strip())
