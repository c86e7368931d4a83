"""Which model a real worker process serves with, and what every job record says about it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from producer.client import NarrationClient
from producer.settings import Settings
from producer.states import JobState
from tests import services


def test_a_job_runs_on_the_real_csm_checkpoint(
    client: NarrationClient, settings: Settings, start_worker: Callable[..., services.Worker], tiny_checkpoint: Path
) -> None:
    start_worker(settings, extra_env={"ECHOFORGE_MODEL_PATH": str(tiny_checkpoint), "ECHOFORGE_DEVICE": "cpu"})
    job = client.wait(client.submit({"text": "Hello.", "speaker_id": 0}).id, timeout=120)
    assert job.state is JobState.SUCCEEDED, job.error
    assert job.model["kind"] == "csm" and job.model["id"] == str(tiny_checkpoint)
    assert job.model["device"] == "cpu" and job.model["fallback_reason"] is None
    assert job.result is not None and job.result["duration_s"] > 0


def test_a_job_runs_on_an_original_format_checkpoint_and_its_record_says_so(
    client: NarrationClient, settings: Settings, start_worker: Callable[..., services.Worker], original_twin: Path
) -> None:
    start_worker(settings, extra_env={"ECHOFORGE_MODEL_PATH": str(original_twin), "ECHOFORGE_DEVICE": "cpu",
                                      "ECHOFORGE_ALLOW_PLACEHOLDER": "false"})
    job = client.wait(client.submit({"text": "Hello.", "speaker_id": 0}).id, timeout=120)
    assert job.state is JobState.SUCCEEDED, job.error
    assert job.model["kind"] == "csm" and job.model["id"] == str(original_twin)
    assert job.model["format"] == "original" and job.model["codec"] == "moshi-mimi"
    assert job.result is not None and job.result["duration_s"] > 0


def test_fallback_to_the_placeholder_is_recorded_in_the_job(
    client: NarrationClient, settings: Settings, start_worker: Callable[..., services.Worker], tmp_path: Path
) -> None:
    start_worker(settings, extra_env={"ECHOFORGE_MODEL_PATH": str(tmp_path / "no-weights-here")})
    job = client.wait(client.submit({"text": "Hello."}).id, timeout=120)
    assert job.state is JobState.SUCCEEDED
    assert job.model["kind"] == "placeholder"
    assert "no-weights-here" in job.model["fallback_reason"]


def test_a_multi_chunk_csm_job_gives_the_anchor_to_every_later_chunk(
    client: NarrationClient, settings: Settings, start_worker: Callable[..., services.Worker], tiny_checkpoint: Path
) -> None:
    import io
    import json

    import boto3
    import soundfile as sf

    start_worker(settings, extra_env={"ECHOFORGE_MODEL_PATH": str(tiny_checkpoint), "ECHOFORGE_DEVICE": "cpu",
                                      "ECHOFORGE_MAX_CHUNK_CHARS": "40"})
    text = "The keeper counted waves. Forty came at dawn. Each one sang to him."
    job = client.wait(client.submit({"text": text, "speaker_id": 0}).id, timeout=300)
    assert job.state is JobState.SUCCEEDED, job.error
    assert job.result is not None and job.model["kind"] == "csm"
    s3 = boto3.client("s3", endpoint_url=settings.s3_endpoint_url)
    bucket = settings.storage_url[5:].split("/")[0]

    def read(key: str) -> bytes:
        return s3.get_object(Bucket=bucket, Key=key)["Body"].read()  # type: ignore[no-any-return]

    manifest = json.loads(read(job.result["manifest_key"]))
    first, *later = manifest["chunks"]
    assert len(later) >= 2
    assert first["context"] is None and first["context_audio_frames"] == 0
    anchor_frames = -(-first["samples"] // 1920)  # what the processor encodes from the first chunk's audio
    for chunk in later:  # what the model was given, counted from its own input ids
        assert chunk["context"] == "anchor" and chunk["context_audio_frames"] == anchor_frames
    # Random weights never emit CSM's end frame: every chunk runs to its cap, is regenerated once on a new seed,
    # then kept and flagged.
    for chunk in manifest["chunks"]:
        assert "runaway" in chunk["qa"]["problems"] and chunk["attempts"] == 2 and chunk["flagged"]
    assert job.result["flagged_chunks"] == [c["index"] for c in manifest["chunks"]]
    info = sf.info(io.BytesIO(read(job.result["key"])))
    assert info.samplerate == 24_000 and abs(info.duration - job.result["duration_s"]) < 0.002
