"""Speech the VAD does not hear: loud stretches in the gaps between its regions (pure).

Silero VAD hears nothing at all of whispered or falsetto clips (0 of 3.5-5.7 s on the
development corpus), so their words never reached a decoder window, while faster-whisper's
sequential decoder, which has no VAD, hears them. A stretch of a gap that stands well above the
gaps' own noise floor is offered to the decoder as a region of its own; what the decoder makes
of it is kept only when it is confident (the transcriber's `trusted`), since such a stretch may
be music, a cough or a door. Stationary noise raises the floor with it and finds nothing; where
the gaps are digital silence (edited audio, clips joined) there is no floor to raise, so a
stretch must also rise and fall like syllables: a clip's room noise at its edges holds its
level within about 13 dB and is no speech. A stretch too short to be offered alone that
adjoins a region is the VAD's region cut short, and the region reaches over it (`run_on`).
"""

import math

import numpy as np

from whisper_api.audio import SAMPLE_RATE_HZ
from whisper_api.chunking import levels_db
from whisper_api.regions import Region

FRAME_S = 0.03
RISE_DB = 20.0  # over the gaps' floor (their 10th percentile)
MIN_DB = -65.0  # quieter is never speech worth decoding, even over digital silence
AWAY_S = 0.2  # frames this close to a VAD region belong to it (its padding)
BRIDGE_S = 0.4  # loud frames this close belong to one stretch (syllables)
MIN_LOUD_S = 0.8  # a cough or a click is shorter
MIN_RUN_ON_S = 0.2  # ... but next to speech, a word or two is as short as that
PAD_S = 0.2
MAX_REGION_S = 20.0  # as the VAD's regions (max_speech_duration_s): a window holds several
# Between a stretch's loud and soft frames (90th and 10th percentile). Speech the VAD missed
# (whispered, falsetto, soft) swings 15-50 dB; the room noise around FLEURS and Picovoice clips
# 2-13 dB, and decoding it as regions cost base 30 % more windows and broke its sentence
# windows (docs/benchmarks.md).
MIN_SWING_DB = 15.0
SILENT_DB = -90.0  # at or below: digital silence (16-bit audio's own floor is about -96 dB)


def quiet_speech(audio: np.ndarray, regions: list[Region]) -> list[Region]:
    """Stretches outside `regions` loud enough to hold speech, in time order."""
    end_s = len(audio) / SAMPLE_RATE_HZ
    return [piece for start, end, loud_s in _loud_stretches(audio, regions)
            if loud_s >= MIN_LOUD_S
            for piece in split((max(0.0, start - PAD_S), min(end_s, end + PAD_S)), MAX_REGION_S)]


def run_on(audio: np.ndarray, regions: list[Region]) -> list[Region]:
    """The VAD's regions, each reaching over a stretch too short for `quiet_speech` that
    adjoins it (within BRIDGE_S of its padding): the VAD cut the speech short there. A falsetto
    sentence's last words ("high pitched", 0.5 s) lay just after its region; the decoder's
    window ended with the region, and they were lost."""
    end_s = len(audio) / SAMPLE_RATE_HZ
    grown = list(regions)
    for start, end, loud_s in _loud_stretches(audio, regions):
        if not MIN_RUN_ON_S <= loud_s < MIN_LOUD_S:
            continue
        for i, (first, last) in enumerate(grown):
            if 0.0 <= start - (last + AWAY_S) <= BRIDGE_S:  # up to the next region
                grown[i] = (first, min([end + PAD_S, end_s, *(a for a, _ in grown if a >= last)]))
            elif 0.0 <= (first - AWAY_S) - end <= BRIDGE_S:  # back to the one before
                grown[i] = (max([start - PAD_S, 0.0, *(b for _, b in grown if b <= first)]), last)
    return grown


def _loud_stretches(audio: np.ndarray,
                    regions: list[Region]) -> list[tuple[float, float, float]]:
    """(start_s, end_s, seconds of loud frames) of each stretch outside `regions` loud enough
    to hold speech and rising and falling like it, in time order."""
    levels = levels_db(audio, int(FRAME_S * SAMPLE_RATE_HZ))
    outside = _outside(len(levels), regions)
    if not outside.any():
        return []
    floor = float(np.percentile(levels[outside], 10))
    loud = np.flatnonzero(outside & (levels > max(floor + RISE_DB, MIN_DB)))
    return [(first * FRAME_S, (last + 1) * FRAME_S, count * FRAME_S)
            for first, last, count in _stretches(loud, outside)
            if swings(levels[first:last + 1])]


def swings(levels: np.ndarray) -> bool:
    """Whether frame levels rise and fall like syllables rather than hold like noise. Digital
    silence inside the stretch (a cut of under BRIDGE_S between two clips' room noise) is no
    sound at all, and no swing of it."""
    heard = levels[levels > SILENT_DB]
    return heard.size > 0 and \
        float(np.percentile(heard, 90) - np.percentile(heard, 10)) >= MIN_SWING_DB


def split(region: Region, max_s: float) -> list[Region]:
    """The region cut into equal pieces of at most `max_s` (a long stretch is music or noise
    as often as speech, and no piece may outgrow a decoder window)."""
    start, end = region
    count = max(1, math.ceil((end - start) / max_s))
    step = (end - start) / count
    return [(start + i * step, start + (i + 1) * step) for i in range(count)]


def _outside(count: int, regions: list[Region]) -> np.ndarray:
    outside = np.ones(count, dtype=bool)
    for start, end in regions:
        outside[max(0, int((start - AWAY_S) / FRAME_S)):int((end + AWAY_S) / FRAME_S) + 1] = False
    return outside


def _stretches(loud: np.ndarray, outside: np.ndarray) -> list[tuple[int, int, int]]:
    """Runs of loud frames (first, last, how many loud), joined across short quiet spans that
    do not reach into a region."""
    runs: list[tuple[int, int, int]] = []
    for frame in loud.tolist():
        if runs and (frame - runs[-1][1]) * FRAME_S <= BRIDGE_S \
                and outside[runs[-1][1]:frame].all():
            runs[-1] = (runs[-1][0], frame, runs[-1][2] + 1)
        else:
            runs.append((frame, frame, 1))
    return runs
