"""The one error vocabulary: every code a user can see, and the one exception tree, each exception with its code."""

from __future__ import annotations

from enum import Enum
from typing import ClassVar

__all__ = [
    "EchoForgeError",
    "ErrorCode",
    "InvalidRequestError",
    "JobBusyError",
    "JobNotFoundError",
    "JobNotReadyError",
    "JobStateError",
    "NarrationTimeoutError",
    "StorageError",
    "StorageUnavailableError",
    "SubmitError",
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
    INTERNAL_ERROR = "internal_error"


class EchoForgeError(Exception):
    """The root of every EchoForge error (the model layer's CSMModelError included)."""

    code: ClassVar[ErrorCode] = ErrorCode.INTERNAL_ERROR


class InvalidRequestError(EchoForgeError, ValueError):
    """The request was refused before anything was enqueued; the message says which field and why."""

    code = ErrorCode.INVALID_REQUEST


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


class NarrationTimeoutError(EchoForgeError):
    """The job ran past its soft time limit."""

    code = ErrorCode.TIMEOUT
