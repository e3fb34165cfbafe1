"""The CLI's progress line and the log handler that keeps log records out of it."""

import io
import logging

import pytest

from whisper_api.pipeline import Progress
from whisper_api.terminal import BarLogHandler, ProgressBar, clock, render_line


@pytest.mark.parametrize(("seconds", "shown"), [
    (0, "0:00"), (9.6, "0:10"), (75.4, "1:15"), (3600, "1:00:00"), (3723, "1:02:03"), (-4, "0:00"),
])
def test_clock(seconds: float, shown: str) -> None:
    assert clock(seconds) == shown


def test_a_frame_shows_percent_audio_speed_and_time_left() -> None:
    line = render_line(Progress("transcribing", 2, 5, 80.0, 200.0), transcribing_s=20.0,
                       elapsed_s=25.0)
    assert " 40%" in line and "1:20 / 3:20" in line
    assert "4.0x realtime" in line and "0:30 left" in line  # 120 s of audio at 4x
    assert line.count("#") == round(0.4 * 24)


def test_before_any_audio_is_done_it_shows_elapsed_time() -> None:
    line = render_line(Progress("transcribing", 0, 5, 0.0, 200.0), 3.0, 7.0)
    assert "  0%" in line and "0:07 elapsed" in line and "left" not in line
    assert render_line(Progress("converting"), 0.0, 2.0) == "converting... 0:02"


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_bar_is_silent_when_stderr_is_not_a_terminal() -> None:
    stream = io.StringIO()
    bar = ProgressBar.for_stream(stream)
    bar.update(Progress("transcribing", 1, 2, 5.0, 10.0))
    bar.close()
    assert stream.getvalue() == ""


def test_log_records_go_above_the_bar_and_it_is_drawn_again() -> None:
    screen = Terminal()
    bar = ProgressBar.for_stream(screen)
    logger = logging.getLogger("test_terminal")
    logger.propagate = False
    handler = BarLogHandler(bar, screen)
    logger.addHandler(handler)
    try:
        bar.update(Progress("transcribing", 1, 2, 5.0, 10.0))
        logger.warning("a worker said something")
        bar.close()
    finally:
        logger.removeHandler(handler)
    frames = screen.getvalue().split("\r")
    log_frame = next(f for f in frames if "a worker said something" in f)
    assert log_frame == "a worker said something\n"  # on a cleared line, never spliced
    after = frames[frames.index(log_frame) + 1:]
    assert any("50%" in f for f in after)  # the bar came back below it
    assert screen.getvalue().endswith("\r")  # closed: the line is blank for the shell
