"""Long-form speed and accuracy: whisper-api against faster-whisper's own pipelines, same run.

Usage: python bench/run.py [--passes 3] [--seed 7] [--sweep] [--no-ray] [--overhead-chunks 40]
                          [--out bench/out]
Builds a long file with shared/tools/make_long.py, then times (model load excluded everywhere):
faster-whisper sequential `transcribe` (beam 5), `BatchedInferencePipeline` (batch 8), the per-clip
oracle (each clip alone, beam 5), and whisper-api end to end (conversion included) per preset,
on the local worker pool and (when Ray is installed) on Ray actors; then what one chunk costs to
dispatch on each executor (bench/executors.py).
"""

import argparse
import asyncio
import csv
import dataclasses
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import jiwer
from faster_whisper import BatchedInferencePipeline, WhisperModel, decode_audio

from executors import (
    RAY_LABEL,
    Overhead,
    local_pool,
    measure_overhead,
    ray_executor,
    ray_installed,
    report_overheads,
)
from whisper_api.config import Settings
from whisper_api.executor import ChunkExecutor
from whisper_api.pipeline import PRESETS, Pipeline, TranscribeRequest
from whisper_api.sessions import SessionManager
from whisper_api.transcriber import resolve_model

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


FILLERS = {"uh", "um", "er", "ah", "hmm", "mm", "uhm", "erm"}


def normalise(text: str) -> str:
    """English WER normalisation, applied to references and hypotheses alike.

    Lower case; "mr"/"mrs"/"dr" spelled out; "%" as "percent"; numbers spelled out (num2words:
    the corpus writes "1961" in one source and "nineteen sixty one" in another); hyphens as
    spaces; other punctuation dropped; hesitations (uh, um, ...) dropped, since some references
    keep them and others do not.
    """
    text = text.lower().replace("%", " percent").replace("-", " ")
    for short, long in (("mr", "mister"), ("mrs", "missus"), ("dr", "doctor")):
        text = re.sub(rf"\b{short}\b\.?", long, text)
    text = re.sub(r"(?<=\d),(?=\d{3})", "", text)
    text = re.sub(r"\d+(\.\d+)?", lambda m: " " + _spell(m.group()) + " ", text)
    words = re.sub(r"[^a-z0-9' ]+", " ", text.replace("-", " ")).split()
    return " ".join(w.strip("'") for w in words if w.strip("'") not in FILLERS)


def _spell(number: str) -> str:
    from num2words import num2words

    if "." in number:
        return str(num2words(float(number)))
    value = int(number)
    # A four-digit number in running speech is mostly a year: "nineteen sixty-one".
    spoken = num2words(value, to="year") if 1100 <= value < 2100 else num2words(value)
    return str(spoken).replace(",", "")


def wer_percent(reference: str, hypothesis: str) -> float:
    return 100 * float(jiwer.wer(normalise(reference), normalise(hypothesis)))


def build_long(out: Path, passes: int, seed: int) -> tuple[Path, str]:
    prefix = out / f"long_{passes}_{seed}"
    if not prefix.with_suffix(".wav").exists():
        subprocess.run([sys.executable, str(SHARED / "tools" / "make_long.py"),
                        str(SHARED / "audio"), str(prefix), str(passes), str(seed)], check=True)
    return prefix.with_suffix(".wav"), prefix.with_suffix(".txt").read_text()


def clip_order(reference: str) -> list[Path]:
    """Which manifest clip each part of the reference came from, in order."""
    with open(SHARED / "audio" / "manifest.csv") as manifest:
        rows = list(csv.DictReader(manifest))
    order, i = [], 0
    while i < len(reference.strip()):
        row = next(r for r in rows if reference.startswith(r["reference_text"], i))
        order.append(SHARED / "audio" / row["file"])
        i += len(row["reference_text"]) + 1
    return order


def timed(fn: Callable[[], str]) -> tuple[float, str]:
    started = time.perf_counter()
    text = fn()
    return time.perf_counter() - started, text


def baselines(wav: Path, reference: str, threads: int) -> dict[str, tuple[float, str]]:
    model = WhisperModel(resolve_model("tiny.en"), device="cpu", compute_type="int8",
                         cpu_threads=threads)
    batched = BatchedInferencePipeline(model)

    def sequential() -> str:
        segments, _ = model.transcribe(str(wav), language="en", beam_size=5)
        return " ".join(s.text for s in segments)

    def batch() -> str:
        segments, _ = batched.transcribe(str(wav), language="en", batch_size=8)
        return " ".join(s.text for s in segments)

    clips = [decode_audio(str(p)) for p in clip_order(reference)]

    def oracle() -> str:
        return " ".join(
            s.text for clip in clips for s in model.transcribe(clip, language="en", beam_size=5)[0]
        )

    return {
        "faster-whisper sequential (beam 5)": timed(sequential),
        "faster-whisper batched (bs 8)": timed(batch),
        "per-clip oracle (beam 5)": timed(oracle),
    }


Variant = str | dict[str, float]
Rows = dict[str, tuple[float, str]]


def ours(wav: Path, out: Path, variants: dict[str, Variant],
         overhead_chunks: int) -> tuple[Rows, Overhead]:
    settings = Settings(temp_dir=out / "temp")
    with local_pool(settings) as (pool, count):
        rows = run_variants(settings, pool, count, wav, variants)
        overhead = measure_overhead(pool, count, out, overhead_chunks)
    return rows, overhead


def on_ray(wav: Path, out: Path, overhead_chunks: int) -> tuple[Rows, Overhead]:
    settings = Settings(temp_dir=out / "temp")
    with ray_executor(settings) as (executor, count):
        rows = run_variants(settings, executor, count, wav, {RAY_LABEL: "accurate"})
        overhead = measure_overhead(executor, count, out, overhead_chunks)
    return rows, overhead


def on_executors(wav: Path, args: argparse.Namespace,
                 variants: dict[str, Variant]) -> tuple[Rows, dict[str, Overhead]]:
    """The local pool, then (with --ray) Ray actors: one after the other, never competing."""
    rows, overhead = ours(wav, args.out, variants, args.overhead_chunks)
    overheads = {"local pool": overhead}
    if args.ray:
        ray_rows, overheads["Ray"] = on_ray(wav, args.out, args.overhead_chunks)
        rows.update(ray_rows)
    return rows, overheads


def run_variants(settings: Settings, executor: ChunkExecutor, workers: int, wav: Path,
                 variants: dict[str, Variant]) -> Rows:
    results = {}
    for label, variant in variants.items():
        # "fan-out" rows force the parallel path that files over AUDIO_LIMIT_SINGLE_CORE take.
        chosen = settings.model_copy(update={"audio_limit_single_core": 1.0,
                                             "parallel_chunk_duration": 60.0}) \
            if "fan-out" in label else settings
        run = _run(chosen, executor, workers, wav, variant)
        results[label] = timed(lambda r=run: asyncio.run(r))  # type: ignore[misc]
    return results


async def _run(settings: Settings, executor: ChunkExecutor, workers: int, wav: Path,
               variant: str | dict[str, float]) -> str:
    sessions = SessionManager(settings.temp_dir, 24)
    if isinstance(variant, dict):
        PRESETS["sweep"] = dataclasses.replace(PRESETS["accurate"], **variant)  # type: ignore[arg-type]
        preset = "sweep"
    else:
        preset = variant
    request = TranscribeRequest(language="en", preset=preset)  # type: ignore[arg-type]
    with sessions.session() as session:
        pipeline = Pipeline(settings, executor, workers)
        transcript = await pipeline.transcribe(wav, session, request)
    return transcript.text


def report(
    rows: dict[str, tuple[float, str]], reference: str, duration_s: float, out: Path
) -> None:
    print(f"\n{'pipeline':44s} {'wall s':>8s} {'x realtime':>11s} {'WER %':>7s}")
    table = []
    for label, (seconds, text) in rows.items():
        wer = wer_percent(reference, text)
        table.append((label, seconds, duration_s / seconds, wer))
        print(f"{label:44s} {seconds:8.2f} {duration_s / seconds:11.1f} {wer:7.1f}")
    plot(table, out / "benchmark.png")


def plot(table: list[tuple[str, float, float, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [t[0] for t in table]
    fig, (speed, wer) = plt.subplots(1, 2, figsize=(12, 0.6 * len(table) + 1.5), sharey=True)
    speed.barh(labels, [t[2] for t in table], color="tab:blue")
    speed.set_xlabel("x realtime (higher is better)")
    wer.barh(labels, [t[3] for t in table], color="tab:orange")
    wer.set_xlabel("WER % (lower is better)")
    speed.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    print(f"plot saved to {path}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--sweep", action="store_true", help="also try decoder window sizes")
    parser.add_argument("--ray", action=argparse.BooleanOptionalAction, default=ray_installed(),
                        help="also run on Ray actors (default: when Ray is installed)")
    parser.add_argument("--overhead-chunks", type=int, default=40,
                        help="silent chunks per executor for the dispatch overhead")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    wav, reference = build_long(args.out, args.passes, args.seed)
    duration_s = len(decode_audio(str(wav))) / 16000
    print(f"{wav.name}: {duration_s:.1f} s, {os.cpu_count()} cores, tiny.en int8")
    variants: dict[str, str | dict[str, float]] = {
        "whisper-api accurate": "accurate", "whisper-api fast": "fast",
        "whisper-api accurate, fan-out": "accurate", "whisper-api fast, fan-out": "fast",
    }
    if args.sweep:
        for window in (8.0, 12.0, 16.0, 22.0, 29.0):
            for coverage in (0.3, 0.6):
                variants[f"sweep window {window:.0f}s coverage {coverage}"] = {
                    "window_s": window, "coverage_min": coverage}
    rows = baselines(wav, reference, os.cpu_count() or 1)
    our_rows, overheads = on_executors(wav, args, variants)
    rows.update(our_rows)
    report(rows, reference, duration_s, args.out)
    report_overheads(overheads)


if __name__ == "__main__":
    main()
