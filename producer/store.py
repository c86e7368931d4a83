"""JobStore: job records in Redis. Every state change is one guarded, atomic Lua script."""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterable
from typing import Any

import redis

from producer import keys
from producer.errors import InvalidRequestError, JobNotFoundError
from producer.jobs import ALLOWED_TRANSITIONS, Job, JobState, NarrationRequest

__all__ = ["JobStore", "connect_redis", "is_job_id"]

_JOB_ID = re.compile(r"^[0-9a-f]{32}$")

# KEYS: job hash, job index, idempotency key ('' when none), unsent set. ARGV: job id, created_at, field/value pairs.
_CREATE = """
if KEYS[3] ~= '' then
  local existing = redis.call('GET', KEYS[3])
  if existing then return {0, existing} end
  redis.call('SET', KEYS[3], ARGV[1])
end
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
redis.call('ZADD', KEYS[4], ARGV[2], ARGV[1])
return {1, ARGV[1]}
"""

# KEYS: job hash, events channel, running-jobs set. ARGV: target state, allowed current states (comma separated),
# ttl to set (0: none), '1' to count an attempt, now ('' to skip the queue-deadline check), then field/value
# pairs. Returns {'ok', <the whole record, flattened>} or {'missing' | 'refused' | 'expired', current state}.
_TRANSITION = """
local current = redis.call('HGET', KEYS[1], 'state')
if not current then return {'missing', ''} end
if not string.find(',' .. ARGV[2] .. ',', ',' .. current .. ',', 1, true) then
  return {'refused', current}
end
if current == 'queued' and ARGV[5] ~= '' then
  local deadline = redis.call('HGET', KEYS[1], 'expires_at')
  if deadline and tonumber(deadline) < tonumber(ARGV[5]) then return {'expired', current} end
end
redis.call('HSET', KEYS[1], 'state', ARGV[1])
if ARGV[1] == 'running' then
  redis.call('SADD', KEYS[3], redis.call('HGET', KEYS[1], 'id'))
else
  redis.call('SREM', KEYS[3], redis.call('HGET', KEYS[1], 'id'))
end
if #ARGV > 5 then redis.call('HSET', KEYS[1], unpack(ARGV, 6)) end
if ARGV[4] == '1' then redis.call('HINCRBY', KEYS[1], 'attempts', 1) end
local ttl = tonumber(ARGV[3])
if ttl > 0 then
  redis.call('EXPIRE', KEYS[1], ttl)
  local idem = redis.call('HGET', KEYS[1], 'idempotency_redis_key')
  if idem then redis.call('EXPIRE', idem, ttl) end
end
redis.call('PUBLISH', KEYS[2], ARGV[1])
return {'ok', redis.call('HGETALL', KEYS[1])}
"""


# KEYS: job hash, events channel, dead-letter set, unsent set. ARGV: now, new queue deadline ('' for none).
# failed (except invalid_request) or expired -> queued, the earlier end kept in 'history'; the record stops expiring.
_REQUEUE = """
local current = redis.call('HGET', KEYS[1], 'state')
if not current then return {'missing', ''} end
local err = redis.call('HGET', KEYS[1], 'error')
if (current ~= 'failed' and current ~= 'expired') or (err and string.find(err, '"code":"invalid_request"', 1, true))
then return {'refused', current} end
local history = cjson.decode(redis.call('HGET', KEYS[1], 'history') or '[]')
table.insert(history, {state = current, error = err and cjson.decode(err) or cjson.null,
  attempts = tonumber(redis.call('HGET', KEYS[1], 'attempts') or '0'),
  finished_at = tonumber(redis.call('HGET', KEYS[1], 'finished_at') or '0')})
redis.call('HDEL', KEYS[1], 'error', 'finished_at', 'started_at', 'cancel_requested', 'expires_at')
redis.call('HSET', KEYS[1], 'state', 'queued', 'attempts', '0', 'history', cjson.encode(history))
if ARGV[2] ~= '' then redis.call('HSET', KEYS[1], 'expires_at', ARGV[2]) end
redis.call('PERSIST', KEYS[1])
local idem = redis.call('HGET', KEYS[1], 'idempotency_redis_key')
if idem then redis.call('PERSIST', idem) end
redis.call('ZREM', KEYS[3], redis.call('HGET', KEYS[1], 'id'))
redis.call('ZADD', KEYS[4], ARGV[1], redis.call('HGET', KEYS[1], 'id'))
redis.call('PUBLISH', KEYS[2], 'queued')
return {'ok', redis.call('HGETALL', KEYS[1])}
"""


class _QueueDeadlinePassed(Exception):
    """The job waited in the queue past its queue_ttl_s."""


# KEYS: lock. ARGV: token, ttl ms ('0' releases). Only the holder may refresh or release its lock.
_LOCK_HOLDER = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[2] == '0' then return redis.call('DEL', KEYS[1]) end
return redis.call('PEXPIRE', KEYS[1], ARGV[2])
"""


def connect_redis(url: str, retry_s: float) -> redis.Redis:
    """A client whose commands ride out a Redis restart: lost connections are retried with backoff for ~retry_s."""
    from redis.backoff import ExponentialBackoff
    from redis.retry import Retry

    backoff_cap = 2.0
    retries = max(3, int(retry_s / backoff_cap) + 5)  # 0.1, 0.2, ... 1.6 s, then every 2 s
    return redis.Redis.from_url(url, retry=Retry(ExponentialBackoff(cap=backoff_cap, base=0.1), retries),
                                retry_on_error=[redis.ConnectionError, redis.TimeoutError])


def is_job_id(value: object) -> bool:
    return isinstance(value, str) and bool(_JOB_ID.match(value))


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


class JobStore:
    """Reads and writes job records. Methods that change state return the new Job, or None when refused."""

    def __init__(self, client: redis.Redis, finished_ttl_s: int = keys.FINISHED_JOB_TTL_S) -> None:
        self.redis = client
        self.finished_ttl_s = finished_ttl_s
        self._create = client.register_script(_CREATE)
        self._transition = client.register_script(_TRANSITION)
        self._lock_holder = client.register_script(_LOCK_HOLDER)
        self._requeue = client.register_script(_REQUEUE)

    def create(self, request: NarrationRequest, queue: str) -> tuple[Job, bool]:
        """A new queued job, or (existing job, False) when its idempotency key was used before."""
        job_id, now = uuid.uuid4().hex, time.time()
        idem = keys.idempotency_key(request.idempotency_key) if request.idempotency_key else ""
        fields: dict[str, str] = {
            "id": job_id,
            "state": JobState.QUEUED.value,
            "request": _dumps(request.model_dump()),
            "created_at": repr(now),
            "attempts": "0",
            "queue": queue,
        }
        if request.queue_ttl_s:
            fields["expires_at"] = repr(now + request.queue_ttl_s)
        if idem:
            fields["idempotency_redis_key"] = idem
        flat = [item for pair in fields.items() for item in pair]
        created, found_id = self._create(keys=[keys.job_key(job_id), keys.JOB_INDEX_KEY, idem, keys.UNSENT_JOBS_KEY],
                                         args=[job_id, repr(now), *flat])
        return (Job.from_hash(fields), True) if created else (self.get(_text(found_id)), False)

    def get(self, job_id: str) -> Job:
        data: Any = self.redis.hgetall(keys.job_key(job_id)) if is_job_id(job_id) else {}
        if not data:
            raise JobNotFoundError(f"no job {job_id!r} (never created, or its record expired)")
        job = _job(data.items())
        deadline = data.get(b"expires_at")
        if job.state is JobState.QUEUED and deadline and float(deadline) < time.time():
            # Expire on read too, so a job no worker picked up does not wait forever.
            return self.transition(job_id, JobState.EXPIRED, {"finished_at": repr(time.time())},
                                   allowed_from=[JobState.QUEUED]) or self.get(job_id)
        return job

    def start(self, job_id: str, worker: str, model: dict[str, Any], **progress: Any) -> Job | None:
        """queued (or running, on redelivery) -> running; expired instead when its queue TTL passed."""
        now = time.time()
        fields = {"started_at": repr(now), "worker": worker, "model": _dumps(model), "progress": _dumps(progress)}
        try:
            return self.transition(job_id, JobState.RUNNING, fields, count_attempt=True, now=now)
        except _QueueDeadlinePassed:
            self.transition(job_id, JobState.EXPIRED, {"finished_at": repr(now)}, allowed_from=[JobState.QUEUED])
            return None

    def lock(self, job_id: str, token: str, ttl_s: float) -> bool:
        """Take the job's run lock; False while another delivery holds it."""
        return bool(self.redis.set(keys.job_lock_key(job_id), token, nx=True, px=int(ttl_s * 1000)))

    def refresh_lock(self, job_id: str, token: str, ttl_s: float) -> bool:
        return bool(self._lock_holder(keys=[keys.job_lock_key(job_id)], args=[token, int(ttl_s * 1000)]))

    def unlock(self, job_id: str, token: str) -> None:
        self._lock_holder(keys=[keys.job_lock_key(job_id)], args=[token, 0])

    def stale_running(self, grace_s: float) -> list[str]:
        """Running jobs whose run lock is gone (their worker died) and that started over `grace_s` ago."""
        stale = []
        for raw in self.redis.smembers(keys.RUNNING_JOBS_KEY):  # type: ignore[union-attr]
            job_id = _text(raw)
            state, started = self.redis.hmget(keys.job_key(job_id), ["state", "started_at"])  # type: ignore[misc]
            if state is None or _text(state) != JobState.RUNNING.value:
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
        return [_text(i) for i in ids]

    def dead_letter(self, job_id: str, message: str) -> Job | None:
        """Fail a job that keeps losing its worker, and list it as dead-lettered."""
        self.redis.zadd(keys.DEAD_LETTER_KEY, {job_id: time.time()})  # listed before anyone sees it failed
        return self.fail(job_id, "redelivery_limit", message)

    def dead_lettered(self) -> list[str]:
        return [_text(i) for i in self.redis.zrevrange(keys.DEAD_LETTER_KEY, 0, -1)]  # type: ignore[union-attr]

    def progress(self, job_id: str, **progress: Any) -> Job | None:
        """Record progress of a running job; the returned record tells whether a cancel was asked for."""
        return self.transition(job_id, JobState.RUNNING, {"progress": _dumps(progress)},
                               allowed_from=[JobState.RUNNING])

    def succeed(self, job_id: str, result: dict[str, Any], request: NarrationRequest, **progress: Any) -> Job | None:
        fields = {"result": _dumps(result), "finished_at": repr(time.time()),
                  "request": _dumps(request.without_text()), "progress": _dumps(progress)}
        return self.transition(job_id, JobState.SUCCEEDED, fields)

    def fail(self, job_id: str, code: str, message: str) -> Job | None:
        fields = {"error": _dumps({"code": code, "message": message}), "finished_at": repr(time.time())}
        return self.transition(job_id, JobState.FAILED, fields)

    def requeue(self, job_id: str) -> Job:
        """An operator's retry: a failed (but valid) or expired job is queued again under the same id.

        Its text, stored chunks and idempotency key are kept; `attempts` restarts and the earlier end is kept in
        `history`. Raises InvalidRequestError for jobs in any other state.
        """
        job = self.get(job_id)
        ttl = job.request.get("queue_ttl_s")
        status, record = self._requeue(keys=[keys.job_key(job_id), keys.job_events_channel(job_id),
                                             keys.DEAD_LETTER_KEY, keys.UNSENT_JOBS_KEY],
                                       args=[repr(time.time()), repr(time.time() + ttl) if ttl else ""])
        if _text(status) != "ok":
            reason = "its request is invalid" if job.error and job.error.get("code") == "invalid_request" \
                else f"it is {_text(record) or 'gone'}"
            raise InvalidRequestError(f"job {job_id} cannot be retried: {reason} (only failed or expired jobs can)")
        return _job(zip(record[::2], record[1::2], strict=True))

    def cancel(self, job_id: str) -> Job:
        """A queued job is canceled at once; a running one is asked to stop at its next check."""
        done = self.transition(job_id, JobState.CANCELED, {"finished_at": repr(time.time())},
                               allowed_from=[JobState.QUEUED])
        if done is None:
            self.transition(job_id, JobState.RUNNING, {"cancel_requested": "1"},
                            allowed_from=[JobState.RUNNING])
        return self.get(job_id)

    def finish_canceled(self, job_id: str) -> Job | None:
        return self.transition(job_id, JobState.CANCELED, {"finished_at": repr(time.time())},
                               allowed_from=[JobState.RUNNING])

    def transition(
        self,
        job_id: str,
        target: JobState,
        fields: dict[str, str],
        allowed_from: Iterable[JobState] | None = None,
        count_attempt: bool = False,
        now: float | None = None,
    ) -> Job | None:
        """Move a job to `target` and write `fields`, atomically, only from an allowed state."""
        sources = list(allowed_from) if allowed_from is not None else [
            state for state, targets in ALLOWED_TRANSITIONS.items() if target in targets
        ]
        ttl = self.finished_ttl_s if target.is_terminal else 0
        flat = [item for pair in fields.items() for item in pair]
        status, record = self._transition(
            keys=[keys.job_key(job_id), keys.job_events_channel(job_id), keys.RUNNING_JOBS_KEY],
            args=[target.value, ",".join(s.value for s in sources), ttl, "1" if count_attempt else "0",
                  "" if now is None else repr(now), *flat],
        )
        status = _text(status)
        if status == "missing":
            raise JobNotFoundError(f"no job {job_id!r}")
        if status == "expired":
            raise _QueueDeadlinePassed(job_id)
        if status == "refused":
            return None
        return _job(zip(record[::2], record[1::2], strict=True))

    def list(self, limit: int = 20, state: JobState | None = None) -> list[Job]:
        """Newest first; index entries whose record expired are pruned on the way."""
        jobs: list[Job] = []
        stale: list[str] = []
        for start in range(0, 10_000, 200):
            page: Any = self.redis.zrevrange(keys.JOB_INDEX_KEY, start, start + 199)
            ids = [_text(i) for i in page]
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
            self.redis.zrem(keys.JOB_INDEX_KEY, *stale)
        return jobs


def _job(pairs: Iterable[tuple[bytes | str, bytes | str]]) -> Job:
    return Job.from_hash({_text(k): _text(v) for k, v in pairs})


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
