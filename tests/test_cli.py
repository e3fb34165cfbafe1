"""The console script as a user runs it: real processes, the real tiny.en model."""

import argparse
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import JFK_TEXT, heard
from whisper_api.config import load_settings
from whisper_api.errors import ConfigError, ModelNotFoundError
from whisper_api.transcriber import Transcriber, resolve_model

pytestmark = pytest.mark.model

CLI = [sys.executable, "-m", "whisper_api.cli"]


def cli(*args: str, tmp: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "TEMP_DIR": str(tmp / "temp"), "PARALLEL_WORKERS": "1", **env}
    return subprocess.run([*CLI, *args], capture_output=True, text=True, env=environment,
                          timeout=120)


def test_transcribe_prints_srt_and_cleans_up(jfk: Path, tmp_path: Path) -> None:
    done = cli("transcribe", str(jfk), "--format", "srt", tmp=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("1\n00:00:00,")
    assert heard(JFK_TEXT, done.stdout) == 1
    assert "\r" not in done.stderr  # stderr is a pipe here: no progress bar frames
    assert list((tmp_path / "temp").iterdir()) == []


def test_output_file_with_words(jfk: Path, tmp_path: Path) -> None:
    out = tmp_path / "t.json"
    done = cli("transcribe", str(jfk), "--format", "verbose_json", "--word-timestamps",
               "--prompt", "Fellow Americans.", "--output", str(out), tmp=tmp_path)
    assert done.returncode == 0, done.stderr
    import json

    body = json.loads(out.read_text())
    # Within a WER bound, not exact words: another CPU prints "so," where ours prints "so".
    # OpenAI's words carry no punctuation anyway.
    assert heard("and so my fellow americans", " ".join(w["word"] for w in body["words"][:6])) == 1
    assert all(w["word"] == w["word"].strip(",.?!") for w in body["words"])
    assert body["words"][-1]["end"] <= body["duration"] + 0.01


@pytest.mark.parametrize("content", [b"", b"hello, not audio\n" * 10])
def test_bad_input_exits_2_with_one_line(tmp_path: Path, content: bytes) -> None:
    bad = tmp_path / "bad.mp3"
    bad.write_bytes(content)
    done = cli("transcribe", str(bad), tmp=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("error: ")
    assert done.stdout == ""
    assert list((tmp_path / "temp").iterdir()) == []


def test_invalid_setting_names_the_variable(jfk: Path, tmp_path: Path) -> None:
    done = cli("transcribe", str(jfk), tmp=tmp_path, PARALLEL_CHUNK_DURATION="-5")
    assert done.returncode == 2
    assert "PARALLEL_CHUNK_DURATION" in done.stderr


def test_settings_reject_bad_worker_count(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARALLEL_WORKERS", "zero")
    with pytest.raises(ConfigError, match="PARALLEL_WORKERS"):
        load_settings()


def test_model_from_a_local_directory() -> None:
    local = resolve_model("tiny.en")  # the bundled package's directory, passed as a path
    assert Path(local).is_dir()
    assert resolve_model(local) == local
    transcriber = Transcriber(local, "cpu", "int8", 1)
    import numpy as np

    segments, language, _, _ = transcriber.transcribe(np.zeros(16000 * 2, np.float32),
                                                   _options())
    assert segments == [] and language == "en"


def _options():  # type: ignore[no-untyped-def]
    from whisper_api.transcript import DecodeOptions

    return DecodeOptions()


@pytest.mark.parametrize("name", ["/nonexistent/model", "./missing-model"])
def test_missing_model_path_is_a_clear_error(name: str) -> None:
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        resolve_model(name)


def test_directory_without_weights(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="no model.bin"):
        resolve_model(str(tmp_path))


def test_unknown_hub_model_fails_with_what_was_tried(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError, match="tried local directory"):
        Transcriber("no-such-org/no-such-model", "cpu", "int8", 1)


# --- usage --------------------------------------------------------------------------------------


def test_version() -> None:
    from whisper_api import __version__

    done = subprocess.run([*CLI, "--version"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == f"whisper-api {__version__}"


def test_prompt_and_preset_reach_the_request(monkeypatch: pytest.MonkeyPatch) -> None:
    from whisper_api.cli import build_parser, checked_request

    monkeypatch.setenv("WHISPER_MODEL", "tiny.en")
    args = build_parser().parse_args(["transcribe", "talk.wav", "--prompt", "Kubernetes, gRPC",
                                      "--preset", "fast"])
    request = checked_request(load_settings(), args)
    assert (request.initial_prompt, request.preset) == ("Kubernetes, gRPC", "fast")


def test_help_describes_every_option() -> None:
    from whisper_api.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in commands.choices.items():
        for action in sub._actions:
            assert action.help, f"{name} {action.option_strings or action.dest} has no help"
        text = sub.format_help()
        for action in sub._actions:
            for option in action.option_strings:
                assert option in text


@pytest.mark.parametrize(("args", "says"), [
    (["--format", "xml"], "invalid choice: 'xml'"),
    (["--language", "xx"], "unknown language code 'xx'"),
    (["--max-line-width", "3"], "max_line_width"),
    (["--workers", "two"], "invalid int value"),
])
def test_bad_options_exit_2_with_one_line(
    jfk: Path, tmp_path: Path, args: list[str], says: str
) -> None:
    done = cli("transcribe", str(jfk), *args, tmp=tmp_path)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: ")
    assert says in done.stderr
    assert done.stdout == ""


def test_a_missing_file_exits_2(tmp_path: Path) -> None:
    done = cli("transcribe", str(tmp_path / "nope.wav"), tmp=tmp_path)
    assert done.returncode == 2 and done.stderr == f"error: no such file: {tmp_path}/nope.wav\n"


@pytest.mark.parametrize(("output", "message"), [
    ("missing/t.srt", "does not exist"), (".", "is a folder")])
def test_an_output_that_cannot_be_written_exits_2_before_any_work(
    jfk: Path, tmp_path: Path, output: str, message: str
) -> None:
    """Checked first: it was written only after the whole run, and a traceback lost the run."""
    started = time.monotonic()
    done = cli("transcribe", str(jfk), "--output", str(tmp_path / output), tmp=tmp_path)
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    print(f"FIGURE bad --output refused after {time.monotonic() - started:.1f} s")


def test_output_is_written_whole_in_utf8(tmp_path: Path) -> None:
    from whisper_api.cli import write_atomically

    out = tmp_path / "t.txt"
    out.write_text("old")
    write_atomically(out, "São Paulo, 東京\n")
    assert out.read_bytes() == "São Paulo, 東京\n".encode()
    assert [p.name for p in tmp_path.iterdir()] == ["t.txt"]  # no temporary left behind


def test_workers_for_a_one_chunk_file() -> None:
    from whisper_api.cli import workers_for
    from whisper_api.config import Settings

    settings = Settings(parallel_workers=4, audio_limit_single_core=60,
                        parallel_chunk_duration=30)
    assert workers_for(settings, 11.0) == 1
    assert workers_for(settings, 61.0) == 3  # three chunks of ~30 s
    assert workers_for(settings, 3600.0) == 4
    assert workers_for(settings, None) == 4


# --- URLs ---------------------------------------------------------------------------------------


def test_transcribes_a_url(media_host: str, tmp_path: Path) -> None:
    done = cli("transcribe", f"{media_host}/jfk.flac", tmp=tmp_path, ALLOW_PRIVATE_URLS="true")
    assert done.returncode == 0, done.stderr
    assert heard(JFK_TEXT, done.stdout) == 1
    assert list((tmp_path / "temp").iterdir()) == []


def test_a_private_url_is_refused_with_the_way_to_allow_it(
    media_host: str, tmp_path: Path
) -> None:
    done = cli("transcribe", f"{media_host}/jfk.flac", tmp=tmp_path,
               ALLOW_PRIVATE_URLS="false")
    assert done.returncode == 2
    assert done.stderr.startswith("error: ") and "ALLOW_PRIVATE_URLS=true" in done.stderr
    assert done.stderr.count("\n") == 1


# --- the progress bar, on a real terminal ---------------------------------------------------------


def run_on_terminal(args: list[str], env: dict[str, str], timeout_s: float = 180) -> tuple[
        int, str, str]:
    """Run the CLI with stderr on a pseudo-terminal; returns (exit code, stdout, terminal)."""
    import pty
    import select

    controller, terminal = pty.openpty()
    process = subprocess.Popen([*CLI, *args], stdout=subprocess.PIPE, stderr=terminal,
                               env={**os.environ, **env})
    os.close(terminal)
    seen = b""
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([controller], [], [], 0.5)
            if not ready:
                if process.poll() is not None:
                    break
                continue
            try:
                data = os.read(controller, 65536)
            except OSError:  # the child closed the terminal
                break
            if not data:
                break
            seen += data
        stdout = process.communicate(timeout=30)[0].decode()
    finally:
        os.close(controller)
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
    return process.returncode, stdout, seen.decode()


def test_progress_bar_on_a_terminal_with_logs_above_it(
    long_speech: Path, tmp_path: Path
) -> None:
    code, stdout, screen = run_on_terminal(
        ["transcribe", str(long_speech), "--verbose"],
        {"TEMP_DIR": str(tmp_path / "temp"), "PARALLEL_WORKERS": "2",
         "AUDIO_LIMIT_SINGLE_CORE": "10", "PARALLEL_CHUNK_DURATION": "20"},
    )
    assert code == 0, screen
    assert heard(JFK_TEXT, stdout) >= 1
    frames = [f for f in re.split(r"[\r\n]", screen) if f.strip()]
    bars = [f for f in frames if "%" in f and "/" in f]
    assert any("x realtime" in f and " left" in f for f in bars), frames
    percents = [int(m.group(1)) for f in bars if (m := re.search(r"(\d+)%", f))]
    assert percents == sorted(percents) and percents[-1] == 100
    assert len(set(percents)) >= 3  # it moved as chunks finished
    logs = [f for f in frames if " INFO " in f]
    assert logs and not [f for f in logs if "%" in f and "realtime" in f]  # never spliced
    assert any("chunk_done" in f for f in logs)
    assert screen.endswith("\r")  # the bar is cleared at the end: no half line left


# --- Ctrl-C -------------------------------------------------------------------------------------


def _as_in_a_terminal() -> None:
    """SIGINT handled by default, as in a terminal's foreground job. A test run started in the
    background by a non-interactive shell (`make test &`) ignores SIGINT, and every child
    inherits that: the CLI then finished the file with exit 0 despite the Ctrl-C."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_stops_quickly_without_tracebacks(several_minutes: Path, tmp_path: Path) -> None:
    """SIGINT to the whole process group, as a terminal sends it, mid-transcription."""
    env = {**os.environ, "TEMP_DIR": str(tmp_path / "temp"), "PARALLEL_WORKERS": "2",
           "AUDIO_LIMIT_SINGLE_CORE": "30", "PARALLEL_CHUNK_DURATION": "60"}
    process = subprocess.Popen(
        [*CLI, "transcribe", str(several_minutes), "--verbose"], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, env=env, start_new_session=True, text=True,
        preexec_fn=_as_in_a_terminal,
    )
    try:
        lines = []
        deadline = time.monotonic() + 120
        assert process.stderr is not None
        while time.monotonic() < deadline:  # until both workers are decoding
            line = process.stderr.readline()
            lines.append(line)
            if not line or sum("Model loaded" in x for x in lines) == 2:
                break
        time.sleep(1.0)
        os.killpg(process.pid, signal.SIGINT)
        started = time.monotonic()
        _, rest = process.communicate(timeout=10)
        stopped_s = time.monotonic() - started
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
    stderr = "".join(lines) + rest
    assert process.returncode == 130, stderr
    assert stopped_s < 5, stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    assert stderr.rstrip().endswith("interrupted")
    assert list((tmp_path / "temp").iterdir()) == []
    assert group_gone(process.pid, timeout_s=5), "a worker outlived the CLI"


def group_gone(group: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False
