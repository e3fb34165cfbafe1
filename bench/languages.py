"""Per-language accuracy and speed with the multilingual `base`, and the seed's own scenario.

Usage: python bench/languages.py [--passes 5] [--seeds 7 11] [--languages pt,es,de,fr]
                                 [--fan-out] [--seed-minutes 45] [--seed-language pt]
                                 [--out bench/out]

For each language with clips in shared/audio and each seed, a long file from
shared/tools/make_long.py (PASSES shuffled passes over the language's clips) goes through (model
load excluded everywhere, the language never given, as a user sends "auto"):
- whisper-api's default pipeline (default preset, PARALLEL_WORKERS=auto, conversion included)
  as the service runs it (one chunk below AUDIO_LIMIT_SINGLE_CORE, fanned out above), and with
  --fan-out once more forced through the fan-out path (60 s chunks); then the `fast` preset;
- faster-whisper sequential `transcribe` (beam 5) and `BatchedInferencePipeline` (batch 8), with
  as many CTranslate2 threads as cores;
- the per-clip oracle: each clip alone, beam 5, language detected per clip. A clip that comes
  back in a later pass is decoded once (the answer is the same); its wall counts every time.
Then the seed's scenario: a recording of about --seed-minutes minutes (repeat passes of one
language), our default against faster-whisper sequential on the same file: x realtime, speed-up.

WER normalisation (references come as their sources wrote them): lower case (Unicode), every
character that is not a letter, digit or apostrophe becomes a space (so "acredita-se" is two
words), apostrophes at word edges dropped, numbers compared as written (a model writing "268" as
words is counted wrong).
"""

import argparse
import asyncio
import csv
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import jiwer
from faster_whisper import BatchedInferencePipeline, WhisperModel, decode_audio

from executors import local_pool
from whisper_api.config import Preset, Settings
from whisper_api.executors import ChunkExecutor
from whisper_api.models import resolve_model
from whisper_api.pipeline import Pipeline, TranscribeRequest
from whisper_api.sessions import SessionManager

ROOT = Path(__file__).resolve().parents[1]
# ../shared beside the checkout (a git worktree one level deeper finds it one level up).
SHARED = next((p / "shared" for p in (ROOT.parent, ROOT.parent.parent) if (p / "shared").is_dir()),
              ROOT.parent / "shared")
MODEL = "base"
OURS, SEQUENTIAL, ORACLE = ("whisper-api default", "faster-whisper sequential (beam 5)",
                            "per-clip oracle (beam 5)")
FAST, BATCHED = "whisper-api fast", "faster-whisper batched (bs 8)"
Row = tuple[str, float, str, str]  # label, wall seconds, text, language


def normalise(text: str) -> str:
    words = re.sub(r"[^\w']+|_", " ", text.lower()).split()
    return " ".join(w.strip("'") for w in words if w.strip("'"))


def wer_percent(reference: str, hypothesis: str) -> float:
    return 100 * float(jiwer.wer(normalise(reference), normalise(hypothesis) or "-"))


def languages_with_clips() -> list[str]:
    with open(SHARED / "audio" / "manifest.csv") as manifest:
        found = {r["language"] for r in csv.DictReader(manifest) if r["reference_text"].strip()}
    return sorted(found - {"en"})


def build_long(out: Path, language: str, passes: int, seed: int) -> tuple[Path, str, Path]:
    prefix = out / f"long_{language}_{passes}_{seed}"
    if not prefix.with_suffix(".wav").exists():
        subprocess.run([sys.executable, str(SHARED / "tools" / "make_long.py"),
                        str(SHARED / "audio"), str(prefix), str(passes), str(seed), language],
                       check=True)
    spans = prefix.parent / f"{prefix.name}.spans.csv"
    return prefix.with_suffix(".wav"), prefix.with_suffix(".txt").read_text(), spans


def clips_of(spans: Path) -> list[Path]:
    with spans.open() as handle:
        return [SHARED / "audio" / row["file"] for row in csv.DictReader(handle)]


def timed(label: str, fn: Callable[[], tuple[str, str]]) -> Row:
    started = time.perf_counter()
    text, language = fn()
    return label, time.perf_counter() - started, text, language


class Baselines:
    """faster-whisper itself with `base`, loaded once for every file."""

    def __init__(self, threads: int) -> None:
        self.model = WhisperModel(resolve_model(MODEL), device="cpu", compute_type="int8",
                                  cpu_threads=threads)
        self.batched = BatchedInferencePipeline(self.model)
        self._clips: dict[Path, tuple[str, str, float]] = {}

    def sequential(self, wav: Path) -> tuple[str, str]:
        segments, info = self.model.transcribe(str(wav), beam_size=5)
        return " ".join(s.text for s in segments), info.language

    def batch(self, wav: Path) -> tuple[str, str]:
        segments, info = self.batched.transcribe(str(wav), batch_size=8)
        return " ".join(s.text for s in segments), info.language

    def oracle(self, clips: list[Path]) -> Row:
        texts, languages, wall_s = [], [], 0.0
        for clip in clips:
            text, language, seconds = self._clip(clip)
            texts.append(text)
            languages.append(language)
            wall_s += seconds
        return ORACLE, wall_s, " ".join(texts), max(set(languages), key=languages.count)

    def _clip(self, clip: Path) -> tuple[str, str, float]:
        if clip not in self._clips:
            started = time.perf_counter()
            segments, info = self.model.transcribe(decode_audio(str(clip)), beam_size=5)
            text = " ".join(s.text for s in segments)
            self._clips[clip] = text, info.language, time.perf_counter() - started
        return self._clips[clip]


async def _ours(settings: Settings, executor: ChunkExecutor, workers: int,
                wav: Path, preset: Preset | None) -> tuple[str, str]:
    sessions = SessionManager(settings.temp_dir, 24)
    with sessions.session() as session:
        transcript = await Pipeline(settings, executor, workers).transcribe(
            wav, session, TranscribeRequest(preset=preset))
    return transcript.text, transcript.language


def ours(settings: Settings, executor: ChunkExecutor, workers: int, wav: Path,
         fan_out: bool, preset: Preset | None = None) -> tuple[str, str]:
    if fan_out:
        settings = settings.model_copy(update={"audio_limit_single_core": 1.0,
                                               "parallel_chunk_duration": 60.0})
    return asyncio.run(_ours(settings, executor, workers, wav, preset))


def print_rows(title: str, rows: list[Row], reference: str, duration_s: float,
               expected: str) -> None:
    print(f"\n{title} ({duration_s:.0f} s)")
    print(f"| {'pipeline':38s} | {'wall s':>7s} | {'x realtime':>10s} | {'WER %':>6s} | lang |")
    print(f"|{'-' * 40}|{'-' * 9}|{'-' * 12}|{'-' * 8}|------|")
    for label, seconds, text, language in rows:
        flag = language if language == expected else f"{language}!"
        print(f"| {label:38s} | {seconds:7.1f} | {duration_s / seconds:10.1f} | "
              f"{wer_percent(reference, text):6.1f} | {flag:4s} |", flush=True)
    found = {label: (seconds, wer_percent(reference, text)) for label, seconds, text, _ in rows}
    if {OURS, SEQUENTIAL, ORACLE} <= found.keys():
        (ours_s, ours_wer), (seq_s, _), (_, oracle_wer) = (found[k] for k in
                                                            (OURS, SEQUENTIAL, ORACLE))
        print(f"goals: WER {ours_wer / max(oracle_wer, 0.1):.2f} x the oracle (<= 1.10), "
              f"wall {ours_s / seq_s:.2f} x sequential (<= 1)")
    if {FAST, SEQUENTIAL, BATCHED} <= found.keys():
        (fast_s, fast_wer), (_, seq_wer), (batch_s, _) = (found[k] for k in
                                                          (FAST, SEQUENTIAL, BATCHED))
        print(f"fast: WER {fast_wer / max(seq_wer, 0.1):.2f} x sequential (<= 1), "
              f"wall {fast_s / batch_s:.2f} x batched (<= 1 on files of 10 minutes or more)")


def per_language(args: argparse.Namespace, settings: Settings, pool: ChunkExecutor,
                 workers: int, baselines: Baselines) -> None:
    for language in args.languages:
        for seed in args.seeds:
            wav, reference, spans = build_long(args.out, language, args.passes, seed)
            duration_s = len(decode_audio(str(wav))) / 16000
            rows = language_rows(settings, pool, workers, baselines, wav, clips_of(spans),
                                 args.fan_out)
            print_rows(f"{language}: {wav.name}", rows, reference, duration_s, language)


def language_rows(settings: Settings, pool: ChunkExecutor, workers: int, baselines: Baselines,
                  wav: Path, clips: list[Path], fan_out: bool) -> list[Row]:
    forced = [timed("whisper-api default, fan-out 60 s",
                    lambda: ours(settings, pool, workers, wav, True))] if fan_out else []
    return [
        timed(OURS, lambda: ours(settings, pool, workers, wav, False)),
        *forced,
        timed(FAST, lambda: ours(settings, pool, workers, wav, False, "fast")),
        timed(SEQUENTIAL, lambda: baselines.sequential(wav)),
        timed(BATCHED, lambda: baselines.batch(wav)),
        baselines.oracle(clips),
    ]


def seed_scenario(args: argparse.Namespace, settings: Settings, pool: ChunkExecutor,
                  workers: int, baselines: Baselines) -> None:
    one_pass, _, _ = build_long(args.out, args.seed_language, 1, args.seeds[0])
    passes = max(1, round(args.seed_minutes * 60 / (len(decode_audio(str(one_pass))) / 16000)))
    wav, reference, _ = build_long(args.out, args.seed_language, passes, args.seeds[0])
    duration_s = len(decode_audio(str(wav))) / 16000
    rows = [timed(OURS, lambda: ours(settings, pool, workers, wav, False)),
            timed(SEQUENTIAL, lambda: baselines.sequential(wav))]
    print_rows(f"seed scenario, {args.seed_language}, {passes} passes: {wav.name}", rows,
               reference, duration_s, args.seed_language)
    print(f"speed-up of whisper-api over sequential: {rows[1][1] / rows[0][1]:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--passes", type=int, default=5,
                        help="passes over a language's clips per file (5: 4-7 minutes)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[7, 11])
    parser.add_argument("--fan-out", action="store_true",
                        help="also force every file through the fan-out path (60 s chunks)")
    parser.add_argument("--languages", type=lambda s: s.split(","), default=None)
    parser.add_argument("--seed-minutes", type=float, default=45.0,
                        help="length of the seed scenario's recording (0 skips it)")
    parser.add_argument("--seed-language", default="pt")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    args = parser.parse_args()
    args.languages = args.languages or languages_with_clips()
    args.out.mkdir(parents=True, exist_ok=True)
    cores = os.cpu_count() or 1
    settings = Settings(temp_dir=args.out / "temp", whisper_model=MODEL)
    print(f"{cores} cores, {MODEL} int8, languages {', '.join(args.languages)}; WER after "
          "lower-casing, punctuation to spaces, numbers as written (see this file's docstring)")
    baselines = Baselines(cores)
    with local_pool(settings) as (pool, workers):
        print(f"whisper-api: {workers} workers, preset {settings.transcribe_preset}")
        per_language(args, settings, pool, workers, baselines)
        if args.seed_minutes > 0:
            seed_scenario(args, settings, pool, workers, baselines)


if __name__ == "__main__":
    main()
