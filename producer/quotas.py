"""Quotas and back-pressure: a tenant's request rate (a token bucket), its characters per UTC day, and the depth of
the whole queue. Each check is one Redis round trip (the per-tenant ones a Lua script in producer/lua/), so every
API process shares the same counts; a refusal is a RefusedForNowError naming the quota, with when to try again.
A tenant's cap on jobs queued at once is enforced by JobStore.create itself (`max_queued`)."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from producer import keys
from producer.errors import ErrorCode, Quota, RefusedForNowError
from producer.settings import Settings
from producer.store import JobStore, lua_script

__all__ = ["QUEUE_DEPTH_CACHE_S", "CharacterCharge", "Quotas"]

# How long one process reuses its reading of the queue's depth: one Redis call per this many seconds, however
# many requests arrive.
QUEUE_DEPTH_CACHE_S = 0.5
# A day's character count outlives its day by a day, then expires.
DAILY_CHARS_TTL_S = 2 * 24 * 3600


@dataclass(frozen=True)
class CharacterCharge:
    """Characters added to a tenant's count for one day, to give back when the submit creates no job."""

    key: str
    characters: int


class Quotas:
    """The admission checks of one API process; the counts live in Redis."""

    def __init__(self, jobs: JobStore, settings: Settings, clock: Callable[[], float] = time.time) -> None:
        self.jobs = jobs
        self.settings = settings
        self.clock = clock
        self._take_token = jobs.redis.register_script(lua_script("take_token"))
        self._daily_chars = jobs.redis.register_script(lua_script("daily_chars"))
        self._depth_lock = threading.Lock()
        self._depth: tuple[float, int] = (-math.inf, 0)  # (monotonic time read, messages waiting)

    def take_request_token(self, tenant: str) -> None:
        """One request of `tenant`: refused (RATE_LIMITED) while its bucket is empty."""
        rate, burst = self.settings.tenant_rate_limit_per_s, self.settings.tenant_rate_limit_burst
        if rate <= 0:
            return
        taken, wait = self._take_token(keys=[keys.tenant_bucket_key(tenant)], args=[repr(rate), burst])
        if not taken:
            wait_s = float(wait)
            raise RefusedForNowError(f"quota request_rate: tenant {tenant} is over its rate limit of {rate:g} "
                                     f"requests a second (bursts of {burst}); retry in {wait_s:.2f} s",
                                     ErrorCode.RATE_LIMITED, retry_after_s=wait_s, quota=Quota.REQUEST_RATE)

    def charge_characters(self, tenant: str, characters: int) -> CharacterCharge | None:
        """Add a submit's characters to `tenant`'s count for today (UTC), or refuse (QUOTA_EXCEEDED) when that would
        go over its daily limit; a refused submit adds nothing. None when there is no limit."""
        limit = self.settings.tenant_max_chars_per_day
        if limit <= 0:
            return None
        now = datetime.fromtimestamp(self.clock(), UTC)
        key = keys.tenant_daily_chars_key(tenant, now.date().isoformat())
        added, used = self._daily_chars(keys=[key], args=[characters, limit, DAILY_CHARS_TTL_S])
        if not added:
            midnight = datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), UTC)
            raise RefusedForNowError(
                f"quota characters_per_day: tenant {tenant} has submitted {int(used)} of its {limit} characters "
                f"today and this text has {characters}; the count starts again at 00:00 UTC",
                ErrorCode.QUOTA_EXCEEDED, retry_after_s=(midnight - now).total_seconds(),
                quota=Quota.CHARACTERS_PER_DAY)
        return CharacterCharge(key, characters)

    def refund(self, charge: CharacterCharge | None) -> None:
        """Give back characters charged for a submit that created no job (refused, invalid, not enqueued, or an
        idempotency key used before)."""
        if charge is not None:
            self._daily_chars(keys=[charge.key], args=[-charge.characters, 0, DAILY_CHARS_TTL_S])

    def check_queue_depth(self) -> None:
        """Refuse new work (OVERLOADED) while more messages than `max_queue_depth` wait in the queue."""
        limit = self.settings.max_queue_depth
        if limit <= 0:
            return
        depth = self._queue_depth()
        if depth > limit:
            raise RefusedForNowError(f"quota queue_depth: {depth} jobs are waiting in the queue, over its limit of "
                                     f"{limit}; try again later", ErrorCode.OVERLOADED,
                                     retry_after_s=self.settings.overloaded_retry_after_s, quota=Quota.QUEUE_DEPTH)

    def _queue_depth(self) -> int:
        """Messages waiting in every priority list of the queue, read at most every QUEUE_DEPTH_CACHE_S seconds."""
        with self._depth_lock:
            read_at, depth = self._depth
            if time.monotonic() - read_at >= QUEUE_DEPTH_CACHE_S:
                depth = sum(self.jobs.queue_depths(self.settings.queue))
                self._depth = (time.monotonic(), depth)
            return depth
