"""Fake transcriber factories for the worker pool tests.

They live at module level so spawned worker processes can import and unpickle them. A task steers
the fake through its `DecodeOptions.initial_prompt`, a `;`-separated list of directives:

    sleep=<seconds>   sleep this long before answering
    mark=<path>       create this file when the chunk starts (proves the worker is mid-chunk)
    progress          report half the chunk decoded before sleeping
    pad=<bytes>       make the answer this many bytes longer (a message larger than a pipe holds)
    raise             raise RuntimeError instead of answering
    hang_once=<path>  the first attempt (no file at path yet) creates it and hangs for 120 s;
                      later attempts answer at once (a chunk that succeeds when retried)

The answer is one Segment whose text encodes the chunk's length in samples, so a test can check
that a result belongs to the task (each task gets a WAV of a distinct length).
"""

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from whisper_api.executors.base import WorkerConfig
from whisper_api.transcript import DecodeOptions, Pending, Segment

SAMPLE_RATE_HZ = 16000


def parse_directives(prompt: str | None) -> dict[str, str]:
    directives: dict[str, str] = {}
    for part in (prompt or "").split(";"):
        if part.strip():
            key, _, value = part.strip().partition("=")
            directives[key] = value
    return directives


def text_for(samples: int) -> str:
    return f"samples={samples}"


class FakeLanguage:
    """Every fake speaks English, surely."""

    def detect_language(self, audio: np.ndarray, options: DecodeOptions) -> tuple[str, float]:
        return "en", 1.0


class EchoTranscriber(FakeLanguage):
    """Answers with the chunk's length in samples, after the sleep the task asks for."""

    def transcribe(
        self, audio: np.ndarray, options: DecodeOptions,
        on_progress: Callable[[float], None] | None = None,
    ) -> tuple[list[Segment], str, int, tuple[()]]:
        directives = parse_directives(options.initial_prompt)
        if "mark" in directives:
            Path(directives["mark"]).touch()
        if "raise" in directives:
            raise RuntimeError(f"fake failure on {len(audio)} samples")
        if "hang_once" in directives and not Path(directives["hang_once"]).exists():
            Path(directives["hang_once"]).touch()
            time.sleep(120.0)
        if "progress" in directives and on_progress is not None:
            on_progress(len(audio) / SAMPLE_RATE_HZ / 2)
        time.sleep(float(directives.get("sleep", "0")))
        text = text_for(len(audio)) + "." * int(directives.get("pad", "0"))
        return [Segment(0.0, len(audio) / SAMPLE_RATE_HZ, text)], "en", 0, ()


class HangingTranscriber(FakeLanguage):
    """Never answers in time: sleeps far longer than any test's chunk timeout."""

    def transcribe(
        self, audio: np.ndarray, options: DecodeOptions,
        on_progress: Callable[[float], None] | None = None,
    ) -> tuple[list[Segment], str, int, tuple[()]]:
        time.sleep(120.0)
        return [], "en", 0, ()


class RaisingTranscriber(FakeLanguage):
    def transcribe(
        self, audio: np.ndarray, options: DecodeOptions,
        on_progress: Callable[[float], None] | None = None,
    ) -> tuple[list[Segment], str, int, tuple[()]]:
        raise RuntimeError(f"fake failure on {len(audio)} samples")


class PendingTranscriber(FakeLanguage):
    """Leaves the middle second of every fanned-out chunk for the file's redo pass, and answers
    the redo with each pending region's mean level and lane count, so a test sees which audio
    the redo got and where its answer lands."""

    def transcribe(
        self, audio: np.ndarray, options: DecodeOptions,
        on_progress: Callable[[float], None] | None = None,
    ) -> tuple[list[Segment], str, int, tuple[Pending, ...]]:
        middle = len(audio) / SAMPLE_RATE_HZ / 2
        pending = (Pending(middle - 0.5, middle + 0.5),) if options.fan_out else ()
        return [Segment(0.0, 0.5, "first pass")], "en", len(pending), pending

    def redo(
        self, audio: np.ndarray, pending: tuple[Pending, ...], options: DecodeOptions,
        on_progress: Callable[[float], None] | None = None,
    ) -> tuple[list[Segment], str, int, tuple[()]]:
        lanes = "one lane" if options.fan_out else "all lanes"
        levels = [audio[round(p.start_s * SAMPLE_RATE_HZ):round(p.end_s * SAMPLE_RATE_HZ)]
                  for p in pending]
        return [Segment(p.start_s, p.end_s, f"level {level.mean():.2f} on {lanes}")
                for p, level in zip(pending, levels, strict=True)], "en", 0, ()


def pending_factory(config: WorkerConfig) -> PendingTranscriber:
    return PendingTranscriber()


def echo_factory(config: WorkerConfig) -> EchoTranscriber:
    return EchoTranscriber()


def hanging_factory(config: WorkerConfig) -> HangingTranscriber:
    return HangingTranscriber()


def raising_factory(config: WorkerConfig) -> RaisingTranscriber:
    return RaisingTranscriber()


def broken_factory(config: WorkerConfig) -> EchoTranscriber:
    raise RuntimeError(f"cannot load fake model {config.model!r}")
