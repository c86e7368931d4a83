"""Several jobs in one worker process (`--pool threads`) share the real CSM model and its batches."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from producer import processes
from producer.client import NarrationClient
from producer.settings import Settings
from producer.states import JobState
from tests import services
from tests.integration.test_longform import _generations, _wait_until
from tests.integration.test_metrics import scrape, value, wait_for

TEXTS = ["The keeper counted waves. Forty came at dawn.", "Hello there, friend.",
         "Rain fell on the harbour all night. The boats knocked together.", "One short line."]


def test_jobs_running_at_once_are_generated_in_common_batches(
    client: NarrationClient, settings: Settings, start_worker: Callable[..., services.Worker], tiny_checkpoint: Path
) -> None:
    port = processes.free_port()
    worker = start_worker(settings, pool="threads", concurrency=4, extra_env={
        "ECHOFORGE_MODEL_PATH": str(tiny_checkpoint), "ECHOFORGE_DEVICE": "cpu", "ECHOFORGE_MAX_CHUNK_CHARS": "40",
        "ECHOFORGE_BATCH_WAIT_MS": "2000", "ECHOFORGE_METRICS_PORT": str(port)})
    jobs = [client.submit({"text": text, "speaker_id": i}) for i, text in enumerate(TEXTS)]
    done = [client.wait(job.id, timeout=300) for job in jobs]
    for job in done:
        assert job.state is JobState.SUCCEEDED, job.error
        assert job.model["kind"] == "csm" and job.attempts == 1
        assert job.result is not None and job.result["duration_s"] > 0
    log = worker.log()
    assert "4 jobs at a time share the model" in log
    shared = [int(m) for m in re.findall(r"generated \d+ texts of (\d+) jobs together", log)]
    assert max(shared) >= 2, "no batch held chunks of more than one job"
    url = f"http://127.0.0.1:{port}/metrics"
    wait_for(lambda: value(scrape(url), "echoforge_jobs_total", state="succeeded") == len(TEXTS))
    samples = scrape(url)  # four jobs at once in one process: each counted, none left in progress
    assert value(samples, "echoforge_jobs_in_progress") == 0
    assert value(samples, "echoforge_chunks_total") == sum(j.progress["chunks_total"] for j in done)


def test_a_job_canceled_in_a_shared_worker_ends_alone(
    client: NarrationClient, settings: Settings, start_worker: Callable[..., services.Worker], tiny_checkpoint: Path
) -> None:
    start_worker(settings, pool="threads", concurrency=2, extra_env={
        "ECHOFORGE_MODEL_PATH": str(tiny_checkpoint), "ECHOFORGE_DEVICE": "cpu", "ECHOFORGE_MAX_CHUNK_CHARS": "40",
        "ECHOFORGE_BATCH_SIZE": "1"})
    long_text = " ".join(f"Sentence number {i} is here." for i in range(40))
    doomed, kept = client.submit({"text": long_text}), client.submit({"text": TEXTS[0]})
    deadline = time.monotonic() + 120
    while client.get(doomed.id).progress.get("chunks_done", 0) < 1:
        assert time.monotonic() < deadline, "the long job never stored a chunk"
        time.sleep(0.1)
    client.cancel(doomed.id)
    assert client.wait(doomed.id, timeout=120).state is JobState.CANCELED
    assert client.wait(kept.id, timeout=300).state is JobState.SUCCEEDED


def test_killing_a_shared_worker_loses_none_of_its_jobs(
    client: NarrationClient, settings: Settings, start_worker: Callable[..., services.Worker], tiny_checkpoint: Path
) -> None:
    env = {"ECHOFORGE_MODEL_PATH": str(tiny_checkpoint), "ECHOFORGE_DEVICE": "cpu", "ECHOFORGE_MAX_CHUNK_CHARS": "40",
           "ECHOFORGE_BATCH_SIZE": "2", "ECHOFORGE_JOB_LOCK_TTL_S": "2", "ECHOFORGE_VISIBILITY_TIMEOUT_S": "30"}
    doomed = start_worker(settings, name="doomed", pool="threads", concurrency=3, extra_env=env)
    texts = [" ".join(f"Voice {v} reads sentence number {i} aloud." for i in range(14)) for v in range(3)]
    jobs = [client.submit({"text": text, "speaker_id": v}) for v, text in enumerate(texts)]
    stored = [_wait_until(client, job.id, lambda j: j.progress.get("chunks_done", 0) >= 2, timeout=120)
              .progress["chunks_done"] for job in jobs]
    psutil.Process(doomed.process.pid).kill()  # every job of the process dies at once

    survivor = start_worker(settings, name="survivor", pool="threads", concurrency=3, extra_env=env)
    for job, done in zip(jobs, stored, strict=True):
        final = client.wait(job.id, timeout=300)
        assert final.state is JobState.SUCCEEDED and final.attempts == 2, final.error
        assert final.progress["chunks_resumed"] >= done, "chunks stored before the kill are kept"
        generations = _generations(doomed.log() + survivor.log(), job.id)
        assert all(generations[i] == 1 for i in range(done)), "stored chunks are not generated again"
