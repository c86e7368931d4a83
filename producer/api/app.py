"""The ASGI app: `echoforge serve` runs it with uvicorn (`create_app_from_environment` is the factory)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import redis.asyncio as aioredis
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException

from producer.api import books, narrations, openai_speech, voices, webhooks
from producer.api.metrics import ApiMetrics, RequestMetrics
from producer.api.problems import Problem, handle_error, problem
from producer.api.studio import mount_studio
from producer.api_keys import ApiKeyStore
from producer.client import NarrationClient
from producer.errors import EchoForgeError, ErrorCode, RefusedForNowError
from producer.quotas import Quotas
from producer.settings import Settings
from producer.storage import open_storage
from producer.webhooks.store import WebhookStore

__all__ = ["create_app", "create_app_from_environment"]

_CODE_OF_STATUS = {401: ErrorCode.UNAUTHORIZED, 403: ErrorCode.FORBIDDEN, 404: ErrorCode.NOT_FOUND,
                   405: ErrorCode.INVALID_REQUEST, 413: ErrorCode.PAYLOAD_TOO_LARGE,
                   415: ErrorCode.UNSUPPORTED_MEDIA_TYPE}


def create_app(settings: Settings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.settings = settings
        app.state.client = NarrationClient(settings)
        app.state.api_keys = ApiKeyStore(app.state.client.jobs.redis)
        app.state.quotas = Quotas(app.state.client.jobs, settings)
        app.state.webhooks = WebhookStore(app.state.client.jobs.redis)
        app.state.storage = open_storage(settings)
        app.state.async_redis = aioredis.Redis.from_url(settings.redis_url)
        yield
        await app.state.async_redis.aclose()
        app.state.client.close()

    app = FastAPI(title="EchoForge", version="1", lifespan=lifespan,
                  description="Long-form text to speech with Sesame CSM-1B: durable narration jobs over HTTP.",
                  responses={500: {"model": Problem, "description": "internal_error"}})
    app.state.metrics = ApiMetrics()
    app.add_middleware(RequestMetrics, metrics=app.state.metrics)
    app.include_router(narrations.router)
    app.include_router(voices.router)
    app.include_router(books.router)
    app.include_router(webhooks.router)
    app.include_router(openai_speech.router)
    mount_studio(app)
    app.add_exception_handler(EchoForgeError, handle_error)
    app.add_exception_handler(RefusedForNowError, _refused_for_now)
    app.add_exception_handler(RequestValidationError, _invalid_parameters)
    app.add_exception_handler(HTTPException, _http_error)

    @app.get("/healthz", tags=["health"])
    def alive() -> dict[str, str]:
        """The process answers (liveness)."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], responses={503: {"model": Problem, "description": "Redis unreachable"}})
    async def ready(request: Request) -> Any:
        """Redis answers (readiness): without it nothing can be queued or read."""
        try:
            await run_in_threadpool(request.app.state.client.jobs.redis.ping)
        except Exception as e:
            return problem(ErrorCode.OVERLOADED, f"Redis is unreachable ({type(e).__name__})", status=503)
        return {"status": "ready"}

    @app.get("/metrics", tags=["health"], response_class=Response,
             responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text format"}})
    def metrics(request: Request) -> Response:
        """Prometheus metrics of the API (every process's, with `--workers N`); see docs/metrics.md."""
        return Response(request.app.state.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    return app


async def _refused_for_now(request: Request, error: Exception) -> JSONResponse:
    """A quota refused the request: counted by quota, then answered like any error (with Retry-After)."""
    assert isinstance(error, RefusedForNowError)
    request.app.state.metrics.refused_by(error.quota)
    return await handle_error(request, error)


async def _invalid_parameters(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, RequestValidationError)
    fields = [(".".join(str(p) for p in item["loc"][1:]) or str(item["loc"][0]), str(item["msg"]))
              for item in error.errors()]
    return problem(ErrorCode.INVALID_REQUEST, "invalid parameters: " + "; ".join(f"{f}: {m}" for f, m in fields),
                   fields=fields)


async def _http_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, HTTPException)
    code = _CODE_OF_STATUS.get(error.status_code, ErrorCode.INTERNAL_ERROR)
    return problem(code, str(error.detail), status=error.status_code)


def create_app_from_environment() -> FastAPI:
    return create_app(Settings())
