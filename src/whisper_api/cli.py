"""Command line: `whisper-api transcribe FILE|URL`, `whisper-api serve`."""

import argparse
import asyncio
import contextlib
import gc
import importlib.util
import json
import logging
import math
import os
import socket
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, NoReturn

import uvicorn

from whisper_api import __version__
from whisper_api.audio import probe_duration_s
from whisper_api.config import PRESET_NAMES, Settings, load_settings
from whisper_api.errors import ConfigError, InvalidRequestError, WhisperApiError
from whisper_api.executors.ray_actors import INSTALL_HINT
from whisper_api.formats import FORMATS, needs_words, render
from whisper_api.models import ModelCatalog, parse_language
from whisper_api.pipeline import Progress, TranscribeRequest
from whisper_api.service import (
    FileSource,
    UrlSource,
    check_request,
    download_media,
    start_service,
)
from whisper_api.sessions import SessionManager, write_text_atomically
from whisper_api.subtitles import SubtitleOptions
from whisper_api.terminal import BarLogHandler, ProgressBar
from whisper_api.transcript import Transcript

if TYPE_CHECKING:
    from fastapi import FastAPI

GRACEFUL_STOP_S = 2


class _Parser(argparse.ArgumentParser):
    """Usage errors are one line on stderr and exit 2, like every other CLI error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="whisper-api", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    tr = commands.add_parser(
        "transcribe", help="transcribe a media file or URL",
        description="Transcribe a local media file, or an http(s) URL (downloaded with the "
                    "server's code and limits), and print the transcript.")
    tr.add_argument("input", help="a media file path, or an http(s):// URL")
    tr.add_argument("--format", default="text", choices=FORMATS,
                    help="output format (default: text)")
    tr.add_argument("--output", type=Path, metavar="FILE",
                    help="write the transcript to FILE instead of stdout")
    tr.add_argument("--language", metavar="CODE",
                    help="ISO 639-1 code such as pt, or auto (default: auto-detect)")
    tr.add_argument("--model", metavar="NAME",
                    help="one of WHISPER_MODEL / WHISPER_MODELS (default: WHISPER_MODEL)")
    tr.add_argument("--task", default="transcribe", choices=("transcribe", "translate"),
                    help="translate: English text from any language the model knows")
    tr.add_argument("--workers", type=int, metavar="N",
                    help="worker processes (default: PARALLEL_WORKERS; a file that is one "
                         "chunk uses one)")
    tr.add_argument("--word-timestamps", action="store_true",
                    help="include word timings (verbose_json)")
    tr.add_argument("--prompt", metavar="TEXT",
                    help="text the speech is likely to contain (names, terms, spelling)")
    tr.add_argument("--preset", choices=PRESET_NAMES,
                    help="decoding preset (default: TRANSCRIBE_PRESET)")
    tr.add_argument("--max-line-width", "--max_line_width", type=int, default=42, metavar="N",
                    help="srt/vtt: at most N characters per line (default: 42)")
    tr.add_argument("--max-line-count", "--max_line_count", type=int, default=2, metavar="N",
                    help="srt/vtt: at most N lines per cue (default: 2)")
    tr.add_argument("--verbose", action="store_true",
                    help="log workers and chunks (above the progress bar)")
    serve = commands.add_parser("serve", help="run the HTTP service",
                                description="Run the HTTP service (settings: see README).")
    serve.add_argument("--host", default=None, help="listen address (default: HOST)")
    serve.add_argument("--port", type=int, default=None, help="listen port (default: PORT)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    bar = ProgressBar.for_stream(sys.stderr)
    verbose = args.command == "serve" or args.verbose
    handler = BarLogHandler(bar, sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, handlers=[handler])
    try:
        if args.command == "transcribe":
            return transcribe_command(args, bar)
        return serve_command(args)
    except WhisperApiError as exc:
        bar.close()
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        bar.close()
        # The cancelled task's traceback holds the pool in a reference cycle; collect it now so
        # its queues release their semaphores before exit (else multiprocessing's resource
        # tracker prints a "leaked semaphore" warning).
        gc.collect()
        print("interrupted", file=sys.stderr)
        return 130


def transcribe_command(args: argparse.Namespace, bar: ProgressBar) -> int:
    settings = load_settings()
    source = _source(args.input)
    request = checked_request(settings, args)  # refused (exit 2) before any model loads
    subtitles = SubtitleOptions(args.max_line_width, args.max_line_count)
    if args.output:
        check_writable(args.output)  # before the work, not after it: a finished run was lost
    try:
        transcript = asyncio.run(_transcribe(settings, source, request, args.workers, bar))
    finally:
        bar.close()
    body = render(transcript, args.format, subtitles)
    text = json.dumps(body, indent=2, ensure_ascii=False) if isinstance(body, dict) else body
    if args.output:
        write_atomically(args.output, text)
    else:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    return 0


def _source(given: str) -> Path | UrlSource:
    """A URL stays a string (a Path would fold its `//`); anything else must be a file."""
    if "://" in given:
        return UrlSource(given)
    path = Path(given)
    if not path.is_file():
        raise InvalidRequestError(f"no such file: {given}")
    if not os.access(path, os.R_OK):
        raise InvalidRequestError(f"cannot read {given}: permission denied")
    return path


def check_writable(output: Path) -> None:
    folder = output.parent
    if output.is_dir():
        raise InvalidRequestError(f"--output {output} is a folder; name a file")
    if not folder.is_dir():
        raise InvalidRequestError(f"--output folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise InvalidRequestError(f"--output folder {folder} is not writable")


def write_atomically(output: Path, text: str) -> None:
    """Whole or not at all: a full disk or Ctrl-C while writing leaves the file as it was,
    not a truncated transcript."""
    try:
        write_text_atomically(output, text)
    except OSError as exc:
        raise InvalidRequestError(f"cannot write {output}: {exc.strerror or exc}") from exc


def checked_request(settings: Settings, args: argparse.Namespace) -> TranscribeRequest:
    """The request the API would accept for these arguments, or InvalidRequestError."""
    request = TranscribeRequest(
        language=parse_language(args.language), model=args.model, task=args.task,
        word_timestamps=args.word_timestamps or needs_words(args.format), preset=args.preset,
        initial_prompt=(args.prompt or "").strip() or None,
    )
    return check_request(ModelCatalog(settings.model_names, settings.whisper_model), request)


async def _transcribe(
    settings: Settings, source: Path | UrlSource, request: TranscribeRequest,
    workers: int | None, bar: ProgressBar,
) -> Transcript:
    """Download first (a URL), so that a file that is one chunk starts one worker, not all."""
    sessions = SessionManager(settings.temp_dir, settings.max_temp_age_hours)
    ticker = asyncio.create_task(_redraw(bar))
    try:
        async with sessions.open(source=str(getattr(source, "url", source))) as session:
            media = source if isinstance(source, Path) else await _download(settings, source,
                                                                             session.download, bar)
            seconds = await asyncio.to_thread(probe_duration_s, media)
            count = workers or workers_for(settings, seconds)
            bar.update(Progress("loading model"))
            service = await asyncio.to_thread(start_service, settings, None, None, count)
            try:
                # Ctrl-C cancels this await; stop() below then ends the wait in its thread too.
                await asyncio.to_thread(service.executor.wait_ready)
                return await service.transcribe(FileSource(media), request,
                                                on_progress=bar.update)
            finally:
                service.close()
                service.executor.stop(drain_timeout_s=5.0)
    finally:
        ticker.cancel()


async def _download(settings: Settings, source: UrlSource, folder: Path, bar: ProgressBar) -> Path:
    bar.update(Progress("downloading"))
    with ThreadPoolExecutor(1, thread_name_prefix="download") as pool:
        return await download_media(settings, source.url, folder, pool)


async def _redraw(bar: ProgressBar) -> None:
    """The clocks on the bar move while a chunk runs."""
    while True:
        await asyncio.sleep(0.25)
        bar.draw()


def workers_for(settings: Settings, seconds: float | None) -> int:
    """No more workers than chunks: a file that is one chunk loads one model, not all."""
    count, _ = settings.worker_count()
    if seconds is None:
        return count
    if not settings.enable_parallel_transcription or seconds <= settings.audio_limit_single_core:
        return 1
    return max(1, min(count, math.ceil(seconds / settings.parallel_chunk_duration)))


def _require_ray() -> None:
    # Found, not imported: Ray reads some settings when imported, which the executor sets first.
    if importlib.util.find_spec("ray") is None:
        raise ConfigError(INSTALL_HINT)


def serve_command(args: argparse.Namespace) -> int:
    from whisper_api.api.app import create_app

    settings = load_settings()
    if settings.executor == "ray":
        _require_ray()  # before the server starts, not as a startup traceback
    host, port = args.host or settings.host, args.port or settings.port
    app = create_app(settings)
    # Our middleware logs one structured line per request; uvicorn's own would repeat it.
    # Ctrl-C or SIGTERM: open requests see app.state.stopping and answer 503 (their chunks are
    # cancelled), so a long synchronous transcription cannot hold the stop for minutes; jobs are
    # requeued and resume at the next start. GRACEFUL_STOP_S bounds whatever is left.
    config = uvicorn.Config(app, host=host, port=port, log_config=None, access_log=False,
                            timeout_graceful_shutdown=GRACEFUL_STOP_S)
    # uvicorn raises the stop signal again once it has stopped; for a server Ctrl-C is the
    # normal way out (exit 0, as `uvicorn.run` does), not an interruption.
    with contextlib.suppress(KeyboardInterrupt):
        StoppingServer(config, app).run()
    return 0


class StoppingServer(uvicorn.Server):
    """uvicorn's server, telling the app first when a stop signal arrives. A startup that fails
    with our own error (Ray unreachable) ends as every CLI error does, one line and exit 2, not
    as uvicorn's traceback of the lifespan and exit 3."""

    def __init__(self, config: uvicorn.Config, app: "FastAPI") -> None:
        super().__init__(config)
        self._app = app

    def run(self, sockets: list[socket.socket] | None = None) -> None:
        # uvicorn logs the lifespan's traceback on "uvicorn.error"; ours is said in one line.
        quiet = logging.getLogger("uvicorn.error")

        def unless_failed(_: logging.LogRecord) -> bool:
            return self._app.state.startup_error is None

        quiet.addFilter(unless_failed)
        try:
            super().run(sockets)
        except SystemExit:
            if self._app.state.startup_error is not None:
                raise self._app.state.startup_error from None
            raise
        finally:
            quiet.removeFilter(unless_failed)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._app.state.stopping.set()
        super().handle_exit(sig, frame)


if __name__ == "__main__":
    raise SystemExit(main())
