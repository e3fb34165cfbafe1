"""End to end on the real tiny.en model and real worker processes."""

import asyncio
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import DATA, JFK_TEXT, heard, load_pcm, reference, spoken, write_wav
from tests.support.fakes import SAMPLE_RATE_HZ, pending_factory
from whisper_api.config import Settings
from whisper_api.errors import InvalidAudioError
from whisper_api.executors import worker_config
from whisper_api.executors.local import WorkerPool
from whisper_api.pipeline import Pipeline, Progress, TranscribeRequest
from whisper_api.sessions import SessionManager
from whisper_api.transcript import Transcript

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def pool() -> Iterator[WorkerPool]:
    settings = Settings(parallel_workers=2)
    pool = WorkerPool(2, worker_config(settings, 2))
    pool.start()
    pool.wait_ready()
    yield pool
    pool.stop()


def run(
    pool: WorkerPool, media: Path, tmp: Path, request: TranscribeRequest | None = None,
    **overrides: object,
) -> tuple[Transcript, list[Progress]]:
    settings = Settings(temp_dir=tmp / "temp", **overrides)  # type: ignore[arg-type]
    sessions = SessionManager(settings.temp_dir, 24)
    progress: list[Progress] = []

    async def go() -> Transcript:
        with sessions.session() as session:
            return await Pipeline(settings, pool, 2).transcribe(
                media, session, request or TranscribeRequest(), progress.append)

    transcript = asyncio.run(go())
    assert list((tmp / "temp").iterdir()) == []
    return transcript, progress


def test_short_file_single_mode(pool: WorkerPool, jfk: Path, tmp_path: Path) -> None:
    transcript, _ = run(pool, jfk, tmp_path)
    assert heard(JFK_TEXT, transcript.text) == 1
    assert transcript.extra["mode"] == "single"


def test_long_file_fans_out_and_merges_in_order(
    pool: WorkerPool, long_speech: Path, tmp_path: Path
) -> None:
    transcript, progress = run(
        pool, long_speech, tmp_path, audio_limit_single_core=10, parallel_chunk_duration=30
    )
    t = transcript
    assert t.extra["mode"] == "parallel" and t.extra["chunks"] >= 3
    assert heard(JFK_TEXT, t.text) == 3
    assert heard(reference("deepspeech_LDC93S1.wav"), t.text) == 3
    starts = [s.start for s in t.segments]
    assert starts == sorted(starts) and t.segments[-1].end <= t.duration_s + 0.01
    done = [p.chunks_done for p in progress if p.stage == "transcribing"]
    assert done == sorted(done) and done[-1] == t.extra["chunks"]


@pytest.mark.parametrize("preset", ["accurate", "fast"])
def test_each_preset_keeps_every_sentence_where_it_was_said(
    pool: WorkerPool, long_speech: Path, tmp_path: Path, preset: str
) -> None:
    """`fast` decodes the speech packed without its pauses: its times must come back."""
    transcript, _ = run(pool, long_speech, tmp_path, TranscribeRequest(preset=preset))  # type: ignore[arg-type]
    clips = {name: len(load_pcm(DATA / name)) / 16000 for name in (
        "jfk.flac", "ljspeech_LJ001-0001.flac", "deepspeech_LDC93S1.wav")}
    at = 0.0
    for _ in range(3):  # rounds
        for clip, length_s in clips.items():
            said = [s for s in transcript.segments
                    if at - 0.5 <= s.start < s.end <= at + length_s + 0.5]
            assert heard(reference(clip), " ".join(s.text for s in said)) == 1, (at, said)
            # Spoken over the clip, not clamped into slivers at its edge.
            assert sum(s.end - s.start for s in said) > length_s / 2
            at += length_s + 1.0  # the clip and its pause


QUIET_CLIPS = ["jfk.flac", "mfa_falsetto.flac", "ljspeech_LJ001-0001.flac", "mfa_whisper2.flac",
               "deepspeech_LDC93S1.wav"]


@pytest.mark.parametrize("preset", ["accurate", "fast"])
def test_falsetto_and_whispered_speech_the_vad_misses_is_heard(
    pool: WorkerPool, tmp_path: Path, preset: str
) -> None:
    """Silero VAD hears none of the falsetto or whispered clip: without the quiet-speech pass
    `fast` loses both and `accurate` the whispered one."""
    pause = np.zeros(16000, dtype=np.int16)
    media = write_wav(tmp_path / "quiet.wav", np.concatenate(
        [p for name in QUIET_CLIPS for p in (load_pcm(DATA / name), pause)]))
    transcript, _ = run(pool, media, tmp_path, TranscribeRequest(preset=preset))  # type: ignore[arg-type]
    # 0.5: the words of such speech vary most from one CPU to another; missing, it is 1.0.
    assert [heard(reference(n), transcript.text, max_wer=0.5) for n in QUIET_CLIPS] == [1] * 5


def chords(seconds: float) -> np.ndarray:
    """Synthetic music: a note with two harmonics every 0.5 s, each held 0.35 s (so its level
    rises and falls like syllables, and the quiet-speech pass offers it to the decoder)."""
    t = np.arange(int(seconds * 16000)) / 16000
    notes = np.array([220.0, 277.0, 330.0, 440.0])[(t * 2).astype(int) % 4]
    held = (t * 2) % 1.0 < 0.7
    return sum(np.sin(2 * np.pi * notes * k * t) / k for k in (1, 2, 3)) * 3000 * held + \
        np.random.default_rng(2).normal(0.0, 3.0, len(t))  # a quiet room between notes


def pink_noise(seconds: float, peak: float) -> np.ndarray:
    """Noise with power falling as 1/f, like rumble or a crowd."""
    white = np.random.default_rng(1).normal(0.0, 1.0, int(seconds * 16000))
    spectrum = np.fft.rfft(white) / np.sqrt(np.arange(len(white) // 2 + 1) + 1.0)
    pink = np.fft.irfft(spectrum, len(white))
    return np.asarray(peak * pink / np.abs(pink).max())


def test_music_and_noise_between_sentences_add_no_words(pool: WorkerPool, tmp_path: Path) -> None:
    """Loud stretches between the VAD's regions: the music rises and falls like syllables and
    is offered to the decoder as a region, the noise holds its level and is not; nothing the
    decoder makes of either may reach the transcript."""
    jfk, pause = load_pcm(DATA / "jfk.flac").astype(float), np.zeros(16000)
    noise = pink_noise(3.0, peak=10000.0)
    parts = [jfk, pause, chords(6.0), pause, jfk, pause, noise, pause, jfk]
    media = write_wav(tmp_path / "music.wav", np.concatenate(parts))
    transcript, _ = run(pool, media, tmp_path)
    assert heard(JFK_TEXT, transcript.text) == 3
    # No words of their own ("Thank you." on music), wherever the decoder put their times.
    assert len(spoken(transcript.text).split()) <= 3 * len(spoken(JFK_TEXT).split()) + 1
    music, burst = (12.0, 18.0), (31.0, 34.0)  # where they lie: 11 s clip, 1 s pauses
    assert [s for s in transcript.segments
            if any(a < (s.start + s.end) / 2 < b for a, b in (music, burst))] == []


def test_one_chunk_file_progress_moves_before_the_chunk_is_done(
    pool: WorkerPool, long_speech: Path, tmp_path: Path
) -> None:
    transcript, progress = run(pool, long_speech, tmp_path)
    assert transcript.extra["chunks"] == 1
    assert isinstance(transcript.extra["redone_regions"], int)
    inside = [p for p in progress if p.stage == "transcribing" and p.chunks_done == 0]
    assert any(0 < p.audio_done_s < transcript.duration_s for p in inside)
    done = [p.audio_done_s for p in progress if p.stage == "transcribing"]
    assert done == sorted(done)


def test_bad_media_leaves_no_session(pool: WorkerPool, tmp_path: Path) -> None:
    bogus = tmp_path / "x.mp3"
    bogus.write_text("not audio")
    with pytest.raises(InvalidAudioError):
        run(pool, bogus, tmp_path)
    assert list((tmp_path / "temp").iterdir()) == []


def test_regions_every_chunk_left_are_redone_on_all_lanes_and_land_where_they_were_said(
    tmp_path: Path,
) -> None:
    # Four 10 s stretches at distinct levels, a second of silence after each: four chunks.
    levels = (0.1, 0.2, 0.3, 0.4)
    silence = np.zeros(SAMPLE_RATE_HZ, dtype=np.int16)
    audio = np.concatenate([part for level in levels
                            for part in (np.full(10 * SAMPLE_RATE_HZ, level * 32768, np.int16),
                                         silence)])
    media = write_wav(tmp_path / "levels.wav", audio)
    pool = WorkerPool(2, worker_config(Settings(), 2), factory=pending_factory)
    pool.start()
    try:
        pool.wait_ready()
        transcript, progress = run(pool, media, tmp_path, audio_limit_single_core=5,
                                   parallel_chunk_duration=12)
    finally:
        pool.stop()
    assert transcript.extra["chunks"] == 4 and transcript.extra["redone_regions"] == 4
    redone = [s for s in transcript.segments if s.text.startswith("level")]
    assert [s.text for s in redone] == [f"level {level:.2f} on all lanes" for level in levels]
    # Each chunk's middle second, back on the file's timeline (chunks are cut in the pauses).
    assert [round((s.start + s.end) / 2 / 11) for s in redone] == [0, 1, 2, 3]
    assert all(abs(s.end - s.start - 1.0) < 0.01 for s in redone)
    assert "redoing" in [p.stage for p in progress]
