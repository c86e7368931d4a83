"""Signed webhooks against real processes: `echoforge serve`, a narration worker (placeholder model), a webhook worker,
real Redis and S3, and a real HTTP receiver started here; every signature is checked with the `standardwebhooks`
library, as a receiver would."""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
import redis
from standardwebhooks import Webhook, WebhookVerificationError

from producer import keys, processes, states
from producer.request import NarrationRequest
from producer.settings import Settings
from producer.states import JobState
from producer.store import JobStore
from tests import services

# The receiver listens on 127.0.0.1: the API and the webhook worker must allow private addresses for it.
LOOPBACK_OK = {"ECHOFORGE_WEBHOOK_ALLOW_PRIVATE": "true", "ECHOFORGE_WEBHOOK_RETRY_BASE_S": "0.2"}
PLACEHOLDER = {"ECHOFORGE_USE_PLACEHOLDER": "true"}
TEXT = "The lighthouse keeper counted the waves. Then he slept."


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    status: int
    answered_at: float


class Receiver:
    """A real HTTP receiver on 127.0.0.1 that records every POST; it answers 500 to the first `fail_first` and
    sleeps `delay_s` before each answer."""

    def __init__(self, fail_first: int = 0, delay_s: float = 0.0) -> None:
        self.received: list[Received] = []
        self._calls, self._lock = 0, threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                with receiver._lock:
                    status = 500 if receiver._calls < fail_first else 200
                    receiver._calls += 1
                time.sleep(delay_s)
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()
                with receiver._lock:
                    receiver.received.append(Received({k.lower(): v for k, v in self.headers.items()}, body, status,
                                                      time.time()))

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/narrations"

    def wait_for(self, count: int, timeout: float = 60) -> list[Received]:
        deadline = time.monotonic() + timeout
        while len(self.received) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(self.received) >= count, f"{len(self.received)} of {count} webhooks arrived"
        return list(self.received)


@pytest.fixture
def receiver() -> Iterator[Callable[..., Receiver]]:
    made: list[Receiver] = []

    def make(**kwargs: Any) -> Receiver:
        made.append(Receiver(**kwargs))
        return made[-1]

    yield make
    for each in made:
        each.server.shutdown()
        each.server.server_close()


@dataclass
class Tenant:
    api: httpx.Client
    headers: dict[str, str]
    webhook_secret: str


@pytest.fixture
def tenant(settings: Settings, start_api: Callable[..., str]) -> Iterator[Callable[..., Tenant]]:
    """An `echoforge serve` (given its extra environment) and a key of tenant acme made by `echoforge keys create`."""
    clients: list[httpx.Client] = []

    def make(extra_env: dict[str, str] | None = None) -> Tenant:
        done = services.run_cli(settings, "keys", "create", "--tenant", "acme", "--json")
        assert done.returncode == 0, done.stderr
        shown = json.loads(done.stdout)
        clients.append(httpx.Client(base_url=start_api(settings, extra_env), timeout=30))
        return Tenant(clients[-1], {"Authorization": f"Bearer {shown['secret']}"}, shown["webhook_secret"])

    yield make
    for client in clients:
        client.close()


def _submit(tenant: Tenant, url: str, events: list[str] | None = None, text: str = TEXT) -> dict[str, Any]:
    body: dict[str, Any] = {"text": text, "webhook_url": url, **({"webhook_events": events} if events else {})}
    posted = tenant.api.post("/v1/narrations", json=body, headers=tenant.headers)
    assert posted.status_code == 202, posted.text
    return dict(posted.json())


def _finished(tenant: Tenant, job_id: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = tenant.api.get(f"/v1/narrations/{job_id}", headers=tenant.headers).json()
        if JobState(job["state"]).is_terminal:
            return dict(job)
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not end")


def _deliveries(tenant: Tenant, job_id: str, count: int, timeout: float = 30) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        response = tenant.api.get(f"/v1/narrations/{job_id}/webhook-deliveries", headers=tenant.headers)
        assert response.status_code == 200, response.text
        attempts: list[dict[str, Any]] = response.json()["data"]
        if len(attempts) >= count or time.monotonic() > deadline:
            return attempts
        time.sleep(0.1)


def _verified(secret: str, received: Received) -> dict[str, Any]:
    payload: dict[str, Any] = Webhook(secret).verify(received.body, received.headers)
    return payload


def test_started_and_succeeded_arrive_signed_and_verify_with_standardwebhooks(
        settings: Settings, tenant: Callable[..., Tenant], receiver: Callable[..., Receiver],
        start_worker: Callable[..., services.Worker], start_webhook_worker: Callable[..., services.Worker]) -> None:
    hooks, acme = receiver(), tenant(LOOPBACK_OK)
    webhook_worker = start_webhook_worker(settings, extra_env=LOOPBACK_OK)
    narration_worker = start_worker(settings, extra_env=PLACEHOLDER)
    job = _finished(acme, _submit(acme, hooks.url)["id"])
    assert job["state"] == "succeeded" and job["request"]["webhook_url"] == hooks.url

    received = hooks.wait_for(2)
    payloads = [_verified(acme.webhook_secret, r) for r in received]
    assert sorted(p["type"] for p in payloads) == ["narration.started", "narration.succeeded"], "no progress unasked"
    assert all(p["data"]["id"] == job["id"] and p["data"]["tenant"] == "acme" for p in payloads)
    succeeded = next(p for p in payloads if p["type"] == "narration.succeeded")
    assert succeeded["data"]["state"] == "succeeded" and succeeded["data"]["result"]["duration_s"] > 1
    ids = {r.headers["webhook-id"] for r in received}
    assert len(ids) == 2 and all(i.startswith("msg_") for i in ids), "one id per event"
    with pytest.raises(WebhookVerificationError):
        Webhook(acme.webhook_secret).verify(received[0].body.replace(b"acme", b"evil"), received[0].headers)

    attempts = _deliveries(acme, job["id"], 2)
    assert sorted((a["event"], a["outcome"], a["status_code"], a["attempt"]) for a in attempts) == [
        ("started", "delivered", 200, 1), ("succeeded", "delivered", 200, 1)]
    records = redis.Redis.from_url(settings.redis_url).hgetall(keys.job_key(job["id"]))
    shown = [json.dumps(job), json.dumps(attempts), repr(records), webhook_worker.log(), narration_worker.log()]
    assert not any(acme.webhook_secret in text for text in shown), "the secret is in no record, response or log"
    assert keys.WEBHOOK_DELIVER_TASK not in narration_worker.log(), "deliveries never run on a narration worker"


def test_a_receiver_that_answers_500_twice_gets_the_same_webhook_id_three_times(
        settings: Settings, tenant: Callable[..., Tenant], receiver: Callable[..., Receiver],
        start_webhook_worker: Callable[..., services.Worker]) -> None:
    hooks, acme = receiver(fail_first=2), tenant(LOOPBACK_OK)
    metrics_port = processes.free_port()
    start_webhook_worker(settings, extra_env={**LOOPBACK_OK, "ECHOFORGE_METRICS_PORT": str(metrics_port)})
    job = _submit(acme, hooks.url, events=["canceled"])  # no narration worker: a queued job is canceled at once
    assert acme.api.post(f"/v1/narrations/{job['id']}/cancel", headers=acme.headers).json()["state"] == "canceled"

    received = hooks.wait_for(3)
    assert [r.status for r in received] == [500, 500, 200]
    assert len({r.headers["webhook-id"] for r in received}) == 1, "one event, one id on every attempt"
    assert [_verified(acme.webhook_secret, r)["type"] for r in received] == ["narration.canceled"] * 3
    attempts = _deliveries(acme, job["id"], 3)
    assert [(a["attempt"], a["status_code"], a["outcome"]) for a in attempts] == [
        (1, 500, "failed_will_retry"), (2, 500, "failed_will_retry"), (3, 200, "delivered")]
    assert all(a["next_attempt_at"] for a in attempts[:2]) and attempts[2]["next_attempt_at"] is None
    assert {a["webhook_id"] for a in attempts} == {received[0].headers["webhook-id"]}

    scraped = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
    assert 'echoforge_webhook_deliveries_total{outcome="failed_will_retry"} 2.0' in scraped
    assert 'echoforge_webhook_deliveries_total{outcome="delivered"} 1.0' in scraped
    assert 'echoforge_webhook_deliveries_total{outcome="gave_up"} 0.0' in scraped


def _job_keys(url: str) -> list[bytes]:
    return sorted(k for k in redis.Redis.from_url(url).scan_iter() if not k.startswith((b"echoforge:apikey",
                                                                                      b"echoforge:tenant:")))


def test_private_addresses_are_refused_at_submit_and_again_at_delivery(
        settings: Settings, tenant: Callable[..., Tenant], receiver: Callable[..., Receiver],
        start_webhook_worker: Callable[..., services.Worker]) -> None:
    strict = tenant()  # ECHOFORGE_WEBHOOK_ALLOW_PRIVATE off: the default
    before = _job_keys(settings.redis_url)
    for url in ("http://10.0.0.1/hook", "http://169.254.169.254/latest/meta-data/", "http://127.0.0.1:8080/hook",
                "http://[::1]/hook", "http://localhost/hook", "https://192.168.1.20/hook"):
        refused = strict.api.post("/v1/narrations", json={"text": TEXT, "webhook_url": url}, headers=strict.headers)
        assert refused.status_code == 422 and refused.headers["content-type"] == "application/problem+json", url
        assert refused.json()["code"] == "invalid_request" and refused.json()["errors"][0]["field"] == "webhook_url"
    assert _job_keys(settings.redis_url) == before, "nothing recorded, nothing enqueued"

    # Accepted by an API that allows private addresses, refused by a webhook worker that does not.
    hooks, lenient = receiver(), tenant(LOOPBACK_OK)
    start_webhook_worker(settings)
    job = _submit(lenient, hooks.url, events=["canceled"])
    lenient.api.post(f"/v1/narrations/{job['id']}/cancel", headers=lenient.headers)
    attempts = _deliveries(lenient, job["id"], 1)
    assert [(a["outcome"], a["status_code"], a["next_attempt_at"]) for a in attempts] == [
        ("refused_private", None, None)] and "loopback" in attempts[0]["error"]
    assert hooks.received == [] and not redis.Redis.from_url(settings.redis_url).exists(keys.WEBHOOK_RETRIES_KEY)


def test_a_slow_receiver_never_delays_the_job(
        settings: Settings, tenant: Callable[..., Tenant], receiver: Callable[..., Receiver],
        start_worker: Callable[..., services.Worker], start_webhook_worker: Callable[..., services.Worker]) -> None:
    hooks, acme = receiver(delay_s=5), tenant(LOOPBACK_OK)
    start_webhook_worker(settings, extra_env=LOOPBACK_OK)
    start_worker(settings, extra_env=PLACEHOLDER)
    job = _finished(acme, _submit(acme, hooks.url)["id"])
    assert job["state"] == "succeeded"
    first = hooks.wait_for(1)[0]
    assert datetime.fromisoformat(job["finished_at"]).timestamp() < first.answered_at, "the job ended first"
    assert {_verified(acme.webhook_secret, r)["type"] for r in hooks.wait_for(2)} == {
        "narration.started", "narration.succeeded"}


def test_progress_webhooks_are_throttled(
        settings: Settings, tenant: Callable[..., Tenant], receiver: Callable[..., Receiver],
        start_worker: Callable[..., services.Worker], start_webhook_worker: Callable[..., services.Worker]) -> None:
    hooks, acme = receiver(), tenant(LOOPBACK_OK)
    start_webhook_worker(settings, extra_env=LOOPBACK_OK)
    start_worker(settings, extra_env={**PLACEHOLDER, "ECHOFORGE_PLACEHOLDER_RTF": "0.1", "ECHOFORGE_BATCH_SIZE": "1",
                                      "ECHOFORGE_MAX_CHUNK_CHARS": "40", "ECHOFORGE_WEBHOOK_PROGRESS_INTERVAL_S": "1"})
    text = " ".join(f"Sentence number {n} is spoken here." for n in range(16))
    job = _finished(acme, _submit(acme, hooks.url, events=["progress", "succeeded"], text=text)["id"])
    assert job["state"] == "succeeded" and job["result"]["chunks"] >= 16
    deadline = time.monotonic() + 30
    while not any(b"narration.succeeded" in r.body for r in hooks.received) and time.monotonic() < deadline:
        time.sleep(0.05)
    payloads = [_verified(acme.webhook_secret, r) for r in hooks.received]
    progress = sorted(datetime.fromisoformat(p["timestamp"]).timestamp() for p in payloads
                      if p["type"] == "narration.progress")
    assert 2 <= len(progress) < job["result"]["chunks"], "some progress, not one per chunk"
    assert all(later - earlier >= 0.999 for earlier, later in itertools.pairwise(progress))


# ---- the outbox, written by the transition script itself ----------------------------------------------------------

def _outbox(store: JobStore) -> list[dict[bytes, bytes]]:
    return [fields for _, fields in store.redis.xrange(keys.WEBHOOK_OUTBOX_KEY)]


def _job_at(store: JobStore, state: JobState, overdue: bool, **request: Any) -> str:
    """A job brought to `state` by the store's own transitions (its queue deadline passed, if `overdue`), with an
    empty outbox."""
    job, _ = store.create(NarrationRequest.parse({"text": "Hello.", **request}), "q")
    path = {JobState.QUEUED: [], JobState.RUNNING: [states.START], JobState.FAILED: [states.FAIL],
            JobState.EXPIRED: [states.EXPIRE], JobState.SUCCEEDED: [states.START, states.SUCCEED]}[state]
    for step in path:
        if step is states.EXPIRE:
            store.redis.hset(keys.job_key(job.id), "expires_at", repr(time.time() - 1))
        assert store.apply(step, job.id) is not None
    if overdue:
        store.redis.hset(keys.job_key(job.id), "expires_at", repr(time.time() - 1))
    store.redis.delete(keys.WEBHOOK_OUTBOX_KEY)
    return job.id


@pytest.mark.parametrize("transition", states.TRANSITIONS, ids=lambda t: t.name)
def test_each_transition_writes_its_event_to_the_outbox_in_the_same_step(
        redis_url: str, transition: states.Transition) -> None:
    store = JobStore(redis.Redis.from_url(redis_url), webhook_progress_interval_s=0)
    source = min(transition.sources, key=list(JobState).index)
    every_event = {"webhook_url": "https://hooks.example.com/x", "webhook_events": list(states.WEBHOOK_EVENTS)}
    other_event = {**every_event, "webhook_events": ["started" if transition.webhook_event != "started" else "failed"]}
    for request, expected in ((every_event, transition.webhook_event), ({}, None), (other_event, None)):
        job_id = _job_at(store, source, transition is states.EXPIRE, **request)
        assert store.apply(transition, job_id) is not None, transition.name
        written = [(f[b"job_id"].decode(), f[b"event"].decode()) for f in _outbox(store)]
        assert written == ([(job_id, expected)] if expected else []), (transition.name, request)


def test_progress_reaches_the_outbox_at_most_once_per_interval(redis_url: str) -> None:
    store = JobStore(redis.Redis.from_url(redis_url), webhook_progress_interval_s=0.5)
    job, _ = store.create(NarrationRequest.parse({"text": "Hello.", "webhook_url": "https://hooks.example.com/x",
                                                  "webhook_events": ["progress"]}), "q")
    store.start(job.id, "w", {})
    for _ in range(5):
        store.progress(job.id, chunks_done=1)
    assert len(_outbox(store)) == 1
    time.sleep(0.6)
    store.progress(job.id, chunks_done=2)
    assert len(_outbox(store)) == 2
