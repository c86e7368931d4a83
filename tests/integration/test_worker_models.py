"""Which model a real worker process serves with, and what every job record says about it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from producer.client import NarrationClient
from producer.jobs import JobState
from producer.settings import Settings
from tests import services
from tests.csm_checkpoint import build_tiny_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny-csm"))


def test_a_job_runs_on_the_real_csm_checkpoint(
    client: NarrationClient, settings: Settings, start_worker: Callable[..., services.Worker], checkpoint: Path
) -> None:
    start_worker(settings, extra_env={"ECHOFORGE_MODEL_PATH": str(checkpoint), "ECHOFORGE_DEVICE": "cpu"})
    job = client.wait(client.submit({"text": "Hello.", "speaker_id": 0}).id, timeout=120)
    assert job.state is JobState.SUCCEEDED, job.error
    assert job.model["kind"] == "csm" and job.model["id"] == str(checkpoint)
    assert job.model["device"] == "cpu" and job.model["fallback_reason"] is None
    assert job.result is not None and job.result["duration_s"] > 0


def test_fallback_to_the_placeholder_is_recorded_in_the_job(
    client: NarrationClient, settings: Settings, start_worker: Callable[..., services.Worker], tmp_path: Path
) -> None:
    start_worker(settings, extra_env={"ECHOFORGE_MODEL_PATH": str(tmp_path / "no-weights-here")})
    job = client.wait(client.submit({"text": "Hello."}).id, timeout=120)
    assert job.state is JobState.SUCCEEDED
    assert job.model["kind"] == "placeholder"
    assert "no-weights-here" in job.model["fallback_reason"]
