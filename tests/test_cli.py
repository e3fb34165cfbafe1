"""The console script as a user runs it: real processes, the real tiny.en model."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from whisper_api.config import load_settings
from whisper_api.errors import ModelNotFoundError
from whisper_api.transcriber import Transcriber, resolve_model

CLI = [sys.executable, "-m", "whisper_api.cli"]


def cli(*args: str, tmp: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "TEMP_DIR": str(tmp / "temp"), "PARALLEL_WORKERS": "1", **env}
    return subprocess.run([*CLI, *args], capture_output=True, text=True, env=environment,
                          timeout=120)


def test_transcribe_prints_srt_and_cleans_up(jfk: Path, tmp_path: Path) -> None:
    done = cli("transcribe", str(jfk), "--format", "srt", tmp=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("1\n00:00:00,")
    # Segments end at speech pauses, so a sentence may span cues: read the cues' words.
    cue_lines = [line for line in done.stdout.splitlines()
                 if line and "-->" not in line and not line.isdigit()]
    spoken = " ".join(re.sub(r"[^a-z' ]", " ", " ".join(cue_lines).lower()).split())
    assert "ask not what your country can do for you" in spoken
    assert "1/1 chunks" in done.stderr
    assert list((tmp_path / "temp").iterdir()) == []


def test_output_file_with_words(jfk: Path, tmp_path: Path) -> None:
    out = tmp_path / "t.json"
    done = cli("transcribe", str(jfk), "--format", "verbose_json", "--word-timestamps",
               "--output", str(out), tmp=tmp_path)
    assert done.returncode == 0, done.stderr
    import json

    body = json.loads(out.read_text())
    assert [w["word"].strip(",.").lower() for w in body["words"]][:3] == ["and", "so", "my"]
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
    with pytest.raises(SystemExit, match="PARALLEL_WORKERS"):
        load_settings()


def test_model_from_a_local_directory() -> None:
    local = resolve_model("tiny.en")  # the bundled package's directory, passed as a path
    assert Path(local).is_dir()
    assert resolve_model(local) == local
    transcriber = Transcriber(local, "cpu", "int8", 1)
    import numpy as np

    segments, language, _ = transcriber.transcribe(np.zeros(16000 * 2, np.float32),
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
