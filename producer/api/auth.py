"""Who is calling: the API key in `Authorization: Bearer …`, checked against Redis on every request, and its
tenant's request rate limit (producer/quotas.py), taken on every authenticated request."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from producer.api_keys import SCOPES, ApiKey
from producer.errors import ForbiddenError, UnauthorizedError

__all__ = ["caller_with"]

_bearer = HTTPBearer(auto_error=False, description="An API key from `echoforge keys create`")


def caller_with(scope: str) -> Callable[..., ApiKey]:
    """A dependency: the calling key, which must hold `scope` (or admin), within its tenant's rate limit."""

    def caller(request: Request,
               credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> ApiKey:
        state = request.app.state
        key = _key(request, credentials)
        state.quotas.take_request_token(key.tenant)  # RATE_LIMITED (429, Retry-After) while its bucket is empty
        if not key.allows(scope):
            raise ForbiddenError(f"API key {key.id} lacks the scope {scope}")
        return key

    return caller


def _key(request: Request, credentials: HTTPAuthorizationCredentials | None) -> ApiKey:
    settings = request.app.state.settings
    if credentials is None:
        if not settings.allow_anonymous:
            raise UnauthorizedError("an API key is required: Authorization: Bearer <key>")
        return ApiKey("anonymous", settings.anonymous_tenant, tuple(s for s in SCOPES if s != "admin"), 0)
    key: ApiKey = request.app.state.api_keys.verify(credentials.credentials)
    return key
