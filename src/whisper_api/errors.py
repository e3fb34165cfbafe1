"""One exception tree; each error knows its HTTP status.

    WhisperApiError (500)
    ├── ConfigError (500)         an invalid setting (the CLI exits 2 with it)
    ├── InvalidAudioError (415)   the media cannot be decoded or has no audio
    ├── InvalidRequestError (400) a bad argument from the caller
    │   └── UrlNotAllowedError (400) scheme or address refused (SSRF guard)
    ├── UnauthorizedError (401)   missing or wrong API key (with WWW-Authenticate)
    ├── NotFoundError (404)       no such model (GET /v1/models/{id})
    │   └── JobNotFoundError (404) no such job, or its result or audio has expired
    ├── JobStateError (409)       the job is not in a state that allows this
    ├── ClientDisconnectedError (499) the caller went away before the answer
    ├── InputLostError (500)      a job's stored input is missing on the server's disk
    ├── DownloadError (422)       the URL could not be fetched
    ├── MediaTooLargeError (413)  over MAX_UPLOAD_MB or MAX_AUDIO_DURATION_S
    ├── InsufficientStorageError (507) TEMP_DIR / DATA_DIR has too little free space
    ├── ModelNotFoundError (500)  WHISPER_MODEL could not be resolved
    ├── QueueFullError (429)      MAX_QUEUED_JOBS(_PER_KEY) / MAX_SYNC_REQUESTS reached
    ├── SyncTimeoutError (504)    a synchronous request ran past SYNC_TIMEOUT_S
    ├── ShuttingDownError (503)   the server is stopping (Ctrl-C, SIGTERM); retry elsewhere/later
    └── TranscriptionError (500)  a chunk failed even after its retry
        └── ChunkTimeoutError (504)

Low-level errors are translated where they happen; `disk_full` recognises the OSErrors that
mean "no space left" so every boundary answers them the same way (507, not 500 or 415).
"""

import errno

DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS


class WhisperApiError(Exception):
    status_code = 500
    code = "internal_error"

    @property
    def headers(self) -> dict[str, str]:
        """Extra HTTP response headers (Retry-After for QueueFullError)."""
        return {}


class ConfigError(WhisperApiError):
    code = "invalid_configuration"


class UnauthorizedError(WhisperApiError):
    status_code = 401
    code = "unauthorized"

    @property
    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": "Bearer"}


class NotFoundError(WhisperApiError):
    status_code = 404
    code = "not_found"


class JobNotFoundError(NotFoundError):
    pass


class JobStateError(WhisperApiError):
    status_code = 409
    code = "conflict"


class ClientDisconnectedError(WhisperApiError):
    status_code = 499
    code = "client_disconnected"


class SessionClosedError(WhisperApiError):
    """Thread work of a request that has ended (cancelled, failed): its folder is going."""

    status_code = 499
    code = "request_ended"


class InputLostError(WhisperApiError):
    code = "input_lost"


class InvalidAudioError(WhisperApiError):
    status_code = 415
    code = "invalid_audio"


class InvalidRequestError(WhisperApiError):
    status_code = 400
    code = "invalid_request"


class ModelNotFoundError(WhisperApiError):
    code = "model_not_found"


class TranscriptionError(WhisperApiError):
    code = "transcription_failed"


class ModelUnavailableError(TranscriptionError):
    """No worker has loaded the model and none will: a 503 at once, not a wait until the
    request's timeout."""

    status_code = 503
    code = "model_unavailable"


class ChunkTimeoutError(TranscriptionError):
    status_code = 504
    code = "chunk_timeout"


class UrlNotAllowedError(InvalidRequestError):
    code = "url_not_allowed"


class DownloadError(WhisperApiError):
    status_code = 422
    code = "download_failed"


class MediaTooLargeError(WhisperApiError):
    status_code = 413
    code = "media_too_large"


class InsufficientStorageError(WhisperApiError):
    status_code = 507
    code = "insufficient_storage"


class QueueFullError(WhisperApiError):
    status_code = 429
    code = "queue_full"

    def __init__(self, message: str, retry_after_s: int = 30) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)}


class SyncTimeoutError(WhisperApiError):
    status_code = 504
    code = "timeout"

    def __init__(self, seconds: float) -> None:
        super().__init__(f"transcription took longer than {seconds:.0f}s; "
                         "use the jobs API (POST /api/v1/jobs) for long media")


class ShuttingDownError(WhisperApiError):
    status_code = 503
    code = "shutting_down"

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": "10"}
