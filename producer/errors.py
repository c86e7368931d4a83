"""The producer's exception tree: everything a client call can raise derives from EchoForgeError."""

from __future__ import annotations

__all__ = [
    "EchoForgeError",
    "InvalidRequestError",
    "JobNotFoundError",
    "JobNotReadyError",
    "StorageError",
    "StorageUnavailableError",
    "SubmitError",
]


class EchoForgeError(Exception):
    """Base of every EchoForge error a client sees."""


class InvalidRequestError(EchoForgeError, ValueError):
    """The request was refused before anything was enqueued; the message says which field and why."""


class JobNotFoundError(EchoForgeError, LookupError):
    """No job with that id (it never existed, or its record expired)."""


class SubmitError(EchoForgeError):
    """The job could not be enqueued; its record is marked failed so nothing is left dangling."""


class JobNotReadyError(EchoForgeError):
    """The job has not (or not successfully) finished, so it has no narration yet."""


class StorageError(EchoForgeError):
    """Reading or writing the object store failed (after the client's own retries)."""


class StorageUnavailableError(StorageError):
    """The object store stayed unreachable (or kept answering 5xx) for the whole retry window."""
