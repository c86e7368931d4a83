"""The one error vocabulary: every code a user can see, and the one exception tree, each exception with its code."""

from __future__ import annotations

from collections.abc import Iterator
from enum import Enum
from typing import ClassVar

__all__ = [
    "EchoForgeError",
    "ErrorCode",
    "ForbiddenError",
    "InvalidRequestError",
    "JobBusyError",
    "JobNotFoundError",
    "JobNotReadyError",
    "JobStateError",
    "MalformedRequestError",
    "NarrationTimeoutError",
    "PayloadTooLargeError",
    "Quota",
    "RefusedForNowError",
    "StorageError",
    "StorageUnavailableError",
    "SubmitError",
    "UnauthorizedError",
    "UnsupportedMediaTypeError",
    "WebhookAddressError",
    "WebhookAddressRefusedError",
    "error_chain",
    "time_limit_hit",
]


class ErrorCode(str, Enum):
    """What went wrong, as a job record's `error.code`, a CLI message and (later) an HTTP problem's `code`."""

    INVALID_REQUEST = "invalid_request"
    NOT_FOUND = "not_found"
    NOT_READY = "not_ready"
    CONFLICT = "conflict"
    MODEL_UNAVAILABLE = "model_unavailable"
    SYNTHESIS_FAILED = "synthesis_failed"
    STORAGE_UNAVAILABLE = "storage_unavailable"
    STORAGE_ERROR = "storage_error"
    TIMEOUT = "timeout"
    ENQUEUE_FAILED = "enqueue_failed"
    WORKER_MISCONFIGURED = "worker_misconfigured"
    REDELIVERY_LIMIT = "redelivery_limit"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    RATE_LIMITED = "rate_limited"
    QUOTA_EXCEEDED = "quota_exceeded"
    OVERLOADED = "overloaded"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    INTERNAL_ERROR = "internal_error"


class Quota(str, Enum):
    """Which limit refused a request for now (an HTTP problem's `quota`, a metrics label)."""

    REQUEST_RATE = "request_rate"  # a tenant's requests per second (token bucket)
    QUEUED_JOBS = "queued_jobs"  # a tenant's jobs queued at once
    CHARACTERS_PER_DAY = "characters_per_day"  # a tenant's characters submitted per UTC day
    QUEUE_DEPTH = "queue_depth"  # the whole queue's depth (back-pressure)


class EchoForgeError(Exception):
    """The root of every EchoForge error (the model layer's CSMModelError included)."""

    code: ClassVar[ErrorCode] = ErrorCode.INTERNAL_ERROR


class InvalidRequestError(EchoForgeError, ValueError):
    """The request was refused before anything was enqueued; the message says which field and why.

    `fields` lists (field, problem) pairs when the request's fields were at fault.
    """

    code = ErrorCode.INVALID_REQUEST

    def __init__(self, message: str, fields: list[tuple[str, str]] | None = None) -> None:
        super().__init__(message)
        self.fields = fields or []


class MalformedRequestError(InvalidRequestError):
    """The request body is not what it claims to be (not JSON, not UTF-8): HTTP 400 rather than 422."""


class WebhookAddressError(InvalidRequestError):
    """A webhook URL whose host does not resolve."""

    def __init__(self, message: str) -> None:
        super().__init__(message, [("webhook_url", message.removeprefix("webhook_url: "))])


class WebhookAddressRefusedError(WebhookAddressError):
    """A webhook URL whose host resolves to a loopback, private, link-local, reserved, multicast or metadata address
    (refused unless ECHOFORGE_WEBHOOK_ALLOW_PRIVATE)."""


class PayloadTooLargeError(EchoForgeError):
    """The request body is over its size limit."""

    code = ErrorCode.PAYLOAD_TOO_LARGE


class UnsupportedMediaTypeError(EchoForgeError):
    """The request body's content type is not one this endpoint takes."""

    code = ErrorCode.UNSUPPORTED_MEDIA_TYPE


class JobNotFoundError(EchoForgeError, LookupError):
    """No job with that id (it never existed, or its record expired)."""

    code = ErrorCode.NOT_FOUND


class JobNotReadyError(EchoForgeError):
    """The job has not (or not successfully) finished, so it has no narration yet."""

    code = ErrorCode.NOT_READY


class JobStateError(EchoForgeError):
    """The job's state does not allow this (e.g. retrying a job that has not failed)."""

    code = ErrorCode.CONFLICT


class JobBusyError(JobStateError):
    """Another delivery of this job holds its run lock (Redis redelivered it while it still runs)."""


class SubmitError(EchoForgeError):
    """The job could not be enqueued; its record is marked failed so nothing is left dangling."""

    code = ErrorCode.ENQUEUE_FAILED


class StorageError(EchoForgeError):
    """The object store answered but refused (no such bucket, access denied), or a local file failed."""

    code = ErrorCode.STORAGE_ERROR


class StorageUnavailableError(StorageError):
    """The object store stayed unreachable (or kept answering 5xx) for the whole retry window."""

    code = ErrorCode.STORAGE_UNAVAILABLE


class UnauthorizedError(EchoForgeError):
    """No API key, or one that is unknown or revoked."""

    code = ErrorCode.UNAUTHORIZED


class ForbiddenError(EchoForgeError):
    """The API key lacks the scope this needs."""

    code = ErrorCode.FORBIDDEN


class RefusedForNowError(EchoForgeError):
    """Refused for a while (rate limit, quota, a full queue): try again after `retry_after_s`; `quota` names the
    limit that refused it."""

    def __init__(self, message: str, code: ErrorCode, retry_after_s: float | None = None,
                 quota: Quota | None = None) -> None:
        super().__init__(message)
        self.code = code  # type: ignore[misc]  # one of RATE_LIMITED, QUOTA_EXCEEDED, OVERLOADED
        self.retry_after_s = retry_after_s
        self.quota = quota


class NarrationTimeoutError(EchoForgeError):
    """The job ran past its soft time limit."""

    code = ErrorCode.TIMEOUT


def error_chain(error: BaseException, limit: int = 10) -> Iterator[BaseException]:
    """The error, then what caused it or was being handled when it was raised, and so on (at most `limit`: an
    explicit `raise ... from` can make the chain a cycle)."""
    seen: BaseException | None = error
    for _ in range(limit):
        if seen is None:
            return
        yield seen
        seen = seen.__cause__ or seen.__context__


def time_limit_hit(error: BaseException) -> bool:
    """Celery's soft time limit is somewhere in the chain: it interrupted whatever the job was doing (an upload, a
    Redis call), and a library may have wrapped it; the job timed out, whatever wrapped it."""
    from celery.exceptions import SoftTimeLimitExceeded

    return any(isinstance(e, SoftTimeLimitExceeded) for e in error_chain(error))
