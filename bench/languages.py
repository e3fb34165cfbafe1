"""Per-language accuracy and speed with the multilingual `base`, and the seed's own scenario.

Usage: python bench/languages.py [--passes 1] [--seed 7] [--languages pt,es,de,fr]
                                 [--seed-minutes 45] [--seed-language pt] [--out bench/out]

For each language with clips in shared/audio, a long file from shared/tools/make_long.py goes
through (model load excluded everywhere, the language never given, as a user sends "auto"):
- whisper-api's default pipeline (default preset, PARALLEL_WORKERS=auto, conversion included),
  once as the service runs it (one chunk below AUDIO_LIMIT_SINGLE_CORE) and once forced through
  the fan-out path (60 s chunks), which is what files over the limit take;
- faster-whisper sequential `transcribe` (beam 5) and `BatchedInferencePipeline` (batch 8), with
  as many CTranslate2 threads as cores;
- the per-clip oracle: each clip alone, beam 5, language detected per clip.
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
from whisper_api.config import Settings
from whisper_api.executors import ChunkExecutor
from whisper_api.models import resolve_model
from whisper_api.pipeline import Pipeline, TranscribeRequest
from whisper_api.sessions import SessionManager

ROOT = Path(__file__).resolve().parents[1]
# ../shared beside the checkout (a git worktree one level deeper finds it one level up).
SHARED = next((p / "shared" for p in (ROOT.parent, ROOT.parent.parent) if (p / "shared").is_dir()),
              ROOT.parent / "shared")
MODEL = "base"
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

    def sequential(self, wav: Path) -> tuple[str, str]:
        segments, info = self.model.transcribe(str(wav), beam_size=5)
        return " ".join(s.text for s in segments), info.language

    def batch(self, wav: Path) -> tuple[str, str]:
        segments, info = self.batched.transcribe(str(wav), batch_size=8)
        return " ".join(s.text for s in segments), info.language

    def oracle(self, clips: list[Path]) -> tuple[str, str]:
        texts, languages = [], []
        for clip in clips:
            segments, info = self.model.transcribe(decode_audio(str(clip)), beam_size=5)
            texts += [s.text for s in segments]
            languages.append(info.language)
        return " ".join(texts), max(set(languages), key=languages.count)


async def _ours(settings: Settings, executor: ChunkExecutor, workers: int,
                wav: Path) -> tuple[str, str]:
    sessions = SessionManager(settings.temp_dir, 24)
    with sessions.session() as session:
        transcript = await Pipeline(settings, executor, workers).transcribe(
            wav, session, TranscribeRequest())
    return transcript.text, transcript.language


def ours(settings: Settings, executor: ChunkExecutor, workers: int, wav: Path,
         fan_out: bool) -> tuple[str, str]:
    if fan_out:
        settings = settings.model_copy(update={"audio_limit_single_core": 1.0,
                                               "parallel_chunk_duration": 60.0})
    return asyncio.run(_ours(settings, executor, workers, wav))


def print_rows(title: str, rows: list[Row], reference: str, duration_s: float,
               expected: str) -> None:
    print(f"\n{title} ({duration_s:.0f} s)")
    print(f"| {'pipeline':38s} | {'wall s':>7s} | {'x realtime':>10s} | {'WER %':>6s} | lang |")
    print(f"|{'-' * 40}|{'-' * 9}|{'-' * 12}|{'-' * 8}|------|")
    for label, seconds, text, language in rows:
        flag = language if language == expected else f"{language}!"
        print(f"| {label:38s} | {seconds:7.1f} | {duration_s / seconds:10.1f} | "
              f"{wer_percent(reference, text):6.1f} | {flag:4s} |", flush=True)


def per_language(args: argparse.Namespace, settings: Settings, pool: ChunkExecutor,
                 workers: int, baselines: Baselines) -> None:
    for language in args.languages:
        wav, reference, spans = build_long(args.out, language, args.passes, args.seed)
        duration_s = len(decode_audio(str(wav))) / 16000
        rows = language_rows(settings, pool, workers, baselines, wav, clips_of(spans))
        print_rows(f"{language}: {wav.name}", rows, reference, duration_s, language)


def language_rows(settings: Settings, pool: ChunkExecutor, workers: int, baselines: Baselines,
                  wav: Path, clips: list[Path]) -> list[Row]:
    return [
        timed("whisper-api default", lambda: ours(settings, pool, workers, wav, False)),
        timed("whisper-api default, fan-out 60 s",
              lambda: ours(settings, pool, workers, wav, True)),
        timed("faster-whisper sequential (beam 5)", lambda: baselines.sequential(wav)),
        timed("faster-whisper batched (bs 8)", lambda: baselines.batch(wav)),
        timed("per-clip oracle (beam 5)", lambda: baselines.oracle(clips)),
    ]


def seed_scenario(args: argparse.Namespace, settings: Settings, pool: ChunkExecutor,
                  workers: int, baselines: Baselines) -> None:
    one_pass, _, _ = build_long(args.out, args.seed_language, 1, args.seed)
    passes = max(1, round(args.seed_minutes * 60 / (len(decode_audio(str(one_pass))) / 16000)))
    wav, reference, _ = build_long(args.out, args.seed_language, passes, args.seed)
    duration_s = len(decode_audio(str(wav))) / 16000
    rows = [timed("whisper-api default", lambda: ours(settings, pool, workers, wav, False)),
            timed("faster-whisper sequential (beam 5)", lambda: baselines.sequential(wav))]
    print_rows(f"seed scenario, {args.seed_language}, {passes} passes: {wav.name}", rows,
               reference, duration_s, args.seed_language)
    print(f"speed-up of whisper-api over sequential: {rows[1][1] / rows[0][1]:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--passes", type=int, default=1)
    parser.add_argument("--seed", type=int, default=7)
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
