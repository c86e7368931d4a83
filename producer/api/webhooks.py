"""/v1/narrations/{id}/webhook-deliveries: every attempt to deliver a tenant's job's webhooks (never a secret)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request

from producer.api.auth import caller_with
from producer.api.models import WebhookAttemptList
from producer.api.problems import error_responses
from producer.api_keys import ApiKey
from producer.errors import ErrorCode

__all__ = ["router"]

router = APIRouter(prefix="/v1/narrations", tags=["webhooks"])
Reader = Annotated[ApiKey, Depends(caller_with("narrations:read"))]


@router.get("/{job_id}/webhook-deliveries", response_model=WebhookAttemptList, responses=error_responses(
    ErrorCode.UNAUTHORIZED, ErrorCode.FORBIDDEN, ErrorCode.RATE_LIMITED, ErrorCode.NOT_FOUND))
def webhook_deliveries(job_id: str, request: Request, key: Reader) -> dict[str, Any]:
    """The attempts to deliver this job's webhooks, oldest first (the newest 1,000 are kept): each with its
    `webhook-id`, event, attempt number, outcome, the receiver's status or the error, and when the next is due."""
    request.app.state.client.get(job_id, key.tenant)  # another tenant's job is "not found"
    return {"data": request.app.state.webhooks.attempts(job_id)}
