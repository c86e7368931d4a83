"""The Celery configuration shared by the worker app and the producer's sending app."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from producer import keys
from producer.settings import Settings

if TYPE_CHECKING:
    from celery import Celery

__all__ = ["celery_config", "redis_priority", "send_job"]


def redis_priority(priority: int) -> int:
    """Our priority runs 0 (lowest) to 9 (most urgent); the Redis transport serves 0 first."""
    return 9 - priority


def send_job(app: Celery, job_id: str, queue: str, priority: int | None = None) -> None:
    """The one narration message a job gets: the task by name, the job id as its only argument and as the task id."""
    app.send_task(keys.NARRATE_TASK, args=[job_id], task_id=job_id, queue=queue,
                  priority=None if priority is None else redis_priority(priority))


def celery_config(settings: Settings) -> dict[str, Any]:
    """One dict for both sides, so serializer, queue and visibility timeout can never disagree."""
    transport = {
        "visibility_timeout": settings.broker_visibility_timeout_s,
        "priority_steps": list(keys.PRIORITY_STEPS),
        "queue_order_strategy": "priority",
    }
    return {
        "broker_url": settings.redis_url,
        "result_backend": settings.redis_url,
        "broker_transport_options": transport,
        "result_backend_transport_options": {"visibility_timeout": settings.broker_visibility_timeout_s},
        "broker_connection_retry_on_startup": True,
        "task_serializer": "json",
        "result_serializer": "json",
        "event_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        # Job state lives in the JobStore; the Celery result backend is not polled.
        "task_ignore_result": True,
        "task_track_started": True,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "task_time_limit": settings.job_time_limit_s,
        "task_soft_time_limit": settings.soft_time_limit_s,
        "task_default_queue": settings.queue,
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        # Loading CSM takes far longer than the 4 s default a pool child gets to start.
        "worker_proc_alive_timeout": settings.model_load_timeout_s,
    }
