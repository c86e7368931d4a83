"""JobStore: the only door to job data in Redis. Every state change is a named transition of producer/states.py,
applied atomically by a Lua script in producer/lua/."""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterable
from importlib.resources import files
from typing import Any

import redis

from producer import keys, states
from producer.errors import ErrorCode, JobNotFoundError, JobStateError, Quota, RefusedForNowError
from producer.job import Job
from producer.request import NarrationRequest
from producer.settings import Settings
from producer.states import JobState, Transition

__all__ = ["JobStore", "connect_redis", "dumps", "is_job_id", "lua_script", "text"]

_JOB_ID = re.compile(r"^[0-9a-f]{32}$")


def lua_script(name: str) -> str:
    """The text of producer/lua/<name>.lua (package data, so a non-editable install has it too)."""
    return files("producer").joinpath("lua", f"{name}.lua").read_text()


def text(value: bytes | str) -> str:
    """A Redis reply as str."""
    return value.decode() if isinstance(value, bytes) else value


def connect_redis(settings: Settings, retry_s: float | None = None, timeout_s: float | None = None) -> redis.Redis:
    """The one way EchoForge builds a Redis client: lost connections are retried with backoff for ~retry_s
    (default ECHOFORGE_REDIS_RETRY_S), so callers ride out a Redis restart; `timeout_s` bounds each socket call."""
    from redis.backoff import ExponentialBackoff
    from redis.retry import Retry

    retry_s = settings.redis_retry_s if retry_s is None else retry_s
    backoff_cap = 2.0
    retries = max(3, int(retry_s / backoff_cap) + 5) if retry_s > 0 else 0  # 0.1, 0.2, ... 1.6 s, then every 2 s
    return redis.Redis.from_url(settings.redis_url, retry=Retry(ExponentialBackoff(cap=backoff_cap, base=0.1), retries),
                                retry_on_error=[redis.ConnectionError, redis.TimeoutError],
                                socket_timeout=timeout_s, socket_connect_timeout=timeout_s)


def is_job_id(value: object) -> bool:
    return isinstance(value, str) and bool(_JOB_ID.match(value))


def dumps(value: Any) -> str:
    """JSON as records store it: compact, keys sorted."""
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


class _Overdue(Exception):
    """A queued job's queue deadline passed before it could start."""


class JobStore:
    """Reads and writes job records. Methods that change state return the new Job, or None when refused."""

    def __init__(self, client: redis.Redis, finished_ttl_s: int = keys.FINISHED_JOB_TTL_S,
                 webhook_progress_interval_s: float = keys.WEBHOOK_PROGRESS_INTERVAL_S) -> None:
        self.redis = client
        self.finished_ttl_s = finished_ttl_s
        self.webhook_progress_interval_s = webhook_progress_interval_s
        self._create = client.register_script(lua_script("create"))
        self._transition = client.register_script(lua_script("transition"))
        self._retry = client.register_script(lua_script("retry"))
        self._lock_holder = client.register_script(lua_script("lock_holder"))
        self._hand_back = client.register_script(lua_script("hand_back"))

    @classmethod
    def from_settings(cls, settings: Settings, retry_s: float | None = None,
                      timeout_s: float | None = None) -> JobStore:
        return cls(connect_redis(settings, retry_s, timeout_s), settings.finished_job_ttl_s,
                   settings.webhook_progress_interval_s)

    def close(self) -> None:
        self.redis.close()

    # ---- records --------------------------------------------------------------------------------------------------

    def create(self, request: NarrationRequest, queue: str, tenant: str | None = None,
               max_queued: int = 0, book: tuple[str, str] | None = None) -> tuple[Job, bool]:
        """A new queued job, or (existing job, False) when its idempotency key was used before.

        A tenant's jobs are listed in its own index; with `max_queued` > 0 a tenant at that many queued jobs is
        refused (QUOTA_EXCEEDED). `book` is (book id, part) for a job that narrates part of a book.
        """
        job_id, now = uuid.uuid4().hex, time.time()
        idem = keys.idempotency_key(request.idempotency_key, tenant) if request.idempotency_key else ""
        fields: dict[str, str] = {
            "id": job_id,
            "state": JobState.QUEUED.value,
            "request": dumps(request.model_dump()),
            "created_at": repr(now),
            "attempts": "0",
            "queue": queue,
        }
        if tenant:
            fields["tenant"] = tenant
        if book:
            fields["book_id"], fields["book_part"] = book
        if request.queue_ttl_s:
            fields["expires_at"] = repr(now + request.queue_ttl_s)
        if idem:
            fields["idempotency_redis_key"] = idem
        if request.webhook_url:  # read by the transition script, which writes the events asked for to the outbox
            fields.update(webhook_url=request.webhook_url, webhook_events=",".join(request.webhook_events))
        flat = [item for pair in fields.items() for item in pair]
        created, found = self._create(
            keys=[keys.job_key(job_id), keys.JOB_INDEX_KEY, idem, keys.UNSENT_JOBS_KEY,
                  keys.tenant_jobs_key(tenant) if tenant else "", keys.tenant_queued_key(tenant) if tenant else ""],
            args=[job_id, repr(now), max_queued, *flat])
        if created == -1:
            raise RefusedForNowError(f"quota queued_jobs: tenant {tenant} has {text(found)} jobs queued, its limit "
                                     "of jobs queued at once", ErrorCode.QUOTA_EXCEEDED, retry_after_s=30,
                                     quota=Quota.QUEUED_JOBS)
        return (Job.from_hash(fields), True) if created else (self.get(text(found), tenant), False)

    def get(self, job_id: str, tenant: str | None = None) -> Job:
        """The job; with `tenant`, only that tenant's (another tenant's job is "not found", like a missing one)."""
        data: Any = self.redis.hgetall(keys.job_key(job_id)) if is_job_id(job_id) else {}
        if not data or (tenant is not None and text(data.get(b"tenant", b"")) != tenant):
            raise JobNotFoundError(f"no job {job_id!r} (never created, or its record expired)")
        job = _job(data.items())
        deadline = data.get(b"expires_at")
        if job.state is JobState.QUEUED and deadline and float(deadline) < time.time():
            return self._expire(job_id)  # on read too, so a job no worker picked up does not wait forever
        return job

    def peek(self, job_id: str, *names: str) -> list[str]:
        """Raw fields of a record ('' when absent), with no side effect (no lazy expiry): for metrics."""
        values: Any = self.redis.hmget(keys.job_key(job_id), list(names))
        return [text(v) if v is not None else "" for v in values]

    # ---- transitions ----------------------------------------------------------------------------------------------

    def apply(self, transition: Transition, job_id: str, fields: dict[str, str] | None = None) -> Job | None:
        """Apply one named transition and write `fields` with it, atomically; None when the job's state refuses it.

        Raises JobNotFoundError for a missing record.
        """
        if transition.retry:
            return self._apply_retry(transition, job_id, (fields or {}).get("rerender", ""))
        if transition.hands_back:
            return self.hand_back(job_id, "", (fields or {}).get("worker", ""))
        now = time.time()
        flat = [item for pair in (fields or {}).items() for item in pair]
        ttl = self.finished_ttl_s if transition.target.is_terminal else 0
        status, record = self._transition(
            keys=[keys.job_key(job_id), keys.job_events_channel(job_id), keys.RUNNING_JOBS_KEY, keys.DEAD_LETTER_KEY,
                  *self._side_keys(job_id), keys.WEBHOOK_OUTBOX_KEY],
            args=[transition.target.value, _csv(transition.sources), ttl, _flag(transition.counts_attempt),
                  transition.deadline.value, repr(now), _flag(transition.dead_letters),
                  _flag(transition.releases_idempotency_key), job_id, transition.webhook_event or "",
                  repr(self.webhook_progress_interval_s), *flat])
        return self._outcome(job_id, text(status), record)

    def _apply_retry(self, transition: Transition, job_id: str, edit: str) -> Job | None:
        job = self.get(job_id)
        ttl = job.request.get("queue_ttl_s")
        now = time.time()
        refused = transition.refuses_error.value if transition.refuses_error else ""
        status, record = self._retry(
            keys=[keys.job_key(job_id), keys.job_events_channel(job_id), keys.DEAD_LETTER_KEY, keys.UNSENT_JOBS_KEY,
                  *self._side_keys(job_id)],
            args=[transition.target.value, _csv(transition.sources), refused, repr(now),
                  repr(now + ttl) if ttl else "", job_id, edit])
        return self._outcome(job_id, text(status), record)

    def _outcome(self, job_id: str, status: str, record: Any) -> Job | None:
        if status == "missing":
            raise JobNotFoundError(f"no job {job_id!r}")
        if status == "overdue":
            raise _Overdue(job_id)
        if status != "ok":
            return None
        return _job(zip(record[::2], record[1::2], strict=True))

    def _side_keys(self, job_id: str) -> list[str]:
        """The job's idempotency key and its tenant's queued set ('' when none), declared to the scripts that touch
        them (both are fixed at creation, so reading them first is safe)."""
        idem, tenant = self.redis.hmget(keys.job_key(job_id), ["idempotency_redis_key", "tenant"])  # type: ignore[misc]
        return [text(idem or b""), keys.tenant_queued_key(text(tenant)) if tenant else ""]

    def _expire(self, job_id: str) -> Job:
        """The one place a queued job past its queue deadline becomes expired (the script checks the deadline)."""
        return self.apply(states.EXPIRE, job_id, {"finished_at": repr(time.time())}) or self.get(job_id)

    def start(self, job_id: str, worker: str, model: dict[str, Any], **progress: Any) -> Job | None:
        """queued (or running, on redelivery) -> running; None when it may not start (ended, or expired now)."""
        fields = {"started_at": repr(time.time()), "worker": worker, "model": dumps(model),
                  "progress": dumps(progress)}
        try:
            return self.apply(states.START, job_id, fields)
        except _Overdue:
            self._expire(job_id)
            return None

    def progress(self, job_id: str, **progress: Any) -> Job | None:
        """Record progress of a running job; the returned record tells whether a cancel was asked for."""
        return self.apply(states.PROGRESS, job_id, {"progress": dumps(progress)})

    def succeed(self, job_id: str, result: dict[str, Any], request: NarrationRequest | dict[str, Any],
                model: dict[str, Any], **progress: Any) -> Job | None:
        """The job succeeded: its request is kept without its text (a dict: already so, as after a re-render)."""
        kept = request.without_text() if isinstance(request, NarrationRequest) else request
        fields = {"result": dumps(result), "finished_at": repr(time.time()), "model": dumps(model),
                  "request": dumps(kept), "progress": dumps(progress)}
        return self.apply(states.SUCCEED, job_id, fields)

    def fail(self, job_id: str, code: ErrorCode, message: str, transition: Transition = states.FAIL) -> Job | None:
        fields = {"error": dumps({"code": code.value, "message": message}), "finished_at": repr(time.time())}
        return self.apply(transition, job_id, fields)

    def fail_to_enqueue(self, job_id: str, message: str) -> Job | None:
        """The queue refused the job's message: failed, and its idempotency key released so a retry can enqueue it."""
        return self.fail(job_id, ErrorCode.ENQUEUE_FAILED, message, states.FAIL_TO_ENQUEUE)

    def dead_letter(self, job_id: str, message: str) -> Job | None:
        """Fail a job that keeps losing its worker, listed as dead-lettered in the same step."""
        return self.fail(job_id, ErrorCode.REDELIVERY_LIMIT, message, states.DEAD_LETTER)

    def retry(self, job_id: str) -> Job:
        """An operator's retry: a failed (but valid) or expired job is queued again under the same id.

        Its text, stored chunks and idempotency key are kept; `attempts` restarts and the earlier end is kept in
        `history`. Raises JobStateError for jobs in any other state.
        """
        job = self.apply(states.RETRY, job_id)
        if job is None:
            current = self.get(job_id)
            reason = "its request is invalid" if current.error and current.error.get("code") == \
                ErrorCode.INVALID_REQUEST.value else f"it is {current.state.value}"
            raise JobStateError(f"job {job_id} cannot be retried: {reason} (only failed or expired jobs can)")
        return job

    def rerender(self, job_id: str, edit: dict[str, Any]) -> Job:
        """Queue a succeeded job again to re-render the chunks `edit` names (and their new text); its earlier end is
        kept in `history`. Raises JobStateError for a job in any other state."""
        job = self.apply(states.RERENDER, job_id, {"rerender": dumps(edit)})
        if job is None:
            raise JobStateError(f"job {job_id} cannot be re-rendered: it is {self.get(job_id).state.value} "
                                "(only a succeeded job can)")
        return job

    def cancel(self, job_id: str) -> Job:
        """A queued job is canceled at once; a running one is asked to stop at its next check."""
        done = self.apply(states.CANCEL, job_id, {"finished_at": repr(time.time())})
        if done is None:
            self.apply(states.REQUEST_CANCEL, job_id, {"cancel_requested": "1"})
        return self.get(job_id)

    def hand_back(self, job_id: str, token: str, worker: str) -> Job | None:
        """running -> queued for a draining worker that holds the run lock under `token` ('': no check), which is
        released in the same step; None when refused. The caller sends the job's message, then `mark_sent`."""
        _, tenant = self._side_keys(job_id)
        status, record = self._hand_back(
            keys=[keys.job_key(job_id), keys.job_events_channel(job_id), keys.RUNNING_JOBS_KEY, keys.UNSENT_JOBS_KEY,
                  keys.job_lock_key(job_id), tenant],
            args=[repr(time.time()), job_id, token, worker])
        return self._outcome(job_id, text(status), record)

    def finish_canceled(self, job_id: str) -> Job | None:
        return self.apply(states.FINISH_CANCEL, job_id, {"finished_at": repr(time.time())})

    # ---- the run lock, the reaper's and the sender's bookkeeping ---------------------------------------------------

    def lock(self, job_id: str, token: str, ttl_s: float) -> bool:
        """Take the job's run lock; False while another delivery holds it."""
        return bool(self.redis.set(keys.job_lock_key(job_id), token, nx=True, px=int(ttl_s * 1000)))

    def refresh_lock(self, job_id: str, token: str, ttl_s: float) -> bool:
        return bool(self._lock_holder(keys=[keys.job_lock_key(job_id)], args=[token, int(ttl_s * 1000)]))

    def unlock(self, job_id: str, token: str) -> None:
        self._lock_holder(keys=[keys.job_lock_key(job_id)], args=[token, 0])

    def start_draining(self, worker: str, ttl_s: int = keys.DRAINING_TTL_S) -> None:
        """Tell `worker`'s running jobs to finish their rows in flight and hand themselves back."""
        self.redis.set(keys.draining_key(worker), "1", ex=ttl_s)

    def stop_draining(self, worker: str) -> None:
        self.redis.delete(keys.draining_key(worker))

    def draining(self, worker: str) -> bool:
        return bool(self.redis.exists(keys.draining_key(worker)))

    def stale_running(self, grace_s: float) -> list[str]:
        """Running jobs whose run lock is gone (their worker died) and that started over `grace_s` ago."""
        stale = []
        for raw in self.redis.smembers(keys.RUNNING_JOBS_KEY):  # type: ignore[union-attr]
            job_id = text(raw)
            state, started = self.peek(job_id, "state", "started_at")
            if state != JobState.RUNNING.value:
                self.redis.srem(keys.RUNNING_JOBS_KEY, job_id)
            elif not self.redis.exists(keys.job_lock_key(job_id)) and time.time() - float(started or 0) > grace_s:
                stale.append(job_id)
        return stale

    def claim_reap(self, job_id: str, hold_s: float) -> bool:
        """True for the one reaper that gets to re-enqueue this job in the next `hold_s` seconds."""
        return bool(self.redis.set(keys.REAPED_PREFIX + job_id, "1", nx=True, px=int(hold_s * 1000)))

    def mark_sent(self, job_id: str) -> None:
        """The job's message is in the queue (or it no longer needs one)."""
        self.redis.zrem(keys.UNSENT_JOBS_KEY, job_id)

    def unsent(self, older_than_s: float) -> list[str]:
        """Jobs recorded over `older_than_s` ago whose producer never confirmed sending them."""
        ids: Any = self.redis.zrangebyscore(keys.UNSENT_JOBS_KEY, "-inf", time.time() - older_than_s, 0, 500)
        return [text(i) for i in ids]

    # ---- read-only queries ----------------------------------------------------------------------------------------

    def idempotency_key_used(self, key: str, tenant: str | None = None) -> bool:
        """Whether an idempotency key (of `tenant`) names a job already."""
        return bool(self.redis.exists(keys.idempotency_key(key, tenant)))

    def dead_lettered(self) -> list[str]:
        return [text(i) for i in self.redis.zrevrange(keys.DEAD_LETTER_KEY, 0, -1)]  # type: ignore[union-attr]

    def dead_letter_count(self) -> int:
        return int(self.redis.zcard(keys.DEAD_LETTER_KEY))  # type: ignore[arg-type]

    def queue_depths(self, queue: str) -> list[int]:
        """Messages waiting in each of the queue's priority lists (keys.PRIORITY_STEPS order); running jobs' messages
        are not in them."""
        pipe = self.redis.pipeline(transaction=False)
        for name in keys.priority_queue_lists(queue):
            pipe.llen(name)
        return [int(length) for length in pipe.execute()]

    def count_by_state(self, limit: int) -> tuple[dict[str, int], float]:
        """Job records by state among the newest `limit`, and how long the oldest queued one has waited (s)."""
        ids: Any = self.redis.zrevrange(keys.JOB_INDEX_KEY, 0, limit - 1)
        pipe = self.redis.pipeline(transaction=False)
        for job_id in ids:
            pipe.hmget(keys.job_key(text(job_id)), ["state", "created_at"])
        counts = {state.value: 0 for state in JobState}
        oldest_queued, now = 0.0, time.time()
        for state, created in pipe.execute() if ids else []:
            if state is None:
                continue
            counts[text(state)] = counts.get(text(state), 0) + 1
            if text(state) == JobState.QUEUED.value and created:
                oldest_queued = max(oldest_queued, now - float(created))
        return counts, oldest_queued

    def list(self, limit: int = 20, state: JobState | None = None, tenant: str | None = None,
             before: float | None = None) -> list[Job]:
        """Newest first, created before `before` (a cursor: the created_at of the last job of the previous page);
        with `tenant`, only its jobs. Index entries whose record expired are pruned on the way."""
        index = keys.tenant_jobs_key(tenant) if tenant else keys.JOB_INDEX_KEY
        jobs: list[Job] = []
        stale: list[str] = []
        top: str = "+inf" if before is None else f"({before!r}"
        for start in range(0, 10_000, 200):
            page: Any = self.redis.zrevrangebyscore(index, top, "-inf", start=start, num=200)
            ids = [text(i) for i in page]
            if not ids:
                break
            pipe = self.redis.pipeline(transaction=False)
            for job_id in ids:
                pipe.hgetall(keys.job_key(job_id))
            for job_id, data in zip(ids, pipe.execute(), strict=True):
                if not data:
                    stale.append(job_id)
                    continue
                job = _job(data.items())
                if (state is None or job.state is state) and len(jobs) < limit:
                    jobs.append(job)
            if len(jobs) >= limit:
                break
        if stale:  # pruned after paging, so ranks do not shift under the loop
            self.redis.zrem(index, *stale)
        return jobs


def _job(pairs: Iterable[tuple[bytes | str, bytes | str]]) -> Job:
    return Job.from_hash({text(k): text(v) for k, v in pairs})



def _flag(value: bool) -> str:
    return "1" if value else "0"


def _csv(sources: Iterable[JobState]) -> str:
    return ",".join(sorted(state.value for state in sources))
