"""Say no before reading a byte of the body: the API key, then whether there is room.

FastAPI reads (and spools) a request's body before its dependencies run, so a key checked by a
dependency alone lets anyone without one make the server read a 500 MB upload first. This
middleware answers 401 and 429 from the headers. It also holds the MAX_SYNC_REQUESTS slot for a
synchronous transcription for the whole request (spooling included), taken and counted without
an await in between, so the cap is exact however many requests arrive at once.
"""

from collections.abc import Iterator
from typing import Any

from starlette.datastructures import Headers
from starlette.routing import Match
from starlette.types import ASGIApp, Receive, Scope, Send

from whisper_api.api.auth import authenticate
from whisper_api.api.errors import error_body
from whisper_api.config import Settings
from whisper_api.errors import QueueFullError, UnauthorizedError

PROTECTED_PREFIXES = ("/api/", "/v1/", "/metrics")
SYNC_PATHS = frozenset({"/api/v1/transcribe", "/v1/audio/transcriptions",
                        "/v1/audio/translations"})
JOBS_PATH = "/api/v1/jobs"


class AdmissionMiddleware:
    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app, self.settings = app, settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(PROTECTED_PREFIXES):
            await self.app(scope, receive, send)
            return
        refusal = self._refusal(scope)
        if refusal is not None:
            _label_route(scope)
            await refusal(scope, receive, send)
            return
        if scope["method"] == "POST" and scope["path"] in SYNC_PATHS:
            await self._sync_slot(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _refusal(self, scope: Scope) -> ASGIApp | None:
        try:
            caller = authenticate(self.settings, Headers(scope=scope).get("authorization", ""))
        except UnauthorizedError as exc:
            return error_body(exc.status_code, exc.code, str(exc), **exc.headers)
        runner = getattr(scope["app"].state, "jobs", None)
        if scope["method"] == "POST" and scope["path"] == JOBS_PATH and runner is not None:
            no_room = runner.no_room(caller.tenant, caller.capped)
            if no_room is not None:
                return _busy(no_room, 30)
        return None

    async def _sync_slot(self, scope: Scope, receive: Receive, send: Send) -> None:
        service = getattr(scope["app"].state, "service", None)
        if service is None:
            await self.app(scope, receive, send)
            return
        limit = self.settings.max_sync_requests
        if service.sync_requests >= limit:
            await _busy(f"{limit} synchronous requests are already running "
                        "(MAX_SYNC_REQUESTS); retry later or use POST /api/v1/jobs",
                        10)(scope, receive, send)
            return
        service.sync_requests += 1
        try:
            await self.app(scope, receive, send)
        finally:
            service.sync_requests -= 1


def _label_route(scope: Scope) -> None:
    """Name the route a refused request was for, as the router would: metrics count the 401s
    and 429s under their route, not as unmatched."""
    for route in _flat(scope["app"].router.routes):
        match, _ = route.matches(scope)
        if match != Match.NONE:
            scope["route"] = route
            return


def _flat(routes: list[Any]) -> Iterator[Any]:
    """Routes, with included routers (FastAPI wraps them since 0.1xx) opened up."""
    for route in routes:
        inner = getattr(route, "original_router", None)
        yield from _flat(inner.routes) if inner is not None else [route]


def _busy(message: str, retry_after_s: int) -> ASGIApp:
    error = QueueFullError(message, retry_after_s)
    return error_body(error.status_code, error.code, message, **error.headers)
