"""Chunk results onto the file's timeline (pure)."""

from dataclasses import replace

from whisper_api.transcript import ChunkResult, Segment


def merge_results(
    results: list[tuple[float, ChunkResult]], chunk_ends_s: list[float]
) -> list[Segment]:
    """Shift each chunk's segments by its offset, clamp them to the chunk, keep time monotonic.

    Chunks are cut in pauses, so a segment belongs to exactly one chunk; clamping only repairs
    timestamps that the decoder placed past the chunk's end.
    """
    merged: list[Segment] = []
    for (offset_s, result), end_s in zip(results, chunk_ends_s, strict=True):
        for segment in result.segments:
            shifted = segment.shifted(offset_s)
            start = min(max(shifted.start, merged[-1].end if merged else 0.0, offset_s), end_s)
            end = min(max(shifted.end, start), end_s)
            if not shifted.text.strip():
                continue
            merged.append(replace(
                shifted, start=round(start, 3), end=round(max(end, start), 3),
                text=shifted.text.strip(),
            ))
    return merged


def join_text(segments: list[Segment]) -> str:
    return " ".join(s.text.strip() for s in segments if s.text.strip())
