"""The job manifest: what was asked, which model ran, and every finished chunk; written after each chunk."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from producer import keys
from producer.errors import StorageError
from producer.request import NarrationRequest
from producer.storage import Storage

__all__ = ["Manifest"]

# The chunk plan depends on these settings: chunks stored under other values are not resumed.
_PLAN_SETTINGS = ("max_chunk_chars", "first_chunk_chars", "lexicon_sha256")


class Manifest:
    """A JSON document at <prefix>/<job_id>/manifest.json; its `chunks` list holds the finished chunks by index."""

    def __init__(self, storage: Storage, job_id: str, data: dict[str, Any]) -> None:
        self.storage, self.job_id = storage, job_id
        self.chunks: dict[int, dict[str, Any]] = {entry["index"]: entry for entry in data.pop("chunks", [])}
        self.data = data

    @property
    def key(self) -> str:
        return self.storage.key_for(self.job_id, keys.MANIFEST_OBJECT)

    def chunk_key(self, index: int) -> str:
        return self.storage.key_for(self.job_id, keys.CHUNK_OBJECT.format(index=index))

    @staticmethod
    def stored(storage: Storage, job_id: str) -> dict[str, Any] | None:
        """The job's manifest as stored by an earlier run, or None."""
        raw = storage.get_bytes(storage.key_for(job_id, keys.MANIFEST_OBJECT))
        return json.loads(raw) if raw else None

    @classmethod
    def open(cls, storage: Storage, job_id: str, request: NarrationRequest, model: dict[str, Any],
             settings: dict[str, Any], chunks_total: int, stored: dict[str, Any] | None) -> Manifest:
        """`stored` (Manifest.stored) when it belongs to this text, chunking and model (a resumed job), else a fresh
        manifest."""
        fresh = {"job_id": job_id, "text_sha256": request.text_sha256(), "text_chars": len(request.text),
                 "model": model, "settings": settings, "chunks_total": chunks_total, "created_at": time.time(),
                 "streamed": request.stream_chunks}
        manifest = cls(storage, job_id, fresh)
        if stored:
            same_model = all(stored["model"].get(k) == model.get(k) for k in ("kind", "id"))
            same_plan = all(stored["settings"].get(k) == settings.get(k) for k in _PLAN_SETTINGS) and \
                stored["text_sha256"] == fresh["text_sha256"] and stored["chunks_total"] == chunks_total
            if same_plan and same_model:
                manifest = cls(storage, job_id, {**stored, "model": model})
        return manifest

    @classmethod
    def load(cls, storage: Storage, job_id: str) -> Manifest:
        """The job's stored manifest (a delivered job's: every chunk, its place in the narration, the result)."""
        stored = cls.stored(storage, job_id)
        if stored is None:
            key = storage.key_for(job_id, keys.MANIFEST_OBJECT)
            raise StorageError(f"job {job_id}: its manifest {storage.url_for(key)} is missing")
        return cls(storage, job_id, stored)

    def done(self, index: int) -> bool:
        return index in self.chunks

    @property
    def persist_chunks(self) -> bool:
        """Chunks are stored as they finish when there is something to resume (more than one chunk), or when the job
        is streamed chunk by chunk (the API reads them)."""
        return int(self.data["chunks_total"]) > 1 or bool(self.data.get("streamed"))

    def record(self, entry: dict[str, Any]) -> None:
        self.chunks[entry["index"]] = entry
        if self.persist_chunks:
            self.save()

    def save(self) -> None:
        body = json.dumps({**self.data, "chunks": self.ordered()}, indent=1, sort_keys=True).encode()
        self.storage.put_bytes(self.key, body, "application/json")

    def ordered(self) -> list[dict[str, Any]]:
        return [self.chunks[i] for i in sorted(self.chunks)]

    def read_chunk(self, index: int, spool: Path) -> bytes:
        """A stored chunk's WAV: from this run's local spool, else from storage (a resumed job)."""
        local = spool / keys.CHUNK_OBJECT.format(index=index)
        data = local.read_bytes() if local.exists() else self.storage.get_bytes(self.chunk_key(index))
        if data is None:
            raise StorageError(f"job {self.job_id}: chunk {index} is in the manifest but missing from storage")
        return data

    def audio_seconds(self) -> float:
        return round(sum(entry["duration_s"] for entry in self.chunks.values()), 3)

    def discard(self) -> None:
        """Delete every chunk object and the manifest itself (a canceled job leaves nothing partial)."""
        self.storage.delete([self.chunk_key(i) for i in self.chunks] + [self.key])
