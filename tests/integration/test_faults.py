"""Duplicate deliveries and workers that keep dying: never two runs at once, never an endless loop."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import psutil
import pytest

from producer import keys
from producer.celery_config import redis_priority
from producer.client import NarrationClient
from producer.settings import Settings
from producer.states import JobState
from tests import services
from tests.integration.test_longform import CHAPTER, SLOW, _generations, _keys, _starts, _wait_until
from tests.s3_relay import S3Relay


def test_a_second_delivery_while_the_first_runs_waits_instead_of_running_twice(
    client: NarrationClient, settings: Settings, start_worker: Callable[..., services.Worker]
) -> None:
    workers = [start_worker(settings, name=n, extra_env=SLOW) for n in ("one", "two")]
    job = client.submit({"text": CHAPTER})
    _wait_until(client, job.id, lambda j: j.progress.get("chunks_done", 0) >= 2)
    # What Redis does when the visibility timeout passes while a job still runs: deliver it again.
    client._celery.send_task(keys.NARRATE_TASK, args=[job.id], task_id=job.id, queue=settings.queue,
                             priority=redis_priority(5))
    final = client.wait(job.id, timeout=240)
    assert final.state is JobState.SUCCEEDED and final.attempts == 1
    logs = "".join(w.log() for w in workers)
    assert re.search(rf"job {job.id}: busy under another delivery; retry in", logs), "the duplicate was held back"
    generations = _generations(logs, job.id)
    assert set(generations.values()) == {1} and len(generations) == final.progress["chunks_total"]


def test_a_job_that_keeps_losing_its_worker_is_dead_lettered(
    client: NarrationClient, settings: Settings, start_worker: Callable[..., services.Worker]
) -> None:
    worker = start_worker(settings, extra_env={**SLOW, "ECHOFORGE_MAX_ATTEMPTS": "2"})
    job = client.submit({"text": CHAPTER})
    for attempt in (1, 2):
        _wait_until(client, job.id, lambda j, a=attempt: j.attempts == a and j.progress.get("chunks_done", 0) >= 1,
                    timeout=60)
        psutil.Process(worker.process.pid).children()[0].kill()
    final = client.wait(job.id, timeout=120)
    assert final.state is JobState.FAILED and final.error is not None
    assert final.error["code"] == "redelivery_limit" and "ECHOFORGE_MAX_ATTEMPTS=2" in final.error["message"]
    assert job.id in client.jobs.dead_lettered()
    listed = services.run_cli(settings, "list", "--dead-letter", "--json")
    assert [j["id"] for j in json.loads(listed.stdout)] == [job.id]


def test_a_soft_time_limit_that_lands_in_a_chunk_upload_ends_the_job_as_timeout(
    client: NarrationClient, settings: Settings, start_worker: Callable[..., services.Worker]
) -> None:
    """Celery's soft limit is raised wherever the job's thread is; here it lands in a chunk's upload, held by a
    stalling store: the job ends `timeout` at the soft limit, not `storage_error`, nor retried to the hard kill."""
    relay = S3Relay(settings.s3_endpoint_url or "")
    try:
        start_worker(settings, extra_env={**SLOW, "ECHOFORGE_JOB_TIME_LIMIT_S": "40",  # soft limit at 20 s
                                          "ECHOFORGE_S3_ENDPOINT_URL": relay.url})
        job = client.submit({"text": CHAPTER})
        _wait_until(client, job.id, lambda j: j.progress.get("chunks_done", 0) >= 1, timeout=60)
        relay.put_hold_s = 60.0  # every upload from now on outlasts the job's time
        final = client.wait(job.id, timeout=90)
    finally:
        relay.put_hold_s = 0.0
        relay.close()
    assert final.state is JobState.FAILED and final.error is not None
    assert final.error["code"] == "timeout" and "soft time limit" in final.error["message"], final.error
    assert 0 < final.progress["chunks_done"] < final.progress["chunks_total"]


@pytest.mark.parametrize("pool", ["prefork", "threads"])  # Celery enforces it in prefork; the pipeline in threads
def test_a_job_over_its_time_limit_fails_with_timeout(
    client: NarrationClient, settings: Settings, start_worker: Callable[..., services.Worker], pool: str
) -> None:
    # A 10 s hard limit puts the soft limit (which ends the job cleanly) at 5 s; the chapter needs about 9 s here.
    start_worker(settings, pool=pool, extra_env={**SLOW, "ECHOFORGE_JOB_TIME_LIMIT_S": "10"})
    final = client.wait(client.submit({"text": CHAPTER}).id, timeout=60)
    assert final.state is JobState.FAILED and final.error is not None
    assert final.error["code"] == "timeout"
    assert 0 < final.progress["chunks_done"] < final.progress["chunks_total"]


def test_a_job_killed_at_its_hard_time_limit_ends_timeout_at_once(
    client: NarrationClient, settings: Settings, start_worker: Callable[..., services.Worker]
) -> None:
    # Its second chunk takes 19 s: the soft limit (5 s) comes while the job waits for that chunk's batch, which it
    # cannot leave, so the hard limit (10 s) kills the pool process.
    worker = start_worker(settings, extra_env={"ECHOFORGE_USE_PLACEHOLDER": "true", "ECHOFORGE_PLACEHOLDER_RTF": "1",
                                               "ECHOFORGE_JOB_TIME_LIMIT_S": "10", "ECHOFORGE_JOB_LOCK_TTL_S": "2"})
    text = ("Hello. The tide came in over the flats, slowly and then all at once, while the gulls argued about nothing "
            "at all and the old man on the sea wall counted boats that were not there, as he had done every evening "
            "since the summer his brother sailed out.")
    final = client.wait(client.submit({"text": text}).id, timeout=60)
    assert final.state is JobState.FAILED and final.error is not None
    assert final.error["code"] == "timeout" and "hard time limit of 10 s" in final.error["message"]
    assert final.attempts == 1, "failed at once, not reaped and run again"
    services.LogWatch(worker.log_path).wait_for(r"killed at the hard time limit of 10 s", timeout=10)


def test_a_job_whose_whole_worker_died_is_reaped_and_resumed_by_another(
    client: NarrationClient, settings: Settings, start_worker: Callable[..., services.Worker]
) -> None:
    # A visibility timeout far above the test's length: Redis does not redeliver the message, only a reaper can
    # rescue the job.
    env = {**SLOW, "ECHOFORGE_USE_PLACEHOLDER": "true", "ECHOFORGE_VISIBILITY_TIMEOUT_S": "3600"}
    workers = [start_worker(settings, name=n, extra_env=env) for n in ("one", "two")]
    job = client.submit({"text": CHAPTER[:5000]})
    running = _wait_until(client, job.id, lambda j: j.progress.get("chunks_done", 0) >= 5)
    doomed = next(w for w in workers if running.worker and running.worker.startswith(w.name + "@"))
    rescuer = next(w for w in workers if w is not doomed)
    main = psutil.Process(doomed.process.pid)
    for process in [*main.children(recursive=True), main]:  # the machine is gone: nothing acks, nothing requeues
        process.kill()
    killed_at = time.time()
    stored = client.get(job.id).progress["chunks_done"]
    assert client.get(job.id).state is JobState.RUNNING

    final = client.wait(job.id, timeout=120)
    assert final.state is JobState.SUCCEEDED and final.attempts == 2
    assert final.worker and final.worker.startswith(f"{rescuer.name}@")
    reaped = re.search(rf"\[([-\d]+ [:,\d]+): WARNING/MainProcess\] job {job.id}: running but its worker is gone",
                       rescuer.log())
    assert reaped, "the rescuer's reaper re-enqueued it"
    reaped_after = datetime.strptime(reaped[1], "%Y-%m-%d %H:%M:%S,%f").timestamp() - killed_at
    print(f"\nreaped {reaped_after:.1f} s after the kill (lock TTL {SLOW['ECHOFORGE_JOB_LOCK_TTL_S']} s)")
    assert reaped_after < 3 * float(SLOW["ECHOFORGE_JOB_LOCK_TTL_S"]), "within about one lock TTL of the kill"
    starts = _starts(doomed.log() + rescuer.log(), job.id)
    assert all(starts[i] == 1 for i in range(stored)), "stored chunks are not generated again"


def test_raw_and_foreign_messages_are_refused_and_the_worker_keeps_working(
    client: NarrationClient, settings: Settings, start_worker: Callable[..., services.Worker]
) -> None:
    worker = start_worker(settings)
    celery = [str(Path(sys.executable).parent / "celery"), "-A", "worker.app", "call", keys.NARRATE_TASK,
              "--queue", settings.queue]
    for args in ('["../../etc/passwd"]', "[12345]", "[]", '["a", "b"]'):
        done = subprocess.run([*celery, "--args", args], env=services.settings_env(settings), capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0, done.stderr
    client._celery.send_task(keys.NARRATE_TASK, args=["0" * 32], queue=settings.queue, serializer="pickle")

    job = client.wait(client.submit({"text": "Still working."}).id, timeout=60)  # queued behind all of those
    assert job.state is JobState.SUCCEEDED
    log = worker.log()
    assert log.count("rejected a narration message whose job id is not a job id") == 2
    assert re.search(r"ContentDisallowed|pickle", log), "the pickle message was refused, not run"
    assert worker.process.poll() is None


def test_twenty_pool_process_kills_mid_job_each_finish_once(
    client: NarrationClient, settings: Settings, start_worker: Callable[..., services.Worker]
) -> None:
    worker = start_worker(settings, extra_env=SLOW)
    text = CHAPTER[: CHAPTER.index("\n\n", 5000)]  # about 25 chunks
    outcomes = []
    for trial in range(20):
        job = client.submit({"text": text})
        kill_after = 2 + (trial * 7) % 17  # a different point in the job each time
        _wait_until(client, job.id, lambda j, k=kill_after: j.progress.get("chunks_done", 0) >= k, timeout=120)
        stored = client.get(job.id).progress["chunks_done"]
        psutil.Process(worker.process.pid).children()[0].kill()  # SIGKILL mid-chunk
        final = client.wait(job.id, timeout=120)
        generations = _generations(worker.log(), job.id)
        finals = [k for k in _keys(settings, job.id) if k.rsplit("/", 1)[-1].startswith("narration")]
        outcomes.append({
            "trial": trial, "state": final.state.value, "attempts": final.attempts,
            "stored_chunks_kept": all(generations[i] == 1 for i in range(stored)),
            "redone": sum(generations.values()) - final.progress["chunks_total"], "final_objects": len(finals)})
    expected = {"state": "succeeded", "attempts": 2, "stored_chunks_kept": True, "final_objects": 1}
    failed = [o for o in outcomes if {k: o[k] for k in expected} != expected or not 0 <= o["redone"] <= 1]
    assert not failed, f"{len(outcomes) - len(failed)}/20 passed; failures: {failed}"
