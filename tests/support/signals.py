"""Synthetic signals shared by the quiet-speech tests."""

import numpy as np

SAMPLE_RATE_HZ = 16000
QUIET_ROOM = 1e-4  # -80 dB: what a room holds between syllables (not digital silence)


def between_syllables(samples: int) -> np.ndarray:
    """Where a syllable rhythm (0.2 s on, 0.1 s off) is off, for `samples` samples."""
    return np.arange(samples) % int(0.3 * SAMPLE_RATE_HZ) >= int(0.2 * SAMPLE_RATE_HZ)
