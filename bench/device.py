"""CUDA against CPU, and fan-out over many cores, on one machine in one run.

Usage: python bench/device.py --model DIR --audio FILE --reference TXT [--language en]
                              [--workers 1,2,4,8] [--out DIR]
Made for a lent GPU machine (16 cores, one GPU): faster-whisper's sequential `transcribe`
(beam 5) and `BatchedInferencePipeline` (batch 16) on CPU (int8, every core) and on CUDA
(float16), then our pipeline end to end with N local workers on CPU (cores / N threads each) and
with 1 and 2 workers sharing the GPU. Model load is excluded everywhere. Each row is printed and
appended to OUT/device.jsonl as soon as it is measured, so a run cut short keeps what it did.
"""

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from faster_whisper import BatchedInferencePipeline, WhisperModel

from run import wer_percent as english_wer
from whisper_api.config import Settings
from whisper_api.pipeline import TranscribeRequest
from whisper_api.service import FileSource, start_service


def cuda_devices() -> int:
    import ctranslate2

    try:
        return int(ctranslate2.get_cuda_device_count())
    except Exception:  # a CPU-only build, or no driver
        return 0


def record(out: Path, row: dict[str, object]) -> None:
    print(json.dumps(row), flush=True)
    with (out / "device.jsonl").open("a") as lines:
        lines.write(json.dumps(row) + "\n")


def wer(reference: str, text: str, language: str) -> float:
    if language == "en":
        return english_wer(reference, text)
    import jiwer

    from languages import normalise

    return 100 * float(jiwer.wer(normalise(reference), normalise(text) or "-"))


Baseline = tuple[str, Callable[[], str]]


def faster_whisper_rows(args: argparse.Namespace, device: str) -> list[Baseline]:
    cores = os.cpu_count() or 1
    model = WhisperModel(str(args.model), device=device,
                         compute_type="float16" if device == "cuda" else "int8",
                         cpu_threads=cores if device == "cpu" else 0)
    batched = BatchedInferencePipeline(model)

    def sequential() -> str:
        segments, _ = model.transcribe(str(args.audio), language=args.language, beam_size=5)
        return " ".join(s.text for s in segments)

    def batch() -> str:
        segments, _ = batched.transcribe(str(args.audio), language=args.language, batch_size=16)
        return " ".join(s.text for s in segments)

    return [(f"faster-whisper sequential, {device}", sequential),
            (f"faster-whisper batched 16, {device}", batch)]


def ours(args: argparse.Namespace, device: str, workers: int) -> tuple[float, str, str]:
    cores = os.cpu_count() or 1
    settings = Settings(
        whisper_model=str(args.model), whisper_device=device, parallel_workers=workers,
        worker_cpu_threads=max(1, cores // workers) if device == "cpu" else 1,
        audio_limit_single_core=60.0, temp_dir=Path(tempfile.gettempdir()) / "whisper-bench",
        cleanup_on_startup=False,
    )
    service = start_service(settings)
    try:
        service.executor.wait_ready(timeout_s=600)
        started = time.perf_counter()
        transcript = asyncio.run(service.transcribe(FileSource(args.audio), TranscribeRequest()))
        return time.perf_counter() - started, transcript.text, transcript.language
    finally:
        service.close()
        service.executor.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--audio", type=Path, required=True)
    parser.add_argument("--reference", type=Path, required=True)
    parser.add_argument("--language", default="en")
    parser.add_argument("--workers", default="1,2,4,8")
    parser.add_argument("--devices", default="cpu,cuda",
                        help="run the CPU rows and the CUDA rows in separate processes, so a "
                             "CUDA library that crashes cannot take the CPU rows with it")
    parser.add_argument("--out", type=Path, default=Path("bench/out"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    reference = args.reference.read_text()
    from faster_whisper import decode_audio

    duration_s = len(decode_audio(str(args.audio))) / 16000
    devices = [d for d in args.devices.split(",") if d == "cpu" or (d == "cuda" and cuda_devices())]
    record(args.out, {"file": args.audio.name, "audio_s": round(duration_s, 1),
                      "cores": os.cpu_count(), "devices": devices})

    def measure(label: str, run: Callable[[], tuple[float, str]]) -> None:
        try:
            wall_s, text = run()
        except Exception as exc:  # one failed row (say, CUDA libraries) must not end the run
            record(args.out, {"row": label, "error": f"{type(exc).__name__}: {exc}"[:400]})
            return
        record(args.out, {"row": label, "file": args.audio.name, "wall_s": round(wall_s, 2),
                          "x_realtime": round(duration_s / wall_s, 1),
                          "wer": round(wer(reference, text, args.language), 2)})

    for device in devices:
        try:
            rows = faster_whisper_rows(args, device)
        except Exception as exc:
            record(args.out, {"row": f"faster-whisper, {device}", "error": str(exc)[:400]})
            continue
        for label, fn in rows:
            measure(label, lambda fn=fn: _timed(fn))  # type: ignore[misc]
    for workers in [int(w) for w in args.workers.split(",")] if "cpu" in devices else []:
        measure(f"whisper-api, cpu, {workers} workers",
                lambda w=workers: ours(args, "cpu", w)[:2])  # type: ignore[misc]
    if "cuda" in devices:
        for workers in (1, 2):
            measure(f"whisper-api, cuda, {workers} workers",
                    lambda w=workers: ours(args, "cuda", w)[:2])  # type: ignore[misc]


def _timed(fn: Callable[[], str]) -> tuple[float, str]:
    started = time.perf_counter()
    text = fn()
    return time.perf_counter() - started, text


if __name__ == "__main__":
    sys.exit(main())
