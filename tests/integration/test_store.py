"""JobStore against a real Redis: guarded transitions, idempotency, listing, TTLs."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis

from producer import keys, states
from producer.books.store import BookStore
from producer.errors import ErrorCode, JobNotFoundError, JobStateError
from producer.request import NarrationRequest
from producer.states import JobState
from producer.store import JobStore


@pytest.fixture
def store(redis_url: str) -> JobStore:
    return JobStore(redis.Redis.from_url(redis_url), finished_ttl_s=120)


def _request(**fields: object) -> NarrationRequest:
    return NarrationRequest.parse({"text": "Hello.", **fields})


def test_terminal_states_never_change(store: JobStore) -> None:
    job, created = store.create(_request(), "q")
    assert created and job.state is JobState.QUEUED
    assert store.start(job.id, "w1", {"kind": "placeholder"}) is not None
    assert store.succeed(job.id, {"key": "k"}, _request(), {"kind": "placeholder"}) is not None
    assert store.fail(job.id, ErrorCode.INTERNAL_ERROR, "too late") is None
    assert store.start(job.id, "w2", {}) is None
    assert store.finish_canceled(job.id) is None
    final = store.get(job.id)
    assert final.state is JobState.SUCCEEDED and final.error is None and final.attempts == 1
    assert 0 < store.redis.ttl(keys.job_key(job.id)) <= 120


def test_cancel_queued_is_immediate_and_running_is_a_request(store: JobStore) -> None:
    queued, _ = store.create(_request(), "q")
    assert store.cancel(queued.id).state is JobState.CANCELED
    assert store.start(queued.id, "w", {}) is None, "a canceled job never starts"
    running, _ = store.create(_request(), "q")
    store.start(running.id, "w", {})
    asked = store.cancel(running.id)
    assert asked.state is JobState.RUNNING and asked.cancel_requested


def test_queue_ttl_expires_a_job_that_waited_too_long(store: JobStore) -> None:
    job, _ = store.create(_request(queue_ttl_s=1), "q")
    unread, _ = store.create(_request(queue_ttl_s=1), "q")
    time.sleep(1.1)
    assert store.start(job.id, "w", {}) is None
    assert store.get(job.id).state is JobState.EXPIRED
    assert store.get(unread.id).state is JobState.EXPIRED, "reading it is enough, with no worker running"


def test_idempotency_key_gives_one_job_under_concurrency(store: JobStore) -> None:
    with ThreadPoolExecutor(max_workers=20) as pool:
        results = list(pool.map(lambda _: store.create(_request(idempotency_key="order-7"), "q"), range(20)))
    assert len({job.id for job, _ in results}) == 1
    assert sum(created for _, created in results) == 1


def test_list_is_newest_first_and_filters_by_state(store: JobStore) -> None:
    ids = [store.create(_request(), "q")[0].id for _ in range(3)]
    store.start(ids[0], "w", {})
    assert [j.id for j in store.list()] == ids[::-1]
    assert [j.id for j in store.list(state=JobState.RUNNING)] == [ids[0]]
    assert len(store.list(limit=2)) == 2


def test_unknown_or_malformed_ids_are_not_found(store: JobStore) -> None:
    for bad in ("0" * 32, "../../etc/passwd", ""):
        with pytest.raises(JobNotFoundError):
            store.get(bad)


def test_an_idempotency_key_reused_with_other_text_is_refused(settings: object) -> None:
    from producer.client import NarrationClient
    from producer.errors import InvalidRequestError

    client = NarrationClient(settings)  # type: ignore[arg-type]
    first = client.submit({"text": "Chapter one.", "idempotency_key": "book-1"})
    assert client.submit({"text": "Chapter one.", "idempotency_key": "book-1"}).id == first.id
    with pytest.raises(InvalidRequestError, match="another text"):
        client.submit({"text": "Chapter two.", "idempotency_key": "book-1"})


def _job_in(store: JobStore, state: JobState, overdue: bool = False) -> str:
    """A job brought to `state` through the store's own transitions (its queue deadline then passed, if `overdue`)."""
    job, _ = store.create(_request(queue_ttl_s=60), "q")
    path = {JobState.QUEUED: [], JobState.RUNNING: [states.START], JobState.SUCCEEDED: [states.START, states.SUCCEED],
            JobState.FAILED: [states.FAIL], JobState.CANCELED: [states.CANCEL], JobState.EXPIRED: [states.EXPIRE]}
    for step in path[state]:
        if step is states.EXPIRE:  # 60 s is too long to wait: move the deadline into the past
            store.redis.hset(keys.job_key(job.id), "expires_at", repr(time.time() - 1))
        assert store.apply(step, job.id, {"error": '{"code":"internal_error"}'} if step is states.FAIL else {})
    if overdue:
        store.redis.hset(keys.job_key(job.id), "expires_at", repr(time.time() - 1))
    assert store.peek(job.id, "state") == [state.value]  # peek: get() would expire an overdue job
    return job.id


@pytest.mark.parametrize("transition", states.TRANSITIONS, ids=lambda t: t.name)
def test_every_transition_is_allowed_from_its_sources_and_refused_from_every_other_state(
        store: JobStore, transition: states.Transition) -> None:
    for state in JobState:
        job_id = _job_in(store, state, overdue=transition.deadline is states.Deadline.PASSED)
        after = store.apply(transition, job_id)
        if transition.allows(state):
            assert after is not None and after.state is transition.target, f"{transition.name} from {state.value}"
        else:
            assert after is None, f"{transition.name} must be refused from {state.value}"
            assert store.peek(job_id, "state") == [state.value]


def test_the_queue_deadline_rules_of_start_and_expire(store: JobStore) -> None:
    overdue = _job_in(store, JobState.QUEUED, overdue=True)
    assert store.start(overdue, "w", {}) is None and store.get(overdue).state is JobState.EXPIRED
    in_time = _job_in(store, JobState.QUEUED)
    assert store.apply(states.EXPIRE, in_time) is None, "a job is never expired before its deadline"


def test_a_job_failed_as_invalid_cannot_be_retried(store: JobStore) -> None:
    job, _ = store.create(_request(), "q")
    store.fail(job.id, ErrorCode.INVALID_REQUEST, "bad")
    with pytest.raises(JobStateError, match="its request is invalid"):
        store.retry(job.id)


def test_dead_letter_and_failed_enqueue_act_in_the_same_step(store: JobStore) -> None:
    running = _job_in(store, JobState.RUNNING)
    assert store.dead_letter(running, "lost its worker 4 times") is not None
    assert running in store.dead_lettered() and store.get(running).error == {
        "code": "redelivery_limit", "message": "lost its worker 4 times"}
    job, _ = store.create(_request(idempotency_key="order-8"), "q")
    assert store.fail_to_enqueue(job.id, "broker refused") is not None
    assert store.create(_request(idempotency_key="order-8"), "q")[1], "the key was released: a retry can enqueue it"


def test_a_finished_book_is_never_read_without_its_result(redis_url: str) -> None:
    """Its state and result land together (a poller that saw "succeeded" must find the result), and only once."""
    books, reader = BookStore(redis.Redis.from_url(redis_url)), redis.Redis.from_url(redis_url)
    torn: list[dict[bytes, bytes]] = []
    current = {"key": ""}
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            seen = reader.hgetall(current["key"]) if current["key"] else {}
            if b"state" in seen and b"result" not in seen:
                torn.append(seen)

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        for n in range(300):
            book = books.create(f"Book {n}", None, {}, [])
            current["key"] = keys.book_key(book.id)
            assert books.finish(book.id, JobState.SUCCEEDED, result={"chapters": n})
    finally:
        done.set()
        poller.join()
    assert torn == [], f"{len(torn)} reads saw a final state without its result"
    assert not books.finish(book.id, JobState.FAILED, error={"code": "internal_error"})
    last = books.get(book.id)
    assert last.state is JobState.SUCCEEDED and last.result == {"chapters": 299} and last.error is None
