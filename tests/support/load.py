"""The load run: many short synchronous requests while one long job runs (test and bench)."""

import json
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.support.server import Server


@dataclass
class LoadResult:
    short_latencies_s: list[float]
    short_texts: list[str]
    short_statuses: list[int]
    job_running_after_shorts: bool
    job_status: str
    job_text: str
    job_s: float

    def percentile(self, q: float) -> float:
        return statistics.quantiles(self.short_latencies_s, n=100, method="inclusive")[int(q) - 1]


def _post(server: Server, path: Path) -> tuple[int, str, float]:
    started = time.perf_counter()
    with path.open("rb") as handle:
        response = httpx.post(f"{server.url}/api/v1/transcribe", timeout=600,
                              files={"file": (path.name, handle)}, data={"format": "text"})
    return response.status_code, response.text, time.perf_counter() - started


def _wait_transcribing(server: Server, job_id: str) -> None:
    """Block until the job's chunks are on the workers, so the short requests queue behind them."""
    url = f"{server.url}/api/v1/jobs/{job_id}/events"
    with httpx.stream("GET", url, timeout=httpx.Timeout(5, read=120)) as response:
        for line in response.iter_lines():
            if line.startswith("data: ") and '"transcribing"' in line:
                return
            if line.startswith("event: done"):
                raise AssertionError("the long job ended before the load started")


def _wait_done(server: Server, job_id: str) -> str:
    while True:
        status: str = httpx.get(f"{server.url}/api/v1/jobs/{job_id}").json()["status"]
        if status in ("succeeded", "failed", "cancelled"):
            return status
        time.sleep(0.2)


def load_run(server: Server, short: Path, long: Path, count: int = 20) -> LoadResult:
    started = time.perf_counter()
    with long.open("rb") as handle:
        job_id = httpx.post(f"{server.url}/api/v1/jobs", timeout=60,
                            files={"file": (long.name, handle)}).json()["id"]
    _wait_transcribing(server, job_id)
    with ThreadPoolExecutor(count) as threads:
        shorts = list(threads.map(lambda _: _post(server, short), range(count)))
    running = httpx.get(f"{server.url}/api/v1/jobs/{job_id}").json()["status"] == "running"
    status = _wait_done(server, job_id)
    job_s = time.perf_counter() - started
    text = httpx.get(f"{server.url}/api/v1/jobs/{job_id}/result?format=text").text
    return LoadResult([s[2] for s in shorts], [s[1] for s in shorts], [s[0] for s in shorts],
                      running, status, text, job_s)


def summary(result: LoadResult) -> str:
    return json.dumps({
        "short_requests": len(result.short_latencies_s),
        "p50_s": round(result.percentile(50), 2), "p95_s": round(result.percentile(95), 2),
        "max_s": round(max(result.short_latencies_s), 2),
        "long_job_s": round(result.job_s, 2), "long_job_still_running_after_shorts":
            result.job_running_after_shorts,
    })
