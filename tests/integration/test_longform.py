"""Long-form narration through real worker processes (placeholder model, moto S3): chunks, progress, resume, cancel."""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import boto3
import numpy as np
import psutil
import pytest
import soundfile as sf

from producer.client import NarrationClient
from producer.job import Job
from producer.request import NarrationRequest
from producer.settings import Settings
from producer.states import JobState
from tests import services
from worker.narration.text import chunk_text

CHAPTER = (Path(__file__).resolve().parents[1] / "fixtures" / "chapter.txt").read_text()
MAX_POSITIONS = 2048


def _s3(settings: Settings) -> tuple[object, str]:
    return boto3.client("s3", endpoint_url=settings.s3_endpoint_url), settings.storage_url[5:].split("/")[0]


def _keys(settings: Settings, job_id: str) -> list[str]:
    s3, bucket = _s3(settings)
    listing = s3.list_objects_v2(Bucket=bucket, Prefix=f"narrations/{job_id}/")  # type: ignore[attr-defined]
    return sorted(item["Key"] for item in listing.get("Contents", []))


def _read(settings: Settings, key: str) -> bytes:
    s3, bucket = _s3(settings)
    return s3.get_object(Bucket=bucket, Key=key)["Body"].read()  # type: ignore[attr-defined,no-any-return]


def _wait_until(client: NarrationClient, job_id: str, ready: Callable[[Job], bool], timeout: float = 60) -> Job:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(job_id)
        if ready(job):
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} never got there: {client.get(job_id).progress}")


def _generations(logs: str, job_id: str) -> Counter[int]:
    return Counter(int(i) for i in re.findall(rf"job {job_id}: chunk (\d+) generated \(attempt 1", logs))


# About 0.08 s of simulated GPU time per chunk; a short lock TTL so a redelivery after a kill waits 2 s, not 60.
SLOW = {"ECHOFORGE_PLACEHOLDER_RTF": "0.004", "ECHOFORGE_JOB_LOCK_TTL_S": "2"}


def test_a_chapter_is_chunked_stitched_and_captioned_with_progress_on_the_way(
    client: NarrationClient, settings: Settings, start_worker: Callable[..., services.Worker]
) -> None:
    assert 30_000 <= len(CHAPTER) <= 33_000
    start_worker(settings, extra_env=SLOW)
    job = client.submit({"text": CHAPTER})
    running = _wait_until(client, job.id, lambda j: 0 < j.progress.get("chunks_done", 0) < j.progress["chunks_total"])
    status = services.run_cli(settings, "status", job.id, "--json")
    shown = json.loads(status.stdout)["progress"]
    assert 0 < shown["chunks_done"] < shown["chunks_total"] and shown["audio_s"] > 0
    assert running.eta_s() is not None and running.eta_s() > 0  # type: ignore[operator]

    final = client.wait(job.id, timeout=240)
    assert final.state is JobState.SUCCEEDED, final.error
    assert final.result is not None
    manifest = json.loads(_read(settings, final.result["manifest_key"]))
    chunks = manifest["chunks"]
    assert len(chunks) == manifest["chunks_total"] == final.result["chunks"] > 80
    assert manifest["model"]["kind"] == "placeholder" and manifest["voice_anchor"]["source"] == "first_chunk"
    for chunk in chunks:
        assert chunk["chars"] <= settings.max_chunk_chars and chunk["positions_budget"] <= MAX_POSITIONS
        assert not re.search(r"\d", chunk["text"]), "numbers are spelled out"
        assert chunk["context"] == ("anchor" if chunk["index"] else None)

    rate = manifest["sample_rate"]
    pauses = sum(manifest["pauses_s"]["paragraph" if c["paragraph_end"] else "sentence"] for c in chunks[:-1])
    expected = sum(c["samples"] for c in chunks) / rate + pauses
    wav = _read(settings, final.result["key"])
    info = sf.info(__import__("io").BytesIO(wav))
    assert abs(info.duration - expected) < 0.002 and abs(final.result["duration_s"] - expected) < 0.002
    assert manifest["text_sha256"] == final.request["text_sha256"]

    srt = _read(settings, final.result["captions"]["srt"]).decode()
    vtt = _read(settings, final.result["captions"]["vtt"]).decode()
    stamps = re.findall(r"(\d\d):(\d\d):(\d\d),(\d\d\d) --> (\d\d):(\d\d):(\d\d),(\d\d\d)", srt)
    assert len(stamps) == vtt.count(" --> ") >= len(chunks)
    seconds = [(int(a) * 3600 + int(b) * 60 + int(c) + int(d) / 1000,
                int(e) * 3600 + int(f) * 60 + int(g) + int(h) / 1000) for a, b, c, d, e, f, g, h in stamps]
    assert seconds[0][0] == 0.0 and abs(seconds[-1][1] - chunks[-1]["end_s"]) < 0.002
    assert all(start < end for start, end in seconds)
    bounds = [(c["start_s"] - 0.001, c["end_s"] + 0.001) for c in chunks]
    assert all(any(lo <= s and e <= hi for lo, hi in bounds) for s, e in seconds), "every cue inside one chunk"


def _starts(logs: str, job_id: str) -> Counter[int]:
    """Generations begun per chunk (first attempts), counted when they start, whether or not they were stored."""
    return Counter(int(i) for i in re.findall(rf"job {job_id}: chunk (\d+) started \(attempt 1\)", logs))


@pytest.mark.parametrize(("text", "guessed_right"), [
    ("It was late. " + "The rain came down on the roofs of the town all night long. " * 12, True),
    ("word " * 400, False),  # one unpunctuated run longer than the opening the guess is made from
])
def test_the_first_chunk_generates_while_the_text_is_planned_and_again_only_when_the_guess_was_wrong(
    client: NarrationClient, settings: Settings, start_worker: Callable[..., services.Worker], text: str,
    guessed_right: bool,
) -> None:
    worker = start_worker(settings)
    final = client.wait(client.submit({"text": text}).id, timeout=60)
    assert final.state is JobState.SUCCEEDED and final.result is not None
    normalized = NarrationRequest.parse({"text": text}).text
    planned = chunk_text(normalized, settings.max_chunk_chars, settings.first_chunk_chars)
    manifest = json.loads(_read(settings, final.result["manifest_key"]))
    assert [c["text"] for c in manifest["chunks"]] == [c.text for c in planned], "the plan's chunks, in order"
    starts = _starts(worker.log(), final.id)
    assert starts == Counter(range(len(planned))) + (Counter() if guessed_right else Counter([0]))
    assert ("generating it again" in worker.log()) is not guessed_right


def test_killing_the_pool_process_mid_job_resumes_without_redoing_stored_chunks(
    client: NarrationClient, settings: Settings, start_worker: Callable[..., services.Worker]
) -> None:
    workers = [start_worker(settings, name=n, extra_env=SLOW) for n in ("first", "second")]
    job = client.submit({"text": CHAPTER})
    running = _wait_until(client, job.id, lambda j: j.progress.get("chunks_done", 0) >= 10)
    owner = next(w for w in workers if running.worker and running.worker.startswith(w.name + "@"))
    pool_children = psutil.Process(owner.process.pid).children()
    assert len(pool_children) == 1
    pool_children[0].kill()  # SIGKILL: the task's process dies with up to 32 rows in flight
    stored = {c["index"] for c in json.loads(_read(settings, f"narrations/{job.id}/manifest.json"))["chunks"]}
    in_flight = set(_starts(owner.log(), job.id)) - stored  # started, not stored
    assert in_flight and len(stored) > 1, "the kill landed mid-job: some chunks stored, others in flight"

    final = client.wait(job.id, timeout=240)
    assert final.state is JobState.SUCCEEDED, final.error
    assert final.attempts == 2
    starts = _starts("".join(w.log() for w in workers), job.id)
    assert all(starts[i] == 1 for i in stored), "stored chunks are not generated again"
    redone = {i for i, n in starts.items() if n > 1}
    assert redone <= in_flight, "only the rows in flight when the worker died are generated again"
    finals = [k for k in _keys(settings, job.id) if k.rsplit("/", 1)[-1].startswith("narration")]
    assert finals == [f"narrations/{job.id}/narration.wav"], "exactly one final object"


def test_cancel_stops_a_running_job_within_one_chunk_and_deletes_its_chunks(
    client: NarrationClient, settings: Settings, start_worker: Callable[..., services.Worker]
) -> None:
    start_worker(settings, extra_env=SLOW)
    job = client.submit({"text": CHAPTER})
    _wait_until(client, job.id, lambda j: j.progress.get("chunks_done", 0) >= 3)
    asked = client.cancel(job.id)
    done_when_asked = asked.progress["chunks_done"]
    final = client.wait(job.id, timeout=60)
    assert final.state is JobState.CANCELED
    assert final.progress["chunks_done"] <= done_when_asked + 1
    assert final.progress["chunks_done"] < final.progress["chunks_total"]
    assert _keys(settings, job.id) == [], "a canceled job leaves no partial objects"


def test_a_voice_prompt_is_the_anchor_of_every_chunk(
    client: NarrationClient, settings: Settings, start_worker: Callable[..., services.Worker], tmp_path: Path
) -> None:
    start_worker(settings)
    prompt = tmp_path / "me.wav"
    t = np.arange(32_000) / 16_000
    sf.write(prompt, 0.3 * np.sin(2 * np.pi * 180 * t), 16_000)
    job = client.submit({"text": "First sentence here. " * 30, "voice_text": "This is how I sound."},
                        voice_prompt=prompt)
    final = client.wait(job.id, timeout=60)
    assert final.state is JobState.SUCCEEDED and final.result is not None
    manifest = json.loads(_read(settings, final.result["manifest_key"]))
    assert manifest["voice_anchor"]["source"] == "voice_prompt" and manifest["voice_anchor"]["seconds"] == 2.0
    assert all(c["context"] == "anchor" for c in manifest["chunks"]) and len(manifest["chunks"]) > 1


@pytest.mark.parametrize(("seconds", "message"), [(0.1, "0.5-20 s"), (25.0, "0.5-20 s")])
def test_a_bad_voice_prompt_is_refused_before_anything_is_enqueued(
    client: NarrationClient, tmp_path: Path, seconds: float, message: str
) -> None:
    prompt = tmp_path / "bad.wav"
    sf.write(prompt, 0.3 * np.ones(int(16_000 * seconds)), 16_000)
    with pytest.raises(Exception, match=message):
        client.submit({"text": "Hello.", "voice_text": "Hi."}, voice_prompt=prompt)
    (tmp_path / "noise.wav").write_bytes(b"not audio at all")
    with pytest.raises(Exception, match="not a readable audio file"):
        client.submit({"text": "Hello.", "voice_text": "Hi."}, voice_prompt=tmp_path / "noise.wav")
    cli = services.run_cli(client.settings, "submit", "Hello.", "--voice-prompt", str(prompt), "--voice-text", "Hi.")
    assert cli.returncode == 2 and message in cli.stderr
    assert client.list() == []
