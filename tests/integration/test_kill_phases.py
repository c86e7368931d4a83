"""A worker's pool process SIGKILLed in every phase of a job: the job ends succeeded once with a correct file, and
the only work done again is the rows that were in flight at the kill, counted by the chunks *started* (the worker
logs `chunk <n> started` before every generation) in both runs."""

from __future__ import annotations

import hashlib
import io
import json
import time
import uuid
from collections.abc import Iterator

import boto3
import psutil
import pytest
import soundfile as sf

from producer.client import NarrationClient
from producer.settings import Settings
from producer.states import JobState
from tests import services
from tests.integration.test_longform import CHAPTER, _keys, _read, _starts, _wait_until

BATCH = 4
# About 0.1 s a chunk; 40-character chunks, so a 600-character text makes 24 chunks: chunk 0 alone (the anchor), then
# 4 rows at once, each slot taken by the next chunk as its row ends (the placeholder ends them in the order started).
ENV = {"ECHOFORGE_USE_PLACEHOLDER": "true", "ECHOFORGE_PLACEHOLDER_RTF": "0.05", "ECHOFORGE_BATCH_SIZE": str(BATCH),
       "ECHOFORGE_MAX_CHUNK_CHARS": "40", "ECHOFORGE_JOB_LOCK_TTL_S": "2"}
TEXT = CHAPTER[:600]

# The line each kill waits for; the pool process is frozen (SIGSTOP) the moment it appears, checked, then killed.
PHASES = {
    "before_first_chunk": "chunk 0 started",  # chunk 0 (generated alone: it becomes the anchor) not stored yet
    "mid_batch": "chunk 2 generated",  # chunk 1 stored, chunk 2 being stored, 3 to 6 in flight
    "between_chunk_starts": f"chunk {BATCH + 2} started",  # chunk 2's row just ended; chunk 6 took its slot
    "stitching": r"stitching \d+ chunks",
    "uploading": "uploading the narration",
    "after_success": "uploading the narration",  # then: the job succeeds, the kill comes before the ack (below)
}


@pytest.fixture(scope="module")
def phase_settings(redis_server: str, s3_endpoint: str) -> Settings:
    bucket = f"echoforge-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=bucket)
    services.flush(redis_server)
    return Settings(redis_url=redis_server, storage_url=f"s3://{bucket}/narrations", s3_endpoint_url=s3_endpoint)


@pytest.fixture(scope="module")
def phase_worker(phase_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[services.Worker]:
    """One worker for every phase (its main process starts a new pool process after each kill)."""
    worker = services.start_worker(phase_settings, tmp_path_factory.mktemp("kill-phases"), name="phases",
                                   extra_env=ENV)
    yield worker
    worker.stop()
    services.flush(phase_settings.redis_url)


@pytest.fixture
def phase_client(phase_settings: Settings) -> Iterator[NarrationClient]:
    client = NarrationClient(phase_settings)
    yield client
    client.close()


def _stored(settings: Settings, job_id: str) -> set[int]:
    """The chunks the job's manifest holds: what a resumed run keeps."""
    if f"narrations/{job_id}/manifest.json" not in _keys(settings, job_id):
        return set()
    return {c["index"] for c in json.loads(_read(settings, f"narrations/{job_id}/manifest.json"))["chunks"]}


def _pool_process(main: psutil.Process) -> psutil.Process:
    [pool] = [p for p in main.children() if p.status() != psutil.STATUS_ZOMBIE]  # one: --concurrency 1
    return pool


def _kill_in_phase(phase: str, worker: services.Worker, client: NarrationClient, job_id: str) -> None:
    """SIGKILL the pool process in `phase`, after checking (while it is frozen) that the phase was reached."""
    main = psutil.Process(worker.process.pid)
    watch = services.LogWatch(worker.log_path)
    watch.wait_for(rf"job {job_id}: {PHASES[phase]}")
    if phase == "after_success":  # the main process acks; frozen, it cannot: the job succeeds, then the kill
        main.suspend()
        _wait_until(client, job_id, lambda j: j.state is JobState.SUCCEEDED, timeout=30)
        _pool_process(main).kill()
        main.resume()
        return
    pool = _pool_process(main)
    pool.suspend()
    log = worker.log()
    if phase == "stitching":
        assert f"job {job_id}: uploading" not in log, "the kill landed after stitching"
    if phase == "uploading":
        assert client.get(job_id).state is JobState.RUNNING, "the kill landed after the upload"
    pool.kill()


@pytest.mark.parametrize("phase", PHASES)
def test_a_pool_process_killed_in_any_phase_costs_only_the_rows_in_flight(
    phase: str, phase_settings: Settings, phase_worker: services.Worker, phase_client: NarrationClient
) -> None:
    job = phase_client.submit({"text": TEXT})
    _kill_in_phase(phase, phase_worker, phase_client, job.id)
    time.sleep(0.3)  # an upload the frozen process had sent completes
    stored = _stored(phase_settings, job.id)
    in_flight = set(_starts(phase_worker.log(), job.id)) - stored  # started and not stored when it died
    if phase == "mid_batch":
        assert stored & {1, 2} and in_flight & {3, 4}, f"some rows of the batch stored, others in flight: {stored}"
    if phase == "between_chunk_starts":
        assert BATCH + 2 in in_flight and len(in_flight) >= BATCH, f"a full batch in flight: {in_flight}"

    final = phase_client.wait(job.id, timeout=90)
    assert final.state is JobState.SUCCEEDED, final.error
    assert final.result is not None
    starts = _starts(phase_worker.log(), job.id)
    assert sorted(starts) == list(range(final.result["chunks"]))
    redone = {i for i, n in starts.items() if n > 1}
    print(f"\n{phase}: {len(redone)} chunks started again, {len(in_flight)} in flight at the kill")
    assert redone == in_flight and max(starts.values()) <= 2, f"only the rows in flight, {in_flight}, again: {starts}"
    services.LogWatch(phase_worker.log_path).wait_for(f"job {job.id}: succeeded", timeout=10)  # logged just after
    assert phase_worker.log().count(f"job {job.id}: succeeded") == 1, "it succeeded once"
    finals = [k for k in _keys(phase_settings, job.id) if k.rsplit("/", 1)[-1].startswith("narration")]
    assert finals == [f"narrations/{job.id}/narration.wav"]
    audio = _read(phase_settings, finals[0])
    assert hashlib.sha256(audio).hexdigest() == final.result["sha256"]
    assert sf.info(io.BytesIO(audio)).duration == pytest.approx(final.result["duration_s"], abs=0.01)
