"""The API's Prometheus metrics: requests by route and status, their latency, and requests refused by a quota.

Labels hold only route templates (`/v1/narrations/{job_id}`, never a path with an id in it), standard HTTP
methods, status codes and quota names: never a tenant, a key, a secret or text a caller sent. With several API
processes (`echoforge serve --workers N`) the metrics use prometheus_client's multiprocess mode, configured by
PROMETHEUS_MULTIPROC_DIR (`serve` makes one when it is not set), and /metrics adds up every process's files.
"""

from __future__ import annotations

import os
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, multiprocess, values
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from producer.errors import Quota

__all__ = ["ApiMetrics", "RequestMetrics"]

_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "unmatched"  # the route label of a request no route matched (404, or a path nothing serves)


class ApiMetrics:
    """The metric objects of one app and the registry /metrics shows: its own, or every process's files."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        owner: CollectorRegistry | None = self.registry
        if folder:
            values.ValueClass = values.get_value_class()  # prometheus_client chose its value class at import
            multiprocess.MultiProcessCollector(self.registry, folder)
            owner = None  # the metrics write to files; the collector reads every process's back
        self.requests = Counter("echoforge_api_requests", "HTTP requests answered, by route template, method and "
                                "status", ["route", "method", "status"], registry=owner)
        self.duration = Histogram("echoforge_api_request_duration_seconds", "From the request's arrival to the end "
                                  "of its response (event streams: the whole stream)", ["route", "method"],
                                  buckets=_SECONDS, registry=owner)
        self.refused = Counter("echoforge_api_rate_limited", "Requests refused for now by a quota (429 or 503 with "
                               "Retry-After)", ["quota"], registry=owner)
        for quota in Quota:
            self.refused.labels(quota.value)  # every quota shows, at 0 until it refuses

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route, method, str(status)).inc()
        self.duration.labels(route, method).observe(seconds)

    def refused_by(self, quota: Quota | None) -> None:
        if quota is not None:
            self.refused.labels(quota.value).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class RequestMetrics:
    """ASGI middleware: counts and times every HTTP request under its route template (read after routing)."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), 500

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            self.metrics.observe(_route(scope), _method(scope), status, time.perf_counter() - started)


def _route(scope: Scope) -> str:
    """The matched route's template; the router records the route in the scope it was handed."""
    route: Any = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else UNMATCHED


def _method(scope: Scope) -> str:
    method = str(scope.get("method", ""))
    return method if method in _METHODS else "other"
