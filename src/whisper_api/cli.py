"""Command line: `whisper-api transcribe FILE`, `whisper-api serve`."""

import argparse
import asyncio
import json
import logging
import sys
import time
from pathlib import Path

from whisper_api.config import Settings, load_settings
from whisper_api.errors import WhisperApiError
from whisper_api.executor import WorkerConfig
from whisper_api.formats import FORMATS, render
from whisper_api.pipeline import Pipeline, Progress, TranscribeRequest
from whisper_api.pool import WorkerPool
from whisper_api.ray_executor import INSTALL_HINT, RayExecutor
from whisper_api.sessions import SessionManager


def build_pool(settings: Settings, workers: int | None = None) -> WorkerPool:
    count, reason = settings.worker_count()
    count = workers or count
    logging.getLogger("whisper_api").info("Starting %d workers (%s)", count, reason)
    return WorkerPool(count, worker_config(settings, count), settings.chunk_timeout_s)


def build_executor(settings: Settings, workers: int | None = None) -> "WorkerPool | RayExecutor":
    """EXECUTOR=local: worker processes on this machine; EXECUTOR=ray: actors on a Ray cluster."""
    if settings.executor == "local":
        return build_pool(settings, workers)
    # PARALLEL_WORKERS=auto on Ray: as many actors as the cluster's CPUs (GPUs) allow at start.
    count = workers or (None if settings.parallel_workers == "auto" else settings.parallel_workers)
    threads = settings.worker_cpu_threads or max(1, round(settings.ray_num_cpus_per_worker))
    return RayExecutor(
        count, _config(settings, threads), settings.chunk_timeout_s, address=settings.ray_address,
        num_cpus_per_worker=settings.ray_num_cpus_per_worker,
        num_gpus_per_worker=settings.ray_num_gpus_per_worker,
    )


def worker_config(settings: Settings, workers: int) -> WorkerConfig:
    import os

    cores = os.cpu_count() or 1
    # Two threads per core share: measured as fast as one thread per worker when all are busy,
    # and twice as fast for a lone request (docs/benchmarks.md).
    threads = settings.worker_cpu_threads or max(1, min(cores, 2 * cores // workers))
    return _config(settings, threads)


def _config(settings: Settings, threads: int) -> WorkerConfig:
    return WorkerConfig(
        settings.whisper_model, settings.whisper_device, settings.compute_type, threads,
        # Unset: each worker uses its own user's cache (a Ray node may have another home).
        settings.model_names, str(settings.model_cache_dir or ""),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="whisper-api", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    tr = commands.add_parser("transcribe", help="transcribe a local media file")
    tr.add_argument("input", type=Path)
    tr.add_argument("--format", default="text", choices=FORMATS)
    tr.add_argument("--output", type=Path)
    tr.add_argument("--language", help="'auto' (default) or an ISO 639-1 code such as 'pt'")
    tr.add_argument("--model", help="one of WHISPER_MODEL / WHISPER_MODELS (default: "
                    "WHISPER_MODEL)")
    tr.add_argument("--task", default="transcribe", choices=("transcribe", "translate"),
                    help="translate: English text from any language the model knows")
    tr.add_argument("--workers", type=int)
    tr.add_argument("--word-timestamps", action="store_true")
    tr.add_argument("--preset", choices=("accurate", "fast"))
    serve = commands.add_parser("serve", help="run the HTTP service")
    serve.add_argument("--host", default=None)
    serve.add_argument("--port", type=int, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                        stream=sys.stderr)
    try:
        if args.command == "transcribe":
            return transcribe_command(args)
        return serve_command(args)
    except WhisperApiError as exc:
        # Start a fresh line: the progress bar may have left the cursor mid-line.
        print(f"\nerror: {exc}", file=sys.stderr)
        return 2
    except SystemExit as exc:
        if isinstance(exc.code, str):
            print(f"error: {exc.code}", file=sys.stderr)
            return 2
        raise


def transcribe_command(args: argparse.Namespace) -> int:
    settings = load_settings()
    if not args.input.is_file():
        print(f"error: no such file: {args.input}", file=sys.stderr)
        return 2
    request = checked_request(settings, args)  # refused (exit 2) before any model loads
    pool = build_executor(settings, args.workers)
    pool.start()
    try:
        pool.wait_ready()
        transcript = asyncio.run(_transcribe(settings, pool, args.input, request))
    finally:
        pool.stop()
    body = render(transcript, args.format)
    text = json.dumps(body, indent=2, ensure_ascii=False) if isinstance(body, dict) else body
    if args.output:
        args.output.write_text(text)
    else:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    return 0


def checked_request(settings: Settings, args: argparse.Namespace) -> TranscribeRequest:
    """The request the API would accept for these arguments, or InvalidRequestError."""
    from whisper_api.models import ModelCatalog, parse_language
    from whisper_api.service import check_request

    request = TranscribeRequest(language=parse_language(args.language), model=args.model,
                                task=args.task, word_timestamps=args.word_timestamps,
                                preset=args.preset)
    return check_request(ModelCatalog(settings.model_names, settings.whisper_model), request)


async def _transcribe(
    settings: Settings, pool: "WorkerPool | RayExecutor", media: Path, request: TranscribeRequest
) -> "Transcript":
    sessions = SessionManager(settings.temp_dir, settings.max_temp_age_hours)
    pipeline = Pipeline(settings, pool, pool.stats().workers)
    started = time.perf_counter()

    def show(progress: Progress) -> None:
        elapsed = time.perf_counter() - started
        speed = progress.audio_done_s / elapsed if elapsed > 0 else 0.0
        bar = f"{progress.chunks_done}/{progress.chunks_total} chunks" if progress.chunks_total \
            else ""
        print(f"\r[{progress.stage}] {bar} {speed:.1f}x realtime", end="", file=sys.stderr)

    async with sessions.open(source=str(media)) as session:
        transcript = await pipeline.transcribe(media, session, request, show)
    print(file=sys.stderr)
    return transcript


def _require_ray() -> None:
    try:
        import ray  # noqa: F401
    except ImportError:
        raise SystemExit(INSTALL_HINT) from None


def serve_command(args: argparse.Namespace) -> int:
    import uvicorn

    from whisper_api.api.app import create_app

    settings = load_settings()
    if settings.executor == "ray":
        _require_ray()  # before the server starts, not as a startup traceback
    host, port = args.host or settings.host, args.port or settings.port
    # Our middleware logs one structured line per request; uvicorn's own would repeat it.
    uvicorn.run(create_app(settings), host=host, port=port, log_config=None, access_log=False)
    return 0


from whisper_api.transcript import Transcript  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
