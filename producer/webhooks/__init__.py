"""Signed webhooks (Standard Webhooks): addresses, signing, the webhook records in Redis, the relay from the outbox,
one delivery attempt, metrics and the webhook worker's Celery app. No torch and nothing from worker/."""
