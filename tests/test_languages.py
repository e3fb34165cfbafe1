"""Languages as users meet them: a real server with base and tiny.en, real speech in pt/es/de.

Words are compared after normalisation and loosely (a few expected content words), never as
exact text: another CPU may decode a word differently.
"""

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
from openai import OpenAI

from tests.conftest import DATA, heard, load_pcm, reference, write_wav
from tests.support.server import Server, run_server

PT = DATA / "fleurs_pt_007.ogg"  # "o acidente ocorreu em grande altitude ... fogo inimigo"
ES = DATA / "fleurs_es_007.ogg"  # "duvall que está casado y tiene dos hijos adultos ..."
DE = DATA / "fleurs_de_008.ogg"  # "insbesondere wird behauptet dass man erkennen kann ob ..."


def words(text: str) -> list[str]:
    return re.findall(r"[^\W_]+", text.lower())


def count_hits(text: str, expected: set[str]) -> int:
    return len(set(words(text)) & expected)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    # Chunks of 20 s above 20 s of audio: a one-minute file fans out over several chunks.
    with run_server(tmp_path_factory.mktemp("languages"), WHISPER_MODEL="base",
                    WHISPER_MODELS="tiny.en", AUDIO_LIMIT_SINGLE_CORE="20",
                    PARALLEL_CHUNK_DURATION="20") as running:
        yield running


@pytest.fixture(scope="module")
def long_portuguese(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """25 s of loud noise (no speech), then the Portuguese clip four times: about 65 s."""
    clip = load_pcm(PT)
    noise = np.random.default_rng(5).normal(0, 3000, 16000 * 25).clip(-32000, 32000)
    pause = np.zeros(16000 * 2, dtype=np.int16)
    parts = [noise.astype(np.int16), *[p for _ in range(4) for p in (clip, pause)]]
    return write_wav(tmp_path_factory.mktemp("long_pt") / "long_pt.wav", np.concatenate(parts))


def post(server: Server, path: Path, route: str = "/api/v1/transcribe",
         **fields: str) -> httpx.Response:
    with path.open("rb") as handle:
        return httpx.post(f"{server.url}{route}", timeout=300,
                          files={"file": (path.name, handle)}, data=fields)


def test_language_is_detected_and_reported(server: Server) -> None:
    body = post(server, PT).json()
    assert body["language"] == "pt" and body["model"] == "base"
    assert count_hits(body["text"], {"acidente", "ocorreu", "altitude", "fogo", "inimigo"}) >= 3
    client = OpenAI(base_url=f"{server.url}/v1", api_key="unused")
    with ES.open("rb") as audio:
        verbose = client.audio.transcriptions.create(model="whisper-1", file=audio,
                                                     response_format="verbose_json")
    assert verbose.language == "es"
    assert (verbose.model_extra or {})["language_probability"] > 0.5


def test_a_long_file_keeps_one_language_across_chunks(
    server: Server, long_portuguese: Path
) -> None:
    body = post(server, long_portuguese).json()
    assert body["chunks"] >= 3 and body["language"] == "pt"
    # Each repetition came back in Portuguese: no chunk decided on its own to be English.
    assert heard(reference(PT.name), body["text"]) >= 3
    assert "accident" not in words(body["text"])
    assert re.search(r"Merged \d+ segments from [3-9] chunks \(language=pt\)",
                     server.log.read_text())


def test_translation_of_a_long_file_through_jobs(server: Server, long_portuguese: Path) -> None:
    with long_portuguese.open("rb") as handle:
        created = httpx.post(f"{server.url}/api/v1/jobs", timeout=60,
                             files={"file": ("long_pt.wav", handle)},
                             data={"task": "translate"})
    assert created.status_code == 202, created.text
    job_url = f"{server.url}/api/v1/jobs/{created.json()['id']}"
    deadline = time.monotonic() + 600
    while (status := httpx.get(job_url).json())["status"] not in ("succeeded", "failed"):
        assert time.monotonic() < deadline
        time.sleep(1)
    assert status["status"] == "succeeded" and status["request"]["task"] == "translate"
    text = httpx.get(f"{job_url}/result").json()["text"]
    # English from every chunk: no repetition came back in Portuguese, and each one's English.
    assert heard(reference(PT.name), text) == 0 and "acidente" not in words(text)
    assert sum(words(text).count(w) for w in ("accident", "crash")) >= 3
    verbose = httpx.get(f"{job_url}/result", params={"format": "verbose_json"}).json()
    assert verbose["task"] == "translate" and verbose["language"] == "pt"


def test_translations_route_gives_english(server: Server) -> None:
    client = OpenAI(base_url=f"{server.url}/v1", api_key="unused")
    with DE.open("rb") as audio:
        text = client.audio.translations.create(model="whisper-1", file=audio,
                                                response_format="text")
    # English words, not the right ones: an AMD EPYC wrote "In particular, it is important that
    # you know whether you are lucky ..." where an Intel Xeon wrote about facial expressions.
    expected = {"particular", "claimed", "said", "lying", "lie", "lies", "recognize", "someone",
                "facial", "face", "expression", "expressions", "changes", "minimal",
                "the", "that", "is", "it", "you", "whether", "if", "can", "of", "by"}
    assert count_hits(str(text), expected) >= 3
    assert count_hits(str(text), {"insbesondere", "behauptet", "dass", "jemand"}) == 0


@pytest.mark.parametrize(("route", "fields", "message"), [
    ("/api/v1/transcribe", {"model": "tiny.en", "language": "pt"}, "cannot transcribe"),
    ("/api/v1/transcribe", {"model": "tiny.en", "task": "translate"}, "cannot translate"),
    ("/api/v1/jobs", {"model": "tiny.en", "language": "pt"}, "cannot transcribe"),
    ("/v1/audio/transcriptions", {"model": "tiny.en", "language": "pt"}, "cannot transcribe"),
    ("/v1/audio/translations", {"model": "tiny.en"}, "cannot translate"),
    ("/v1/audio/transcriptions", {"model": "large-v3"}, "has base, tiny.en"),
    ("/api/v1/transcribe", {"language": "portuguese"}, "use 'pt'"),
])
def test_requests_a_model_cannot_serve_are_400(
    server: Server, route: str, fields: dict[str, str], message: str
) -> None:
    response = post(server, PT, route, **fields)
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]["message"]
    assert server.temp_is_empty()


def test_models_through_the_openai_sdk(server: Server) -> None:
    client = OpenAI(base_url=f"{server.url}/v1", api_key="unused")
    assert [m.id for m in client.models.list()] == ["whisper-1", "base", "tiny.en"]
    tiny = client.models.retrieve("tiny.en")
    assert tiny.id == "tiny.en" and (tiny.model_extra or {})["languages"] == ["en"]
    assert (client.models.retrieve("whisper-1").model_extra or {})["root"] == "base"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("large-v3")


@pytest.mark.parametrize(("args", "message"), [
    (["--language", "pt"], "cannot transcribe language 'pt'"),
    (["--language", "portuguese"], "use 'pt'"),
    (["--language", "xx"], "unknown language code 'xx'"),
    (["--task", "translate"], "cannot translate"),
    (["--model", "base-nope"], "is not loaded"),
])
def test_cli_refuses_what_the_api_refuses(tmp_path: Path, args: list[str], message: str) -> None:
    environment = {**os.environ, "TEMP_DIR": str(tmp_path), "WHISPER_MODEL": "tiny.en"}
    done = subprocess.run([sys.executable, "-m", "whisper_api.cli", "transcribe", str(PT), *args],
                          capture_output=True, text=True, env=environment, timeout=120)
    assert done.returncode == 2
    assert message in done.stderr and done.stdout == ""
