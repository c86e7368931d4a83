"""Every delivery format through a real worker (placeholder model), real Redis and a real S3 server: the file decodes
(PyAV) to the job's duration, the manifest and captions do not depend on the format, and the first chunk is short."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import av
import boto3
import httpx

from producer.audio_formats import FORMATS, AudioFormat
from producer.client import NarrationClient
from producer.settings import Settings
from producer.states import JobState
from tests import services

PARAGRAPH = (
    "When the keeper woke that morning, the sea was flat, the gulls were silent, and the lamp, which had burned all "
    "night without a flicker, was cold. He went down to the harbour at 6:30 a.m. and counted 42 boats. The fishermen "
    "argued about the weather, the price of bait and the new harbour master, who had arrived on Tuesday.\n\n"
    "By noon the wind had turned. Nobody went out."
)
JOB_SPECIFIC = {"job_id", "created_at", "narration", "captions", "model"}  # what names or times the job itself


def _decoded_seconds(data: bytes, spec: AudioFormat) -> float:
    raw = {"format": "s16le", "options": {"sample_rate": "24000", "ch_layout": "mono"}} if spec.name == "pcm" else {}
    with av.open(io.BytesIO(data), **raw) as container:  # type: ignore[call-overload]
        frames = list(container.decode(audio=0))
    return sum(f.samples for f in frames) / frames[0].sample_rate


def _format_free(manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest without what names the job, its time or its format (each chunk's seed comes from the job id)."""
    kept = {k: v for k, v in manifest.items() if k not in JOB_SPECIFIC}
    kept["settings"] = {k: v for k, v in manifest["settings"].items() if k != "output_format"}
    kept["chunks"] = [{k: v for k, v in chunk.items() if k != "seed"} for chunk in manifest["chunks"]]
    return kept


def test_every_format_decodes_to_the_jobs_duration_with_the_same_manifest_and_captions(
    client: NarrationClient, settings: Settings, start_worker: Callable[..., services.Worker], tmp_path: Path
) -> None:
    start_worker(settings)
    jobs = {name: client.submit({"text": PARAGRAPH, "output_format": name}).id for name in FORMATS}
    s3, bucket = boto3.client("s3", endpoint_url=settings.s3_endpoint_url), settings.storage_url[5:].split("/")[0]

    def read(key: str) -> bytes:
        return s3.get_object(Bucket=bucket, Key=key)["Body"].read()

    manifests, captions = {}, {}
    for name, job_id in jobs.items():
        spec, job = FORMATS[name], client.wait(job_id, timeout=120)
        assert job.state is JobState.SUCCEEDED and job.result is not None, job.error
        assert job.result["format"] == name and job.result["key"].endswith(f"/narration.{spec.extension}")
        assert s3.head_object(Bucket=bucket, Key=job.result["key"])["ContentType"] == spec.content_type
        downloaded = client.download(job_id, tmp_path / f"out.{spec.extension}")
        extra = _decoded_seconds(downloaded.read_bytes(), spec) - job.result["duration_s"]
        assert -0.001 <= extra <= spec.slack_s + 0.001, f"{name}: {extra * 1000:.1f} ms beyond the job's duration"
        manifests[name] = _format_free(json.loads(read(job.result["manifest_key"])))
        captions[name] = [read(job.result["captions"][kind]) for kind in ("srt", "vtt")]

    assert all(m == manifests["wav"] for m in manifests.values()), "the manifest does not depend on the format"
    assert all(c == captions["wav"] for c in captions.values()), "nor do the captions"
    first, *later = manifests["wav"]["chunks"]
    assert first["chars"] <= settings.first_chunk_chars < max(c["chars"] for c in later), "a short first chunk"
    assert first["display"].startswith("When the keeper woke") and manifests["wav"]["settings"]["first_chunk_chars"]
    assert manifests["wav"]["voice_anchor"] == {"source": "first_chunk", "text": first["text"],
                                                "seconds": round(first["samples"] / 24_000, 3)}
    assert all(c["context"] == "anchor" for c in later)


def test_the_cli_and_the_api_serve_a_format_with_its_own_type(
    redis_url: str, start_worker: Callable[..., services.Worker], start_api: Callable[..., str], tmp_path: Path
) -> None:
    settings = Settings(redis_url=redis_url, storage_url=f"file://{tmp_path}/outputs")  # the API serves local files
    start_worker(settings)
    submitted = services.run_cli(settings, "submit", PARAGRAPH, "--format", "opus", "--wait", "--json")
    assert submitted.returncode == 0, submitted.stderr
    job = json.loads(submitted.stdout)
    assert job["state"] == "succeeded" and job["result"]["key"].endswith("/narration.opus")

    base = start_api(settings, extra_env={"ECHOFORGE_ALLOW_ANONYMOUS": "true"})
    posted = httpx.post(f"{base}/v1/narrations", json={"text": PARAGRAPH, "output_format": "mp3"},
                        headers={"Prefer": "wait=60"}, timeout=90)
    assert posted.status_code == 200 and posted.json()["state"] == "succeeded", posted.text
    job = posted.json()
    audio = httpx.get(f"{base}/v1/narrations/{job['id']}/audio", timeout=30)
    assert audio.status_code == 200 and audio.headers["content-type"] == "audio/mpeg"
    assert f'filename="{job["id"]}.mp3"' in audio.headers["content-disposition"]
    extra = _decoded_seconds(audio.content, FORMATS["mp3"]) - job["result"]["duration_s"]
    assert -0.001 <= extra <= FORMATS["mp3"].slack_s
    schema = httpx.get(f"{base}/openapi.json", timeout=30).json()
    listed = schema["paths"]["/v1/narrations/{job_id}/audio"]["get"]["responses"]["200"]["content"]
    assert set(listed) == {f.content_type for f in FORMATS.values()}
