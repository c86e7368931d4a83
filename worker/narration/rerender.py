"""Re-render a span of a delivered narration, queue-free: some chunks made again (maybe with corrected text) after the
job's same anchor, on fresh seeds; the narration re-stitched and delivered again as its new version."""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any

from producer.audio_formats import audio_format
from producer.request import NarrationRequest
from producer.storage import Storage
from worker.models import SpeechModel
from worker.narration.delivery import deliver
from worker.narration.manifest import Manifest
from worker.narration.narrate import NarrationOutcome, ProgressHook, voice_prompt
from worker.narration.stitch import stitch
from worker.narration.synthesis import ChunkSynthesizer
from worker.narration.text import Chunk, speakable

__all__ = ["rerender"]

log = logging.getLogger(__name__)


def rerender(job_id: str, request: NarrationRequest, edit: dict[str, Any], model: SpeechModel, storage: Storage,
             on_progress: ProgressHook) -> NarrationOutcome:
    """Make `edit["chunks"]` again (one of them with `edit["text"]` when given), re-stitch, deliver; the manifest's
    `history` records the edit. Every other chunk is reused as stored, so its samples are unchanged."""
    manifest = Manifest.load(storage, job_id)
    history = manifest.data.setdefault("history", [])
    plan = [Chunk(e["index"], e["text"], e["display"], e["paragraph_end"]) for e in manifest.ordered()]
    targets = [plan[i] for i in sorted(set(edit["chunks"]))]
    if edit.get("text"):
        old = targets[0]
        targets = [Chunk(old.index, speakable(edit["text"]), edit["text"], old.paragraph_end)]
    before = {c.index: manifest.chunks[c.index]["display"] for c in targets}
    with tempfile.TemporaryDirectory(prefix=f"echoforge-{job_id[:8]}-edit-") as tmp:
        spool = Path(tmp)
        synthesizer = ChunkSynthesizer(model, request, job_id, spool)
        synthesizer.manifest = manifest
        synthesizer.seed_attempt = 2 * (len(history) + 1)  # the first run seeded attempts 0 and 1
        if request.voice_prompt_sha256:
            synthesizer.load_voice_prompt(*voice_prompt(storage, request.voice_prompt_sha256))
        elif len(plan) > 1:  # the job's own anchor: its first chunk as first made (read before anything changes)
            synthesizer.adopt_first_chunk(plan[0])
        log.info("job %s: re-rendering chunks %s", job_id, [c.index for c in targets])
        for entry in synthesizer.synthesize(targets):
            entry["edits"] = sum(entry["index"] in h["chunks"] for h in history) + 1
        # A cancel asked now is not honoured: the new chunks are stored, so the edit is finished, not left halfway.
        if on_progress({"chunks_done": len(plan), "chunks_total": len(plan), "chunks_resumed": len(plan),
                        "audio_s": manifest.audio_seconds(), "phase": "stitching"}) == "stop":
            return NarrationOutcome("stop")
        previous = dict(manifest.data.get("narration", {}))
        narration = spool / f"narration.{audio_format(request.output_format).extension}"
        stitch(manifest, spool, narration, request.output_format)
        history.append({"at": time.time(), "chunks": sorted(before), "text_before": before,
                        "text_after": {c.index: c.display for c in targets},
                        "narration_sha256_before": previous.get("sha256")})
        result = deliver(manifest, narration, request.output_format)
        history[-1]["narration_sha256_after"] = result["sha256"]
        manifest.save()
    progress = {"chunks_done": len(plan), "chunks_total": len(plan), "chunks_resumed": len(plan) - len(targets),
                "audio_s": manifest.audio_seconds(), "phase": "done"}
    return NarrationOutcome("done", {**result, "version": len(history) + 1}, progress)
