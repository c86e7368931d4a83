"""The webhook worker's Prometheus metrics: deliveries by outcome, served on ECHOFORGE_METRICS_PORT (0: off) by the
main process, where the threads pool runs every delivery. Labels are outcomes only: never a URL or a secret."""

from __future__ import annotations

import logging
from typing import Any

from prometheus_client import CollectorRegistry, Counter, start_http_server

from producer.webhooks.delivery import Outcome

__all__ = ["WebhookMetrics"]

log = logging.getLogger(__name__)


class WebhookMetrics:
    def __init__(self, port: int) -> None:
        self.port = port
        self.registry = CollectorRegistry()
        self.deliveries = Counter("echoforge_webhook_deliveries", "Webhook delivery attempts, by outcome",
                                  ["outcome"], registry=self.registry)
        for outcome in Outcome:  # every outcome is reported from the start, at 0
            self.deliveries.labels(outcome.value)
        self._server: Any = None

    def count(self, outcome: Outcome) -> None:
        self.deliveries.labels(outcome.value).inc()

    def start_server(self) -> None:
        if not self.port or self._server is not None:
            return
        try:
            self._server, _ = start_http_server(self.port, registry=self.registry)
        except OSError as e:
            log.error("metrics off: cannot serve on port %d: %s", self.port, e)
            return
        log.info("webhook metrics on :%d/metrics", self.port)

    def stop_server(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None
