"""Re-rendering a span of a finished narration through a real worker (placeholder model, moto S3): only the chunks
asked for change, the rest of the file stays bit-identical, captions follow, the manifest keeps the history."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable
from typing import Any

import boto3
import numpy as np
import soundfile as sf

from producer.client import NarrationClient
from producer.job import Job
from producer.settings import Settings
from producer.states import JobState
from tests import services

TEXT = ("The keeper climbed the stairs at dusk. " * 6 + "\n\n" + "He lit the lamp and watched the sea. " * 6
        + "\n\n" + "The ships turned toward the harbour at last. " * 6)
CORRECTED = "He lit the great lamp, and for a long while he watched the grey sea roll in under the cliffs."


def _read(settings: Settings, key: str) -> bytes:
    bucket = settings.storage_url[5:].split("/")[0]
    s3 = boto3.client("s3", endpoint_url=settings.s3_endpoint_url)
    return s3.get_object(Bucket=bucket, Key=key)["Body"].read()  # type: ignore[no-any-return]


def _version(settings: Settings, job: Job) -> tuple[np.ndarray, int, dict[str, Any], list[tuple[float, float]]]:
    """(narration samples, rate, manifest, caption cue times) of the job's current version."""
    assert job.result is not None
    audio, rate = sf.read(io.BytesIO(_read(settings, job.result["key"])), dtype="int16")
    manifest = json.loads(_read(settings, job.result["manifest_key"]))
    vtt = _read(settings, job.result["captions"]["vtt"]).decode()

    def seconds(stamp: str) -> float:
        h, m, s = stamp.split(":")
        return int(h) * 3600 + int(m) * 60 + float(s)

    return audio, rate, manifest, [(seconds(a), seconds(b)) for a, b in re.findall(r"(\S+) --> (\S+)", vtt)]


def test_a_rerendered_chunk_changes_only_its_own_samples_and_later_captions_shift_by_its_new_length(
    client: NarrationClient, settings: Settings, start_worker: Callable[..., services.Worker],
) -> None:
    worker = start_worker(settings)
    first = client.wait(client.submit({"text": TEXT}).id, timeout=60)
    assert first.state is JobState.SUCCEEDED and first.result is not None
    before, rate, manifest, cues = _version(settings, first)
    target = next(c["index"] for c in manifest["chunks"] if c["display"].startswith("He lit"))
    assert 0 < target < len(manifest["chunks"]) - 1

    edited = services.run_cli(settings, "rerender", first.id, "--chunk", str(target), "--text", CORRECTED,
                              "--wait", "--json")
    assert edited.returncode == 0, edited.stderr
    second = client.get(first.id)
    assert second.state is JobState.SUCCEEDED and second.result is not None and second.result["version"] == 2
    assert [h["state"] for h in second.history] == ["succeeded"], "the earlier version's end is in the history"
    after, _, new_manifest, new_cues = _version(settings, second)

    old, new = manifest["chunks"][target], new_manifest["chunks"][target]
    assert new["display"] == CORRECTED and new["seed"] != old["seed"] and new["edits"] == 1
    assert [c["text"] for i, c in enumerate(new_manifest["chunks"]) if i != target] == \
        [c["text"] for i, c in enumerate(manifest["chunks"]) if i != target]
    start, old_end, new_end = round(old["start_s"] * rate), round(old["end_s"] * rate), round(new["end_s"] * rate)
    assert new_end != old_end, "the corrected text is longer"
    assert np.array_equal(after[:start], before[:start]), "everything before the chunk is bit-identical"
    assert np.array_equal(after[new_end:], before[old_end:]), "everything after it too, shifted"
    assert not np.array_equal(after[start:new_end][: old_end - start], before[start:old_end])

    shift = (new_end - old_end) / rate
    later = [(a, b) for a, b in cues if a >= old["end_s"]]
    moved = [(a, b) for a, b in new_cues if a >= new["end_s"]]
    assert len(later) == len(moved) > 0
    assert all(abs(a + shift - c) < 0.002 and abs(b + shift - d) < 0.002
               for (a, b), (c, d) in zip(later, moved, strict=True))
    [edit] = new_manifest["history"]
    assert edit["chunks"] == [target] and edit["text_after"] == {str(target): CORRECTED}
    assert edit["narration_sha256_before"] == first.result["sha256"] != edit["narration_sha256_after"]
    assert f"job {first.id}: chunk {target} started (attempt 3)" in worker.log(), "a new seed, counted as it starts"


def test_a_rerender_is_refused_before_the_job_is_touched(
    client: NarrationClient, settings: Settings, start_worker: Callable[..., services.Worker],
) -> None:
    queued = client.submit({"text": "Not narrated yet: no worker is running."})
    refused = services.run_cli(settings, "rerender", queued.id, "--chunk", "0")
    assert refused.returncode == 2 and "only a succeeded job can" in refused.stderr, refused.stderr
    assert client.get(queued.id).state is JobState.QUEUED
    worker = start_worker(settings)
    job = client.wait(client.submit({"text": TEXT}).id, timeout=60)
    chunks = job.result["chunks"]  # type: ignore[index]
    for args, message in [(["--chunk", str(chunks)], f"chunk {chunks} is not one of the job's chunks"),
                          (["--chunk", "0", "--chunk", "1", "--text", "Hello."], "name exactly one"),
                          (["--chunk", "0", "--text", "x" * 2000], "a chunk holds at most")]:
        refused = services.run_cli(settings, "rerender", job.id, *args)
        assert refused.returncode == 2 and message in refused.stderr, refused.stderr
    unchanged = client.get(job.id)
    assert unchanged.state is JobState.SUCCEEDED and unchanged.history == [] and unchanged.rerender is None
    worker.stop()  # so the re-render stays queued while it is asked to cancel
    busy = client.rerender(job.id, [0])
    refused = services.run_cli(settings, "cancel", busy.id)
    assert refused.returncode == 2 and "cannot be canceled" in refused.stderr
    start_worker(settings)
    assert client.wait(job.id, timeout=60).state is JobState.SUCCEEDED
