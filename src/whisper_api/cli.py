"""Command line: `whisper-api transcribe FILE`, `whisper-api serve`."""

import argparse
import asyncio
import json
import logging
import sys
import time
from pathlib import Path

from whisper_api.config import load_settings
from whisper_api.errors import ConfigError, WhisperApiError
from whisper_api.executors.ray_actors import INSTALL_HINT
from whisper_api.formats import FORMATS, render
from whisper_api.pipeline import Progress, TranscribeRequest
from whisper_api.service import FileSource, Service, start_service
from whisper_api.transcript import Transcript


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="whisper-api", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    tr = commands.add_parser("transcribe", help="transcribe a local media file")
    tr.add_argument("input", type=Path)
    tr.add_argument("--format", default="text", choices=FORMATS)
    tr.add_argument("--output", type=Path)
    tr.add_argument("--language")
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


def transcribe_command(args: argparse.Namespace) -> int:
    settings = load_settings()
    if not args.input.is_file():
        print(f"error: no such file: {args.input}", file=sys.stderr)
        return 2
    language = None if args.language in (None, "auto") else args.language
    request = TranscribeRequest(language=language, word_timestamps=args.word_timestamps,
                                preset=args.preset)
    service = start_service(settings, workers=args.workers)
    try:
        service.executor.wait_ready()
        transcript = asyncio.run(_transcribe(service, args.input, request))
    finally:
        service.executor.stop()
    body = render(transcript, args.format)
    text = json.dumps(body, indent=2, ensure_ascii=False) if isinstance(body, dict) else body
    if args.output:
        args.output.write_text(text)
    else:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    return 0


async def _transcribe(service: Service, media: Path, request: TranscribeRequest) -> Transcript:
    started = time.perf_counter()

    def show(progress: Progress) -> None:
        elapsed = time.perf_counter() - started
        speed = progress.audio_done_s / elapsed if elapsed > 0 else 0.0
        bar = f"{progress.chunks_done}/{progress.chunks_total} chunks" if progress.chunks_total \
            else ""
        print(f"\r[{progress.stage}] {bar} {speed:.1f}x realtime", end="", file=sys.stderr)

    transcript = await service.transcribe(FileSource(media), request, on_progress=show)
    print(file=sys.stderr)
    return transcript


def _require_ray() -> None:
    try:
        import ray  # noqa: F401
    except ImportError:
        raise ConfigError(INSTALL_HINT) from None


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


if __name__ == "__main__":
    raise SystemExit(main())
