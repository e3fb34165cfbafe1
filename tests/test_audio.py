import wave
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import ffmpeg, write_wav
from whisper_api.audio import SAMPLE_RATE_HZ, convert_to_wav, wav_duration_s
from whisper_api.errors import InvalidAudioError

ENCODINGS = [
    ("mp3", ["-c:a", "libmp3lame"]),
    ("ogg", ["-c:a", "libopus", "-ar", "48000"]),
    ("m4a", ["-c:a", "aac"]),
    ("wma", ["-c:a", "wmav2"]),
    ("mkv", ["-c:a", "flac"]),
]


@pytest.mark.parametrize(("ext", "codec"), ENCODINGS)
def test_converts_any_container_to_16k_mono(
    jfk: Path, tmp_path: Path, ext: str, codec: list[str]
) -> None:
    source = tmp_path / f"in.{ext}"
    ffmpeg("-i", str(jfk), "-ac", "2", "-ar", "44100", *codec, str(source))
    target = tmp_path / "out.wav"
    seconds = convert_to_wav(source, target)
    assert seconds == pytest.approx(11.0, abs=0.1)
    assert wav_duration_s(target) == pytest.approx(seconds, abs=0.01)
    with wave.open(str(target)) as wav:
        assert (wav.getnchannels(), wav.getframerate()) == (1, SAMPLE_RATE_HZ)


def test_video_with_audio_track(jfk: Path, tmp_path: Path) -> None:
    video = tmp_path / "v.mp4"
    ffmpeg("-f", "lavfi", "-i", "color=c=black:s=64x64:d=11", "-i", str(jfk), "-shortest",
           "-c:v", "mpeg4", "-c:a", "aac", str(video))
    assert convert_to_wav(video, tmp_path / "o.wav") == pytest.approx(11.0, abs=0.2)


def _no_audio(tmp: Path) -> Path:
    path = tmp / "silent.mp4"
    ffmpeg("-f", "lavfi", "-i", "color=c=black:s=64x64:d=1", "-c:v", "mpeg4", str(path))
    return path


def _text(tmp: Path) -> Path:
    path = tmp / "notes.mp3"
    path.write_text("this is not audio at all\n" * 50)
    return path


def _empty(tmp: Path) -> Path:
    path = tmp / "empty.wav"
    path.write_bytes(b"")
    return path


def _truncated_header(tmp: Path) -> Path:
    path = tmp / "cut.flac"
    path.write_bytes((Path(__file__).parent / "data" / "jfk.flac").read_bytes()[:40])
    return path


def _zero_seconds(tmp: Path) -> Path:
    return write_wav(tmp / "zero.wav", np.zeros(0, dtype=np.int16))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (_no_audio, "no audio stream"),
        (_text, "cannot decode"),
        (_empty, "empty"),
        (_truncated_header, "cannot decode"),
        (_zero_seconds, "no samples"),
    ],
)
def test_bad_media_raise_invalid_audio(tmp_path: Path, make, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidAudioError, match=message):
        convert_to_wav(make(tmp_path), tmp_path / "out.wav")


def test_truncated_mp3_keeps_what_decodes(jfk: Path, tmp_path: Path) -> None:
    full = tmp_path / "full.mp3"
    ffmpeg("-i", str(jfk), "-c:a", "libmp3lame", str(full))
    cut = tmp_path / "cut.mp3"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    assert 4.0 < convert_to_wav(cut, tmp_path / "o.wav") < 7.0


def test_a_16k_mono_wav_comes_through_sample_for_sample(tmp_path: Path) -> None:
    samples = np.random.default_rng(7).integers(-32768, 32767, 5 * SAMPLE_RATE_HZ,
                                                dtype=np.int16)
    source = write_wav(tmp_path / "in.wav", samples)
    assert convert_to_wav(source, tmp_path / "out.wav") == 5.0
    with wave.open(str(tmp_path / "out.wav")) as wav:
        assert wav.getnframes() == len(samples)
        assert np.array_equal(np.frombuffer(wav.readframes(len(samples)), np.int16), samples)


def test_an_8k_wav_is_resampled(tmp_path: Path) -> None:
    tone = (8000 * np.sin(np.arange(3 * 8000) * 2 * np.pi * 440 / 8000)).astype(np.int16)
    source = write_wav(tmp_path / "in.wav", tone, rate=8000)
    assert convert_to_wav(source, tmp_path / "out.wav") == pytest.approx(3.0, abs=0.01)
    with wave.open(str(tmp_path / "out.wav")) as wav:
        assert wav.getframerate() == SAMPLE_RATE_HZ
        assert wav.getnframes() == pytest.approx(3 * SAMPLE_RATE_HZ, abs=64)
