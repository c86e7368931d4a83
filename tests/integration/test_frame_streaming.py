"""Frame streaming through the OpenAI endpoint: a real `echoforge serve`, real celery workers on the tiny random CSM
checkpoint, real Redis and S3. The first chunk's audio leaves the worker frame by frame, before the chunk is stored;
every chunk of such a response is at its raw decoded level."""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import boto3
import httpx
import numpy as np
import openai
import pytest
import redis
import soundfile as sf

from producer import keys
from producer.client import NarrationClient
from producer.mastering import pause_after
from producer.settings import Settings
from producer.states import JobState
from tests import services
from worker.models import SAMPLES_PER_FRAME, frame_budget
from worker.narration.synthesis import chunk_seed

TEXT = "The lighthouse keeper counted the waves. Then, at last, he slept until the dawn came up over the sea."
OTHER = "A short one."
CSM_ENV = {"ECHOFORGE_DEVICE": "cpu", "ECHOFORGE_MAX_CHUNK_CHARS": "60"}


def _token(settings: Settings) -> str:
    done = services.run_cli(settings, "keys", "create", "--tenant", "acme", "--json")
    assert done.returncode == 0, done.stderr
    return str(json.loads(done.stdout)["secret"])


def _openai(api_url: str, settings: Settings) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{api_url}/v1", api_key=_token(settings), max_retries=0)


@pytest.fixture
def speech(settings: Settings, start_api: Callable[..., str], start_worker: Callable[..., services.Worker],
           tiny_checkpoint: Path) -> Iterator[tuple[openai.OpenAI, str]]:
    start_worker(settings, extra_env={"ECHOFORGE_MODEL_PATH": str(tiny_checkpoint), **CSM_ENV})
    api_url = start_api(settings)
    with _openai(api_url, settings) as client:
        yield client, api_url


def _job(api_url: str, client: openai.OpenAI, job_id: str) -> dict[str, object]:
    headers = {"Authorization": f"Bearer {client.api_key}"}
    return dict(httpx.get(f"{api_url}/v1/narrations/{job_id}", headers=headers, timeout=10).json())


def _pcm(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768


def _published(settings: Settings, job_id: str) -> tuple[np.ndarray, list[dict[bytes, bytes]]]:
    """Chunk 0's pieces as the worker published them, and every entry of the job's frame stream."""
    stream: Any = redis.Redis.from_url(settings.redis_url).xrange(keys.frame_stream_key(job_id))
    entries = [fields for _, fields in stream]
    pieces = [np.frombuffer(e[b"pcm"], dtype="<f4") for e in entries if b"pcm" in e]
    return (np.concatenate(pieces) if pieces else np.zeros(0, np.float32)), entries


def _stored(settings: Settings, job: dict[str, object], index: int) -> tuple[np.ndarray, dict[str, object]]:
    """Chunk `index` as stored (its raw level) and its manifest entry."""
    s3 = boto3.client("s3", endpoint_url=settings.s3_endpoint_url)
    bucket, prefix = settings.storage_url[5:].split("/", 1)
    job_id = str(job["id"])
    manifest = json.loads(s3.get_object(Bucket=bucket, Key=f"{prefix}/{job_id}/manifest.json")["Body"].read())
    data = s3.get_object(Bucket=bucket, Key=f"{prefix}/{job_id}/{keys.CHUNK_OBJECT.format(index=index)}")
    audio, _ = sf.read(io.BytesIO(data["Body"].read()), dtype="float32")
    return audio, manifest["chunks"][index]


def _as_sent(audio: np.ndarray) -> np.ndarray:
    """What 16-bit PCM can carry of float samples: clipped to full scale."""
    return np.clip(audio, -1.0, 32767 / 32768)


def test_the_first_chunk_streams_frame_by_frame_before_it_is_stored(
        speech: tuple[openai.OpenAI, str], settings: Settings, tiny_checkpoint: Path) -> None:
    client, api_url = speech
    with client.audio.speech.with_streaming_response.create(model="tts-1", voice="alloy", input=TEXT,
                                                             response_format="pcm") as response:
        pieces = response.iter_bytes()
        first = next(pieces)
        job_id = response.headers["x-echoforge-job"]
        at_first = _job(api_url, client, job_id)
        rest = b"".join(pieces)
    assert first and at_first["state"] == "running", at_first
    assert at_first["progress"].get("chunks_done", 0) == 0, at_first  # type: ignore[attr-defined]
    job = _job(api_url, client, job_id)
    assert job["state"] == "succeeded" and job["request"]["stream_frames"] is True  # type: ignore[index]
    heard, (streamed, entries) = _pcm(first + rest), _published(settings, job_id)
    assert b"end" in entries[-1] and int(entries[-1][b"samples"]) == len(streamed) > 0
    first_entry = _stored(settings, job, 0)[1]
    text = str(first_entry["text"])
    assert len(streamed) == frame_budget(text) * SAMPLES_PER_FRAME  # its own row's frames (capped), no other's
    # What the listener heard of chunk 0 is what the worker published, at its raw level.
    np.testing.assert_allclose(heard[:len(streamed)], _as_sent(streamed), atol=1e-4)
    # The published pieces are the first attempt's decode (random weights run to their cap, so QA has chunk 0 made
    # once more and the retry is stored; the listener keeps what it heard).
    attempt_one = _first_attempt(tiny_checkpoint, job_id, text)
    np.testing.assert_allclose(streamed[:len(attempt_one)], attempt_one, atol=1e-4)
    assert first_entry["attempts"] == 2
    # Then chunk 1 from storage, raw, after the usual pause.
    second, _ = _stored(settings, job, 1)
    pause = len(pause_after(bool(first_entry["paragraph_end"]), 24_000))
    np.testing.assert_allclose(heard[len(streamed) + pause:], _as_sent(second), atol=1e-4)
    assert len(heard) == len(streamed) + pause + len(second) and job["result"]["chunks"] == 2  # type: ignore[index]
    ttl = redis.Redis.from_url(settings.redis_url).ttl(keys.frame_stream_key(job_id))
    assert 0 < ttl <= keys.FRAME_STREAM_TTL_S  # type: ignore[operator]


def _first_attempt(checkpoint: Path, job_id: str, text: str) -> np.ndarray:
    """Chunk 0's first attempt made again here: same model, text, voice and seed (the worker's one-shot decode)."""
    from worker.models import CSMModel

    model = CSMModel(str(checkpoint), "cpu")
    [result] = model.generate_batch([text], speaker_id=0, seeds=[chunk_seed(job_id, 0, 0)])
    return result.audio


def test_a_job_that_does_not_ask_for_frames_publishes_none(
        speech: tuple[openai.OpenAI, str], settings: Settings, client: NarrationClient) -> None:
    job = client.wait(client.submit({"text": OTHER, "stream_chunks": True}).id, timeout=300)
    assert job.state is JobState.SUCCEEDED, job.error
    assert not redis.Redis.from_url(settings.redis_url).exists(keys.frame_stream_key(job.id))


def test_jobs_sharing_a_threads_worker_each_stream_their_own_first_chunk(
        settings: Settings, start_api: Callable[..., str], start_worker: Callable[..., services.Worker],
        tiny_checkpoint: Path) -> None:
    start_worker(settings, pool="threads", concurrency=2,
                 extra_env={"ECHOFORGE_MODEL_PATH": str(tiny_checkpoint), **CSM_ENV})
    api_url = start_api(settings)
    with _openai(api_url, settings) as client, ThreadPoolExecutor(2) as pool:
        def speak(text: str) -> tuple[str, np.ndarray]:
            raw = client.audio.speech.with_raw_response.create(model="tts-1", voice="alloy", input=text,
                                                               response_format="pcm")
            return raw.headers["x-echoforge-job"], _pcm(raw.content)

        results = list(pool.map(speak, [TEXT, OTHER]))
        for job_id, heard in results:
            job = _job(api_url, client, job_id)
            assert job["state"] == "succeeded", job
            streamed, _ = _published(settings, job_id)
            stored, entry = _stored(settings, job, 0)
            # Chunk 0 was frame-streamed (its own frames: a whole capped row of its own text), or, when the other
            # job held the streaming codec, sent from storage.
            first = streamed if len(streamed) else stored
            assert len(streamed) in (0, frame_budget(str(entry["text"])) * SAMPLES_PER_FRAME)
            np.testing.assert_allclose(heard[:len(first)], _as_sent(first), atol=1e-4)


def test_a_model_that_cannot_stream_frames_sends_the_stored_chunk_and_the_setting_turns_it_off(
        settings: Settings, start_api: Callable[..., str], start_worker: Callable[..., services.Worker]) -> None:
    start_worker(settings, extra_env={"ECHOFORGE_USE_PLACEHOLDER": "true", "ECHOFORGE_MAX_CHUNK_CHARS": "60"})
    for api_url, frames in ((start_api(settings), True),
                            (start_api(settings, extra_env={"ECHOFORGE_OPENAI_FRAME_STREAMING": "false"}), False)):
        with _openai(api_url, settings) as client:
            raw = client.audio.speech.with_raw_response.create(model="tts-1", voice="alloy", input=OTHER,
                                                               response_format="pcm")
            job = _job(api_url, client, raw.headers["x-echoforge-job"])
        assert job["state"] == "succeeded" and job["request"]["stream_frames"] is frames  # type: ignore[index]
        assert not len(_published(settings, str(job["id"]))[0])
        if frames:  # the placeholder publishes nothing: chunk 0 comes from storage, raw as the rule says
            stored, _ = _stored(settings, job, 0)
            np.testing.assert_allclose(_pcm(raw.content), _as_sent(stored), atol=1e-4)
