"""The contract between producers and workers: the narration request, the job record, the job states."""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
import unicodedata
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
    model_validator,
)

from producer.errors import InvalidRequestError

__all__ = [
    "ALLOWED_TRANSITIONS",
    "MAX_PAYLOAD_BYTES",
    "MAX_TEXT_CHARS",
    "Job",
    "JobState",
    "NarrationRequest",
    "normalize_text",
]

MAX_TEXT_CHARS = 100_000
MAX_PAYLOAD_BYTES = 1024 * 1024
MAX_SPEAKER_ID = 99
MAX_TOP_K = 2048  # the size of one CSM audio codebook
MAX_QUEUE_TTL_S = 7 * 24 * 3600
MAX_VOICE_TEXT_CHARS = 1000

_FORBIDDEN_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")
_HORIZONTAL_SPACE = re.compile(r"[^\S\n]+")
_PARAGRAPH_BREAK = re.compile(r"\n{3,}")


class JobState(str, Enum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"
    EXPIRED = "expired"

    @property
    def is_terminal(self) -> bool:
        return self not in (JobState.QUEUED, JobState.RUNNING)


# Which states a job may move to from each state; terminal states never change.
ALLOWED_TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.QUEUED: frozenset(
        {JobState.RUNNING, JobState.FAILED, JobState.CANCELED, JobState.EXPIRED}
    ),
    # running -> running is a redelivery: the same job started again after its worker died.
    JobState.RUNNING: frozenset({JobState.RUNNING, JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELED}),
    JobState.SUCCEEDED: frozenset(),
    JobState.FAILED: frozenset(),
    JobState.CANCELED: frozenset(),
    JobState.EXPIRED: frozenset(),
}


def normalize_text(text: str) -> str:
    """NFC, one space between words, paragraph breaks kept as one blank line; refuses control characters."""
    bad = _FORBIDDEN_CHARS.search(text)
    if bad:
        raise ValueError(f"text contains a control or invalid character {bad.group()!r} at {bad.start()}")
    text = unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\r", "\n"))
    lines = (_HORIZONTAL_SPACE.sub(" ", line).strip() for line in text.split("\n"))
    return _PARAGRAPH_BREAK.sub("\n\n", "\n".join(lines)).strip()


class NarrationRequest(BaseModel):
    """A validated, immutable narration request. Unknown fields and loose types are refused."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    text: StrictStr = Field(description="The text to narrate; normalized before its length is checked.")
    speaker_id: StrictInt = Field(default=1, ge=0, le=MAX_SPEAKER_ID)
    temperature: StrictFloat | StrictInt = Field(default=0.9, gt=0.0, le=2.0)
    top_k: StrictInt = Field(default=50, ge=1, le=MAX_TOP_K)
    output_format: Literal["wav", "flac"] = "wav"
    idempotency_key: StrictStr | None = Field(default=None, pattern=r"^[A-Za-z0-9._:-]{1,128}$")
    priority: StrictInt = Field(default=5, ge=0, le=9, description="0 lowest, 9 most urgent")
    queue_ttl_s: StrictInt | None = Field(default=None, ge=1, le=MAX_QUEUE_TTL_S)
    voice_prompt_sha256: StrictStr | None = Field(default=None, pattern=r"^[0-9a-f]{64}$",
                                                  description="a reference recording stored by the client")
    voice_text: StrictStr | None = Field(default=None, max_length=MAX_VOICE_TEXT_CHARS,
                                         description="what the reference recording says")

    @field_validator("text")
    @classmethod
    def _normalize(cls, value: str) -> str:
        text = normalize_text(value)
        if not text:
            raise ValueError("text is empty after whitespace normalization")
        if len(text) > MAX_TEXT_CHARS:
            raise ValueError(f"text has {len(text)} characters; the limit is {MAX_TEXT_CHARS}")
        return text

    @field_validator("voice_text")
    @classmethod
    def _normalize_voice_text(cls, value: str | None) -> str | None:
        return None if value is None else normalize_text(value)

    @model_validator(mode="after")
    def _voice_pair(self) -> NarrationRequest:
        if (self.voice_prompt_sha256 is None) != (not self.voice_text):
            raise ValueError("a voice prompt needs both the recording and its transcript (voice_text)")
        return self

    @field_validator("temperature")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("temperature must be a finite number")
        return float(value)

    @classmethod
    def parse(cls, data: Any) -> NarrationRequest:
        """Validate a mapping; any problem becomes one InvalidRequestError naming every bad field."""
        if not isinstance(data, dict):
            raise InvalidRequestError(f"a narration request must be an object, not {type(data).__name__}")
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            raise InvalidRequestError(_describe(e)) from e

    @classmethod
    def from_json(cls, raw: str | bytes) -> NarrationRequest:
        """Decode a JSON payload (at most 1 MiB, UTF-8)."""
        if len(raw) > MAX_PAYLOAD_BYTES:
            raise InvalidRequestError(f"payload is {len(raw)} bytes; the limit is {MAX_PAYLOAD_BYTES}")
        try:
            data = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise InvalidRequestError(f"payload is not valid UTF-8 JSON: {e}") from e
        return cls.parse(data)

    def text_sha256(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()

    def without_text(self) -> dict[str, Any]:
        """The request as kept after success: the text replaced by its size and hash."""
        kept = self.model_dump(exclude={"text"})
        kept.update(text_chars=len(self.text), text_sha256=self.text_sha256())
        return kept


def _describe(error: ValidationError) -> str:
    parts = []
    for item in error.errors(include_url=False, include_input=False):
        where = ".".join(str(p) for p in item["loc"]) or "request"
        message = str(item["msg"]).removeprefix("Value error, ")
        parts.append(f"{where}: {message}")
    return "invalid narration request: " + "; ".join(parts)


def _iso(ts: float | None) -> str | None:
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
            "state": self.state.value,
            "created_at": _iso(self.created_at),
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at),
            "attempts": self.attempts,
            "worker": self.worker,
            "progress": {**self.progress, "eta_s": self.eta_s()},
            "model": self.model,
            "request": request,
            "result": self.result,
            "error": self.error,
            "history": self.history,
        }
