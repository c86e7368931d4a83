"""A job record as read from the store: what `status --json` shows."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from producer.request import NarrationRequest
from producer.states import JobState

__all__ = ["Job", "iso_time"]


def iso_time(ts: float | None) -> str | None:
    """Unix seconds as ISO 8601 in UTC, to the millisecond."""
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class Job:
    """A job record as read from the store. Timestamps are Unix seconds."""

    id: str
    state: JobState
    request: dict[str, Any]
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    attempts: int = 0
    worker: str | None = None
    cancel_requested: bool = False
    progress: dict[str, Any] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)  # earlier ends, each undone by `echoforge retry`
    tenant: str | None = None  # the API tenant that owns it; None for jobs submitted by operators (CLI, client)
    book_id: str | None = None  # the book this job narrates a part of
    book_part: str | None = None  # which part: "anchor" (the book's voice) or a chapter's index
    rerender: dict[str, Any] | None = None  # the latest re-render asked for: {chunks, text}

    @classmethod
    def from_hash(cls, data: dict[str, str]) -> Job:
        def number(name: str) -> float | None:
            return float(data[name]) if data.get(name) else None

        def obj(name: str) -> Any:
            return json.loads(data[name]) if data.get(name) else None

        return cls(
            id=data["id"],
            state=JobState(data["state"]),
            request=obj("request") or {},
            created_at=float(data["created_at"]),
            started_at=number("started_at"),
            finished_at=number("finished_at"),
            attempts=int(data.get("attempts") or 0),
            worker=data.get("worker") or None,
            cancel_requested=data.get("cancel_requested") == "1",
            progress=obj("progress") or {},
            model=obj("model") or {},
            result=obj("result"),
            error=obj("error"),
            history=obj("history") or [],
            tenant=data.get("tenant") or None,
            book_id=data.get("book_id") or None,
            book_part=data.get("book_part") or None,
            rerender=obj("rerender"),
        )

    def narration_request(self) -> NarrationRequest:
        return NarrationRequest.parse(self.request)

    def eta_s(self, now: float | None = None) -> float | None:
        """Seconds left, extrapolated from the chunks done so far."""
        done, total = self.progress.get("chunks_done", 0), self.progress.get("chunks_total", 0)
        made_now = done - self.progress.get("chunks_resumed", 0)  # chunks this attempt generated
        if self.state is not JobState.RUNNING or not self.started_at or made_now <= 0 or not total:
            return None
        elapsed = (now or time.time()) - self.started_at
        return round(elapsed / made_now * (total - done), 1)

    def to_public(self) -> dict[str, Any]:
        """What `status --json` prints: no request text, no secrets."""
        request = {k: v for k, v in self.request.items() if k != "text"}
        if "text" in self.request:
            request["text_chars"] = len(self.request["text"])
        return {
            "id": self.id,
            "tenant": self.tenant,
            "state": self.state.value,
            "created_at": iso_time(self.created_at),
            "started_at": iso_time(self.started_at),
            "finished_at": iso_time(self.finished_at),
            "attempts": self.attempts,
            "worker": self.worker,
            "progress": {**self.progress, "eta_s": self.eta_s()},
            "model": self.model,
            "request": request,
            "result": self.result,
            "error": self.error,
            "history": self.history,
            **({"book": {"id": self.book_id, "part": self.book_part}} if self.book_id else {}),
            **({"rerender": self.rerender} if self.rerender else {}),
        }
