"""Job states and the one table of named transitions between them; the store applies each through a Lua script."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Literal, get_args

from producer.errors import ErrorCode

__all__ = ["DEFAULT_WEBHOOK_EVENTS", "TRANSITIONS", "WEBHOOK_EVENTS", "Deadline", "JobState", "Transition",
           "WebhookEvent"]

# What a webhook can announce (the payload's type is `narration.<event>`); a job asks for some of them.
WebhookEvent = Literal["started", "progress", "succeeded", "failed", "canceled", "expired"]
WEBHOOK_EVENTS: tuple[WebhookEvent, ...] = get_args(WebhookEvent)
DEFAULT_WEBHOOK_EVENTS: tuple[WebhookEvent, ...] = ("started", "succeeded", "failed", "canceled", "expired")


class JobState(str, Enum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"
    EXPIRED = "expired"

    @property
    def is_terminal(self) -> bool:
        return self not in (JobState.QUEUED, JobState.RUNNING)


class Deadline(str, Enum):
    """How a transition treats a queued job's queue deadline (`queue_ttl_s`)."""

    IGNORED = ""
    NOT_PASSED = "not_passed"  # refused (as overdue) once the deadline has passed: the job expires instead
    PASSED = "passed"  # only once the deadline has passed


@dataclass(frozen=True)
class Transition:
    """One named step: from which states to which, and what else happens atomically with it."""

    name: str
    sources: frozenset[JobState]
    target: JobState
    counts_attempt: bool = False
    deadline: Deadline = Deadline.IGNORED
    dead_letters: bool = False  # listed as dead-lettered in the same step
    releases_idempotency_key: bool = False  # a retry with the same key may create the job again
    retry: bool = False  # the earlier end goes to `history`, the record stops expiring (requeue script)
    hands_back: bool = False  # a draining worker's job, queued again: no attempt, lock released (hand_back script)
    refuses_error: ErrorCode | None = None  # a job that failed with this code cannot take this step
    webhook_event: WebhookEvent | None = None  # written to the webhook outbox in the same step, when the job asks

    def allows(self, state: JobState) -> bool:
        return state in self.sources


def _step(name: str, sources: set[JobState], target: JobState, **rules: object) -> Transition:
    return Transition(name, frozenset(sources), target, **rules)  # type: ignore[arg-type]


QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELED, EXPIRED = JobState

# Every way a job's state may change. A terminal state changes only by `retry`.
# running -> running is a redelivery: the same job started again after its worker died.
START = _step("start", {QUEUED, RUNNING}, RUNNING, counts_attempt=True, deadline=Deadline.NOT_PASSED,
              webhook_event="started")
PROGRESS = _step("progress", {RUNNING}, RUNNING, webhook_event="progress")  # throttled (webhook_progress_interval_s)
REQUEST_CANCEL = _step("request_cancel", {RUNNING}, RUNNING)  # a running job stops at its next check
SUCCEED = _step("succeed", {RUNNING}, SUCCEEDED, webhook_event="succeeded")
FAIL = _step("fail", {QUEUED, RUNNING}, FAILED, webhook_event="failed")
FAIL_TO_ENQUEUE = _step("fail_to_enqueue", {QUEUED}, FAILED, releases_idempotency_key=True, webhook_event="failed")
DEAD_LETTER = _step("dead_letter", {RUNNING}, FAILED, dead_letters=True, webhook_event="failed")
CANCEL = _step("cancel", {QUEUED}, CANCELED, webhook_event="canceled")
FINISH_CANCEL = _step("finish_cancel", {RUNNING}, CANCELED, webhook_event="canceled")
EXPIRE = _step("expire", {QUEUED}, EXPIRED, deadline=Deadline.PASSED, webhook_event="expired")
RETRY = _step("retry", {FAILED, EXPIRED}, QUEUED, retry=True, refuses_error=ErrorCode.INVALID_REQUEST)
# A worker asked to stop (warm shutdown) hands its job back: queued again at once, not counted as an attempt, a
# `handed_back` entry in `history`; the next worker resumes it from its stored chunks.
HAND_BACK = _step("hand_back", {RUNNING}, QUEUED, hands_back=True)
# A succeeded job queued again to re-render some of its chunks (its record's `rerender` says which); its result
# stays the current version until the new one replaces it.
RERENDER = _step("rerender", {SUCCEEDED}, QUEUED, retry=True)

TRANSITIONS: tuple[Transition, ...] = (START, PROGRESS, REQUEST_CANCEL, SUCCEED, FAIL, FAIL_TO_ENQUEUE, DEAD_LETTER,
                                       CANCEL, FINISH_CANCEL, EXPIRE, RETRY, RERENDER, HAND_BACK)
