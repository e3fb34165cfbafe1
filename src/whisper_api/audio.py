"""Probe and convert media to 16 kHz mono WAV.

PyAV (FFmpeg's libraries, already a faster-whisper dependency) instead of the ffmpeg binary: no
system package, no shell, and frames stream through a resampler into the WAV file, so memory stays
constant whatever the input length.

Limits come before work: the duration the container declares is checked before decoding, the
decoded length is counted while converting (a container may lie or declare nothing), and the
free space the WAV will need is checked before the first byte is written.
"""

import math
import shutil
import wave
from collections.abc import Callable, Iterator
from itertools import chain
from pathlib import Path

import av
import numpy as np

from whisper_api.errors import (
    InsufficientStorageError,
    InvalidAudioError,
    MediaTooLargeError,
    WhisperApiError,
    disk_full,
)

SAMPLE_RATE_HZ = 16000
BYTES_PER_SAMPLE = 2
WAV_BYTES_PER_S = SAMPLE_RATE_HZ * BYTES_PER_SAMPLE
MIN_FREE_BYTES = 64 * 1024 * 1024  # left free besides the WAV: logs, the job database


def _go_on() -> None:
    return None


def convert_to_wav(source: Path, target: Path, max_duration_s: float = math.inf,
                   space_factor: float = 1.0, check: Callable[[], None] = _go_on) -> float:
    """Decode any media's first audio stream into a 16 kHz mono s16 WAV; returns its seconds.

    Refused before decoding when the container declares more than `max_duration_s` or the disk
    lacks `space_factor` times the WAV's size; stopped the moment the decoded audio passes
    `max_duration_s` when the container declared less (or nothing). `check` is called per
    decoded frame; what it raises stops the conversion (a cancelled request's).
    """
    if not source.is_file() or source.stat().st_size == 0:
        raise InvalidAudioError("the file is empty")
    try:
        samples = _stream_to_wav(source, target, max_duration_s, space_factor, check)
    except WhisperApiError:
        raise
    except OSError as exc:
        if disk_full(exc):
            raise InsufficientStorageError(_no_space_message(target)) from exc
        raise InvalidAudioError(f"cannot decode the media: {_reason(exc)}") from exc
    except (av.FFmpegError, ValueError, IndexError) as exc:
        raise InvalidAudioError(f"cannot decode the media: {_reason(exc)}") from exc
    if samples == 0:
        raise InvalidAudioError("the audio stream contains no samples")
    return samples / SAMPLE_RATE_HZ


def _stream_to_wav(source: Path, target: Path, max_duration_s: float,
                   space_factor: float, check: Callable[[], None]) -> int:
    resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE_HZ)
    max_samples = max_duration_s * SAMPLE_RATE_HZ
    samples = 0
    with av.open(str(source), mode="r", metadata_errors="ignore") as container:
        if not container.streams.audio:
            raise InvalidAudioError("the media has no audio stream")
        stream = container.streams.audio[0]
        declared_s = declared_duration_s(container, stream)
        if declared_s is not None:
            _check_duration(declared_s, max_duration_s)
            check_free_space(target.parent, declared_s * WAV_BYTES_PER_S * space_factor)
        with wave.open(str(target), "wb") as out:
            out.setnchannels(1)
            out.setsampwidth(BYTES_PER_SAMPLE)
            out.setframerate(SAMPLE_RATE_HZ)
            for frame in chain(_decode(container, stream), [None]):  # None flushes
                check()
                for chunk in _resampled(resampler, frame):
                    data = _pcm(chunk)
                    samples += len(data) // BYTES_PER_SAMPLE
                    if samples > max_samples:
                        _check_duration(samples / SAMPLE_RATE_HZ, max_duration_s, "at least ")
                    # Raw: `writeframes` rewrites the header on every frame (three seeks each);
                    # closing the file writes it once.
                    out.writeframesraw(data)
    return samples


def _resampled(resampler: av.AudioResampler, frame: "av.AudioFrame | None") -> list[
    "av.AudioFrame"
]:
    """The frame as 16 kHz mono s16: as it is when it already is (a 16 kHz WAV: a third of
    its conversion time went to resampling frames into themselves). A stream's frames share
    one format, so the resampler never holds samples of an earlier frame then."""
    if frame is not None and frame.format.name == "s16" and frame.layout.nb_channels == 1 \
            and frame.sample_rate == SAMPLE_RATE_HZ:
        return [frame]
    return resampler.resample(frame)


def _pcm(frame: "av.AudioFrame") -> bytes:
    """A packed mono frame's samples (its plane may be padded past them). Read from the plane:
    `to_ndarray().tobytes()` took 40 % of a WAV's conversion."""
    return bytes(memoryview(frame.planes[0])[:frame.samples * BYTES_PER_SAMPLE])


def declared_duration_s(container: "av.container.InputContainer",
                        stream: "av.AudioStream") -> float | None:
    """The duration the stream (else the container) declares; None when it declares none."""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return None


def probe_duration_s(source: Path) -> float | None:
    """The duration a media file declares, without decoding it; None when it declares none or
    cannot be opened (conversion reports what is wrong with the file)."""
    try:
        with av.open(str(source), mode="r", metadata_errors="ignore") as container:
            if not container.streams.audio:
                return None
            return declared_duration_s(container, container.streams.audio[0])
    except (av.FFmpegError, OSError, ValueError):
        return None


def _check_duration(duration_s: float, max_duration_s: float, qualifier: str = "") -> None:
    if duration_s > max_duration_s:
        raise MediaTooLargeError(
            f"the audio lasts {qualifier}{duration_s:.0f}s; the limit is {max_duration_s:.0f}s "
            "(MAX_AUDIO_DURATION_S)")


def check_free_space(folder: Path, needed_bytes: float) -> None:
    """Refuse (507) work that would fill the disk, before writing anything."""
    free = shutil.disk_usage(folder).free
    if free < needed_bytes + MIN_FREE_BYTES:
        raise InsufficientStorageError(
            f"not enough free disk space: the converted audio needs {needed_bytes / 1e6:.0f} MB "
            f"and {free / 1e6:.0f} MB are free; free space in TEMP_DIR or shorten the media")


def _no_space_message(target: Path) -> str:
    return f"the disk holding {target.parent.name}/ filled up while converting the audio"


def _decode(container: "av.container.InputContainer", stream: "av.AudioStream") -> Iterator[
    "av.AudioFrame"
]:
    for packet in container.demux(stream):
        try:
            yield from packet.decode()
        except av.InvalidDataError:
            # A damaged packet in the middle of a long file: skip it rather than lose the file.
            continue


def _reason(exc: BaseException) -> str:
    """PyAV's message without the file path it appends (the caller's path is not news to them)."""
    return str(getattr(exc, "strerror", None) or exc or type(exc).__name__).lower()


def wav_duration_s(path: Path) -> float:
    with wave.open(str(path), "rb") as wav:
        return wav.getnframes() / wav.getframerate()


def read_wav(path: Path, start_s: float = 0.0, duration_s: float | None = None) -> np.ndarray:
    """Read a slice of a 16 kHz mono s16 WAV as float32 in [-1, 1]."""
    with wave.open(str(path), "rb") as wav:
        wav.setpos(min(wav.getnframes(), int(start_s * SAMPLE_RATE_HZ)))
        count = wav.getnframes() if duration_s is None else int(duration_s * SAMPLE_RATE_HZ)
        raw = wav.readframes(count)
    return np.frombuffer(raw, dtype=np.int16).astype(np.float32) / 32768.0


def iter_wav_blocks(path: Path, block_s: float) -> Iterator[np.ndarray]:
    """Stream a WAV in blocks of int16 samples (constant memory for long files)."""
    block = int(block_s * SAMPLE_RATE_HZ)
    with wave.open(str(path), "rb") as wav:
        while raw := wav.readframes(block):
            yield np.frombuffer(raw, dtype=np.int16)


def copy_wav_slice(source: Path, target: Path, start_s: float, duration_s: float) -> None:
    concat_wav_slices(source, target, [(start_s, start_s + duration_s)])


def concat_wav_slices(
    source: Path, target: Path, spans: list[tuple[float, float]],
    gaps_s: list[float] | None = None, lead_s: float = 0.0,
) -> list[tuple[float, float]]:
    """Write the (start_s, end_s) spans of a 16 kHz mono s16 WAV one after another, after
    `lead_s` of silence and with the seconds of silence `gaps_s` gives after each (none by
    default); where each span lies in the new file."""
    lead = int(lead_s * SAMPLE_RATE_HZ)
    parts, placed, at = [bytes(lead * BYTES_PER_SAMPLE)], [], lead
    gaps = gaps_s if gaps_s is not None else [0.0] * len(spans)
    with wave.open(str(source), "rb") as wav:
        for (start_s, end_s), after_s in zip(spans, gaps, strict=True):
            gap = bytes(int(after_s * SAMPLE_RATE_HZ) * BYTES_PER_SAMPLE)
            wav.setpos(min(wav.getnframes(), int(round(start_s * SAMPLE_RATE_HZ))))
            part = wav.readframes(int(round((end_s - start_s) * SAMPLE_RATE_HZ)))
            length = len(part) // BYTES_PER_SAMPLE
            placed.append((at / SAMPLE_RATE_HZ, (at + length) / SAMPLE_RATE_HZ))
            parts += [part, gap]
            at += length + len(gap) // BYTES_PER_SAMPLE
        raw = b"".join(parts)
    with wave.open(str(target), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(BYTES_PER_SAMPLE)
        out.setframerate(SAMPLE_RATE_HZ)
        out.writeframes(raw)
    return placed
