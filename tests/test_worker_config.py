"""How a worker's threads are laid out: lanes of one core share each, two shares per worker."""

import pytest

from whisper_api.config import Settings
from whisper_api.executors import worker_config


@pytest.mark.parametrize(("cores", "workers", "threads", "device", "expected"), [
    pytest.param(2, 2, 0, "cpu", (1, 2), id="2 cores, 2 workers: two 1-thread lanes"),
    pytest.param(2, 1, 0, "cpu", (2, 1), id="a lone worker: one lane of both cores"),
    pytest.param(16, 8, 0, "cpu", (2, 2), id="16 cores, 8 workers: two 2-thread lanes"),
    pytest.param(16, 3, 0, "cpu", (5, 2), id="shares that do not divide evenly"),
    pytest.param(2, 2, 1, "cpu", (1, 1), id="WORKER_CPU_THREADS=1: one lane"),
    pytest.param(8, 2, 2, "cpu", (2, 1), id="WORKER_CPU_THREADS within a share: one lane"),
    pytest.param(2, 2, 0, "cuda", (2, 1), id="a GPU runs one decode"),
])
def test_threads_and_lanes(monkeypatch: pytest.MonkeyPatch, cores: int, workers: int,
                           threads: int, device: str, expected: tuple[int, int]) -> None:
    monkeypatch.setattr("os.cpu_count", lambda: cores)
    settings = Settings(worker_cpu_threads=threads, whisper_device=device)
    config = worker_config(settings, workers)
    assert (config.cpu_threads, config.lanes) == expected
