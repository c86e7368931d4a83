"""A narration job through real processes: client -> Redis -> celery worker -> moto S3 server -> status."""

from __future__ import annotations

import hashlib
import io
import json
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import boto3
import redis
import soundfile as sf

from producer import keys
from producer.client import NarrationClient
from producer.settings import Settings
from producer.states import JobState
from tests import services

TEXT = "The lighthouse keeper counted the waves. Forty-two came before the dawn, and each one sang."


def _object(settings: Settings, key: str) -> bytes:
    bucket = settings.storage_url.removeprefix("s3://").split("/")[0]
    s3 = boto3.client("s3", endpoint_url=settings.s3_endpoint_url)
    return s3.get_object(Bucket=bucket, Key=key)["Body"].read()  # type: ignore[no-any-return]


def test_job_goes_queued_running_succeeded_and_lands_in_s3(
    client: NarrationClient, settings: Settings, start_worker: Callable[..., services.Worker]
) -> None:
    start_worker(settings)
    events = redis.Redis.from_url(settings.redis_url).pubsub(ignore_subscribe_messages=True)
    events.psubscribe(keys.JOB_EVENTS_PREFIX + "*")

    job = client.submit({"text": TEXT, "speaker_id": 0})
    assert job.state is JobState.QUEUED
    final = client.wait(job.id, timeout=60)

    seen: list[str] = []
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        message = events.get_message(timeout=0.1)
        if message and (not seen or seen[-1] != message["data"].decode()):
            seen.append(message["data"].decode())
    assert seen == ["running", "succeeded"]
    assert final.state is JobState.SUCCEEDED, final.error
    assert final.created_at <= final.started_at <= final.finished_at  # type: ignore[operator]
    assert final.model["kind"] == "placeholder" and final.model["device"] == "cpu"
    assert final.attempts == 1 and final.worker

    assert final.result is not None
    assert final.result["key"] == f"narrations/{job.id}/narration.wav"
    assert final.result["url"] == f"s3://{final.result['bucket']}/{final.result['key']}"
    data = _object(settings, final.result["key"])
    assert hashlib.sha256(data).hexdigest() == final.result["sha256"]
    info = sf.info(io.BytesIO(data))
    assert (info.format, info.samplerate, info.channels) == ("WAV", 24_000, 1)
    assert abs(info.duration - final.result["duration_s"]) < 0.01
    assert info.duration > 1.0
    assert "text" not in final.request, "the text is dropped once the job ended well"


def test_cli_submit_wait_status_download(
    settings: Settings, start_worker: Callable[..., services.Worker], tmp_path: Path
) -> None:
    start_worker(settings)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return services.run_cli(settings, *args)

    submitted = cli("submit", TEXT, "--speaker", "2", "--temperature", "0.7", "--top-k", "40", "--wait", "--json")
    assert submitted.returncode == 0, submitted.stderr
    record = json.loads(submitted.stdout)
    assert record["state"] == "succeeded"
    for field in ("id", "created_at", "started_at", "finished_at", "progress", "model", "result", "error"):
        assert field in record
    assert record["request"]["speaker_id"] == 2 and record["request"]["top_k"] == 40
    assert record["progress"]["chunks_done"] == record["progress"]["chunks_total"] == 1

    status = cli("status", record["id"], "--json")
    assert status.returncode == 0
    assert json.loads(status.stdout) == record

    out = tmp_path / "out.wav"
    downloaded = cli("download", record["id"], "-o", str(out))
    assert downloaded.returncode == 0, downloaded.stderr
    assert hashlib.sha256(out.read_bytes()).hexdigest() == record["result"]["sha256"]
    assert sf.info(str(out)).samplerate == 24_000

    listed = cli("list", "--json")
    assert [j["id"] for j in json.loads(listed.stdout)] == [record["id"]]
    assert cli("status", "0" * 32).returncode == 3
    assert "no job" in cli("status", "0" * 32).stderr


def test_two_workers_share_one_queue_and_run_each_job_once(
    client: NarrationClient, settings: Settings, start_worker: Callable[..., services.Worker]
) -> None:
    # A little simulated GPU time per job, so neither worker can drain the queue alone.
    workers = [start_worker(settings, name=n, extra_env={"ECHOFORGE_PLACEHOLDER_RTF": "0.05"})
               for n in ("alpha", "beta")]
    jobs = [client.submit({"text": f"Job number {i} of twenty, read aloud."}) for i in range(20)]
    finals = [client.wait(j.id, timeout=120) for j in jobs]

    assert all(f.state is JobState.SUCCEEDED for f in finals)
    assert all(f.attempts == 1 for f in finals)
    logs = "".join(w.log() for w in workers)
    for job in jobs:
        assert len(re.findall(rf"job {job.id}: attempt", logs)) == 1, f"{job.id} ran more or less than once"
    hosts = {f.worker.split("@")[0] for f in finals if f.worker}
    assert hosts == {"alpha", "beta"}
