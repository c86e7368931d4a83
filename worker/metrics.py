"""Prometheus metrics: job and chunk figures from the pool processes, queue depth and job states read from Redis.

Celery's prefork pool runs jobs in child processes, so the metrics use prometheus_client's multiprocess mode: the
worker's main process makes a fresh directory, points PROMETHEUS_MULTIPROC_DIR at it before the pool forks, and
serves /metrics (ECHOFORGE_METRICS_PORT; 0 = off) from every process's files. A pool process that exits is marked
dead (its live gauges go; its counters stay counted). Queue depth and job states are read from Redis at scrape time.
Nothing here carries a URL, a token or user text: labels are states, error codes, model kind and device.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess, start_http_server, values
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from producer import keys
from producer.errors import time_limit_hit
from producer.processes import is_alive
from producer.settings import Settings
from producer.states import JobState
from producer.store import JobStore

__all__ = ["WorkerMetrics"]

log = logging.getLogger(__name__)

# Job records scanned (newest first) for the jobs-by-state gauge at each scrape.
STATE_SCAN_LIMIT = 10_000
_SECONDS = (1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400)
_CHUNK_SECONDS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300)
_RTF = (0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 20)


class _Metrics:
    """The metric objects; built only after PROMETHEUS_MULTIPROC_DIR is set, so every process writes to files."""

    def __init__(self) -> None:
        job_labels = ["state", "error_code", "model_kind", "device"]
        self.jobs = Counter("echoforge_jobs", "Job runs that ended a job, by final state", job_labels)
        self.job_seconds = Histogram("echoforge_job_duration_seconds", "Wall time of a run that ended a job",
                                     ["state"], buckets=_SECONDS)
        self.job_rtf = Histogram("echoforge_job_real_time_factor", "Run wall seconds per second of audio delivered",
                                 buckets=_RTF)
        self.queue_wait = Histogram("echoforge_queue_wait_seconds", "Submit to first start", buckets=_SECONDS)
        self.starts = Counter("echoforge_job_starts", "Deliveries of a job to this worker's pool")
        self.redeliveries = Counter("echoforge_job_redeliveries", "Deliveries of a job that had started before")
        self.in_progress = Gauge("echoforge_jobs_in_progress", "Jobs this worker is running now",
                                 multiprocess_mode="livesum")
        # Chunks are generated in batches, so one chunk's own time is not observable: the counters add up exactly
        # (their ratio is the real-time factor) and the histogram takes each run's average per chunk.
        self.chunk_seconds = Counter("echoforge_chunk_seconds", "Wall seconds spent making chunks (generation, QA, "
                                     "storage), from one stored chunk to the next")
        self.chunks = Counter("echoforge_chunks", "Chunks generated and stored (resumed ones excluded)")
        self.audio_seconds = Counter("echoforge_audio_seconds", "Seconds of audio in those chunks")
        self.chunk_duration = Histogram("echoforge_chunk_duration_seconds", "A run's average wall seconds per chunk",
                                        buckets=_CHUNK_SECONDS)
        self.retries = Counter("echoforge_task_retries", "Task retries (a job busy under another delivery)")
        self.task_failures = Counter("echoforge_task_failures", "Tasks that raised out of Celery's task body")
        self.model = Gauge("echoforge_model_info", "1 per model kind and device a pool process serves with",
                           ["kind", "model_id", "device"], multiprocess_mode="livemax")
        self.fallbacks = Counter("echoforge_model_fallbacks", "Pool processes that fell back (GPU to CPU, CSM to "
                                 "placeholder) or loaded no model", ["kind", "device"])


@dataclass
class _Run:
    job_id: str
    wall: float
    mono: float
    state_before: str
    mark: tuple[float, int, float] = (0.0, 0, 0.0)  # (monotonic, chunks done, audio seconds) at the last report
    chunks: int = 0  # chunks this run made, and the seconds it took
    chunk_seconds: float = 0.0


class WorkerMetrics:
    """One worker's metrics: the multiprocess directory and /metrics server (main process), the metric objects every
    process writes to, and the runs of the jobs this process is running (several under the threads pool)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._metrics: _Metrics | None = None
        self._runs: dict[str, _Run] = {}
        self._server: Any = None
        self._dir: Path | None = None

    @property
    def enabled(self) -> bool:
        return self._metrics is not None

    def start_server(self, hostname: str) -> None:
        """In the worker's main process, before the pool forks: the metrics directory and the /metrics server."""
        if not self.settings.metrics_port or self._metrics is not None:
            return
        self._dir = Path(tempfile.mkdtemp(prefix="echoforge-metrics-"))
        # prometheus_client's multiprocess mode is configured by this variable; pool processes inherit it at fork.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(self._dir)
        values.ValueClass = values.get_value_class()  # prometheus_client chose its value class at import
        registry = CollectorRegistry()
        registry.register(_ProcessFiles(self._dir))
        registry.register(_RedisCollector(self.settings))
        try:
            self._server, _ = start_http_server(self.settings.metrics_port, registry=registry)
        except OSError as e:
            log.error("metrics off: cannot serve on port %d: %s", self.settings.metrics_port, e)
            self.stop_server()
            return
        self._metrics = _Metrics()
        log.info("metrics on :%d/metrics (%s)", self.settings.metrics_port, hostname)

    def stop_server(self) -> None:
        if self._server is not None:
            self._server.shutdown()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
        self._metrics = self._server = self._dir = None

    def process_exiting(self) -> None:
        """A pool process on its way out: its live gauges must stop counting."""
        if self._dir is not None:
            multiprocess.mark_process_dead(os.getpid(), str(self._dir))

    def model_ready(self, info: dict[str, Any]) -> None:
        """A pool process built its runtime: what it serves with, and whether that was a fallback."""
        if self._metrics is None:
            return
        kind, device = str(info.get("kind") or "none"), str(info.get("device") or "")
        self._metrics.model.labels(kind, str(info.get("id") or ""), device).set(1)
        if info.get("fallback_reason") or not info:
            self._metrics.fallbacks.labels(kind, device).inc()

    def job_starting(self, job_id: str, jobs: JobStore) -> None:
        """task_prerun: the job's state before this run, and its queue wait when this is its first start."""
        if self._metrics is None:
            return
        state, created, attempts = jobs.peek(job_id, "state", "created_at", "attempts")
        now = time.time()
        run = self._runs[job_id] = _Run(job_id, now, time.monotonic(), state)
        run.mark = (run.mono, 0, 0.0)
        self._metrics.starts.inc()
        self._metrics.in_progress.inc()
        if state == JobState.QUEUED.value and created:
            self._metrics.queue_wait.observe(max(0.0, now - float(created)))
        elif state == JobState.RUNNING.value and int(attempts or 0) > 0:
            self._metrics.redeliveries.inc()

    def observe_progress(self, job_id: str, progress: dict[str, Any]) -> None:
        """After every stored chunk (the job's progress hook): chunks, audio and wall time of this run."""
        run = self._runs.get(job_id)
        if self._metrics is None or run is None:
            return
        try:
            _observe_chunk(self._metrics, run, progress)
        except Exception as e:  # metrics must never stop a job, but the job's time limit must
            if time_limit_hit(e):
                raise
            log.warning("job %s: chunk metrics failed", job_id, exc_info=True)

    def job_finished(self, job_id: str, jobs: JobStore) -> None:
        """task_postrun: count the job once, by the run that moved it to its terminal state."""
        run = self._runs.pop(job_id, None)
        if self._metrics is None or run is None:
            return
        self._metrics.in_progress.dec()
        if run.chunks:
            self._metrics.chunk_duration.observe(run.chunk_seconds / run.chunks)
        state, started, finished, error, model, result = jobs.peek(
            job_id, "state", "started_at", "finished_at", "error", "model", "result")
        if not state or not JobState(state).is_terminal or not finished or float(finished) < run.wall:
            return  # still running elsewhere, retried, or ended before this run
        if run.state_before != JobState.QUEUED.value and float(started or 0) < run.wall:
            return  # another delivery started the run that ended it (this one found it busy, or already over)
        _count_job(self._metrics, state, error, model, result, time.monotonic() - run.mono)

    def retried(self) -> None:
        if self._metrics is not None:
            self._metrics.retries.inc()

    def task_failed(self) -> None:
        if self._metrics is not None:
            self._metrics.task_failures.inc()


def _count_job(m: _Metrics, state: str, error: str, model: str, result: str, elapsed: float) -> None:
    info = json.loads(model) if model else {}
    code = str(json.loads(error).get("code", "")) if error else ""
    m.jobs.labels(state, code, str(info.get("kind", "")), str(info.get("device", ""))).inc()
    m.job_seconds.labels(state).observe(elapsed)
    duration = float(json.loads(result).get("duration_s") or 0) if result else 0.0
    if state == JobState.SUCCEEDED.value and duration > 0:
        m.job_rtf.observe(elapsed / duration)


def _observe_chunk(m: _Metrics, run: _Run, progress: dict[str, Any]) -> None:
    now, done, audio = time.monotonic(), int(progress.get("chunks_done", 0)), float(progress.get("audio_s", 0.0))
    before, done_before, audio_before = run.mark
    run.mark = (now, done, audio)
    if done_before == 0 and progress.get("chunks_resumed"):
        return  # the first report of a resumed job: the chunks so far were made by an earlier run
    if done > done_before:  # a report per chunk; a batch's chunks arrive together, after its generation time
        run.chunks += done - done_before
        run.chunk_seconds += now - before
        m.chunks.inc(done - done_before)
        m.chunk_seconds.inc(now - before)
        m.audio_seconds.inc(max(0.0, audio - audio_before))


class _ProcessFiles(Collector):
    """prometheus_client's MultiProcessCollector, after marking pool processes that died unannounced (SIGKILL)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.collector = multiprocess.MultiProcessCollector(None, str(path))

    def collect(self) -> Iterator[Any]:
        for pid in {int(m.group(1)) for f in self.path.glob("gauge_live*.db")
                    if (m := re.search(r"_(\d+)\.db$", f.name))}:
            if not is_alive(pid):
                multiprocess.mark_process_dead(pid, str(self.path))
        return self.collector.collect()


class _RedisCollector(Collector):
    """Read at scrape time through the job store: the queue's lists (every priority step), job records by state,
    dead letters. No retries: a scrape must answer fast, and reports redis_up 0 instead."""

    def __init__(self, settings: Settings) -> None:
        self.jobs = JobStore.from_settings(settings, retry_s=0, timeout_s=5)
        self.queue = settings.queue

    def collect(self) -> Iterator[Any]:
        up = GaugeMetricFamily("echoforge_redis_up", "1 when the last scrape could read Redis")
        try:
            families = list(self._families())
        except redis.RedisError as e:
            log.warning("metrics: cannot read Redis: %s", type(e).__name__)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families

    def _families(self) -> Iterator[Any]:
        depth = GaugeMetricFamily("echoforge_queue_depth", "Messages waiting in the queue's Redis list, per "
                                  "priority step (running jobs are not in the list)", labels=["queue", "step"])
        for step, length in zip(keys.PRIORITY_STEPS, self.jobs.queue_depths(self.queue), strict=True):
            depth.add_metric([self.queue, str(step)], length)
        yield depth
        counts, oldest_queued = self.jobs.count_by_state(STATE_SCAN_LIMIT)
        jobs = GaugeMetricFamily("echoforge_job_records", f"Job records in Redis by state (newest "
                                 f"{STATE_SCAN_LIMIT}; finished ones expire)", labels=["state"])
        for state_name, count in counts.items():
            jobs.add_metric([state_name], count)
        yield jobs
        age = GaugeMetricFamily("echoforge_oldest_queued_job_age_seconds", "How long the oldest queued job waited")
        age.add_metric([], oldest_queued)
        yield age
        dead = GaugeMetricFamily("echoforge_dead_letter_jobs", "Jobs failed as redelivery_limit, still listed")
        dead.add_metric([], self.jobs.dead_letter_count())
        yield dead
