"""The one place where exceptions become HTTP responses: {"error": {"code", "message"}}."""

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from whisper_api.errors import InsufficientStorageError, WhisperApiError, disk_full

log = logging.getLogger("whisper_api.api")
MAX_MESSAGE_CHARS = 300  # messages quote the caller's input; a 1 MB input is not echoed back


def error_body(status: int, code: str, message: str, **headers: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": truncate(message)}}, status,
                        headers or None)


def truncate(message: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    if len(message) <= limit:
        return message
    return f"{message[:limit]}… ({len(message) - limit} more characters)"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(WhisperApiError)
    async def domain_error(_: Request, exc: WhisperApiError) -> JSONResponse:
        return error_body(exc.status_code, exc.code, str(exc), **exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return error_body(422, "validation_error", f"{where}: {first.get('msg')}".strip(": "))

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        headers = dict(exc.headers or {})
        return error_body(exc.status_code, _code(exc.status_code), str(exc.detail), **headers)

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        if disk_full(exc):  # e.g. while the multipart parser spools an upload
            log.error("disk full: %s", exc)
            return error_body(507, InsufficientStorageError.code,
                              "no space left on the server's disk; try again later")
        log.exception("unexpected error")
        return error_body(500, "internal_error", "internal error; see the server log")


def _code(status: int) -> str:
    return {401: "unauthorized", 404: "not_found", 405: "method_not_allowed", 409: "conflict",
            413: "media_too_large", 415: "unsupported_media", 429: "too_many_requests",
            503: "not_ready"}.get(status, "http_error")
