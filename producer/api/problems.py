"""RFC 9457 problem details: every error a caller sees, with its code from the one ErrorCode enum."""

from __future__ import annotations

import math
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from producer.errors import (
    EchoForgeError,
    ErrorCode,
    InvalidRequestError,
    MalformedRequestError,
    Quota,
    RefusedForNowError,
)

__all__ = ["HTTP_STATUS", "Problem", "ProblemField", "error_responses", "handle_error", "problem"]

MEDIA_TYPE = "application/problem+json"

# The one mapping from error code to HTTP status; codes not named are server errors (500).
HTTP_STATUS: dict[ErrorCode, int] = {
    ErrorCode.INVALID_REQUEST: 422,
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.NOT_READY: 409,
    ErrorCode.CONFLICT: 409,
    ErrorCode.PAYLOAD_TOO_LARGE: 413,
    ErrorCode.UNSUPPORTED_MEDIA_TYPE: 415,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.QUOTA_EXCEEDED: 429,
    ErrorCode.STORAGE_ERROR: 502,
    ErrorCode.OVERLOADED: 503,
    ErrorCode.ENQUEUE_FAILED: 503,
    ErrorCode.STORAGE_UNAVAILABLE: 503,
}


class ProblemField(BaseModel):
    field: str
    message: str


class OpenAIError(BaseModel):
    """The same error as OpenAI's APIs spell it, so OpenAI's clients show its message."""

    message: str
    type: str
    code: str
    param: str | None = None


class Problem(BaseModel):
    """An error response (`application/problem+json`)."""

    type: str
    title: str
    status: int
    detail: str
    code: ErrorCode
    quota: Quota | None = None
    errors: list[ProblemField] | None = None
    error: OpenAIError | None = None  # an extension member: the same error, for clients of OpenAI-style APIs


def problem(code: ErrorCode, detail: str, status: int | None = None, fields: list[tuple[str, str]] | None = None,
            retry_after_s: float | None = None, quota: Quota | None = None) -> JSONResponse:
    """A problem response; `retry_after_s` becomes `Retry-After` in whole seconds, rounded up (never early)."""
    status = status or HTTP_STATUS.get(code, 500)
    body = Problem(type=f"https://echoforge.dev/problems/{code.value}", title=code.value.replace("_", " "),
                   status=status, detail=detail, code=code, quota=quota,
                   errors=[ProblemField(field=f, message=m) for f, m in fields] if fields else None,
                   error=OpenAIError(message=detail, type=code.value, code=code.value,
                                     param=fields[0][0] if fields else None))
    headers = {"Retry-After": str(max(1, math.ceil(retry_after_s)))} if retry_after_s is not None else None
    return JSONResponse(body.model_dump(mode="json", exclude_none=True), status_code=status, headers=headers,
                        media_type=MEDIA_TYPE)


async def handle_error(request: Request, error: Exception) -> JSONResponse:
    """Every EchoForgeError becomes a problem response; messages never hold secrets (see producer/errors.py)."""
    assert isinstance(error, EchoForgeError)
    fields = error.fields if isinstance(error, InvalidRequestError) else None
    retry = error.retry_after_s if isinstance(error, RefusedForNowError) else None
    quota = error.quota if isinstance(error, RefusedForNowError) else None
    status = 400 if isinstance(error, MalformedRequestError) else None
    return problem(error.code, str(error), status, fields, retry, quota)


def error_responses(*codes: ErrorCode) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for these error codes, each a Problem."""
    by_status: dict[int, list[str]] = {}
    for code in codes:
        by_status.setdefault(HTTP_STATUS.get(code, 500), []).append(code.value)
    return {status: {"model": Problem, "description": ", ".join(names),
                     "content": {MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}}}
            for status, names in sorted(by_status.items())}
