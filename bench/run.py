"""Long-form speed and accuracy: whisper-api against faster-whisper's own pipelines, same run.

Usage: python bench/run.py [--model tiny.en|base|DIR] [--passes 1 3] [--seeds 7 11] [--fan-out]
                          [--sweep] [--no-ray] [--reps 3] [--overhead-chunks 40]
                          [--shared ../shared] [--out bench/out]
For every (passes, seed) it builds a long file with shared/tools/make_long.py and times, in one
process run (model load excluded everywhere): faster-whisper sequential `transcribe` (beam 5),
`BatchedInferencePipeline` (batch 8), the per-clip oracle (each clip alone, beam 5), and
whisper-api end to end (conversion included) per preset on the local worker pool (and, with
--ray, on Ray actors); then what one chunk costs to dispatch on each executor (bench/executors.py).
Every row: wall, x realtime, WER (references and hypotheses normalised alike: `normalise`) and,
for ours, the speech regions the workers decoded again. Batched and `fast`, whose walls are
close, run `--reps` times in turn and show the median wall. Then each file's goals (issue 11).
"""

import argparse
import asyncio
import csv
import dataclasses
import functools
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import jiwer
from faster_whisper import BatchedInferencePipeline, WhisperModel, decode_audio
from whisper_normalizer.english import EnglishTextNormalizer

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
from whisper_api.executors import ChunkExecutor
from whisper_api.pipeline import MODEL_PRESETS, PRESETS, Pipeline, TranscribeRequest
from whisper_api.sessions import SessionManager
from whisper_api.transcriber import resolve_model

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"  # --shared overrides it (a git worktree has no sibling shared/)


SEQUENTIAL = "faster-whisper sequential (beam 5)"
BATCHED = "faster-whisper batched (bs 8)"
ORACLE = "per-clip oracle (beam 5)"
ACCURATE, FAST = "whisper-api accurate", "whisper-api fast"
# (goal, our row, their row, compared on WER (else wall), the largest ratio that meets it)
GOALS = (("accurate WER <= 1.10 x oracle", ACCURATE, ORACLE, True, 1.10),
         ("accurate wall <= sequential", ACCURATE, SEQUENTIAL, False, 1.0),
         ("fast WER <= sequential", FAST, SEQUENTIAL, True, 1.0),
         ("fast wall <= batched", FAST, BATCHED, False, 1.0))
FILLERS = {"er", "ah", "uhm", "erm"}  # hesitations Whisper's normaliser keeps


def normalise(text: str) -> str:
    """English WER normalisation, applied to references and hypotheses alike: Whisper's own
    English normaliser (`EnglishTextNormalizer`, the one the Whisper paper and faster-whisper's
    WER benchmark score with): lower case; contractions written out ("I'm" as "i am");
    British spellings as American ("apologise"); numbers as digits ("nineteen sixty one" as
    "1961", "mid nineties" as "mid 90s"); titles spelled out ("mr" as "mister"); "gonna" and
    the like written out; hesitations (uh, um, hmm), punctuation and anything in brackets
    ("[Music]", "(laughs)": no reference has brackets) dropped. Two additions:
    "et cetera" as "etc" (the corpus writes "etc." and decoders say both), and the
    hesitations it keeps (er, ah, erm), since some references keep them and others do not."""
    spoken = re.sub(r"\bet[ -]?cetera\b", "etc", text, flags=re.IGNORECASE)
    return " ".join(w for w in _english()(spoken).split() if w not in FILLERS)


@functools.cache
def _english() -> EnglishTextNormalizer:
    return EnglishTextNormalizer()


def wer_percent(reference: str, hypothesis: str) -> float:
    return 100 * float(jiwer.wer(normalise(reference), normalise(hypothesis)))


def build_long(out: Path, passes: int, seed: int) -> tuple[Path, str]:
    prefix = out / f"long_{passes}_{seed}"
    if not prefix.with_suffix(".txt").exists():
        prefix.with_suffix(".wav").unlink(missing_ok=True)
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


Row = tuple[float, str, int]  # wall seconds, text, regions decoded again


def timed(fn: Callable[[], tuple[str, int]]) -> Row:
    started = time.perf_counter()
    text, redone = fn()
    return time.perf_counter() - started, text, redone


def baselines(wav: Path, reference: str, threads: int, model_name: str) -> "Rows":
    model = WhisperModel(resolve_model(model_name), device="cpu", compute_type="int8",
                         cpu_threads=threads)
    batched = BatchedInferencePipeline(model)

    def sequential() -> tuple[str, int]:
        segments, _ = model.transcribe(str(wav), language="en", beam_size=5)
        return " ".join(s.text for s in segments), 0

    def batch() -> tuple[str, int]:
        return batched_text(batched, wav), 0

    clips = [decode_audio(str(p)) for p in clip_order(reference)]

    def oracle() -> tuple[str, int]:
        return " ".join(
            s.text for clip in clips for s in model.transcribe(clip, language="en", beam_size=5)[0]
        ), 0

    return {SEQUENTIAL: timed(sequential), BATCHED: timed(batch), ORACLE: timed(oracle)}


def batched_text(batched: BatchedInferencePipeline, wav: Path) -> str:
    segments, _ = batched.transcribe(str(wav), language="en", batch_size=8)
    return " ".join(s.text for s in segments)


def repeat(wav: Path, args: argparse.Namespace, rows: "Rows") -> None:
    """Batched and `fast` `--reps` - 1 times more, one after the other in turn, in one process;
    each row's wall becomes the median of its runs. On a shared 2-vCPU VM the same row moved
    by up to 15 % within minutes, more than the two rows differ."""
    if args.reps < 2 or FAST not in rows:
        return
    model = WhisperModel(resolve_model(args.model), device="cpu", compute_type="int8",
                         cpu_threads=os.cpu_count() or 1)
    batched = BatchedInferencePipeline(model)
    settings = Settings(temp_dir=args.out / "temp", whisper_model=args.model)
    walls = {BATCHED: [rows[BATCHED][0]], FAST: [rows[FAST][0]]}
    with local_pool(settings) as (pool, count):
        for _ in range(args.reps - 1):
            walls[BATCHED].append(timed(lambda: (batched_text(batched, wav), 0))[0])
            walls[FAST].append(timed(lambda: asyncio.run(_run(settings, pool, count, wav,
                                                               "fast")))[0])
    for label, runs in walls.items():
        median = statistics.median(runs)
        print(f"{label}: {' / '.join(f'{w:.1f}' for w in runs)} s, median {median:.1f} s")
        rows[label] = (median, *rows[label][1:])


Variant = str | dict[str, float]
Rows = dict[str, Row]


def ours(wav: Path, out: Path, variants: dict[str, Variant], overhead_chunks: int,
         model: str) -> tuple[Rows, Overhead]:
    settings = Settings(temp_dir=out / "temp", whisper_model=model)
    with local_pool(settings) as (pool, count):
        rows = run_variants(settings, pool, count, wav, variants)
        overhead = measure_overhead(pool, count, out, overhead_chunks)
    return rows, overhead


def on_ray(wav: Path, out: Path, overhead_chunks: int, model: str) -> tuple[Rows, Overhead]:
    settings = Settings(temp_dir=out / "temp", whisper_model=model)
    with ray_executor(settings) as (executor, count):
        rows = run_variants(settings, executor, count, wav, {RAY_LABEL: "accurate"})
        overhead = measure_overhead(executor, count, out, overhead_chunks)
    return rows, overhead


def on_executors(wav: Path, args: argparse.Namespace,
                 variants: dict[str, Variant]) -> tuple[Rows, dict[str, Overhead]]:
    """The local pool, then (with --ray) Ray actors: one after the other, never competing."""
    rows, overhead = ours(wav, args.out, variants, args.overhead_chunks, args.model)
    overheads = {"local pool": overhead}
    if args.ray:
        ray_rows, overheads["Ray"] = on_ray(wav, args.out, args.overhead_chunks, args.model)
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
               variant: str | dict[str, float]) -> tuple[str, int]:
    sessions = SessionManager(settings.temp_dir, 24)
    if isinstance(variant, dict):
        for table in (PRESETS, *MODEL_PRESETS.values()):
            table["sweep"] = dataclasses.replace(table["accurate"], **variant)  # type: ignore[arg-type]
        preset = "sweep"
    else:
        preset = variant
    request = TranscribeRequest(language="en", preset=preset)  # type: ignore[arg-type]
    with sessions.session() as session:
        pipeline = Pipeline(settings, executor, workers)
        transcript = await pipeline.transcribe(wav, session, request)
    return transcript.text, int(transcript.extra.get("redone_regions", 0))  # type: ignore[call-overload]


def report(rows: Rows, reference: str, duration_s: float, name: str, out: Path) -> list[str]:
    """Prints the table and returns it as markdown rows for docs/benchmarks.md."""
    print(f"\n{name}: {duration_s:.1f} s")
    print(f"{'pipeline':44s} {'wall s':>8s} {'x realtime':>11s} {'WER %':>7s} {'redone':>7s}")
    table, markdown = [], []
    for label, (seconds, text, redone) in rows.items():
        wer = wer_percent(reference, text)
        table.append((label, seconds, duration_s / seconds, wer))
        print(f"{label:44s} {seconds:8.2f} {duration_s / seconds:11.1f} {wer:7.1f} {redone:7d}")
        markdown.append(f"| {name} | {label} | {seconds:.1f} | {duration_s / seconds:.1f} | "
                        f"{wer:.1f} | {redone if label.startswith('whisper-api') else ''} |")
    plot(table, out / f"benchmark_{name}.png")
    return markdown


def goals(rows: Rows, reference: str, name: str) -> list[str]:
    """Each goal of issue 11 this file's rows can judge: met or not, and the ratio."""
    wer = {label: wer_percent(reference, text) for label, (_, text, _) in rows.items()}
    wall = {label: row[0] for label, row in rows.items()}
    verdicts = []
    for goal, ours, theirs, on_wer, bound in GOALS:
        measure = wer if on_wer else wall
        if ours in measure and theirs in measure:
            ratio = measure[ours] / max(measure[theirs], 1e-9)
            verdicts.append(f"{name}: {goal}: {'met' if ratio <= bound else 'NOT met'} "
                            f"({measure[ours]:.2f} / {measure[theirs]:.2f} = {ratio:.2f})")
    return verdicts


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
    global SHARED
    args = parse_args()
    SHARED = args.shared
    args.out.mkdir(parents=True, exist_ok=True)
    model_label = Path(args.model).name
    print(f"{os.cpu_count()} cores, {model_label} int8")
    markdown = ["| file | pipeline | wall s | x realtime | WER % | redone regions |",
                "| --- | --- | ---: | ---: | ---: | ---: |"]
    overheads: dict[str, Overhead] = {}
    verdicts: list[str] = []
    for passes in args.passes:
        for seed in args.seeds:
            wav, reference = build_long(args.out, passes, seed)
            duration_s = len(decode_audio(str(wav))) / 16000
            rows = baselines(wav, reference, os.cpu_count() or 1, args.model)
            our_rows, overheads = on_executors(wav, args, variants(args))
            rows.update(our_rows)
            repeat(wav, args, rows)
            name = f"{model_label}_{passes}x_seed{seed}"
            markdown += report(rows, reference, duration_s, name, args.out)
            verdicts += goals(rows, reference, name)
    print("\n" + "\n".join(markdown))
    print("\n" + "\n".join(verdicts))
    report_overheads(overheads)


def variants(args: argparse.Namespace) -> dict[str, Variant]:
    chosen: dict[str, Variant] = {"whisper-api accurate": "accurate", "whisper-api fast": "fast"}
    if args.fan_out:
        chosen |= {"whisper-api accurate, fan-out": "accurate", "whisper-api fast, fan-out": "fast"}
    if args.sweep:
        for window in (12.0, 20.0, 29.0):
            for beam in (1, 5):
                chosen[f"sweep window {window:.0f}s beam {beam}"] = {
                    "window_s": window, "beam_size": beam}
    return chosen


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="tiny.en",
                        help="tiny.en, or a model directory (its name picks the presets)")
    parser.add_argument("--passes", type=int, nargs="+", default=[1])
    parser.add_argument("--seeds", type=int, nargs="+", default=[7, 11])
    parser.add_argument("--fan-out", action="store_true",
                        help="also force the parallel path (60 s chunks) for each preset")
    parser.add_argument("--sweep", action="store_true", help="also try window sizes and beams")
    parser.add_argument("--ray", action=argparse.BooleanOptionalAction, default=ray_installed(),
                        help="also run on Ray actors (default: when Ray is installed)")
    parser.add_argument("--reps", type=int, default=3,
                        help="runs of batched and `fast` (in turn; the median wall is shown)")
    parser.add_argument("--overhead-chunks", type=int, default=40,
                        help="silent chunks per executor for the dispatch overhead")
    parser.add_argument("--shared", type=Path, default=SHARED,
                        help="the shared folder with audio/ and tools/make_long.py")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    return parser.parse_args()


if __name__ == "__main__":
    main()
