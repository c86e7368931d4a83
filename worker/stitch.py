"""Stitch stored chunks into one narration, streamed to disk one chunk at a time, then deliver it with captions."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np

from producer import keys
from worker.audio import (
    CONTENT_TYPES,
    PARAGRAPH_PAUSE_S,
    SENTENCE_PAUSE_S,
    decode_wav,
    file_sha256,
    finish_chunk,
)
from worker.captions import build_cues, to_srt, to_vtt
from worker.manifest import Manifest

__all__ = ["deliver", "stitch"]


def stitch(manifest: Manifest, spool: Path, target: Path, fmt: str) -> float:
    """Write every chunk, loudness-normalized with faded edges, pauses between; sets start/end per chunk."""
    import soundfile as sf

    position = 0
    entries = manifest.ordered()
    decoded = (decode_wav(manifest.read_chunk(entry["index"], spool)) for entry in entries)
    first, sample_rate = next(decoded)  # the output's rate comes from the first chunk, decoded once
    with sf.SoundFile(target, "w", samplerate=sample_rate, channels=1, format=fmt.upper(), subtype="PCM_16") as out:
        for i, (entry, (audio, _)) in enumerate(zip(entries, chain([(first, sample_rate)], decoded), strict=True)):
            out.write(finish_chunk(audio, sample_rate))
            entry["start_s"], entry["end_s"] = position / sample_rate, (position + len(audio)) / sample_rate
            position += len(audio)
            if i < len(entries) - 1:
                pause = int((PARAGRAPH_PAUSE_S if entry["paragraph_end"] else SENTENCE_PAUSE_S) * sample_rate)
                out.write(np.zeros(pause, dtype=np.float32))
                position += pause
    manifest.data.update(duration_s=position / sample_rate, sample_rate=sample_rate,
                         pauses_s={"sentence": SENTENCE_PAUSE_S, "paragraph": PARAGRAPH_PAUSE_S})
    return position / sample_rate


_pool: tuple[int, ThreadPoolExecutor] | None = None


def _upload_pool() -> ThreadPoolExecutor:
    """One small thread pool per process (created after fork, never inherited)."""
    global _pool
    if _pool is None or _pool[0] != os.getpid():
        _pool = (os.getpid(), ThreadPoolExecutor(max_workers=4, thread_name_prefix="upload"))
    return _pool[1]


def deliver(manifest: Manifest, narration: Path, fmt: str) -> dict[str, Any]:
    """Upload the narration (multipart when large), captions and the final manifest; return the job result."""
    storage, job_id = manifest.storage, manifest.job_id
    key = storage.key_for(job_id, f"{keys.NARRATION_OBJECT}.{fmt}")
    sha256, size = file_sha256(narration), narration.stat().st_size
    cues = build_cues([(e["display"], e["start_s"], e["end_s"]) for e in manifest.ordered()])
    captions = {kind: storage.key_for(job_id, name) for kind, name in keys.CAPTIONS_OBJECTS.items()}
    manifest.data.update(narration={"key": key, "sha256": sha256, "bytes": size}, captions=captions)
    pool = _upload_pool()  # four objects, uploaded side by side
    uploads = [pool.submit(storage.put_file, key, narration, CONTENT_TYPES[fmt]),
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
