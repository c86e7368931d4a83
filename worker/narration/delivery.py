"""Deliver a stitched narration: upload it (multipart when large) with its captions and the final manifest."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from producer import keys
from producer.audio_formats import audio_format
from worker.narration.audio import file_sha256
from worker.narration.captions import build_cues, to_srt, to_vtt
from worker.narration.manifest import Manifest

__all__ = ["deliver"]


def deliver(manifest: Manifest, narration: Path, fmt: str) -> dict[str, Any]:
    """Upload the narration (multipart when large), captions and the final manifest; return the job result."""
    storage, job_id, spec = manifest.storage, manifest.job_id, audio_format(fmt)
    key = storage.key_for(job_id, f"{keys.NARRATION_OBJECT}.{spec.extension}")
    sha256, size = file_sha256(narration), narration.stat().st_size
    cues = build_cues([(e["display"], e["start_s"], e["end_s"]) for e in manifest.ordered()])
    captions = {kind: storage.key_for(job_id, name) for kind, name in keys.CAPTIONS_OBJECTS.items()}
    manifest.data.update(narration={"key": key, "sha256": sha256, "bytes": size}, captions=captions)
    with ThreadPoolExecutor(max_workers=4, thread_name_prefix="upload") as pool:  # four objects, side by side
        uploads = [pool.submit(storage.put_file, key, narration, spec.content_type),
                   pool.submit(storage.put_bytes, captions["srt"], to_srt(cues).encode(), "application/x-subrip"),
                   pool.submit(storage.put_bytes, captions["vtt"], to_vtt(cues).encode(), "text/vtt"),
                   pool.submit(manifest.save)]
        for upload in uploads:
            upload.result()
    flagged = [e["index"] for e in manifest.ordered() if e["flagged"]]
    return {"url": storage.url_for(key), "bucket": storage.bucket, "key": key, "format": fmt,
            "duration_s": round(manifest.data["duration_s"], 3), "sample_rate": manifest.data["sample_rate"],
            "bytes": size, "sha256": sha256, "chunks": len(manifest.chunks), "flagged_chunks": flagged,
            "manifest_key": manifest.key, "captions": captions}
