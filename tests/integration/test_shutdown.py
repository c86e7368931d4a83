"""A worker asked to stop (SIGTERM: Celery's warm shutdown, as at a Kubernetes scale-down) finishes and stores the rows
in flight, hands its job back to the queue at once, and another worker resumes it without redoing anything."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable

import pytest
import redis

from producer import keys
from producer.client import NarrationClient
from producer.request import NarrationRequest
from producer.settings import Settings
from producer.states import JobState
from producer.store import JobStore
from tests import services
from tests.integration.test_kill_phases import TEXT
from tests.integration.test_longform import _starts, _wait_until

# A lock TTL far above the test's waits: only a hand-back, never the reaper, can move the job in time.
LOCK_TTL_S = 30
ENV = {"ECHOFORGE_USE_PLACEHOLDER": "true", "ECHOFORGE_PLACEHOLDER_RTF": "0.05", "ECHOFORGE_BATCH_SIZE": "4",
       "ECHOFORGE_MAX_CHUNK_CHARS": "40", "ECHOFORGE_JOB_LOCK_TTL_S": str(LOCK_TTL_S)}


@pytest.mark.parametrize("pool", ["prefork", "threads"])
def test_a_worker_asked_to_stop_hands_its_job_back_and_another_resumes_it_at_once(
    client: NarrationClient, settings: Settings, start_worker: Callable[..., services.Worker], pool: str
) -> None:
    workers = [start_worker(settings, name=n, pool=pool, extra_env=ENV) for n in ("one", "two")]
    job = client.submit({"text": TEXT})
    running = _wait_until(client, job.id, lambda j: j.progress.get("chunks_done", 0) >= 3)
    leaving = next(w for w in workers if running.worker and running.worker.startswith(w.name + "@"))
    staying = next(w for w in workers if w is not leaving)
    stop_asked = time.time()
    leaving.process.send_signal(signal.SIGTERM)
    assert leaving.process.wait(timeout=LOCK_TTL_S) == 0, "the warm shutdown ended"

    final = client.wait(job.id, timeout=60)
    assert final.state is JobState.SUCCEEDED, final.error
    assert final.worker and final.worker.startswith(f"{staying.name}@")
    assert final.attempts == 1, "a hand-back is not an attempt"
    [handed_back] = final.history
    assert handed_back["state"] == "handed_back" and handed_back["worker"] == running.worker
    print(f"\n{pool}: handed back {handed_back['at'] - stop_asked:.2f} s after SIGTERM")
    assert handed_back["at"] - stop_asked < LOCK_TTL_S / 2, "at once, not after the lock expired"
    assert "running but its worker is gone" not in staying.log(), "not reaped"
    starts = _starts(leaving.log() + staying.log(), job.id)
    assert starts == {i: 1 for i in range(final.result["chunks"])}, "every chunk started exactly once"  # type: ignore[index]
    assert f"job {job.id}: handed back to the queue" in leaving.log()


def test_only_the_lock_holder_hands_a_job_back_and_it_is_left_queued_unlocked_and_unsent(redis_url: str) -> None:
    store = JobStore(redis.Redis.from_url(redis_url))
    job, _ = store.create(NarrationRequest.parse({"text": "Hello.", "queue_ttl_s": 60}), "q")
    store.mark_sent(job.id)
    assert store.start(job.id, "one@host", {}) is not None and store.lock(job.id, "token-1", 30)
    store.redis.hset(keys.job_key(job.id), "expires_at", repr(time.time() - 1))  # its queue deadline passes meanwhile
    assert store.hand_back(job.id, "token-2", "one@host") is None, "only the lock's holder hands a job back"
    back = store.hand_back(job.id, "token-1", "one@host")
    assert back is not None and back.state is JobState.QUEUED and back.attempts == 0
    assert [(h["state"], h["worker"]) for h in back.history] == [("handed_back", "one@host")]
    assert not store.redis.exists(keys.job_lock_key(job.id)), "the lock is released in the same step"
    assert job.id in store.unsent(older_than_s=-60), "listed as unsent until its message is sent again"
    assert store.get(job.id).state is JobState.QUEUED, "its queue deadline, met once, no longer applies"
    assert store.start(job.id, "two@host", {}) is not None and store.get(job.id).attempts == 1
