"""The API's response models (OpenAPI documents them; the job record itself is producer/job.py's to_public)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from producer.states import JobState

__all__ = ["JobList", "JobOut"]


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


class JobList(BaseModel):
    data: list[JobOut]
    next_cursor: str | None = Field(default=None, description="pass as ?cursor= for the next (older) page")
