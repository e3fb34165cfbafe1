"""Bundled models: joining base's two halves safely, what each model can do, loading by path."""

import hashlib
import multiprocessing as mp
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import DATA, JFK_TEXT, CountsFrames, heard, load_pcm
from whisper_api.errors import InvalidRequestError
from whisper_api.executors.base import WorkerConfig
from whisper_api.models import (
    BASE_FILES,
    LANGUAGES,
    ModelCatalog,
    join_parts,
    model_info,
    parse_language,
    resolve_model,
)
from whisper_api.transcript import DecodeOptions

PART_BYTES = 6 << 20


def make_parts(root: Path) -> tuple[Path, Path]:
    first, second = root / "part1", root / "part2"
    first.mkdir()
    second.mkdir()
    rng = np.random.default_rng(3)
    (first / "model.bin.part1").write_bytes(rng.bytes(PART_BYTES))
    (second / "model.bin.part2").write_bytes(rng.bytes(PART_BYTES + 17))
    for name in BASE_FILES:
        (first / name).write_text(f"{name}\n" * 1000)
    return first, second


def join_in_child(first: str, second: str, target: str) -> None:
    join_parts((Path(first), Path(second)), Path(target))


def test_concurrent_joiners_never_expose_a_half_written_model(tmp_path: Path) -> None:
    first, second = make_parts(tmp_path)
    whole = (first / "model.bin.part1").read_bytes() + (second / "model.bin.part2").read_bytes()
    target = tmp_path / "cache" / "base"
    ctx = mp.get_context("spawn")
    writers = [ctx.Process(target=join_in_child, args=(str(first), str(second), str(target)))
               for _ in range(4)]
    for writer in writers:
        writer.start()
    seen_sizes: set[int] = set()
    deadline = time.monotonic() + 60
    while any(w.is_alive() for w in writers) and time.monotonic() < deadline:
        model = target / "model.bin"
        if model.exists():
            seen_sizes.add(len(model.read_bytes()))
        time.sleep(0.005)
    for writer in writers:
        writer.join(timeout=30)
        assert writer.exitcode == 0
    assert seen_sizes <= {len(whole)}  # a reader saw no model.bin, or a complete one
    assert hashlib.sha256((target / "model.bin").read_bytes()).digest() == \
        hashlib.sha256(whole).digest()
    assert sorted(p.name for p in target.iterdir()) == sorted(["model.bin", *BASE_FILES])


def test_a_truncated_model_is_joined_again(tmp_path: Path) -> None:
    first, second = make_parts(tmp_path)
    target = tmp_path / "base"
    target.mkdir()
    (target / "model.bin").write_bytes(b"half")  # a crash of an older writer, say
    join_parts((first, second), target)
    assert (target / "model.bin").stat().st_size == 2 * PART_BYTES + 17


def test_bundled_models_resolve_to_directories(tmp_path: Path) -> None:
    base = Path(resolve_model("base", tmp_path))
    assert base == tmp_path / "base" and (base / "model.bin").stat().st_size > 100 << 20
    assert Path(resolve_model("tiny.en")).is_dir()
    assert resolve_model("small") == "small"  # a size name: faster-whisper downloads it


def test_what_each_model_can_do(tmp_path: Path) -> None:
    assert model_info("tiny.en").languages == ("en",)
    base = model_info("base")
    assert base.multilingual and base.can_translate and {"pt", "de", "fr", "es"} <= set(
        base.languages)
    assert len(base.languages) == 99  # base has no Cantonese token (large-v3 added it)
    assert model_info(resolve_model("base", tmp_path)).languages == base.languages
    assert model_info("medium.en").languages == ("en",)  # not here: judged by its name


@pytest.mark.parametrize(("text", "expected"), [
    (None, None), ("", None), ("auto", None), ("PT", "pt"), (" de ", "de"), ("haw", "haw")])
def test_parse_language(text: str | None, expected: str | None) -> None:
    assert parse_language(text) == expected


@pytest.mark.parametrize(("text", "message"), [
    ("xx", "unknown language code 'xx'"), ("portuguese", "use 'pt'")])
def test_parse_language_refuses(text: str, message: str) -> None:
    with pytest.raises(InvalidRequestError, match=message):
        parse_language(text)


def test_catalog_checks_model_language_and_task() -> None:
    catalog = ModelCatalog(("tiny.en",), "base")
    assert list(catalog.models) == ["base", "tiny.en"]
    assert catalog.choose(None, "pt", "translate").model == "base"
    assert catalog.choose("whisper-1", None, "transcribe").model == "base"
    assert catalog.choose("tiny.en", None, "transcribe").language == "en"
    with pytest.raises(InvalidRequestError, match="cannot transcribe language 'pt'"):
        catalog.choose("tiny.en", "pt", "transcribe")
    with pytest.raises(InvalidRequestError, match="cannot translate"):
        catalog.choose("tiny.en", None, "translate")
    with pytest.raises(InvalidRequestError, match="has base, tiny.en"):
        catalog.choose("large-v3", None, "transcribe")


def test_one_worker_serves_two_models_loaded_from_a_local_path(tmp_path: Path) -> None:
    from whisper_api.transcriber import ModelSet

    local = resolve_model("base", tmp_path)  # the normal loading path, given as a directory
    models = ModelSet(WorkerConfig(local, "cpu", "int8", 2, ("tiny.en",)))
    audio = load_pcm(DATA / "fleurs_pt_007.ogg").astype(np.float32) / 32768.0
    language, probability = models.detect_language(audio, DecodeOptions())
    assert language == "pt" and probability > 0.5
    assert models.detect_language(audio, DecodeOptions(model="tiny.en")) == ("en", 1.0)
    # English speech for tiny.en: on Portuguese its answer may rightly be nothing on some CPUs.
    english = load_pcm(DATA / "jfk.flac").astype(np.float32) / 32768.0
    segments, _, _, _ = models.transcribe(english, DecodeOptions(model="tiny.en", language="en"))
    assert heard(JFK_TEXT, " ".join(s.text for s in segments)) == 1  # tiny.en, same worker
    # Our language table is the one the model itself reports through its public API.
    base = models._models[local]._model  # noqa: SLF001 - the loaded faster-whisper model
    assert set(base.supported_languages) == set(LANGUAGES)


def test_detection_glances_at_speech_encoded_from_its_own_length(tmp_path: Path) -> None:
    """A sure glance is the answer: one encoder pass, far shorter than Whisper's 30 s."""
    from whisper_api.transcriber import DETECT_PAD_S, Transcriber, encoder_frames

    transcriber = Transcriber(resolve_model("base", tmp_path), "cpu", "int8", 2)
    counts = CountsFrames(transcriber._model.model)  # noqa: SLF001 - the CTranslate2 model
    transcriber._model.model = counts  # noqa: SLF001
    speech = load_pcm(DATA / "fleurs_es_007.ogg").astype(np.float32) / 32768.0  # 10 s
    language, probability = transcriber.detect_language(speech)
    assert language == "es" and probability >= 0.9  # sure, so the glance was enough
    # One pass over the clip's speech (the VAD's, so at most the clip) and the pad.
    bound = encoder_frames([(0.0, len(speech) / 16000)], DETECT_PAD_S)
    assert len(counts.frames) == 1 and bound is not None and counts.frames[0] <= bound < 3000


def test_detection_hears_speech_after_a_long_intro(tmp_path: Path) -> None:
    """Two minutes of loud noise, then Portuguese: spread windows find the speech."""
    from whisper_api.transcriber import Transcriber

    rng = np.random.default_rng(1)
    intro = (rng.normal(0, 0.1, 16000 * 120)).astype(np.float32)
    speech = load_pcm(DATA / "fleurs_pt_007.ogg").astype(np.float32) / 32768.0
    audio = np.concatenate([intro, speech, np.zeros(16000, np.float32), speech])
    transcriber = Transcriber(resolve_model("base", tmp_path), "cpu", "int8", 2)
    assert transcriber.detect_language(audio)[0] == "pt"


def test_a_ray_actor_body_serves_every_model_and_detects_once(tmp_path: Path) -> None:
    """The actor class without Ray: the constructor loads both models, each task picks one."""
    import io
    import wave

    from whisper_api.executors.ray_actors import ChunkWorker
    from whisper_api.executors.worker import Done, load_real_transcriber
    from whisper_api.transcript import ChunkTask

    config = WorkerConfig("base", "cpu", "int8", 2, ("tiny.en",), str(tmp_path))
    actor = ChunkWorker(0, config, load_real_transcriber)
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16000)
        out.writeframes(load_pcm(DATA / "fleurs_pt_007.ogg").tobytes())
    detect = ChunkTask("r:language", "r", "", 0.0, 8.8, DecodeOptions(detect_only=True))
    found, _ = actor.transcribe(detect, buffer.getvalue())
    assert isinstance(found, Done)
    assert found.result.language == "pt" and not found.result.segments
    english = ChunkTask("r:0", "r", "", 0.0, 8.8, DecodeOptions(model="tiny.en"))
    answered, _ = actor.transcribe(english, buffer.getvalue())
    assert isinstance(answered, Done) and answered.result.language == "en"
    assert answered.result.language_probability == 1.0  # English-only: nothing to detect
