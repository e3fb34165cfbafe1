"""HTTP surfaces: health, the seed's /api/v1/transcribe, and OpenAI's /v1/audio/*."""

import asyncio
import json
import time
from collections import Counter
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, Field, ValidationError, model_validator
from starlette.datastructures import UploadFile as StarletteUpload

from whisper_api.api.auth import AuthDep, ServiceDep
from whisper_api.config import PRESET_NAMES, Preset
from whisper_api.errors import (
    ClientDisconnectedError,
    InvalidRequestError,
    MediaTooLargeError,
    NotFoundError,
    ShuttingDownError,
    SyncTimeoutError,
)
from whisper_api.formats import FORMATS, content_type, needs_words, render
from whisper_api.models import OPENAI_ALIAS, ModelInfo, parse_language
from whisper_api.pipeline import TranscribeRequest
from whisper_api.service import MediaSource, Service, UploadSource, UrlSource
from whisper_api.subtitles import SubtitleOptions
from whisper_api.transcript import Transcript

MAX_JSON_BYTES = 64 * 1024  # a URL and a few options; anything bigger is not a real request
MAX_JSON_DEPTH = 16
MAX_PROMPT_CHARS = 2000
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
# Fields other APIs name differently: a caller who sends one learns this endpoint's name.
OTHER_NAMES = {"response_format": "format", "audio_url": "url"}


class TranscribeBody(BaseModel):
    youtube_url: str | None = None
    url: str | None = None
    language: str = "auto"
    model: str | None = None
    task: Task = "transcribe"
    format: Format = "json"
    word_timestamps: bool = False
    max_line_width: int = 42  # srt/vtt: characters per line (openai-whisper's name)
    max_line_count: int = 2  # srt/vtt: lines per cue
    preset: Preset | None = None  # None: the server's TRANSCRIBE_PRESET
    # Names, terms, spelling (Whisper's initial prompt); its length is checked once stripped.
    prompt: str | None = Field(None, json_schema_extra={"maxLength": MAX_PROMPT_CHARS})

    @model_validator(mode="after")
    def _one_url(self) -> "TranscribeBody":
        if not (self.youtube_url or self.url):
            raise ValueError("give youtube_url (or url), or upload a file as multipart 'file'")
        return self


class JobBody(TranscribeBody):
    callback_url: str | None = None


@dataclass(frozen=True)
class MediaForm:
    """What /api/v1/transcribe and /api/v1/jobs read from a request, already checked: the media,
    the one TranscribeRequest passed on whole, and how the result is rendered."""

    source: MediaSource
    request: TranscribeRequest
    format: str
    subtitles: SubtitleOptions
    callback_url: str | None = None


SUBTITLE_FIELDS = {
    "max_line_width": {"type": "integer", "default": 42, "minimum": 10, "maximum": 1000,
                       "description": "srt/vtt: at most this many characters per line"},
    "max_line_count": {"type": "integer", "default": 2, "minimum": 1, "maximum": 10,
                       "description": "srt/vtt: at most this many lines per cue"},
}


MULTIPART_OPTIONS = {
    "word_timestamps": {"type": "boolean"},
    "preset": {"type": "string", "enum": list(PRESET_NAMES),
               "description": "decoding preset (default: the server's TRANSCRIBE_PRESET)"},
    "prompt": {"type": "string", "maxLength": MAX_PROMPT_CHARS,
               "description": "names, terms, spelling the speech may hold"},
}


@seed_router.post("/api/v1/transcribe", openapi_extra={"requestBody": {"content": {
    "application/json": {"schema": TranscribeBody.model_json_schema()},
    "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
        "file": {"type": "string", "format": "binary"}, "language": {"type": "string"},
        "model": {"type": "string"}, "task": {"type": "string", "enum": list(TASKS)},
        "format": {"type": "string", "enum": list(FORMATS)}, **MULTIPART_OPTIONS,
        **SUBTITLE_FIELDS}}}}}})
async def transcribe(request: Request, service: ServiceDep) -> Response:
    form = await read_media_form(request)
    started = time.perf_counter()
    job = service.check(form.request)
    transcript = await run_sync(request, service, service.transcribe(
        form.source, job, _client_ip(request)))
    extra = {"processing_time": round(time.perf_counter() - started, 3), "model": job.model}
    return await respond(transcript, form.format, extra, form.subtitles)


async def read_media_form(
    request: Request, model: type[TranscribeBody] = TranscribeBody
) -> MediaForm:
    """A multipart upload, or a JSON body naming a URL (validated with `model`)."""
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        form = await request.form()
        check_fields(form.keys(), {"file", *model.model_fields} - {"youtube_url", "url"})
        check_text_fields(form.multi_items())
        upload = single_file(form.getlist("file"))
        fmt = check_format(str(form.get("format") or "json"))
        return MediaForm(
            UploadSource(upload.file, upload.filename or ""),
            form_request(fmt, str(form.get("language") or "auto"), str(form.get("model") or ""),
                         str(form.get("task") or ""),
                         form_bool("word_timestamps", form.get("word_timestamps")),
                         check_preset(str(form.get("preset") or "")),
                         str(form.get("prompt") or "")),
            fmt, subtitle_options(form.get("max_line_width"), form.get("max_line_count")),
            str(form.get("callback_url") or "") or None,
        )
    parsed = parse_json(await read_small_body(request))
    if isinstance(parsed, dict):
        check_fields(parsed, model.model_fields)
    try:
        body = model.model_validate(parsed)
    except ValidationError as exc:
        raise InvalidRequestError(_first_error(exc)) from exc
    return MediaForm(
        UrlSource(body.youtube_url or body.url or ""),
        form_request(body.format, body.language, body.model or "", body.task,
                     body.word_timestamps, body.preset, body.prompt or ""),
        body.format, SubtitleOptions(body.max_line_width, body.max_line_count),
        body.callback_url if isinstance(body, JobBody) else None,
    )


def check_fields(given: Iterable[str], known: Iterable[str]) -> None:
    """A field this endpoint does not read is a 400: ignored, `response_format=srt` (the
    OpenAI route's name for `format`) answered json with a 200."""
    unknown = sorted(set(given) - set(known))
    if not unknown:
        return
    name = unknown[0]
    hint = f" (this endpoint calls it {OTHER_NAMES[name]!r})" if name in OTHER_NAMES else ""
    raise InvalidRequestError(f"unknown field {name[:64]!r}{hint}; this endpoint reads "
                              f"{', '.join(sorted(known))}")


def check_text_fields(items: list[tuple[str, Any]]) -> None:
    """Every field but 'file' once, as text: a second `preset` or a `prompt` sent as a file
    would otherwise be quietly dropped or read as the upload's description."""
    fields = [(name, value) for name, value in items if name != "file"]
    counts = Counter(name for name, _ in fields)
    for name, value in fields:
        if counts[name] > 1:
            raise InvalidRequestError(f"field {name!r} is given more than once")
        if not isinstance(value, str):
            raise InvalidRequestError(f"field {name!r} must be text, not a file")


TRUE_WORDS, FALSE_WORDS = {"true", "1", "yes", "on"}, {"false", "0", "no", "off", ""}


def form_bool(name: str, value: object) -> bool:
    """A form field read as JSON bodies read it (pydantic's words): "yes" was silently false."""
    word = str(value or "").strip().lower()
    if word not in TRUE_WORDS | FALSE_WORDS:
        raise InvalidRequestError(f"{name} must be true or false, got {str(value)[:40]!r}")
    return word in TRUE_WORDS


def form_request(fmt: str, language: str, model: str, task: str, word_timestamps: bool,
                 preset: Preset | None = None, prompt: str = "") -> TranscribeRequest:
    """Subtitle formats are shaped from word timestamps: asked for whether or not the caller
    did."""
    prompt = prompt.strip()
    if len(prompt) > MAX_PROMPT_CHARS:  # kept with a job and sent with each of its events
        raise InvalidRequestError(f"prompt may be at most {MAX_PROMPT_CHARS} characters; Whisper "
                                  "hears only its last 223 tokens (~150 words)")
    return TranscribeRequest(language=parse_language(language), model=model or None,
                             task=check_task(task),
                             word_timestamps=word_timestamps or needs_words(fmt), preset=preset,
                             initial_prompt=prompt or None)


def single_file(parts: list[Any]) -> StarletteUpload:
    """The one 'file' part; two are refused rather than silently keeping one of them."""
    uploads = [p for p in parts if isinstance(p, StarletteUpload)]
    if len(parts) > 1:
        raise InvalidRequestError("send one 'file' part per request; got several")
    if not uploads:
        raise InvalidRequestError("multipart requests need a 'file' field")
    return uploads[0]


async def read_small_body(request: Request, limit: int = MAX_JSON_BYTES) -> bytes:
    """The body, refused (413) as soon as it passes `limit`: JSON here is a URL and options."""
    too_large = MediaTooLargeError(f"a JSON body may be at most {limit // 1024} KB; upload "
                                   "media as multipart 'file'")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    body = bytearray()
    async for block in request.stream():
        body += block
        if len(body) > limit:
            raise too_large
    return bytes(body)


def parse_json(raw: bytes) -> Any:
    """json.loads with the nesting depth bounded first (deep nesting is a RecursionError)."""
    if json_depth(raw) > MAX_JSON_DEPTH:
        raise InvalidRequestError(f"the JSON body is nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        return json.loads(raw or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidRequestError(f"the body is not valid JSON: {exc}") from exc


def json_depth(raw: bytes) -> int:
    """The deepest [ / { nesting in raw JSON, brackets inside strings ignored."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in raw:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return deepest
def subtitle_options(width: object, count: object) -> SubtitleOptions:
    """Form or query values (strings, or absent) → checked options; a bad one is a 400."""
    defaults = SubtitleOptions()
    try:
        return SubtitleOptions(
            int(str(width)) if width not in (None, "") else defaults.max_line_width,
            int(str(count)) if count not in (None, "") else defaults.max_line_count,
        )
    except ValueError as exc:
        raise InvalidRequestError("max_line_width and max_line_count must be integers") from exc


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(p) for p in error["loc"])
    return f"{where}: {error['msg']}" if where else str(error["msg"])


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise InvalidRequestError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    return fmt


def check_preset(preset: str) -> Preset | None:
    if preset == "":
        return None
    for name in PRESET_NAMES:
        if preset == name:
            return name
    raise InvalidRequestError(
        f"unknown preset {preset[:64]!r}; use one of {', '.join(PRESET_NAMES)}")


def check_task(task: str) -> str:
    if task in ("", "transcribe"):
        return "transcribe"
    if task not in TASKS:
        raise InvalidRequestError(f"unknown task {task!r}; use one of {', '.join(TASKS)}")
    return task


async def respond(
    transcript: Transcript, fmt: str, extra: dict[str, Any],
    subtitles: SubtitleOptions | None = None, headers: dict[str, str] | None = None,
) -> Response:
    # In a thread: a 4-hour transcript (40 000 words) takes 0.7 s to shape into subtitles.
    body = await asyncio.to_thread(render, transcript, fmt, subtitles)
    if isinstance(body, dict):
        return JSONResponse({**body, **extra} if fmt == "json" else body, headers=headers)
    return PlainTextResponse(body, media_type=content_type(fmt), headers=headers)


async def run_sync(
    request: Request, service: Service, work: Coroutine[Any, Any, Transcript]
) -> Transcript:
    """Await work, but give up on a client that left and on SYNC_TIMEOUT_S (cancelling chunks).

    MAX_SYNC_REQUESTS is enforced before the body is read, by `AdmissionMiddleware`.
    """
    task = asyncio.create_task(work)
    deadline = time.monotonic() + service.settings.sync_timeout_s
    try:
        while not task.done():
            await asyncio.wait({task}, timeout=0.5)
            if task.done():
                break
            if await request.is_disconnected():
                raise ClientDisconnectedError("client disconnected")
            if request.app.state.stopping.is_set():  # answer now, not when uvicorn cancels us
                raise ShuttingDownError("the service is shutting down; retry in a moment")
            if time.monotonic() > deadline:
                raise SyncTimeoutError(service.settings.sync_timeout_s)
        return task.result()
    finally:
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
    max_line_width: Annotated[int, Form(ge=10, le=1000)] = 42,
    max_line_count: Annotated[int, Form(ge=1, le=10)] = 2,
) -> Response:
    job = TranscribeRequest(
        language=parse_language(language), model=model, initial_prompt=prompt or None,
        temperature=temperature,
        word_timestamps="word" in (granularities or []) or needs_words(response_format),
    )
    subtitles = SubtitleOptions(max_line_width, max_line_count)
    return await _openai(request, service, file, job, response_format, subtitles)


@openai_router.post("/v1/audio/translations")
async def openai_translations(
    request: Request,
    service: ServiceDep,
    file: Annotated[UploadFile, File()],
    model: Annotated[str, Form()] = "whisper-1",
    prompt: Annotated[str | None, Form()] = None,
    response_format: Annotated[OpenAIFormat, Form()] = "json",
    temperature: Annotated[float, Form(ge=0.0, le=1.0)] = 0.0,
    max_line_width: Annotated[int, Form(ge=10, le=1000)] = 42,
    max_line_count: Annotated[int, Form(ge=1, le=10)] = 2,
) -> Response:
    job = TranscribeRequest(task="translate", model=model, initial_prompt=prompt or None,
                            temperature=temperature, word_timestamps=needs_words(response_format))
    subtitles = SubtitleOptions(max_line_width, max_line_count)
    return await _openai(request, service, file, job, response_format, subtitles)


async def _openai(
    request: Request, service: ServiceDep, file: UploadFile, job: TranscribeRequest, fmt: str,
    subtitles: SubtitleOptions,
) -> Response:
    single_file((await request.form()).getlist("file"))  # parsed once already: cached
    job = service.check(job)
    source = UploadSource(file.file, file.filename or "")
    transcript = await run_sync(request, service, service.transcribe(
        source, job, _client_ip(request)))
    if fmt == "json":
        return JSONResponse({"text": transcript.text})
    if fmt == "verbose_json":
        body = await asyncio.to_thread(render, transcript, "verbose_json")
        assert isinstance(body, dict)
        body["task"] = job.task
        return JSONResponse(body)
    return await respond(transcript, fmt, {}, subtitles)


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
        raise NotFoundError(str(exc)) from exc
    return _model_entry(model_id, info)


def _model_entry(model_id: str, info: ModelInfo) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": 0, "owned_by": "whisper-api",
            "root": info.name, "languages": list(info.languages),
            "translation": info.can_translate}
