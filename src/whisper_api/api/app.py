"""App factory and lifespan: sweep, start the pool, serve, then drain and stop."""

import asyncio
import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline

from whisper_api import __version__
from whisper_api.api.admission import AdmissionMiddleware
from whisper_api.api.body_limit import BodyLimitMiddleware
from whisper_api.api.errors import install_error_handlers
from whisper_api.api.jobs_routes import jobs_router, start_runner
from whisper_api.api.metrics import RequestMetricsMiddleware, metrics_router
from whisper_api.api.page import STATIC_DIR, page_router
from whisper_api.api.routes import health_router, openai_router, seed_router
from whisper_api.config import Settings
from whisper_api.errors import WhisperApiError
from whisper_api.executors import ChunkExecutor
from whisper_api.metrics import Metrics
from whisper_api.service import start_service

log = logging.getLogger("whisper_api")


def create_app(settings: Settings, executor: ChunkExecutor | None = None) -> FastAPI:
    """`executor` is injectable for tests; by default the local worker pool is built here."""
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        log.info("Starting Whisper Transcription API v%s", __version__)
        try:
            service = await asyncio.to_thread(start_service, settings, executor, metrics)
        except WhisperApiError as exc:  # `serve` says it in one line (see StoppingServer)
            app.state.startup_error = exc
            raise
        log.info("Worker pool started successfully (models load in the background)")
        metrics.watch(service.executor)
        app.state.service = service
        app.state.jobs = runner = await start_runner(service)
        try:
            yield
        finally:
            await runner.stop()
            service.close()
            await asyncio.to_thread(service.executor.stop)

    # /docs and /redoc load Swagger UI and ReDoc from fastapi-offline's package files, not a
    # CDN: a self-hosted service is often run where the internet is not.
    app = FastAPIOffline(title="whisper-api", version=__version__, lifespan=lifespan,
                         favicon_url="/favicon.ico", static_url="/static/docs")
    app.state.metrics = metrics
    app.state.startup_error = None
    # Set by `serve` when a stop signal arrives, before uvicorn waits for open requests: long
    # requests and event streams watch it and end themselves (see GRACEFUL_STOP_S in cli.py).
    app.state.stopping = threading.Event()
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_upload_bytes)
    app.add_middleware(AdmissionMiddleware, settings=settings)  # before any body is read
    app.add_middleware(RequestMetricsMiddleware, metrics=metrics)  # outermost: counts the 413s
    install_error_handlers(app)
    app.include_router(health_router)
    app.include_router(seed_router)
    app.include_router(openai_router)
    app.include_router(jobs_router)
    app.include_router(metrics_router)
    app.include_router(page_router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app
