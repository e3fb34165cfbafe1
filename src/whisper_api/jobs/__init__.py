"""Durable jobs: the model (status, input, progress), the SQLite store and the runner."""

from whisper_api.jobs.model import Job, JobInput, JobStatus, display_name
from whisper_api.jobs.runner import JobRunner
from whisper_api.jobs.store import (
    JobStore,
    database_path,
    transcript_from_json,
    transcript_to_json,
)

__all__ = ["Job", "JobInput", "JobRunner", "JobStatus", "JobStore", "database_path",
           "display_name", "transcript_from_json", "transcript_to_json"]
