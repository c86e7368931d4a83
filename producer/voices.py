"""VoiceStore: a tenant's saved voices. The recording is stored content-addressed (producer/voice.py), the record
in Redis; another tenant's voice is "not found", like a missing one."""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis

from producer import keys
from producer.errors import InvalidRequestError, JobNotFoundError
from producer.request import MAX_VOICE_TEXT_CHARS, normalize_text
from producer.storage import Storage
from producer.voice import VoicePrompt, check_voice_prompt, store_voice_prompt

__all__ = ["MAX_VOICE_NAME_CHARS", "Voice", "VoiceStore", "is_voice_id"]

MAX_VOICE_NAME_CHARS = 100
_VOICE_ID = re.compile(r"^[0-9a-f]{32}$")


def is_voice_id(value: object) -> bool:
    return isinstance(value, str) and bool(_VOICE_ID.match(value))


@dataclass(frozen=True)
class Voice:
    id: str
    tenant: str
    name: str | None
    transcript: str
    sha256: str
    seconds: float
    created_at: float

    def to_public(self) -> dict[str, Any]:
        return {"id": self.id, "tenant": self.tenant, "name": self.name, "transcript": self.transcript,
                "sha256": self.sha256, "seconds": self.seconds,
                "created_at": datetime.fromtimestamp(self.created_at, UTC).isoformat(timespec="milliseconds")}


class VoiceStore:
    """Voices in Redis (`echoforge:voice:<id>`, each tenant's index `echoforge:tenant:<tenant>:voices`) and their
    recordings in storage. Deleting a voice removes its record only: the recording may be another voice's too, and
    jobs queued with the voice still need it."""

    def __init__(self, client: redis.Redis, storage: Storage) -> None:
        self.redis = client
        self.storage = storage

    def create(self, tenant: str, recording: str | Path | bytes, transcript: str, name: str | None = None,
               field: str = "audio") -> Voice:
        """Check the transcript, the name and the recording (every bad field named at once), store the recording,
        then record the voice: nothing is stored for a refused voice."""
        problems: list[tuple[str, str]] = []
        transcript = _text(transcript, "transcript", MAX_VOICE_TEXT_CHARS, problems) or ""
        if not transcript and not any(f == "transcript" for f, _ in problems):
            problems.append(("transcript", "empty; say what the recording says"))
        name = _text(name, "name", MAX_VOICE_NAME_CHARS, problems)
        prompt: VoicePrompt | None = None
        try:
            prompt = check_voice_prompt(recording, field)
        except InvalidRequestError as e:
            problems.extend(e.fields)
        if problems or prompt is None:
            raise InvalidRequestError("invalid voice: " + "; ".join(f"{f}: {m}" for f, m in problems), problems)
        store_voice_prompt(prompt, self.storage)
        voice = Voice(uuid.uuid4().hex, tenant, name, transcript, prompt.sha256, prompt.seconds, time.time())
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(keys.voice_key(voice.id), mapping={
                "tenant": tenant, "name": name or "", "transcript": transcript, "sha256": voice.sha256,
                "seconds": repr(voice.seconds), "created_at": repr(voice.created_at)})
            pipe.zadd(keys.tenant_voices_key(tenant), {voice.id: voice.created_at})
            pipe.execute()
        return voice

    def get(self, voice_id: str, tenant: str) -> Voice:
        """The tenant's voice; JobNotFoundError (not_found) for a missing one and for another tenant's alike."""
        data: Any = self.redis.hgetall(keys.voice_key(voice_id)) if is_voice_id(voice_id) else {}
        if not data or data[b"tenant"].decode() != tenant:
            raise JobNotFoundError(f"no voice {voice_id!r}")
        return _voice(voice_id, data)

    def list(self, tenant: str, limit: int = 20, before: float | None = None) -> list[Voice]:
        """The tenant's voices, newest first; `before` (a created_at) pages on."""
        top = f"({before!r}" if before is not None else "+inf"
        ids: Any = self.redis.zrevrangebyscore(keys.tenant_voices_key(tenant), top, "-inf", start=0, num=limit)
        with self.redis.pipeline(transaction=False) as pipe:
            for voice_id in ids:
                pipe.hgetall(keys.voice_key(voice_id.decode()))
            records = pipe.execute()
        return [_voice(i.decode(), data) for i, data in zip(ids, records, strict=True) if data]

    def delete(self, voice_id: str, tenant: str) -> Voice:
        """Remove the tenant's voice record (and from its index); the recording object stays."""
        voice = self.get(voice_id, tenant)
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(keys.voice_key(voice_id))
            pipe.zrem(keys.tenant_voices_key(tenant), voice_id)
            pipe.execute()
        return voice


def _text(value: str | None, field: str, limit: int, problems: list[tuple[str, str]]) -> str | None:
    """Normalized like a narration's text (NFC, one space between words, no control characters); None if empty."""
    if value is None:
        return None
    try:
        text = normalize_text(value)
    except ValueError as e:
        problems.append((field, str(e)))
        return None
    if len(text) > limit:
        problems.append((field, f"{len(text)} characters; the limit is {limit}"))
        return None
    return text or None


def _voice(voice_id: str, data: dict[bytes, bytes]) -> Voice:
    def text(name: str) -> str:
        return data[name.encode()].decode()

    return Voice(voice_id, text("tenant"), text("name") or None, text("transcript"), text("sha256"),
                 float(text("seconds")), float(text("created_at")))
