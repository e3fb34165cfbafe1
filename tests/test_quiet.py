"""Finding speech the VAD missed: loud stretches of the gaps between its regions (pure)."""

import numpy as np

from tests.support.signals import QUIET_ROOM, between_syllables
from whisper_api.audio import SAMPLE_RATE_HZ
from whisper_api.quiet import MAX_REGION_S, quiet_speech, run_on, split
from whisper_api.regions import Region

RNG = np.random.default_rng(7)


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * SAMPLE_RATE_HZ), dtype=np.float32)


def syllables(seconds: float, level: float = 0.01) -> np.ndarray:
    """Noise bursts of 0.2 s with 0.1 s gaps of a quiet room (-80 dB): loud like whispered
    speech (about -40 dB)."""
    sound = RNG.normal(0.0, level, int(seconds * SAMPLE_RATE_HZ)).astype(np.float32)
    gaps = between_syllables(len(sound))
    sound[gaps] = RNG.normal(0.0, QUIET_ROOM, int(gaps.sum()))
    return sound


def test_a_loud_stretch_in_a_gap_is_offered_as_a_region() -> None:
    audio = np.concatenate([syllables(4), silence(3), syllables(2), silence(3), syllables(4)])
    vad: list[Region] = [(0.0, 4.0), (12.0, 16.0)]  # the VAD heard only the outer two
    [(start, end)] = quiet_speech(audio, vad)
    assert 6.5 <= start <= 7.0 and 9.0 <= end <= 9.5
    assert not any(min(end, b) > max(start, a) for a, b in vad)


def test_a_stretch_next_to_a_region_belongs_to_it() -> None:
    audio = np.concatenate([syllables(5), silence(5)])
    assert quiet_speech(audio, [(0.0, 4.9)]) == []  # the VAD region's own padding


def test_a_region_reaches_over_the_short_words_the_vad_cut_off() -> None:
    # The VAD heard 1.0-3.5 s of speech that runs from 0.2 to 4.2 s; 6.2-6.7 s is as short,
    # but a pause away from any region (a cough); 8.7-11.7 s is another region.
    audio = np.concatenate([silence(0.2), syllables(4), silence(2), syllables(0.5),
                            silence(2), syllables(3), silence(1)])
    grown = run_on(audio, [(1.0, 3.5), (8.7, 11.7)])
    assert len(grown) == 2 and grown[1] == (8.7, 11.7)
    (start, end), _ = grown
    assert 0.0 <= start <= 0.4 and 4.1 <= end <= 4.5
    assert quiet_speech(audio, grown) == []
    # Between two regions, each reaches no further than the other.
    touching = np.concatenate([syllables(4), silence(0.1), syllables(3)])
    (_, end), (start, _) = run_on(touching, [(0.0, 3.5), (4.25, 7.1)])
    assert 4.0 <= end == start <= 4.25


def test_steady_noise_clicks_and_silence_find_nothing() -> None:
    noise = RNG.normal(0.0, 0.05, 20 * SAMPLE_RATE_HZ).astype(np.float32)
    assert quiet_speech(noise, []) == []  # the floor rises with the noise
    clicks = silence(10)
    clicks[::SAMPLE_RATE_HZ] = 0.9  # one sample a second
    assert quiet_speech(clicks, []) == []
    short = np.concatenate([silence(3), syllables(0.6), silence(3)])
    assert quiet_speech(short, []) == []  # a cough is shorter than a word or two
    assert quiet_speech(silence(5), []) == quiet_speech(silence(0.01), []) == []


def test_room_noise_between_digitally_silent_pauses_is_no_speech() -> None:
    # Clips joined by digital silence: the gaps have no noise floor, and each clip's room
    # noise (about -58 dB, steady) stands far above the silence but never swings like speech.
    room = RNG.normal(0.0, 0.0012, 4 * SAMPLE_RATE_HZ).astype(np.float32)
    audio = np.concatenate([silence(2), room, syllables(3), room, silence(2)])
    assert quiet_speech(audio, [(6.0, 9.0)]) == []
    whisper = np.concatenate([silence(2), syllables(3, level=0.0012), silence(2)])
    assert len(quiet_speech(whisper, [])) == 1  # as quiet, but rising and falling
    # Short pieces of it cut apart by digital silence: no swing of its own, whatever the cuts.
    cuts = [p for _ in range(4) for p in (room[:int(0.6 * SAMPLE_RATE_HZ)], silence(0.3))]
    assert quiet_speech(np.concatenate([silence(1), *cuts, silence(1)]), []) == []


def test_a_file_the_vad_heard_nothing_of_is_searched_whole() -> None:
    audio = np.concatenate([silence(2), syllables(3), silence(2)])
    [(start, end)] = quiet_speech(audio, [])
    assert start < 2.1 and end > 4.9


def test_long_stretches_are_cut_into_pieces_a_window_can_hold() -> None:
    pieces = split((10.0, 55.0), MAX_REGION_S)
    assert len(pieces) == 3 and pieces[0][0] == 10.0 and pieces[-1][1] == 55.0
    assert all(b - a <= MAX_REGION_S for a, b in pieces)
    assert all(p[1] == q[0] for p, q in zip(pieces, pieces[1:], strict=False))
    assert split((0.0, 3.0), MAX_REGION_S) == [(0.0, 3.0)]
