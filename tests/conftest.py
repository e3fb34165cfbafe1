"""Shared fixtures: real clips from tests/data and media made from them with the ffmpeg binary."""

import csv
import os
import re
import subprocess
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jiwer
import numpy as np
import pytest

from whisper_api.executors.ray_actors import PRIVATE_RAY_LOOPBACK

DATA = Path(__file__).parent / "data"


def pytest_configure() -> None:
    """Keep Ray on loopback: off Windows and macOS it turns 127.0.0.1 into this machine's network
    address unless told clusters are off, and tests talk only to 127.0.0.1. Ray reads this when
    imported, so before any test module imports it; its processes inherit it."""
    os.environ.setdefault(PRIVATE_RAY_LOOPBACK, "0")


JFK_TEXT = (
    "And so my fellow Americans, ask not what your country can do for you, "
    "ask what you can do for your country."
)


def spoken(text: str) -> str:
    """The words of a transcript in any format, lower case, without punctuation, cue numbers or
    timings: compare these, never the punctuation or line breaks a model and a CPU produce."""
    lines = [line for line in text.splitlines()
             if "-->" not in line and not line.strip().isdigit() and line != "WEBVTT"]
    return " ".join(re.sub(r"[^a-z' ]", " ", " ".join(lines).lower()).split())


def reference(clip: str) -> str:
    """A test clip's reference transcript, from tests/data/manifest.csv."""
    with (DATA / "manifest.csv").open() as manifest:
        return next(r["reference_text"] for r in csv.DictReader(manifest) if r["file"] == clip)


def heard(said: str, text: str, max_wer: float = 0.4) -> int:
    """How many times `text` says `said`: non-overlapping runs of its words within `max_wer` of
    `said`'s words (both through `spoken`). Never the model's exact words: another CPU may
    print "dog suit" or "Americans," where this one did not."""
    expected, words = spoken(said).split(), spoken(text).split()
    count, at = 0, 0
    while at < len(words):
        if jiwer.wer(" ".join(expected), " ".join(words[at:at + len(expected)])) <= max_wer:
            count, at = count + 1, at + len(expected)
        else:
            at += 1
    return count


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", *args], check=True)


def write_wav(path: Path, samples: np.ndarray, rate: int = 16000) -> Path:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(samples.astype(np.int16).tobytes())
    return path


class CountsFrames:
    """A CTranslate2 model, recording how many frames each encoder call was given."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.frames: list[int] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)

    def encode(self, features: Any, **kwargs: Any) -> Any:
        self.frames.append(features.shape[-1])
        return self.model.encode(features, **kwargs)


def load_pcm(path: Path) -> np.ndarray:
    raw = subprocess.run(
        ["ffmpeg", "-loglevel", "error", "-i", str(path), "-f", "s16le", "-ac", "1", "-ar",
         "16000", "-"], check=True, capture_output=True,
    ).stdout
    return np.frombuffer(raw, dtype=np.int16)


@pytest.fixture(scope="session", autouse=True)
def test_environment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Set in the environment, so that servers and CLIs started by tests inherit it:
    - settings default to ./data (the jobs database) and ./temp: a test that builds an app
      without naming them must not leave a database in the checkout (`git status` clean);
    - tests run tiny.en (any model will do for most; `base` is about 3x slower) unless they
      name `base`; bundled models are assembled in a temporary cache, not the user's."""
    root = tmp_path_factory.mktemp("state")
    patch = pytest.MonkeyPatch()
    patch.setenv("DATA_DIR", str(root / "data"))
    patch.setenv("TEMP_DIR", str(root / "temp"))
    patch.setenv("WHISPER_MODEL", "tiny.en")
    patch.delenv("WHISPER_MODELS", raising=False)
    patch.setenv("MODEL_CACHE_DIR", str(root / "models"))
    yield
    patch.undo()


@pytest.fixture(scope="session")
def jfk() -> Path:
    return DATA / "jfk.flac"


def speech(path: Path, rounds: int) -> Path:
    """The three test clips `rounds` times (about 25 s a round), with 1 s pauses between them."""
    clips = [load_pcm(DATA / n) for n in ("jfk.flac", "ljspeech_LJ001-0001.flac",
                                          "deepspeech_LDC93S1.wav")]
    pause = np.zeros(16000, dtype=np.int16)
    parts = [p for _ in range(rounds) for clip in clips for p in (clip, pause)]
    return write_wav(path, np.concatenate(parts))


@pytest.fixture(scope="session")
def long_speech(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """About 75 s."""
    return speech(tmp_path_factory.mktemp("long") / "long.wav", 3)


@pytest.fixture(scope="session")
def several_minutes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """About 200 s, the size of file the jobs API is for."""
    return speech(tmp_path_factory.mktemp("several") / "several.wav", 8)


@pytest.fixture(scope="session")
def media_host() -> Iterator[str]:
    """A local HTTP server for tests/data: URL downloads go through the real yt-dlp/httpx."""
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(DATA))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)
