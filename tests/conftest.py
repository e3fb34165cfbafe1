"""Shared fixtures: real clips from tests/data and media made from them with the ffmpeg binary."""

import subprocess
import wave
from pathlib import Path

import numpy as np
import pytest

DATA = Path(__file__).parent / "data"
JFK_TEXT = (
    "And so my fellow Americans, ask not what your country can do for you, "
    "ask what you can do for your country."
)


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", *args], check=True)


def write_wav(path: Path, samples: np.ndarray) -> Path:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16000)
        out.writeframes(samples.astype(np.int16).tobytes())
    return path


def load_pcm(path: Path) -> np.ndarray:
    raw = subprocess.run(
        ["ffmpeg", "-loglevel", "error", "-i", str(path), "-f", "s16le", "-ac", "1", "-ar",
         "16000", "-"], check=True, capture_output=True,
    ).stdout
    return np.frombuffer(raw, dtype=np.int16)


@pytest.fixture(scope="session")
def jfk() -> Path:
    return DATA / "jfk.flac"


@pytest.fixture(scope="session")
def long_speech(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """About 75 s: the three test clips twice, with 1 s pauses between them."""
    clips = [load_pcm(DATA / n) for n in ("jfk.flac", "ljspeech_LJ001-0001.flac",
                                          "deepspeech_LDC93S1.wav")]
    pause = np.zeros(16000, dtype=np.int16)
    parts = [p for _ in range(3) for clip in clips for p in (clip, pause)]
    return write_wav(tmp_path_factory.mktemp("long") / "long.wav", np.concatenate(parts))
