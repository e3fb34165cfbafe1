"""The jobs API: submit, poll, stream progress (SSE), fetch results, cancel, list."""

import asyncio
import json
import threading
from collections.abc import AsyncIterator
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse

from whisper_api.api.auth import AuthDep, Caller, CallerDep, get_service
from whisper_api.api.routes import (
    MULTIPART_OPTIONS,
    SUBTITLE_FIELDS,
    TASKS,
    JobBody,
    check_format,
    read_media_form,
    respond,
    subtitle_options,
)
from whisper_api.errors import JobNotFoundError, JobStateError
from whisper_api.formats import FORMATS, content_disposition, download_name
from whisper_api.jobs import Job, JobInput, JobRunner, JobStatus, JobStore, database_path
from whisper_api.service import Service


def get_runner(request: Request) -> JobRunner:
    runner: JobRunner = request.app.state.jobs
    return runner


JobsDep = Annotated[JobRunner, Depends(get_runner)]
POLL_S = 0.25
jobs_router = APIRouter(prefix="/api/v1/jobs", dependencies=[AuthDep], tags=["jobs"])


# OpenAPI links tell clients (and schemathesis' stateful phase) where a new job's id goes.
JOB_LINKS = {name: {"operationId": op, "parameters": {"job_id": "$response.body#/id"}}
             for name, op in (("status", "get_job"), ("result", "get_result"),
                              ("audio", "get_audio"), ("events", "job_events"),
                              ("cancel", "cancel_job"))}


@jobs_router.post("", status_code=202, responses={202: {"description": "Accepted",
                                                        "links": JOB_LINKS}},
                  openapi_extra={"requestBody": {"content": {
    "application/json": {"schema": JobBody.model_json_schema()},
    "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
        "file": {"type": "string", "format": "binary"}, "language": {"type": "string"},
        "format": {"type": "string", "enum": list(FORMATS)},
        "model": {"type": "string"}, "task": {"type": "string", "enum": list(TASKS)},
        "callback_url": {"type": "string"}, **MULTIPART_OPTIONS, **SUBTITLE_FIELDS}}}}}})
async def create_job(request: Request, runner: JobsDep, caller: CallerDep) -> JSONResponse:
    form = await read_media_form(request, JobBody)
    checked = get_service(request).check(form.request)  # a 400 now, not a failed job later
    job_input = JobInput(checked, form.format, form.subtitles, form.callback_url)
    job = await runner.submit(form.source, job_input, caller.tenant, caller.capped)
    return JSONResponse({"id": job.id, "status": str(job.status)}, 202,
                        {"Location": f"/api/v1/jobs/{job.id}"})


@jobs_router.get("")
async def list_jobs(runner: JobsDep, caller: CallerDep,
                    limit: Annotated[int, Query(ge=1, le=200)] = 20) -> dict[str, Any]:
    jobs = await runner.recent(limit, caller.tenant, caller.sees_all)
    return {"jobs": [job.to_dict() for job in jobs]}


async def _job(runner: JobRunner, job_id: str, caller: Caller) -> Job:
    """The job, if this caller may see it: another tenant's job is as absent as a missing one."""
    job = await runner.get(job_id)
    if job is None or not (caller.sees_all or job.tenant == caller.tenant):
        raise JobNotFoundError(f"no job {job_id[:64]!r}")
    return job


@jobs_router.get("/{job_id}", operation_id="get_job")
async def get_job(job_id: str, runner: JobsDep, caller: CallerDep) -> dict[str, Any]:
    return (await _job(runner, job_id, caller)).to_dict()


@jobs_router.get("/{job_id}/result", operation_id="get_result")
async def get_result(
    job_id: str, runner: JobsDep, caller: CallerDep, format: str | None = None,
    max_line_width: Annotated[int | None, Query(ge=10, le=1000)] = None,
    max_line_count: Annotated[int | None, Query(ge=1, le=10)] = None,
) -> Response:
    """The transcript in `format` (default: the job's), as a download named after the input."""
    job = await _job(runner, job_id, caller)
    if job.status != JobStatus.succeeded:
        raise JobStateError(f"job {job_id} is {job.status}; the result exists once it "
                                 "has succeeded")
    fmt = check_format(format or job.input.format)
    transcript = await runner.result(job_id)
    if transcript is None:
        raise JobNotFoundError(f"the result of job {job_id} has expired")
    subtitles = subtitle_options(max_line_width or job.input.subtitles.max_line_width,
                                 max_line_count or job.input.subtitles.max_line_count)
    name = download_name(job.input.filename or job.input.url, fmt)
    return await respond(transcript, fmt,
                         {"job_id": job.id, "processing_time": job.processing_time_s},
                         subtitles, {"Content-Disposition": content_disposition(name)})


@jobs_router.get("/{job_id}/audio", response_class=FileResponse, operation_id="get_audio")
async def get_audio(job_id: str, runner: JobsDep, caller: CallerDep) -> FileResponse:
    """The job's converted audio (16 kHz mono WAV) for the web page's player; supports Range."""
    job = await _job(runner, job_id, caller)
    path = runner.audio_path(job.id)
    if job.status != JobStatus.succeeded or not await asyncio.to_thread(path.is_file):
        raise JobNotFoundError(f"job {job_id} has no audio (it exists once the job succeeded)")
    return FileResponse(path, media_type="audio/wav", filename=f"{job.id}.wav",
                        content_disposition_type="inline")


@jobs_router.delete("/{job_id}", operation_id="cancel_job")
async def cancel_job(job_id: str, runner: JobsDep, caller: CallerDep) -> dict[str, Any]:
    job = await _job(runner, job_id, caller)
    if job.status in (JobStatus.succeeded, JobStatus.failed):
        raise JobStateError(f"job {job_id} has already {job.status}")
    cancelled = await runner.cancel(job_id)
    return (cancelled or job).to_dict()


@jobs_router.get("/{job_id}/events", operation_id="job_events")
async def job_events(job_id: str, runner: JobsDep, caller: CallerDep,
                     request: Request) -> StreamingResponse:
    await _job(runner, job_id, caller)
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(_sse(runner, job_id, request.app.state.stopping),
                             media_type="text/event-stream", headers=headers)


async def _sse(runner: JobRunner, job_id: str, stopping: threading.Event) -> AsyncIterator[str]:
    """`event: progress` on every change, then `event: done` with the final status.

    A stopping server ends the stream itself (EventSource reconnects to the next one) rather
    than hold the stop until uvicorn cancels it."""
    last: dict[str, Any] | None = None
    async for job in until_set(stopping, runner.watch(job_id)):
        if job is None:
            yield ": keep-alive\n\n"
            continue
        body = job.to_dict()
        if job.status.finished:
            yield f"event: done\ndata: {json.dumps(body)}\n\n"
            return
        if body != last:
            yield f"event: progress\ndata: {json.dumps(body)}\n\n"
            last = body


T = TypeVar("T")


async def until_set(flag: threading.Event, items: AsyncIterator[T]) -> AsyncIterator[T]:
    """`items` until `flag` is set, checked every POLL_S even while the next item is awaited."""
    while not flag.is_set():
        step = asyncio.ensure_future(anext(items))
        try:
            while not step.done() and not flag.is_set():
                await asyncio.wait({step}, timeout=POLL_S)
        finally:
            # Stopping, or the client left and our task was cancelled: the pending step must
            # not outlive the stream (it would wake later, after the job store closed).
            if not step.done():
                step.cancel()
                step.add_done_callback(_consume)
        if not step.done():
            return
        try:
            item = step.result()
        except StopAsyncIteration:
            return
        yield item


def _consume(task: "asyncio.Future[Any]") -> None:
    if not task.cancelled():
        task.exception()  # nobody waits for it any more; its outcome is moot


async def start_runner(service: Service) -> JobRunner:
    """Open the store, sweep, resume unfinished jobs; run as many jobs at once as workers."""
    from functools import partial

    from whisper_api.download import check_url

    settings = service.settings
    store = JobStore(database_path(settings))
    runner = JobRunner(settings, store, service.transcribe, service.workers,
                       partial(check_url, allow_private=settings.allow_private_urls))
    await runner.start()
    return runner
