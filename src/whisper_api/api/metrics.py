"""GET /metrics and the middleware that counts and logs every HTTP request."""

import logging
import time

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from whisper_api.api.auth import AuthDep
from whisper_api.metrics import Metrics

log = logging.getLogger("whisper_api.access")
UNMATCHED = "unmatched"

metrics_router = APIRouter(dependencies=[AuthDep])


@metrics_router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    registry = request.app.state.metrics.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


class RequestMetricsMiddleware:
    """Pure ASGI: labels by the matched route's template (`/api/v1/jobs/{id}`), never the raw
    path, so label cardinality stays bounded; unknown paths count as 'unmatched'."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client gets if the app raises before answering

        async def send_and_watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_and_watch)
        finally:
            self._record(scope, status, time.perf_counter() - started)

    def _record(self, scope: Scope, status: int, seconds: float) -> None:
        route = route_template(scope)
        method = str(scope.get("method", ""))
        self.metrics.request_done(route, method, status, seconds)
        client = scope.get("client")
        log.info("request method=%s route=%s status=%d duration_ms=%.1f client=%s", method,
                 route, status, seconds * 1000, client[0] if client else "unknown")


def route_template(scope: Scope) -> str:
    """The router stores the matched route in the scope it was handed (ours, shared).

    A mount (static files, the docs' assets) sets no route: its prefix, grown onto root_path
    by the router, labels every file under it as one route (`/static/{path}`).
    """
    path = getattr(scope.get("route"), "path", None)
    if isinstance(path, str):
        return path
    mount = _mount_prefix(scope)
    return f"{mount}/{{path}}" if mount else UNMATCHED


def _mount_prefix(scope: Scope) -> str | None:
    root, app_root = str(scope.get("root_path", "")), str(scope.get("app_root_path", ""))
    if "endpoint" not in scope or not root.startswith(app_root):
        return None
    return root[len(app_root):] or None
