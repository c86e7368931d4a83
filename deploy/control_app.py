"""The Celery app for Flower and control commands: the workers' Celery settings, none of their code.

`celery -A control_app flower` and the workers' health checks (`celery -A control_app inspect ping`) use it.
Flower must share the broker's visibility timeout: a Redis client with a shorter one would put long-running jobs'
messages back in the queue. worker.app has the same settings but imports the model layer (torch): seconds of
start-up for every probe, and no torch at all in the light image. This needs only producer/.
"""

from __future__ import annotations

from celery import Celery

from producer.celery_config import celery_config
from producer.settings import Settings

app = Celery("echoforge")
app.conf.update(celery_config(Settings()))
