"""Pause-aware chunk plan: cut the file where the signal is quietest, never inside a word.

Energy is computed per 20 ms frame while streaming the WAV; the plan itself is pure. Silero VAD
runs later inside each worker on its own chunk, so this step stays cheap and parallel.
"""

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from whisper_api.audio import SAMPLE_RATE_HZ, iter_wav_blocks

FRAME_S = 0.02
MIN_PAUSE_S = 0.2  # a quiet run this long is a pause between words, not a stop consonant
_FRAME = int(FRAME_S * SAMPLE_RATE_HZ)


@dataclass(frozen=True)
class ChunkSpan:
    start_s: float
    end_s: float

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


def frame_energies_db(path: Path) -> np.ndarray:
    """RMS level of each 20 ms frame, in dBFS (streams the file in 60 s blocks)."""
    levels = [levels_db(block.astype(np.float32) / 32768.0, _FRAME)
              for block in iter_wav_blocks(path, 60.0)]
    return np.concatenate(levels) if levels else np.zeros(0, dtype=np.float32)


def levels_db(samples: np.ndarray, frame: int) -> np.ndarray:
    """RMS level in dBFS of each whole frame of `frame` samples (full scale = 1.0)."""
    usable = len(samples) - len(samples) % frame
    frames = samples[:usable].astype(np.float32).reshape(-1, frame)
    return np.asarray(20 * np.log10(np.sqrt(np.mean(frames**2, axis=1)) + 1e-10))


def plan_chunks(
    energies_db: np.ndarray, duration_s: float, max_chunk_s: float, min_chunks: int = 1,
    balanced: bool = False,
) -> list[ChunkSpan]:
    """Split into the fewest chunks of at most `max_chunk_s` that are a multiple of
    `min_chunks` (the worker count: 5 chunks on 2 workers left one worker decoding the last
    chunk alone), each cut in a pause; past 4 × the chunks needed, whatever the cuts give.

    Each cut is searched within ±25 % of an equal share of what remains (never past
    `max_chunk_s`). By default it is the longest pause there: most likely between sentences,
    which keeps each sentence's context in one chunk. `balanced` (the `fast` preset, which
    wants the workers to finish together): the pause nearest to an equal share.
    """
    needed = math.ceil(duration_s / max_chunk_s)
    step = max(1, min_chunks)
    count = math.ceil(needed / step) * step
    plan = _cut(energies_db, duration_s, max_chunk_s, count, near=balanced)
    # `balanced` wants exactly `count` equal shares; otherwise any multiple of the workers does.
    while (len(plan) != count if balanced else len(plan) % step) and count < 4 * needed:
        # Cuts fell early and the rest took a chunk more: cut again, a chunk more per worker.
        count += step
        plan = _cut(energies_db, duration_s, max_chunk_s, count, near=balanced)
    return plan


def _cut(energies_db: np.ndarray, duration_s: float, max_chunk_s: float, count: int,
         near: bool) -> list[ChunkSpan]:
    """`count` chunks (one more whenever the rest would not fit), each cut in a pause."""
    if count <= 1 or len(energies_db) == 0:
        return [ChunkSpan(0.0, duration_s)]
    cuts = [0.0]
    while (remaining := duration_s - cuts[-1]) > max_chunk_s or len(cuts) < count:
        start = cuts[-1]
        target = remaining / max(count - len(cuts) + 1, math.ceil(remaining / max_chunk_s))
        hi = min(start + 1.25 * target, start + max_chunk_s)
        cuts.append(find_pause(energies_db, start + 0.75 * target, hi,
                               start + target if near else None))
    cuts.append(duration_s)
    return [ChunkSpan(a, b) for a, b in zip(cuts, cuts[1:], strict=False) if b - a > 0]


def find_pause(
    energies_db: np.ndarray, lo_s: float, hi_s: float, near_s: float | None = None
) -> float:
    """Middle of a quiet run between lo and hi: the longest one or, given `near_s`, the pause
    (a run of at least MIN_PAUSE_S) nearest to it; the quietest frame if none is quiet."""
    lo, hi = int(lo_s / FRAME_S), max(int(lo_s / FRAME_S) + 1, int(hi_s / FRAME_S))
    window = energies_db[lo:hi]
    if len(window) == 0:
        return hi_s
    speech_db = float(np.percentile(energies_db, 90))
    runs = _runs(window < max(speech_db - 35.0, float(window.min()) + 3.0))
    pauses = [r for r in runs if (r[1] - r[0]) * FRAME_S >= MIN_PAUSE_S]
    if near_s is not None and pauses:
        start, end = min(pauses, key=lambda r: abs((lo + (r[0] + r[1]) / 2) * FRAME_S - near_s))
    elif runs:
        start, end = max(runs, key=lambda r: r[1] - r[0])
    else:
        start = end = int(np.argmin(window))
    return (lo + start + (end - start) // 2) * FRAME_S


def _runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """(start, end) of each run of True in `flags`, end exclusive."""
    edges = np.diff(np.concatenate([[0], flags.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist(),
                    strict=True))


def spread_regions(
    duration_s: float, count: int = 6, length_s: float = 30.0
) -> list[tuple[float, float]]:
    """`count` regions of `length_s` seconds spread evenly over the audio, each centred in its
    share of it; the whole audio as one region when it is not longer than all of them together.
    Language detection listens to these, so a long intro of music or silence cannot decide it;
    for a file fanned out, the pipeline's probe holds just these (3 minutes of audio at most).
    """
    if duration_s <= count * length_s:
        return [(0.0, duration_s)]
    share = duration_s / count
    return [(i * share + (share - length_s) / 2, i * share + (share + length_s) / 2)
            for i in range(count)]
