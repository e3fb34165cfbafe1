"""The CLI's terminal: one progress line on stderr, with log records printed above it.

The bar is redrawn in place with a carriage return, so anything else written to stderr must clear
it first and draw it again after; `BarLogHandler` does that for log records. When stderr is not a
terminal (a pipe, a log file, CI) the bar stays silent: `\\r` frames only garble such output.
"""

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

from whisper_api.pipeline import Progress

BAR_CELLS = 24


def clock(seconds: float) -> str:
    """`75.4` → `1:15`; hours when needed (`1:02:03`)."""
    whole = max(0, round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def render_line(progress: Progress, transcribing_s: float, elapsed_s: float) -> str:
    """One frame: `[#####-----]  42%  1:23 / 3:20  3.1x realtime  0:30 left`.

    `transcribing_s` is how long the transcribing stage has run: speed and time left come from
    it, so conversion and model loading do not make the first estimates look slow.
    """
    if progress.stage != "transcribing" or progress.audio_total_s <= 0:
        return f"{progress.stage}... {clock(elapsed_s)}"
    fraction = min(1.0, progress.audio_done_s / progress.audio_total_s)
    filled = round(fraction * BAR_CELLS)
    parts = [
        f"[{'#' * filled}{'-' * (BAR_CELLS - filled)}] {fraction * 100:3.0f}%",
        f"{clock(progress.audio_done_s)} / {clock(progress.audio_total_s)}",
    ]
    if progress.audio_done_s > 0 and transcribing_s > 0:
        speed = progress.audio_done_s / transcribing_s
        left = (progress.audio_total_s - progress.audio_done_s) / speed
        parts += [f"{speed:.1f}x realtime", f"{clock(left)} left"]
    else:
        parts.append(f"{clock(elapsed_s)} elapsed")
    return "  ".join(parts)


class ProgressBar:
    """Thread-safe: the pipeline updates it from the event loop, log handlers from anywhere."""

    def __init__(self, stream: TextIO, enabled: bool) -> None:
        self._stream, self.enabled = stream, enabled
        self._lock = threading.RLock()
        self._progress: Progress | None = None
        self._started = time.monotonic()
        self._transcribing_since: float | None = None
        self._shown = 0  # characters of the frame on screen now

    @classmethod
    def for_stream(cls, stream: TextIO) -> "ProgressBar":
        return cls(stream, enabled=stream.isatty())

    def update(self, progress: Progress) -> None:
        with self._lock:
            if progress.stage == "transcribing" and self._transcribing_since is None:
                self._transcribing_since = time.monotonic()
            self._progress = progress
            self.draw()

    def draw(self) -> None:
        """Draw the latest progress again: the clocks move between updates."""
        with self._lock:
            if not self.enabled or self._progress is None:
                return
            now = time.monotonic()
            since = self._transcribing_since
            line = render_line(self._progress, now - since if since else 0.0, now - self._started)
            self._stream.write("\r" + line.ljust(self._shown))
            self._stream.flush()
            self._shown = len(line)

    def clear(self) -> None:
        with self._lock:
            if self._shown:
                self._stream.write("\r" + " " * self._shown + "\r")
                self._stream.flush()
                self._shown = 0

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Write something else: the bar is cleared first and drawn again after."""
        with self._lock:
            self.clear()
            yield
            self.draw()

    def close(self) -> None:
        """Leave the terminal as it was: no half line for the shell prompt to follow."""
        with self._lock:
            self.clear()
            self._progress = None


class BarLogHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Log records go above the bar, never into it."""

    def __init__(self, bar: ProgressBar, stream: TextIO) -> None:
        super().__init__(stream)
        self._bar = bar

    def emit(self, record: logging.LogRecord) -> None:
        with self._bar.paused():
            super().emit(record)
