"""The service worker: `celery -A producer.webhooks.app worker -Q echoforge.webhooks,echoforge.books --pool threads`.

It delivers webhooks and assembles books (producer/books/tasks.py), work that is not narration.

The composition root of webhook delivery: the deliver task on its own queue (never a GPU worker's), the relay and
the metrics server in the worker's main process. No torch, nothing from worker/.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

import redis
from celery import Celery
from celery.signals import worker_init, worker_ready, worker_shutdown

from producer import keys
from producer.api_keys import ApiKeyStore
from producer.celery_config import celery_config
from producer.settings import Settings
from producer.store import JobStore, connect_redis
from producer.webhooks.delivery import Deliverer
from producer.webhooks.metrics import WebhookMetrics
from producer.webhooks.relay import Relay
from producer.webhooks.store import WebhookStore

__all__ = ["WebhookWorker", "app", "settings", "webhooks"]


class WebhookWorker:
    """What one webhook worker holds: its stores, the deliverer, the relay and the metrics."""

    def __init__(self, app: Celery, settings: Settings) -> None:
        client = connect_redis(settings)
        self.app, self.store = app, WebhookStore(client)
        self.metrics = WebhookMetrics(settings.metrics_port)
        self.deliverer = Deliverer(settings, self.store, ApiKeyStore(client), self.metrics.count)
        jobs = JobStore(client, settings.finished_job_ttl_s, settings.webhook_progress_interval_s)
        self.relay = Relay(settings, jobs, self.store, self.send, consumer=f"{socket.gethostname()}:{os.getpid()}")

    def send(self, webhook_id: str) -> None:
        self.app.send_task(keys.WEBHOOK_DELIVER_TASK, args=[webhook_id], queue=keys.WEBHOOK_QUEUE)

    def connect(self) -> None:
        worker_init.connect(self.worker_init, weak=False)
        worker_ready.connect(self.worker_ready, weak=False)
        worker_shutdown.connect(self.worker_shutdown, weak=False)

    def worker_init(self, **_: Any) -> None:
        logging.getLogger("httpx").setLevel(logging.WARNING)  # it would log every URL at INFO
        self.metrics.start_server()

    def worker_ready(self, **_: Any) -> None:
        self.relay.start()

    def worker_shutdown(self, **_: Any) -> None:
        self.relay.stop()
        self.metrics.stop_server()


settings = Settings()
app = Celery("echoforge-webhooks", set_as_current=True)
app.conf.update(celery_config(settings))
app.conf.update(task_default_queue=keys.WEBHOOK_QUEUE, include=["producer.books.tasks"])
webhooks = WebhookWorker(app, settings)
webhooks.connect()


@app.task(name=keys.WEBHOOK_DELIVER_TASK, autoretry_for=(redis.RedisError,), retry_backoff=True, max_retries=10)
def deliver(webhook_id: str) -> None:
    """One attempt of one message; the next, if any, is scheduled in Redis and sent by a relay when due."""
    webhooks.deliverer.deliver(webhook_id)
