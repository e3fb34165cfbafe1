"""HTTP surfaces: health, the seed's /api/v1/transcribe, and OpenAI's /v1/audio/*."""

import asyncio
import json
import secrets
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, File, Form, HTTPException, Request, UploadFile
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, ValidationError, model_validator
from starlette.datastructures import UploadFile as StarletteUpload

from whisper_api.errors import InvalidRequestError, QueueFullError, SyncTimeoutError
from whisper_api.formats import FORMATS, content_type, render
from whisper_api.models import OPENAI_ALIAS, ModelInfo, parse_language
from whisper_api.pipeline import TranscribeRequest
from whisper_api.service import MediaSource, Service, UploadSource, UrlSource
from whisper_api.transcript import Transcript


def get_service(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


ServiceDep = Annotated[Service, Depends(get_service)]


def require_key(request: Request, service: ServiceDep) -> None:
    """API_KEYS set: every route but /health and the page needs `Authorization: Bearer <key>`."""
    keys = service.settings.api_key_set
    if not keys:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not any(secrets.compare_digest(token, k) for k in keys):
        raise HTTPException(401, "missing or invalid API key", {"WWW-Authenticate": "Bearer"})


AuthDep = Depends(require_key)
health_router = APIRouter()
seed_router = APIRouter(dependencies=[AuthDep])
openai_router = APIRouter(dependencies=[AuthDep])


@health_router.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@health_router.get("/ready")
async def ready(service: ServiceDep) -> JSONResponse:
    stats = service.executor.stats()
    body = {"ready": service.executor.ready, "workers": stats.workers,
            "ready_workers": stats.ready_workers}
    return JSONResponse(body, 200 if service.executor.ready else 503)


# --- the seed's endpoint --------------------------------------------------------------------
Format = Literal["json", "verbose_json", "text", "srt", "vtt", "tsv"]
Task = Literal["transcribe", "translate"]
TASKS = ("transcribe", "translate")


class TranscribeBody(BaseModel):
    youtube_url: str | None = None
    url: str | None = None
    language: str = "auto"
    model: str | None = None
    task: Task = "transcribe"
    format: Format = "json"
    word_timestamps: bool = False

    @model_validator(mode="after")
    def _one_url(self) -> "TranscribeBody":
        if not (self.youtube_url or self.url):
            raise ValueError("give youtube_url (or url), or upload a file as multipart 'file'")
        return self


class JobBody(TranscribeBody):
    callback_url: str | None = None


@dataclass(frozen=True)
class MediaForm:
    """What /api/v1/transcribe and /api/v1/jobs read from a request, already checked."""

    source: MediaSource
    language: str | None
    format: str
    word_timestamps: bool
    callback_url: str | None = None
    model: str | None = None
    task: str = "transcribe"

    @property
    def request(self) -> TranscribeRequest:
        return TranscribeRequest(language=self.language, model=self.model, task=self.task,
                                 word_timestamps=self.word_timestamps)


@seed_router.post("/api/v1/transcribe", openapi_extra={"requestBody": {"content": {
    "application/json": {"schema": TranscribeBody.model_json_schema()},
    "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
        "file": {"type": "string", "format": "binary"}, "language": {"type": "string"},
        "model": {"type": "string"}, "task": {"type": "string", "enum": list(TASKS)},
        "format": {"type": "string", "enum": list(FORMATS)}}}}}}})
async def transcribe(request: Request, service: ServiceDep) -> Response:
    form = await read_media_form(request)
    started = time.perf_counter()
    job = service.check(form.request)
    transcript = await run_sync(request, service, service.transcribe(
        form.source, job, _client_ip(request)))
    extra = {"processing_time": round(time.perf_counter() - started, 3), "model": job.model}
    return respond(transcript, form.format, extra)


async def read_media_form(
    request: Request, model: type[TranscribeBody] = TranscribeBody
) -> MediaForm:
    """A multipart upload, or a JSON body naming a URL (validated with `model`)."""
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        form = await request.form()
        upload = form.get("file")
        if not isinstance(upload, StarletteUpload):
            raise InvalidRequestError("multipart requests need a 'file' field")
        fmt = check_format(str(form.get("format") or "json"))
        return MediaForm(
            UploadSource(upload.file, upload.filename or ""),
            check_language(str(form.get("language") or "auto")), fmt,
            str(form.get("word_timestamps", "false")).lower() == "true",
            str(form.get("callback_url") or "") or None,
            str(form.get("model") or "") or None, check_task(str(form.get("task") or "")),
        )
    try:
        body = model.model_validate(json.loads(await request.body() or b"null"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidRequestError(f"the body is not valid JSON: {exc}") from exc
    except ValidationError as exc:
        raise InvalidRequestError(_first_error(exc)) from exc
    return MediaForm(
        UrlSource(body.youtube_url or body.url or ""), check_language(body.language),
        body.format, body.word_timestamps,
        body.callback_url if isinstance(body, JobBody) else None, body.model, body.task,
    )


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(p) for p in error["loc"])
    return f"{where}: {error['msg']}" if where else str(error["msg"])


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise InvalidRequestError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    return fmt


def check_language(language: str | None) -> str | None:
    return parse_language(language)


def check_task(task: str) -> str:
    if task in ("", "transcribe"):
        return "transcribe"
    if task not in TASKS:
        raise InvalidRequestError(f"unknown task {task!r}; use one of {', '.join(TASKS)}")
    return task


def respond(transcript: Transcript, fmt: str, extra: dict[str, Any]) -> Response:
    body = render(transcript, fmt)
    if isinstance(body, dict):
        return JSONResponse({**body, **extra} if fmt == "json" else body)
    return PlainTextResponse(body, media_type=content_type(fmt))


async def run_sync(
    request: Request, service: Service, work: Coroutine[Any, Any, Transcript]
) -> Transcript:
    """Await work, but give up on a client that left and on SYNC_TIMEOUT_S (cancelling chunks).

    At most MAX_SYNC_REQUESTS run at once (429 beyond): each holds a connection and a spooled
    upload, and the jobs API is the place for a backlog.
    """
    limit = service.settings.max_sync_requests
    if service.sync_requests >= limit:
        work.close()
        raise QueueFullError(f"{limit} synchronous requests are already running "
                             "(MAX_SYNC_REQUESTS); retry later or use POST /api/v1/jobs",
                             retry_after_s=10)
    service.sync_requests += 1
    task = asyncio.create_task(work)
    deadline = time.monotonic() + service.settings.sync_timeout_s
    try:
        while not task.done():
            await asyncio.wait({task}, timeout=0.5)
            if task.done():
                break
            if await request.is_disconnected():
                raise HTTPException(499, "client disconnected")
            if time.monotonic() > deadline:
                raise SyncTimeoutError(service.settings.sync_timeout_s)
        return task.result()
    finally:
        service.sync_requests -= 1
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def _client_ip(request: Request) -> str:
    return request.client.host if request.client else "unknown"


# --- OpenAI-compatible ----------------------------------------------------------------------
OpenAIFormat = Literal["json", "text", "srt", "verbose_json", "vtt"]


@openai_router.post("/v1/audio/transcriptions")
async def openai_transcriptions(
    request: Request,
    service: ServiceDep,
    file: Annotated[UploadFile, File()],
    model: Annotated[str, Form()] = "whisper-1",
    language: Annotated[str | None, Form()] = None,
    prompt: Annotated[str | None, Form()] = None,
    response_format: Annotated[OpenAIFormat, Form()] = "json",
    temperature: Annotated[float, Form(ge=0.0, le=1.0)] = 0.0,
    granularities: Annotated[list[str] | None, Form(alias="timestamp_granularities[]")] = None,
) -> Response:
    job = TranscribeRequest(
        language=check_language(language), model=model, initial_prompt=prompt or None,
        temperature=temperature, word_timestamps="word" in (granularities or []),
    )
    return await _openai(request, service, file, job, response_format)


@openai_router.post("/v1/audio/translations")
async def openai_translations(
    request: Request,
    service: ServiceDep,
    file: Annotated[UploadFile, File()],
    model: Annotated[str, Form()] = "whisper-1",
    prompt: Annotated[str | None, Form()] = None,
    response_format: Annotated[OpenAIFormat, Form()] = "json",
    temperature: Annotated[float, Form(ge=0.0, le=1.0)] = 0.0,
) -> Response:
    job = TranscribeRequest(task="translate", model=model, initial_prompt=prompt or None,
                            temperature=temperature)
    return await _openai(request, service, file, job, response_format)


async def _openai(
    request: Request, service: ServiceDep, file: UploadFile, job: TranscribeRequest, fmt: str
) -> Response:
    job = service.check(job)
    source = UploadSource(file.file, file.filename or "")
    transcript = await run_sync(request, service, service.transcribe(
        source, job, _client_ip(request)))
    if fmt == "json":
        return JSONResponse({"text": transcript.text})
    if fmt == "verbose_json":
        body = render(transcript, "verbose_json")
        assert isinstance(body, dict)
        body["task"] = job.task
        return JSONResponse(body)
    return respond(transcript, fmt, {})


@openai_router.get("/v1/models")
async def list_models(service: ServiceDep) -> dict[str, Any]:
    """The loaded models (OpenAI's list shape), `whisper-1` first as the default's alias;
    `languages` and `translation` tell a client (the web page) what each can do."""
    default = service.models.get(None)
    entries = [_model_entry(OPENAI_ALIAS, default)]
    entries += [_model_entry(name, info) for name, info in service.models.models.items()]
    return {"object": "list", "data": entries}


@openai_router.get("/v1/models/{model_id:path}")
async def retrieve_model(model_id: str, service: ServiceDep) -> dict[str, Any]:
    try:
        info = service.models.get(model_id)
    except InvalidRequestError as exc:
        raise HTTPException(404, str(exc)) from exc
    return _model_entry(model_id, info)


def _model_entry(model_id: str, info: ModelInfo) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": 0, "owned_by": "whisper-api",
            "root": info.name, "languages": list(info.languages),
            "translation": info.can_translate}
