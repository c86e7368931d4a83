"""Services that go away mid-job: the object store, Redis, a worker's main process. Nothing accepted is lost."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import psutil
import pytest

from producer import keys, processes
from producer.client import NarrationClient
from producer.request import NarrationRequest
from producer.settings import Settings
from producer.states import JobState
from tests import services
from tests.integration.test_longform import CHAPTER, SLOW, _generations, _keys, _wait_until
from tests.network import TcpRelay


@pytest.fixture
def relay(s3_endpoint: str) -> Iterator[TcpRelay]:
    """The S3 server behind a relay the test can cut."""
    relay = TcpRelay(int(urlsplit(s3_endpoint).port or 0))
    yield relay
    relay.cut()


@pytest.fixture
def relayed(settings: Settings, relay: TcpRelay) -> Iterator[tuple[Settings, NarrationClient]]:
    cut_off = settings.model_copy(update={"s3_endpoint_url": relay.url})
    client = NarrationClient(cut_off)
    yield cut_off, client
    client.close()


def test_a_short_s3_outage_is_retried_with_backoff_and_the_job_succeeds(
    relayed: tuple[Settings, NarrationClient], relay: TcpRelay, start_worker: Callable[..., services.Worker]
) -> None:
    settings, client = relayed
    worker = start_worker(settings, extra_env=SLOW)
    job = client.submit({"text": CHAPTER})
    _wait_until(client, job.id, lambda j: j.progress.get("chunks_done", 0) >= 5)
    relay.cut()
    time.sleep(4)
    assert client.get(job.id).state is JobState.RUNNING
    relay.restore()

    final = client.wait(job.id, timeout=180)
    assert final.state is JobState.SUCCEEDED and final.attempts == 1, final.error
    assert "retrying in" in worker.log()
    finals = [k for k in _keys(settings, job.id) if k.rsplit("/", 1)[-1].startswith("narration")]
    assert finals == [f"narrations/{job.id}/narration.wav"]


def test_s3_gone_for_good_fails_the_job_clearly_and_retry_finishes_it_later(
    relayed: tuple[Settings, NarrationClient], relay: TcpRelay, start_worker: Callable[..., services.Worker]
) -> None:
    settings, client = relayed
    start_worker(settings, extra_env={**SLOW, "ECHOFORGE_STORAGE_RETRY_S": "3"})
    job = client.submit({"text": CHAPTER})
    _wait_until(client, job.id, lambda j: j.progress.get("chunks_done", 0) >= 3)
    relay.cut()

    failed = client.wait(job.id, timeout=60)
    assert failed.state is JobState.FAILED and failed.error is not None
    assert failed.error["code"] == "storage_unavailable" and "unreachable for 3 s" in failed.error["message"]
    assert failed.request["text"] == CHAPTER.strip(), "the request text is kept for a retry"
    stored = failed.progress["chunks_done"]

    relay.restore()
    done = services.run_cli(settings, "retry", job.id, "--json")
    assert done.returncode == 0, done.stderr
    final = client.wait(job.id, timeout=180)
    assert final.state is JobState.SUCCEEDED and final.attempts == 1
    assert final.progress["chunks_resumed"] >= stored, "the retry resumed from the stored chunks"
    assert [h["error"]["code"] for h in final.history] == ["storage_unavailable"]

    again = services.run_cli(settings, "retry", job.id)
    assert again.returncode == 2 and "cannot be retried: it is succeeded" in again.stderr


def test_a_redis_restart_mid_job_is_ridden_out(
    settings: Settings, tmp_path: Path, start_worker: Callable[..., services.Worker]
) -> None:
    data = tmp_path / "redis"
    data.mkdir()
    proc, url = services.start_redis(data, persist=True)
    port = int(urlsplit(url).port or 0)
    own = settings.model_copy(update={"redis_url": url})
    client = NarrationClient(own)
    try:
        start_worker(own, extra_env=SLOW)
        job = client.submit({"text": CHAPTER})
        _wait_until(client, job.id, lambda j: j.progress.get("chunks_done", 0) >= 5)
        processes.stop(proc, grace_s=10)  # the append-only file keeps every record
        time.sleep(2)
        proc, _ = services.start_redis(data, port=port, persist=True)

        final = client.wait(job.id, timeout=180)
        assert final.state is JobState.SUCCEEDED, final.error
        assert client.jobs.stale_running(grace_s=0) == [], "nothing is left running"
    finally:
        client.close()
        processes.stop(proc, grace_s=5)


def test_killing_a_workers_main_process_redelivers_the_job_which_finishes_once(
    client: NarrationClient, settings: Settings, start_worker: Callable[..., services.Worker]
) -> None:
    env = {**SLOW, "ECHOFORGE_VISIBILITY_TIMEOUT_S": "15"}  # a test setting: Redis redelivers unacked after 15 s
    doomed = start_worker(settings, name="doomed", extra_env=env)
    job = client.submit({"text": CHAPTER})
    _wait_until(client, job.id, lambda j: j.progress.get("chunks_done", 0) >= 5)
    stored = client.get(job.id).progress["chunks_done"]
    psutil.Process(doomed.process.pid).kill()  # the main process only; its pool child is orphaned

    survivor = start_worker(settings, name="survivor", extra_env=env)
    final = client.wait(job.id, timeout=180)
    assert final.state is JobState.SUCCEEDED and final.attempts == 2, final.error
    generations = _generations(doomed.log() + survivor.log(), job.id)
    assert all(generations[i] == 1 for i in range(stored)), "stored chunks are not generated again"
    assert sum(generations.values()) <= final.progress["chunks_total"] + 1, "at most the chunk in flight is redone"
    finals = [k for k in _keys(settings, job.id) if k.rsplit("/", 1)[-1].startswith("narration")]
    assert finals == [f"narrations/{job.id}/narration.wav"]


def test_a_job_whose_producer_died_before_sending_it_is_sent_by_a_reaper(
    client: NarrationClient, settings: Settings, start_worker: Callable[..., services.Worker]
) -> None:
    # What a producer that crashed between recording the job and sending its message leaves behind.
    orphan, _ = client.jobs.create(NarrationRequest.parse({"text": "Nobody sent me."}), settings.queue)
    sent = client.submit({"text": "I was sent."})
    assert client.jobs.redis.zrange(keys.UNSENT_JOBS_KEY, 0, -1) == [orphan.id.encode()]

    worker = start_worker(settings, extra_env=SLOW)
    assert client.wait(sent.id, timeout=60).state is JobState.SUCCEEDED
    final = client.wait(orphan.id, timeout=60)
    assert final.state is JobState.SUCCEEDED and final.attempts == 1
    assert f"job {orphan.id}: recorded but never sent" in worker.log()
    assert client.jobs.redis.zcard(keys.UNSENT_JOBS_KEY) == 0
