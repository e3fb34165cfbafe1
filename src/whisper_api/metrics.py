"""Prometheus metrics for one app: request counts, pool gauges, chunk latency, audio throughput.

Each app owns its `CollectorRegistry` (never the process-global default), so several apps in one
process (tests, embedding) do not collide. Pool numbers are read from `executor.stats()` when
Prometheus scrapes, so nothing has to be kept in sync with the pool.
"""

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from whisper_api.executors.base import ChunkExecutor, LatencyHistogram

REQUEST_SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
REALTIME_FACTOR_BUCKETS = (0.5, 1, 2, 5, 10, 20, 50, 100, 200)


class PoolCollector(Collector):
    """Queue depth, workers by state, restarts and chunk latency, read at scrape time."""

    def __init__(self) -> None:
        self.executor: ChunkExecutor | None = None

    def collect(self) -> Iterator[Metric]:
        queued = GaugeMetricFamily("whisper_queue_depth", "Chunk tasks waiting for a worker")
        workers = GaugeMetricFamily("whisper_workers", "Worker processes by state",
                                    labels=["state"])
        restarts = CounterMetricFamily("whisper_worker_restarts",
                                       "Workers that died and were replaced")
        latency = HistogramMetricFamily("whisper_chunk_seconds",
                                        "Time a worker spent decoding one chunk")
        if self.executor is not None:
            stats = self.executor.stats()
            queued.add_metric([], stats.queued_tasks)
            workers.add_metric(["busy"], stats.busy_workers)
            workers.add_metric(["idle"], stats.ready_workers - stats.busy_workers)
            workers.add_metric(["starting"], stats.workers - stats.ready_workers)
            restarts.add_metric([], stats.restarts)
            latency.add_metric([], cumulative_buckets(stats.chunk_seconds),
                               stats.chunk_seconds.sum_s)
        yield from (queued, workers, restarts, latency)


def cumulative_buckets(histogram: LatencyHistogram) -> list[tuple[str, float]]:
    bounds = [*map(floatToGoString, histogram.bounds_s), "+Inf"]
    running, buckets = 0, []
    for bound, count in zip(bounds, histogram.counts, strict=True):
        running += count
        buckets.append((bound, float(running)))
    return buckets


class Metrics:
    """The app's registry and its instruments; also the Service's TranscriptionObserver."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "whisper_http_requests", "HTTP requests by route template, method and status",
            ["route", "method", "status"], registry=self.registry)
        self.request_seconds = Histogram(
            "whisper_http_request_seconds", "HTTP request duration by route template and method",
            ["route", "method"], buckets=REQUEST_SECONDS_BUCKETS, registry=self.registry)
        self.audio_seconds = Counter(
            "whisper_audio_seconds", "Seconds of audio transcribed", registry=self.registry)
        self.realtime_factor = Histogram(
            "whisper_realtime_factor",
            "Audio seconds per processing second, per transcription (conversion to merge)",
            buckets=REALTIME_FACTOR_BUCKETS, registry=self.registry)
        self.pool = PoolCollector()
        self.registry.register(self.pool)

    def watch(self, executor: ChunkExecutor) -> None:
        self.pool.executor = executor

    def request_done(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route, method, str(status)).inc()
        self.request_seconds.labels(route, method).observe(seconds)

    def transcribed(self, audio_s: float, processing_s: float) -> None:
        self.audio_seconds.inc(audio_s)
        if processing_s > 0:
            self.realtime_factor.observe(audio_s / processing_s)
