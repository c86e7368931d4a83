"""A book record as read from the store, and its status read from its parts: what `status BOOK_ID --json` shows."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from producer.job import Job, iso_time
from producer.states import JobState

__all__ = ["ANCHOR", "Book"]

ANCHOR = "anchor"  # the part that narrates the book's voice anchor (chapters are parts "0", "1", ...)


@dataclass(frozen=True)
class Book:
    """A book: its chapters' titles and sizes, the job narrating each part, and its final state once decided."""

    id: str
    title: str
    created_at: float
    options: dict[str, Any]  # the narration options every part shares (speaker, format, voice, ...)
    chapters: list[dict[str, Any]]  # {index, title, chars}
    author: str | None = None
    tenant: str | None = None
    jobs: dict[str, str] = field(default_factory=dict)  # part -> job id
    anchor: dict[str, Any] | None = None  # the voice every chapter is narrated in: {sha256, text, seconds}
    cover_type: str | None = None  # the cover's media type, when the book has a cover
    state: JobState | None = None  # only once final
    finished_at: float | None = None
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None

    @classmethod
    def from_hash(cls, data: dict[str, str]) -> Book:
        def obj(name: str) -> Any:
            return json.loads(data[name]) if data.get(name) else None

        return cls(id=data["id"], title=data["title"], created_at=float(data["created_at"]),
                   options=obj("options") or {}, chapters=obj("chapters") or [], author=data.get("author") or None,
                   tenant=data.get("tenant") or None,
                   jobs={k[4:]: v for k, v in data.items() if k.startswith("job:")},
                   anchor=obj("anchor"), cover_type=data.get("cover_type") or None,
                   state=JobState(data["state"]) if data.get("state") else None,
                   finished_at=float(data["finished_at"]) if data.get("finished_at") else None,
                   result=obj("result"), error=obj("error"))

    def chapter_text(self, index: int, body: str) -> str:
        """What chapter `index`'s job narrates: its title, spoken as a paragraph of its own, then its body."""
        title = self.chapters[index]["title"].strip()
        if not title:
            return body
        return f"{title}{'' if title[-1] in '.!?:;' else '.'}\n\n{body}"

    def status(self, parts: dict[str, Job]) -> tuple[JobState, str, dict[str, Any] | None]:
        """(state, phase, error) read from the parts' jobs unless the book's own state is final."""
        if self.state is not None:
            return self.state, "done", self.error
        for part, job in sorted(parts.items()):
            if job.state in (JobState.FAILED, JobState.EXPIRED, JobState.CANCELED):
                name = "the voice anchor" if part == ANCHOR else f"chapter {part} ({self.chapters[int(part)]['title']})"
                error = job.error or {"code": "canceled", "message": "canceled"}
                return JobState.FAILED, "failed", {"code": error.get("code"), "part": part, "job": job.id,
                                                   "message": f"{name} {job.state.value}: {error.get('message', '')}"}
        chapters = [parts.get(str(c["index"])) for c in self.chapters]
        if all(job is not None and job.state is JobState.SUCCEEDED for job in chapters):
            return JobState.RUNNING, "assembling", None
        if not any(job.state is not JobState.QUEUED for job in parts.values()):
            return JobState.QUEUED, "queued", None
        anchor = parts.get(ANCHOR)
        return JobState.RUNNING, "anchor" if anchor and anchor.state is not JobState.SUCCEEDED else "chapters", None

    def progress(self, parts: dict[str, Job], now: float | None = None) -> dict[str, Any]:
        """Chapters done of all, audio seconds so far, and an ETA from the share of characters narrated."""
        done_chars = audio_s = 0.0
        chapters_done = 0
        for chapter in self.chapters:
            job = parts.get(str(chapter["index"]))
            if job is None:
                continue
            if job.state is JobState.SUCCEEDED:
                chapters_done += 1
                done_chars += chapter["chars"]
                audio_s += (job.result or {}).get("duration_s", 0.0)
            elif job.progress.get("chunks_total"):
                done_chars += chapter["chars"] * job.progress.get("chunks_done", 0) / job.progress["chunks_total"]
                audio_s += job.progress.get("audio_s", 0.0)
        total_chars = sum(c["chars"] for c in self.chapters) or 1
        started = [job.started_at for job in parts.values() if job.started_at]
        share = done_chars / total_chars
        eta = None
        if started and 0 < share < 1 and self.state is None:
            eta = round(((now or time.time()) - min(started)) * (1 - share) / share, 1)
        return {"chapters_done": chapters_done, "chapters_total": len(self.chapters), "audio_s": round(audio_s, 3),
                "eta_s": eta}

    def to_public(self, parts: dict[str, Job]) -> dict[str, Any]:
        """What `status BOOK_ID --json` prints: no text, no secrets."""
        state, phase, error = self.status(parts)
        anchor = parts.get(ANCHOR)
        return {
            "id": self.id, "kind": "book", "tenant": self.tenant, "state": state.value, "title": self.title,
            "author": self.author, "created_at": iso_time(self.created_at), "finished_at": iso_time(self.finished_at),
            "progress": {**self.progress(parts), "phase": phase},
            "options": {k: v for k, v in self.options.items() if k != "voice_text"},
            "anchor": {"source": "voice_prompt" if self.options.get("voice_prompt_sha256") else "anchor_job",
                       "job": anchor.id if anchor else None, **(self.anchor or {})},
            "chapters": [{"index": c["index"], "title": c["title"], "chars": c["chars"],
                          "job": self.jobs.get(str(c["index"])),
                          "state": (parts[str(c["index"])].state.value if str(c["index"]) in parts else "waiting")}
                         for c in self.chapters],
            "result": self.result,
            "error": error,
        }
