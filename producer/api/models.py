"""The API's response models (OpenAPI documents them; the job record itself is producer/job.py's to_public)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from producer.states import JobState

__all__ = ["AudioLink", "JobList", "JobOut", "VoiceList", "VoiceOut", "WebhookAttempt", "WebhookAttemptList"]


class JobOut(BaseModel):
    """A narration job, as `echoforge status --json` shows it."""

    id: str
    tenant: str | None = None
    state: JobState
    created_at: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    attempts: int = 0
    worker: str | None = None
    progress: dict[str, Any] = Field(default_factory=dict, description="chunks_done, chunks_total, audio_s, eta_s…")
    model: dict[str, Any] = Field(default_factory=dict, description="kind, id, revision, device, fallback_reason")
    request: dict[str, Any] = Field(default_factory=dict, description="the settings; the text's length")
    result: dict[str, Any] | None = Field(default=None, description="url, key, duration_s, sha256, captions…")
    error: dict[str, Any] | None = Field(default=None, description="code and message")
    history: list[dict[str, Any]] = Field(default_factory=list)


class AudioLink(BaseModel):
    """Where a finished narration's audio can be fetched without a key, for a player that cannot send one."""

    url: str | None = Field(description="a presigned URL (S3 storage), or null where the API serves the file itself: "
                                        "GET …/audio with the key")
    download_url: str | None = Field(default=None, description="the same, answered as an attachment "
                                                               "(`<job id>.<format>`): a browser saves it")
    expires_in_s: int | None = Field(default=None, description="how long the URLs are valid")


class JobList(BaseModel):
    data: list[JobOut]
    next_cursor: str | None = Field(default=None, description="pass as ?cursor= for the next (older) page")


class VoiceOut(BaseModel):
    """A saved voice: a checked recording and its transcript, for narrations to name as `voice_id`."""

    id: str
    tenant: str
    name: str | None = None
    transcript: str = Field(description="what the recording says (the narration's `voice_text`)")
    sha256: str = Field(description="the stored recording (mono 32-bit float WAV), content-addressed")
    seconds: float
    created_at: str


class VoiceList(BaseModel):
    data: list[VoiceOut]
    next_cursor: str | None = Field(default=None, description="pass as ?cursor= for the next (older) page")


class WebhookAttempt(BaseModel):
    """One attempt to deliver one of a job's webhooks."""

    webhook_id: str = Field(description="the `webhook-id` header: the same on every attempt of one event")
    event: str = Field(description="started, progress, succeeded, failed, canceled or expired")
    attempt: int = Field(description="1 for the first attempt")
    at: str = Field(description="when the attempt started")
    outcome: str = Field(description="delivered, failed_will_retry, gave_up or refused_private")
    status_code: int | None = Field(default=None, description="the receiver's HTTP status, when it answered")
    error: str | None = Field(default=None, description="why it failed")
    next_attempt_at: str | None = Field(default=None, description="when the next attempt is due, if any")


class WebhookAttemptList(BaseModel):
    data: list[WebhookAttempt]
