"""Where the time of one long run goes: each stage of the worker timed in this process, then
the same file end to end through the worker pool (the difference is IPC, scheduling and the
worker's own overhead).

Usage: python bench/profile.py WAV [--model tiny.en] [--preset accurate]
Stages: conversion (PyAV), VAD, packing, features (log-mel), encoder, decoder (batched decode
minus features and encoder, which it recomputes), judging, redo, timestamp fitting, merge.
"""

import argparse
import asyncio
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from executors import local_pool
from whisper_api.audio import convert_to_wav, read_wav
from whisper_api.config import Settings
from whisper_api.merging import merge_results
from whisper_api.pipeline import Pipeline, TranscribeRequest, preset_options
from whisper_api.regions import assign, fit_to_region
from whisper_api.sessions import SessionManager
from whisper_api.transcriber import Transcriber, _ignore, pack_windows
from whisper_api.transcript import ChunkResult

SAMPLE_RATE_HZ = 16000


class Clock:
    def __init__(self) -> None:
        self.stages: Counter[str] = Counter()

    def time(self, stage: str, fn: Callable[[], Any]) -> Any:
        started = time.perf_counter()
        result = fn()
        self.stages[stage] += time.perf_counter() - started
        return result


def encoder_only(transcriber: Transcriber, audio: np.ndarray, windows: list[tuple[float, float]],
                 batch_size: int, clock: Clock) -> None:
    """Features and encoder for the same windows, as the batched pipeline computes them."""
    from faster_whisper.transcribe import get_ctranslate2_storage

    model = transcriber._model
    for first in range(0, len(windows), batch_size):
        batch = windows[first:first + batch_size]
        clips = [audio[int(a * SAMPLE_RATE_HZ):int(b * SAMPLE_RATE_HZ)] for a, b in batch]
        features = clock.time("features", lambda c=clips: np.stack(
            [_padded(model.feature_extractor(c)[..., :-1]) for c in c]))
        clock.time("encoder", lambda f=features: model.model.encode(
            get_ctranslate2_storage(f), to_cpu=True))


def _padded(features: np.ndarray) -> np.ndarray:
    return np.pad(features, ((0, 0), (0, 3000 - features.shape[-1])))


def in_process(wav: Path, model: str, preset: str, tmp: Path) -> Clock:
    clock = Clock()
    converted = tmp / "audio_16k.wav"
    duration_s = clock.time("conversion", lambda: convert_to_wav(wav, converted))
    audio = read_wav(converted)
    transcriber = Transcriber(model, "cpu", "int8", 2)
    options = preset_options(model, preset)
    options = type(options)(**{**options.__dict__, "language": "en"})
    regions = clock.time("vad", lambda: transcriber.find_utterances(audio))
    windows = clock.time("packing", lambda: pack_windows(regions, options.window_s))
    segments, _ = clock.time("batched decode", lambda: transcriber._decode(
        audio, windows, options, _ignore))
    groups = clock.time("judging", lambda: assign(regions, segments))
    redo = clock.time("judging", lambda: transcriber._regions_to_redo(regions, groups))
    for index in redo:
        groups[index] = clock.time("redo", lambda i=index: transcriber._decode_alone(
            audio, regions[i], options))
    fitted = clock.time("fitting", lambda: [
        s for r, g in zip(regions, groups, strict=True) for s in fit_to_region(r, g)])
    clock.time("merge", lambda: merge_results(
        [(0.0, ChunkResult("t", tuple(fitted), "en"))], [duration_s]))
    encoder_only(transcriber, audio, windows, options.batch_size, clock)
    clock.stages["decoder"] = (clock.stages["batched decode"] - clock.stages["features"]
                               - clock.stages["encoder"])
    print(f"{len(regions)} regions, {len(windows)} windows, {len(redo)} redone")
    return clock


def end_to_end(wav: Path, model: str, preset: str, tmp: Path) -> float:
    settings = Settings(temp_dir=tmp / "temp", whisper_model=model)
    with local_pool(settings) as (pool, count):

        async def run() -> None:
            sessions = SessionManager(settings.temp_dir, 24)
            with sessions.session() as session:
                request = TranscribeRequest(language="en", preset=preset)  # type: ignore[arg-type]
                await Pipeline(settings, pool, count).transcribe(wav, session, request)

        started = time.perf_counter()
        asyncio.run(run())
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("wav", type=Path)
    parser.add_argument("--model", default="tiny.en")
    parser.add_argument("--preset", default="accurate")
    parser.add_argument("--tmp", type=Path, default=Path("/tmp/whisper-api-profile"))
    args = parser.parse_args()
    args.tmp.mkdir(parents=True, exist_ok=True)
    clock = in_process(args.wav, args.model, args.preset, args.tmp)
    wall = end_to_end(args.wav, args.model, args.preset, args.tmp)
    worker = sum(v for k, v in clock.stages.items()
                 if k not in ("batched decode", "conversion", "merge"))
    print("| stage | seconds |\n| --- | ---: |")
    for stage in ("conversion", "vad", "packing", "features", "encoder", "decoder", "judging",
                  "redo", "fitting", "merge"):
        print(f"| {stage} | {clock.stages[stage]:.2f} |")
    total = worker + clock.stages['conversion'] + clock.stages['merge']
    print(f"| sum of stages in one process | {total:.2f} |")
    print(f"| end to end through the pool | {wall:.2f} |")


if __name__ == "__main__":
    main()
