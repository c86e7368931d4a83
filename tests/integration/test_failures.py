"""Jobs that cannot succeed end `failed` with a clear code, and no secret in the record or the logs."""

from __future__ import annotations

from collections.abc import Callable

from producer.client import NarrationClient
from producer.settings import Settings
from producer.states import JobState
from tests import services


def test_missing_bucket_fails_with_storage_error_and_no_secret(
    settings: Settings, start_worker: Callable[..., services.Worker]
) -> None:
    broken = settings.model_copy(update={"storage_url": "s3://no-such-bucket-here/x"})
    worker = start_worker(broken)
    client = NarrationClient(broken)
    job = client.wait(client.submit({"text": "This will not be stored."}).id, timeout=60)
    assert job.state is JobState.FAILED
    assert job.error is not None and job.error["code"] == "storage_error"
    assert "no-such-bucket-here" in job.error["message"]
    assert "testing-secret-key" not in job.error["message"] + worker.log()
    assert job.request["text"] == "This will not be stored.", "the text is kept for a retry"


def test_refused_placeholder_fails_jobs_with_model_unavailable(
    client: NarrationClient, settings: Settings, start_worker: Callable[..., services.Worker]
) -> None:
    start_worker(settings, extra_env={"ECHOFORGE_ALLOW_PLACEHOLDER": "false"})
    job = client.wait(client.submit({"text": "No model, no audio."}).id, timeout=60)
    assert job.state is JobState.FAILED
    assert job.error is not None and job.error["code"] == "model_unavailable"
    assert "ECHOFORGE_MODEL_PATH" in job.error["message"], "the message says how to fix it"
