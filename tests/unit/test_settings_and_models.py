"""Settings parsing and secret redaction; the placeholder model's audio."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from pydantic import ValidationError

from producer import keys
from producer.celery_config import celery_config
from producer.settings import Settings, redact_url
from worker.models import SAMPLE_RATE, CSMModelError, PlaceholderCSMModel


def test_redact_url_hides_the_password_only() -> None:
    assert redact_url("redis://:s3cret@cache:6380/1") == "redis://:***@cache:6380/1"
    assert redact_url("redis://user:s3cret@cache/0") == "redis://user:***@cache/0"
    assert redact_url("redis://cache:6379/0") == "redis://cache:6379/0"


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ECHOFORGE_STORAGE_URL", "s3://bucket/some/prefix")
    monkeypatch.setenv("ECHOFORGE_ALLOW_PLACEHOLDER", "false")
    monkeypatch.setenv("ECHOFORGE_PLACEHOLDER_RTF", "0.5")
    settings = Settings()
    assert settings.storage_url == "s3://bucket/some/prefix"
    assert settings.allow_placeholder is False and settings.placeholder_rtf == 0.5
    monkeypatch.setenv("ECHOFORGE_STORAGE_URL", "ftp://nope")
    with pytest.raises(ValidationError, match="s3://bucket/prefix or file:///path"):
        Settings()


def test_visibility_timeout_exceeds_the_hard_time_limit_everywhere() -> None:
    config = celery_config(Settings(job_time_limit_s=3600))
    vt = config["broker_transport_options"]["visibility_timeout"]
    assert vt > config["task_time_limit"] > config["task_soft_time_limit"]
    assert config["result_backend_transport_options"]["visibility_timeout"] == vt
    assert config["accept_content"] == ["json"] and config["task_serializer"] == "json"
    assert config["task_acks_late"] and config["task_reject_on_worker_lost"]
    assert config["worker_prefetch_multiplier"] == 1


def test_priority_lists_match_kombu_naming() -> None:
    assert keys.priority_queue_lists("q") == ["q", "q\x06\x163", "q\x06\x166", "q\x06\x169"]


def test_placeholder_audio_is_plausible_speech_length(tmp_path: Path) -> None:
    model = PlaceholderCSMModel()
    short, rate = model.generate_speech("Hi.")
    text = "A sentence of about sixty characters, give or take a few more."
    audio, _ = model.generate_speech(text, speaker_id=3)
    assert rate == SAMPLE_RATE and audio.dtype == np.float32 and audio.ndim == 1
    assert 2.5 < len(audio) / rate < 6.0 and len(short) < len(audio)
    assert np.abs(audio).max() <= 1.0
    capped, _ = model.generate_speech(text, max_audio_length_ms=1000)
    assert len(capped) == SAMPLE_RATE
    path = model.save_audio(audio, rate, tmp_path / "tone.flac")
    assert sf.info(str(path)).samplerate == SAMPLE_RATE
    with pytest.raises(CSMModelError, match="suffix"):
        model.save_audio(audio, rate, tmp_path / "tone.mp3")


def test_redaction_covers_a_password_in_the_query_string() -> None:
    assert redact_url("redis://cache/0?password=s3cret&db=1") == "redis://cache/0?password=***&db=1"


def test_settings_refuse_an_unknown_device() -> None:
    with pytest.raises(ValidationError, match="ECHOFORGE_DEVICE"):
        Settings(device="tpu")
    assert Settings(device="cuda:1").device == "cuda:1"


def test_the_first_chunk_budget_is_off_or_at_least_twenty_characters() -> None:
    assert Settings().first_chunk_chars == 100 and Settings(first_chunk_chars=0).first_chunk_chars == 0
    for bad in (5, 401, -1):
        with pytest.raises(ValueError, match="first_chunk_chars"):
            Settings(first_chunk_chars=bad)
