"""A real worker's /metrics, scraped over HTTP: queue depth and job states from Redis; job and chunk counters move."""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import requests
from prometheus_client.parser import text_string_to_metric_families

from producer import processes
from producer.client import NarrationClient
from producer.settings import Settings
from producer.states import JobState
from tests import services

REPO = Path(__file__).resolve().parents[2]
# Two chunks (the pipeline packs at most 300 characters), so chunk figures count more than jobs.
LONG_TEXT = " ".join(["The tide came in slowly over the flat grey sand, and the gulls rose crying."] * 6)
SHORT_TEXT = "A short line for the metrics."

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str) -> Samples:
    body = requests.get(url, timeout=10).text
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(body) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples named `name` whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


def wait_for(check: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


def metrics_worker(settings: Settings, start_worker: Callable[..., services.Worker],
                   rtf: str) -> tuple[str, services.Worker]:
    port = processes.free_port()
    worker = start_worker(settings, name="metered", extra_env={"ECHOFORGE_METRICS_PORT": str(port),
                                                               "ECHOFORGE_PLACEHOLDER_RTF": rtf})
    return f"http://127.0.0.1:{port}/metrics", worker


def test_scraped_counters_move_with_jobs(
    client: NarrationClient, settings: Settings, start_worker: Callable[..., services.Worker]
) -> None:
    url, _ = metrics_worker(settings, start_worker, rtf="0.1")
    wait_for(lambda: value(scrape(url), "echoforge_model_info") == 1)  # the pool process reports once it is up
    before = scrape(url)
    assert value(before, "echoforge_redis_up") == 1
    assert value(before, "echoforge_jobs_total") == 0
    assert value(before, "echoforge_model_info", kind="placeholder", device="cpu") == 1
    assert value(before, "echoforge_queue_depth") == 0

    jobs = [client.submit({"text": LONG_TEXT})] + [client.submit({"text": SHORT_TEXT}) for _ in range(3)]
    wait_for(lambda: value(scrape(url), "echoforge_jobs_in_progress") == 1)
    busy = scrape(url)
    assert value(busy, "echoforge_job_records", state="running") == 1
    assert value(busy, "echoforge_queue_depth") >= 1, "jobs behind the running one wait in the lists"
    assert value(busy, "echoforge_job_records", state="queued") == value(busy, "echoforge_queue_depth")
    assert value(busy, "echoforge_oldest_queued_job_age_seconds") > 0

    finals = [client.wait(job.id, timeout=60) for job in jobs]
    assert all(f.state is JobState.SUCCEEDED for f in finals)
    wait_for(lambda: value(scrape(url), "echoforge_jobs_total") == len(jobs))  # postrun runs just after the record
    after = scrape(url)
    assert value(after, "echoforge_jobs_total", state="succeeded", model_kind="placeholder", device="cpu") == 4
    assert value(after, "echoforge_job_duration_seconds_count", state="succeeded") == 4
    assert value(after, "echoforge_job_real_time_factor_count") == 4
    assert value(after, "echoforge_queue_wait_seconds_count") == 4
    assert value(after, "echoforge_job_starts_total") == 4
    chunks = sum(f.progress["chunks_total"] for f in finals)
    assert chunks > len(jobs)
    assert value(after, "echoforge_chunks_total") == chunks
    assert value(after, "echoforge_chunk_duration_seconds_count") == len(jobs), "one average per run"
    audio = sum(f.progress["audio_s"] for f in finals)
    assert abs(value(after, "echoforge_audio_seconds_total") - audio) < 0.01
    # The placeholder sleeps 0.1 s per second of audio: the real-time factor the counters give is at least that.
    assert value(after, "echoforge_chunk_seconds_total") / audio >= 0.1
    assert value(after, "echoforge_jobs_in_progress") == 0
    assert value(after, "echoforge_queue_depth") == 0
    assert value(after, "echoforge_job_records", state="succeeded") == 4
    # Every metric the alerts and the KEDA trigger use is one the worker really exports.
    rules = "".join((REPO / "deploy" / "k8s" / name).read_text() for name in ("alerts.yaml", "keda.yaml"))
    used = set(re.findall(r"echoforge_[a-z_]+", rules))
    assert used and used <= {name for name, _ in after}, used - {name for name, _ in after}


def test_a_killed_pool_process_is_marked_dead_and_its_job_counted_as_redelivered(
    client: NarrationClient, settings: Settings, start_worker: Callable[..., services.Worker]
) -> None:
    # A short lock TTL: the redelivery that finds the dead process's lock still held retries seconds later.
    url, worker = metrics_worker(settings.model_copy(update={"job_lock_ttl_s": 2.0}), start_worker, rtf="0.3")
    job = client.submit({"text": LONG_TEXT})
    wait_for(lambda: value(scrape(url), "echoforge_chunks_total") >= 1, timeout=60)
    child = psutil.Process(worker.process.pid).children()[0]
    os.kill(child.pid, signal.SIGKILL)  # the pool process dies mid-job; Celery starts another, the job comes back

    final = client.wait(job.id, timeout=90)
    assert final.state is JobState.SUCCEEDED and final.attempts >= 2
    wait_for(lambda: value(scrape(url), "echoforge_jobs_total") == 1)
    # A late duplicate delivery (the reaper's, or the lost worker's requeue) may still be in progress for a moment;
    # the dead process's gauge must not keep the total above 0 once it ends.
    wait_for(lambda: value(scrape(url), "echoforge_jobs_in_progress") == 0)
    after = scrape(url)
    # The redelivery may find the dead process's lock still held (a retry), and the reaper may send it once more:
    # however many deliveries, the job is counted once, by the run that finished it.
    assert value(after, "echoforge_job_starts_total") >= 2 + value(after, "echoforge_task_retries_total")
    assert value(after, "echoforge_job_redeliveries_total") >= 1
    assert value(after, "echoforge_jobs_total", state="succeeded") == 1
    assert value(after, "echoforge_model_info", kind="placeholder") == 1

