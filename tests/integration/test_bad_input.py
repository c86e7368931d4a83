"""Bad input through every door: the client, the CLI, and raw messages written straight into Redis.

Producer side: a clear error and nothing enqueued. Worker side: the message is refused and logged, the job (if any)
ends `failed` with code `invalid_request`, and the worker keeps serving.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from producer import keys
from producer.client import NarrationClient
from producer.errors import InvalidRequestError
from producer.settings import Settings
from producer.states import JobState
from tests import services
from tests.unit.test_request import BAD_FIELDS


@pytest.mark.parametrize(("fields", "names"), BAD_FIELDS)
def test_the_client_refuses_bad_fields_and_enqueues_nothing(
    client: NarrationClient, fields: dict[str, object], names: str
) -> None:
    with pytest.raises(InvalidRequestError, match=names):
        client.submit(fields)
    assert client.jobs.redis.dbsize() == 0, "no record, no message, no idempotency key"


def test_the_cli_refuses_bad_input_with_exit_2_and_enqueues_nothing(settings: Settings, tmp_path: Path) -> None:
    (tmp_path / "long.txt").write_text("word " * 20_001)
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    cases: list[tuple[list[str], str]] = [
        (["", ], "empty"), (["   \n "], "empty"), (["bell\x07"], "control"),
        (["--file", str(tmp_path / "long.txt")], "limit"), (["--file", str(tmp_path / "latin1.txt")], "UTF-8"),
        (["ok", "--speaker", "-1"], "speaker_id"), (["ok", "--speaker", "1000000000"], "speaker_id"),
        (["ok", "--speaker", "1.5"], "--speaker"), (["ok", "--temperature", "0"], "temperature"),
        (["ok", "--temperature", "-0.5"], "temperature"), (["ok", "--temperature", "nan"], "temperature"),
        (["ok", "--temperature", "inf"], "temperature"), (["ok", "--top-k", "0"], "top_k"),
        (["ok", "--top-k", "1000000"], "top_k"), (["ok", "--bogus", "1"], "unrecognized"),
    ]
    for args, message in cases:
        done = services.run_cli(settings, "submit", *args)
        assert done.returncode == 2 and message in done.stderr, (args, done.stderr)
    assert redis.Redis.from_url(settings.redis_url).dbsize() == 0


def _raw_message(queue: str, args: object, content_type: str = "application/json", body: bytes | None = None) -> str:
    """A Celery protocol-2 message as the Redis transport stores it, written by hand (no EchoForge code)."""
    task_id = str(uuid.uuid4())
    body = body if body is not None else json.dumps([args, {}, {}]).encode()
    return json.dumps({
        "body": base64.b64encode(body).decode(), "content-encoding": "utf-8", "content-type": content_type,
        "headers": {"lang": "py", "task": keys.NARRATE_TASK, "id": task_id, "root_id": task_id, "retries": 0},
        "properties": {"correlation_id": task_id, "delivery_mode": 2, "priority": 0, "body_encoding": "base64",
                       "delivery_info": {"exchange": "", "routing_key": queue}, "delivery_tag": task_id},
    })


def _forged_job(r: redis.Redis, queue: str, request: dict[str, object]) -> str:
    """A job record that never went through validation, as a buggy or hostile producer could write it."""
    job_id = uuid.uuid4().hex
    r.hset(keys.job_key(job_id), mapping={"id": job_id, "state": "queued", "request": json.dumps(request),
                                          "created_at": repr(time.time()), "attempts": "0", "queue": queue})
    r.lpush(queue, _raw_message(queue, [job_id]))
    return job_id


def test_raw_redis_messages_with_bad_requests_fail_as_invalid_and_the_worker_keeps_serving(
    client: NarrationClient, settings: Settings, start_worker: Callable[..., services.Worker]
) -> None:
    worker = start_worker(settings)
    r, queue = client.jobs.redis, settings.queue
    forged = {_forged_job(r, queue, fields): names for fields, names in BAD_FIELDS}
    for raw in (_raw_message(queue, None, body=b"\xff not json {"),
                _raw_message(queue, None, content_type="application/x-python-serialize", body=b"\x80\x04K\x01."),
                _raw_message(queue, ["x" * (1024 * 1024 + 1)]), _raw_message(queue, "not a list")):
        r.lpush(queue, raw)

    good = client.wait(client.submit({"text": "Still serving."}).id, timeout=120)
    assert good.state is JobState.SUCCEEDED
    for job_id, names in forged.items():
        job = client.wait(job_id, timeout=60)
        assert job.state is JobState.FAILED and job.error is not None, job_id
        assert job.error["code"] == "invalid_request" and names in job.error["message"], job.error
    log = worker.log()
    assert "rejected a narration message whose job id is not a job id" in log  # the 1 MiB one
    assert "ContentDisallowed" in log or "pickle" in log
    assert worker.process.poll() is None and r.llen(queue) == 0
