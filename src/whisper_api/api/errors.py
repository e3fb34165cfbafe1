"""The one place where exceptions become HTTP responses: {"error": {"code", "message"}}."""

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from whisper_api.errors import WhisperApiError

log = logging.getLogger("whisper_api.api")


def error_body(status: int, code: str, message: str, **headers: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status, headers or None)


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
        log.exception("unexpected error")
        return error_body(500, "internal_error", "internal error; see the server log")


def _code(status: int) -> str:
    return {401: "unauthorized", 404: "not_found", 405: "method_not_allowed", 409: "conflict",
            413: "media_too_large", 415: "unsupported_media", 429: "too_many_requests",
            503: "not_ready"}.get(status, "http_error")
