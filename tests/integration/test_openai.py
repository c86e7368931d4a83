"""OpenAI's speech endpoint, driven by the real `openai` package against a real `echoforge serve` and worker."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable, Iterator

import httpx
import openai
import pytest

from producer.audio_formats import FORMATS
from producer.settings import Settings
from tests import services

TEXT = "The lighthouse keeper counted the waves. Then, at last, he slept until the dawn came up over the sea."
CHAPTER = " ".join(f"Sentence number {i} of the chapter is read aloud, slowly and with care." for i in range(12))


def _token(settings: Settings, tenant: str) -> str:
    done = services.run_cli(settings, "keys", "create", "--tenant", tenant, "--json")
    assert done.returncode == 0, done.stderr
    return str(json.loads(done.stdout)["secret"])


@pytest.fixture
def api_url(settings: Settings, start_api: Callable[..., str],
            start_worker: Callable[..., services.Worker]) -> str:
    start_worker(settings, extra_env={"ECHOFORGE_USE_PLACEHOLDER": "true", "ECHOFORGE_PLACEHOLDER_RTF": "0.2",
                                      "ECHOFORGE_MAX_CHUNK_CHARS": "80"})
    return start_api(settings)


@pytest.fixture
def client(api_url: str, settings: Settings) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{api_url}/v1", api_key=_token(settings, "acme"), max_retries=0) as c:
        yield c


def _decoded_seconds(data: bytes, fmt: str) -> float:
    """The audio's length as PyAV (FFmpeg's decoders, not ours) reads it."""
    import av

    if fmt == "pcm":
        return len(data) / 2 / 24_000
    with av.open(io.BytesIO(data)) as container:
        samples, rate = 0, 24_000
        for frame in container.decode(audio=0):
            samples, rate = samples + frame.samples, frame.sample_rate
    return samples / rate


def _job(api_url: str, client: openai.OpenAI, job_id: str) -> dict[str, object]:
    headers = {"Authorization": f"Bearer {client.api_key}"}
    return dict(httpx.get(f"{api_url}/v1/narrations/{job_id}", headers=headers, timeout=10).json())


@pytest.mark.parametrize("fmt", [f for f in FORMATS if f != "m4a"])
def test_each_format_decodes_to_the_jobs_duration(client: openai.OpenAI, api_url: str, fmt: str) -> None:
    raw = client.audio.speech.with_raw_response.create(model="tts-1", voice="alloy", input=TEXT,
                                                       response_format=fmt)  # type: ignore[arg-type]
    assert raw.headers["content-type"] == FORMATS[fmt].content_type
    job = _job(api_url, client, raw.headers["x-echoforge-job"])
    assert job["state"] == "succeeded" and job["request"]["priority"] == 9  # type: ignore[index]
    duration = float(job["result"]["duration_s"])  # type: ignore[index]
    decoded = _decoded_seconds(raw.content, fmt)
    assert duration - 0.001 <= decoded <= duration + FORMATS[fmt].slack_s + 0.001, (fmt, decoded, duration)


def test_streaming_sends_audio_while_the_job_is_still_running(client: openai.OpenAI, api_url: str) -> None:
    with client.audio.speech.with_streaming_response.create(model="gpt-4o-mini-tts", voice="nova", input=CHAPTER,
                                                             response_format="mp3") as response:
        pieces = response.iter_bytes()
        first = next(pieces)
        job = _job(api_url, client, response.headers["x-echoforge-job"])
        assert first and job["state"] == "running", "the first audio left before the job ended"
        rest = b"".join(pieces)
    final = _job(api_url, client, response.headers["x-echoforge-job"])
    assert final["state"] == "succeeded" and final["result"]["chunks"] > 3  # type: ignore[index]
    assert abs(_decoded_seconds(first + rest, "mp3") - float(final["result"]["duration_s"])) < 0.1  # type: ignore[index]


def test_a_client_that_goes_away_cancels_its_job(client: openai.OpenAI, api_url: str) -> None:
    with client.audio.speech.with_streaming_response.create(model="tts-1", voice="echo", input=CHAPTER,
                                                             response_format="pcm") as response:
        next(response.iter_bytes())
        job_id = response.headers["x-echoforge-job"]
    deadline = time.monotonic() + 60
    while _job(api_url, client, job_id)["state"] != "canceled":
        assert time.monotonic() < deadline, "the abandoned job was not canceled"
        time.sleep(0.2)


@pytest.mark.parametrize("options", [{"speed": 1.5}, {"instructions": "whisper"}, {"model": "whisper-1"},
                                     {"response_format": "ogg"}, {"stream_format": "sse"}, {"voice": "nobody"}],
                         ids=lambda o: next(iter(o)))
def test_what_is_not_supported_is_a_clear_bad_request(client: openai.OpenAI, options: dict[str, object]) -> None:
    fields: dict[str, object] = {"model": "tts-1", "voice": "alloy", "input": TEXT, **options}
    with pytest.raises(openai.BadRequestError) as refused:
        client.audio.speech.create(**fields)  # type: ignore[arg-type]
    assert next(iter(options)) in str(refused.value)


def test_a_bad_key_is_an_authentication_error(api_url: str) -> None:
    with openai.OpenAI(base_url=f"{api_url}/v1", api_key="ef_0000000000000000." + "x" * 43, max_retries=0) as bad, \
            pytest.raises(openai.AuthenticationError):
        bad.audio.speech.create(model="tts-1", voice="alloy", input=TEXT)


def test_another_tenants_voice_is_not_found(client: openai.OpenAI, api_url: str, settings: Settings) -> None:
    import numpy as np
    import soundfile as sf

    recording = io.BytesIO()
    sf.write(recording, (0.2 * np.sin(np.linspace(0, 4000, 48_000))).astype(np.float32), 24_000, format="WAV")
    other = {"Authorization": f"Bearer {_token(settings, 'rival')}"}
    made = httpx.post(f"{api_url}/v1/voices", headers=other, data={"transcript": "Hello there."},
                      files={"audio": ("me.wav", recording.getvalue(), "audio/wav")}, timeout=30)
    assert made.status_code == 201, made.text
    with pytest.raises(openai.NotFoundError):
        client.audio.speech.create(model="tts-1", input=TEXT, voice={"id": made.json()["id"]})  # type: ignore[arg-type]


def test_models_and_voices_are_listed(client: openai.OpenAI) -> None:
    assert {"tts-1", "tts-1-hd", "gpt-4o-mini-tts", "csm-1b"} <= {m.id for m in client.models.list()}
    voices = client.get("/audio/voices", cast_to=dict)
    assert {"alloy", "nova", "shimmer"} <= {v["name"] for v in voices["data"]}
