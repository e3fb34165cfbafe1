"""Pause-aware chunk plans: whisper_api.chunking."""

import wave
from pathlib import Path

import numpy as np
import pytest

from whisper_api.audio import SAMPLE_RATE_HZ
from whisper_api.chunking import FRAME_S, ChunkSpan, find_pause, frame_energies_db, plan_chunks

SPEECH_DB, QUIET_DB = -20.0, -80.0


def energies(*parts: tuple[float, float]) -> np.ndarray:
    """Frame levels from (seconds, dB) runs."""
    return np.concatenate([np.full(round(s / FRAME_S), db) for s, db in parts])


def in_any(t: float, silences: list[tuple[float, float]]) -> bool:
    return any(a <= t <= b for a, b in silences)


def test_find_pause_middle_of_quiet_run() -> None:
    e = energies((5.0, SPEECH_DB), (1.0, QUIET_DB), (4.0, SPEECH_DB))
    assert find_pause(e, 3.0, 8.0) == pytest.approx(5.5)


def test_find_pause_prefers_longest_run() -> None:
    e = energies(
        (2.0, SPEECH_DB), (0.2, QUIET_DB), (2.0, SPEECH_DB), (1.0, QUIET_DB), (2.0, SPEECH_DB),
    )
    assert 4.2 <= find_pause(e, 0.0, 7.2) <= 5.2


def test_find_pause_without_silence_takes_quietest_frame() -> None:
    e = np.full(500, SPEECH_DB)
    e[321] = SPEECH_DB - 10
    assert find_pause(e, 2.0, 8.0) == pytest.approx(321 * FRAME_S)


def test_find_pause_ignores_quiet_outside_window() -> None:
    e = energies((1.0, QUIET_DB), (9.0, SPEECH_DB))
    assert 4.0 <= find_pause(e, 4.0, 8.0) < 8.0


def test_find_pause_past_end_returns_hi() -> None:
    assert find_pause(np.full(100, SPEECH_DB), 5.0, 6.0) == 6.0


@pytest.mark.parametrize(
    ("duration", "max_chunk", "min_chunks"), [(5.0, 10.0, 1), (10.0, 10.0, 1), (3.0, 30.0, 1)]
)
def test_plan_single_chunk(duration: float, max_chunk: float, min_chunks: int) -> None:
    e = energies((duration, SPEECH_DB))
    assert plan_chunks(e, duration, max_chunk, min_chunks) == [ChunkSpan(0.0, duration)]


def test_plan_empty_energies_single_chunk() -> None:
    assert plan_chunks(np.zeros(0), 100.0, 10.0) == [ChunkSpan(0.0, 100.0)]


def test_plan_cuts_in_pauses() -> None:
    # 2.5 s of speech, 0.5 s of silence, repeated: 60 s.
    e = np.tile(energies((2.5, SPEECH_DB), (0.5, QUIET_DB)), 20)
    silences = [(3.0 * k + 2.5, 3.0 * k + 3.0) for k in range(20)]
    plan = plan_chunks(e, 60.0, 10.0)
    assert plan[0].start_s == 0.0 and plan[-1].end_s == 60.0
    assert all(a.end_s == b.start_s for a, b in zip(plan, plan[1:], strict=False))
    assert all(in_any(c.start_s, silences) for c in plan[1:])
    assert all(0 < c.duration_s <= 10.0 for c in plan)
    assert len(plan) >= 6


@pytest.mark.parametrize("min_chunks", [2, 4, 8])
def test_plan_honours_min_chunks(min_chunks: int) -> None:
    e = np.tile(energies((1.0, SPEECH_DB), (0.2, QUIET_DB)), 50)
    plan = plan_chunks(e, 60.0, 100.0, min_chunks)
    assert len(plan) == min_chunks
    assert plan[-1].end_s == 60.0


@pytest.mark.parametrize(
    "min_chunks", [2, 4, 8]
)
def test_plan_chunks_about_equal(min_chunks: int) -> None:
    e = np.tile(energies((1.0, SPEECH_DB), (0.2, QUIET_DB)), 50)
    target = 60.0 / min_chunks
    plan = plan_chunks(e, 60.0, 100.0, min_chunks)
    assert all(c.duration_s <= target * 1.5 for c in plan), [c.duration_s for c in plan]


@pytest.mark.parametrize("workers", [1, 2, 3, 4])
@pytest.mark.parametrize("duration", [61.0, 88.0, 119.0, 130.0])  # 119: six chunks barely fit
def test_a_balanced_plan_gives_every_worker_the_same_share(workers: int, duration: float) -> None:
    # Pauses every 1.2 s: each chunk can end close to an equal share.
    e = np.tile(energies((1.0, SPEECH_DB), (0.2, QUIET_DB)), round(duration / 1.2) + 1)
    plan = plan_chunks(e[:round(duration / FRAME_S)], duration, 20.0, workers, balanced=True)
    lengths = [c.duration_s for c in plan]
    assert len(plan) % workers == 0 and max(lengths) <= 20.0, lengths
    assert max(lengths) - min(lengths) <= 2.5, lengths  # within about two pauses' spacing


@pytest.mark.parametrize("balanced", [False, True])
@pytest.mark.parametrize("workers", [2, 3])
@pytest.mark.parametrize("duration", [88.0, 119.0, 130.0])
def test_every_plan_is_a_multiple_of_the_workers(workers: int, duration: float,
                                                 balanced: bool) -> None:
    # Equal pauses every 1.2 s: the longest-pause cut takes the earliest, and the rest overflows.
    e = np.tile(energies((1.0, SPEECH_DB), (0.2, QUIET_DB)), round(duration / 1.2) + 1)
    plan = plan_chunks(e[:round(duration / FRAME_S)], duration, 20.0, workers, balanced)
    assert len(plan) % workers == 0 and max(c.duration_s for c in plan) <= 20.0


def test_an_unbalanced_plan_that_is_a_multiple_of_the_workers_is_kept() -> None:
    # Asked for 6 chunks of 119 s, the early cuts make 9: three rounds for three workers, kept
    # (cutting again for exactly 9 would overflow once more, to 12).
    e = np.tile(energies((1.0, SPEECH_DB), (0.2, QUIET_DB)), 100)[:round(119.0 / FRAME_S)]
    assert len(plan_chunks(e, 119.0, 20.0, 3)) == 9


def test_an_unbalanced_plan_cuts_in_the_longest_pause() -> None:
    # 1 s of speech and 0.2 s pauses, one 1.5 s pause at 26 s: 60 s in two chunks.
    e = np.concatenate([np.tile(energies((1.0, SPEECH_DB), (0.2, QUIET_DB)), 21)[:1250],
                        energies((1.5, QUIET_DB)),
                        np.tile(energies((1.0, SPEECH_DB), (0.2, QUIET_DB)), 28)[:1675]])
    cut = plan_chunks(e, 60.0, 40.0, 2)[1].start_s
    assert 25.0 <= cut <= 26.5  # the long pause, not the short one nearest 30 s
    assert abs(plan_chunks(e, 60.0, 40.0, 2, balanced=True)[1].start_s - 30.0) < 1.0


@pytest.mark.parametrize(("duration", "max_chunk"), [(61.0, 10.0), (100.0, 30.0), (29.9, 7.0)])
def test_plan_no_chunk_exceeds_max_without_pauses(duration: float, max_chunk: float) -> None:
    e = np.random.default_rng(1).normal(SPEECH_DB, 2.0, round(duration / FRAME_S))
    plan = plan_chunks(e, duration, max_chunk)
    assert all(0 < c.duration_s <= max_chunk for c in plan)
    assert plan[-1].end_s == duration


def write_bursts(path: Path, seed: int = 7) -> tuple[float, list[tuple[float, float]]]:
    """Noise bursts (1-2 s, syllable-modulated) separated by 0.3-0.9 s near-silences."""
    rng = np.random.default_rng(seed)
    parts: list[np.ndarray] = []
    silences: list[tuple[float, float]] = []
    t = 0.0
    while t < 95.0:
        n = int(rng.uniform(1.0, 2.0) * SAMPLE_RATE_HZ)
        env = 0.6 + 0.4 * np.sin(2 * np.pi * 4.0 * np.arange(n) / SAMPLE_RATE_HZ)
        parts.append(rng.normal(0, 0.15, n) * env)
        t += n / SAMPLE_RATE_HZ
        gap = int(rng.uniform(0.3, 0.9) * SAMPLE_RATE_HZ)
        parts.append(rng.normal(0, 0.0003, gap))
        silences.append((t, t + gap / SAMPLE_RATE_HZ))
        t += gap / SAMPLE_RATE_HZ
    samples = np.clip(np.concatenate(parts) * 32767, -32768, 32767).astype(np.int16)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(SAMPLE_RATE_HZ)
        out.writeframes(samples.tobytes())
    return len(samples) / SAMPLE_RATE_HZ, silences


def test_frame_energies_levels(tmp_path: Path) -> None:
    duration, silences = write_bursts(tmp_path / "a.wav")
    e = frame_energies_db(tmp_path / "a.wav")
    assert len(e) == int(duration / FRAME_S)
    a, b = silences[0]
    assert e[int(a / FRAME_S) + 2 : int(b / FRAME_S) - 1].max() < -60
    assert e[: int(a / FRAME_S) - 1].min() > -35


@pytest.mark.parametrize(("max_chunk", "min_chunks"), [(10.0, 1), (25.0, 1), (60.0, 4), (8.0, 3)])
@pytest.mark.parametrize("seed", [7, 11])
def test_plan_on_real_wav_cuts_in_silences(
    tmp_path: Path, max_chunk: float, min_chunks: int, seed: int
) -> None:
    duration, silences = write_bursts(tmp_path / "a.wav", seed)
    plan = plan_chunks(frame_energies_db(tmp_path / "a.wav"), duration, max_chunk, min_chunks)
    assert len(plan) >= max(2, min_chunks)
    assert plan[0].start_s == 0.0 and plan[-1].end_s == duration
    assert all(a.end_s == b.start_s for a, b in zip(plan, plan[1:], strict=False))
    cuts = [c.start_s for c in plan[1:]]
    assert all(in_any(cut, silences) for cut in cuts), cuts
    assert all(0 < c.duration_s <= max_chunk for c in plan)


def test_language_regions_spread_over_the_whole_file() -> None:
    from whisper_api.chunking import spread_regions

    assert spread_regions(100.0) == [(0.0, 100.0)]  # short: all of it
    regions = spread_regions(2700.0)  # a 45-minute video
    assert len(regions) == 6 and all(b - a == 30.0 for a, b in regions)
    assert regions[0][0] > 60.0 and regions[-1][1] < 2700.0  # not only the intro
    assert all(a[1] <= b[0] for a, b in zip(regions, regions[1:], strict=False))
