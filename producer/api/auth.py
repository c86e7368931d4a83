"""Who is calling: the API key in `Authorization: Bearer …`, checked against Redis on every request."""

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
    """A dependency: the calling key, which must hold `scope` (or admin)."""

    def caller(request: Request,
               credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> ApiKey:
        state = request.app.state
        if credentials is None:
            if not state.settings.allow_anonymous:
                raise UnauthorizedError("an API key is required: Authorization: Bearer <key>")
            return ApiKey("anonymous", state.settings.anonymous_tenant, tuple(s for s in SCOPES if s != "admin"), 0)
        key: ApiKey = state.api_keys.verify(credentials.credentials)
        if not key.allows(scope):
            raise ForbiddenError(f"API key {key.id} lacks the scope {scope}")
        return key

    return caller
