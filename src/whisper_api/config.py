"""Settings from environment variables, built once at the edge (CLI, app) and passed down."""

import os
from pathlib import Path
from typing import Literal

from pydantic import field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

Preset = Literal["accurate", "fast"]
PRESET_NAMES: tuple[Preset, ...] = ("accurate", "fast")


class Settings(BaseSettings):
    """The seed's variable names; `PARALLEL_WORKERS=auto` sizes the pool from cores and memory."""

    model_config = SettingsConfigDict(env_file=None, extra="ignore", case_sensitive=False)

    enable_parallel_transcription: bool = True
    parallel_workers: int | Literal["auto"] = "auto"
    parallel_chunk_duration: float = 120.0
    audio_limit_single_core: float = 300.0
    whisper_model: str = "base"
    whisper_models: str = ""  # comma-separated; every worker loads each once
    model_cache_dir: Path | None = None  # where bundled models are assembled
    whisper_device: Literal["cpu", "cuda", "auto"] = "cpu"
    whisper_compute_type: str | None = None
    transcribe_preset: Preset = "accurate"
    temp_dir: Path = Path("./temp")
    max_temp_age_hours: float = 24.0
    cleanup_on_startup: bool = True
    chunk_timeout_s: float = 600.0
    worker_memory_mb: int = 1024
    worker_cpu_threads: int = 0
    executor: Literal["local", "ray"] = "local"
    ray_address: str = ""
    ray_num_cpus_per_worker: float = 1.0
    ray_num_gpus_per_worker: float = 0.0
    ray_connect_timeout_s: float = 30.0
    host: str = "127.0.0.1"
    port: int = 8000
    max_upload_mb: float = 500.0
    max_audio_duration_s: float = 4 * 3600.0
    download_timeout_s: float = 600.0
    max_concurrent_downloads: int = 4
    allow_private_urls: bool = False
    sync_timeout_s: float = 1800.0
    api_keys: str = ""
    admin_api_key: str = ""
    data_dir: Path = Path("./data")
    database_url: str = ""
    result_ttl_hours: float = 24.0
    max_queued_jobs: int = 16
    max_queued_jobs_per_key: int = 8
    max_sync_requests: int = 32

    @field_validator("parallel_chunk_duration", "audio_limit_single_core", "chunk_timeout_s",
                     "download_timeout_s", "max_concurrent_downloads", "max_queued_jobs_per_key",
                     "ray_connect_timeout_s")
    @classmethod
    def _positive(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("must be > 0")
        return value

    @field_validator("parallel_workers")
    @classmethod
    def _workers(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 1:
            raise ValueError("must be >= 1 or 'auto'")
        return value

    @property
    def compute_type(self) -> str:
        if self.whisper_compute_type:
            return self.whisper_compute_type
        return "float16" if self.whisper_device == "cuda" else "int8"

    @property
    def model_names(self) -> tuple[str, ...]:
        """WHISPER_MODEL first, then the others of WHISPER_MODELS, each once."""
        listed = (m.strip() for m in self.whisper_models.split(","))
        return tuple(dict.fromkeys([self.whisper_model, *(m for m in listed if m)]))

    @property
    def api_key_set(self) -> frozenset[str]:
        return frozenset(k.strip() for k in self.api_keys.split(",") if k.strip())

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    def worker_count(self) -> tuple[int, str]:
        """How many workers to start, and why (logged at startup)."""
        if self.parallel_workers != "auto":
            return int(self.parallel_workers), "PARALLEL_WORKERS"
        cores = os.cpu_count() or 1
        by_memory = max(1, _available_memory_mb() // self.worker_memory_mb)
        count = max(1, min(cores, by_memory))
        reason = f"auto: {cores} cores, memory for {by_memory} workers"
        return count, reason


def _available_memory_mb() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) // 1024
    except OSError:
        pass
    return 1 << 20


def load_settings(**overrides: object) -> Settings:
    """Build settings; an invalid variable raises ConfigError naming it."""
    from pydantic import ValidationError

    from whisper_api.errors import ConfigError

    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = "; ".join(
            f"{str(err['loc'][0]).upper()}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"invalid configuration: {problems}") from exc
