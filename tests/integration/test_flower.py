"""Flower, a real subprocess with basic auth, sees the worker and the job through its HTTP API."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from producer import processes
from producer.client import NarrationClient
from producer.settings import Settings
from producer.states import JobState
from tests import services

AUTH = ("operator", "flower-test-password")


@pytest.fixture
def flower(settings: Settings, tmp_path: Path) -> Iterator[str]:
    port = processes.free_port()
    args = processes.celery_command("flower", f"--port={port}", "--address=127.0.0.1",
                                    f"--basic-auth={AUTH[0]}:{AUTH[1]}")
    proc = processes.start(args, tmp_path / "flower.log", services.settings_env(settings))
    processes.wait_for_port(port, 60, proc)
    yield f"http://127.0.0.1:{port}"
    processes.stop(proc, grace_s=10)


def _poll(url: str, ready: Callable[[Any], bool], timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        body = requests.get(url, auth=AUTH, timeout=10).json()
        if ready(body) or time.monotonic() > deadline:
            return body
        time.sleep(0.5)


def test_flower_lists_the_worker_and_the_job(
    flower: str, client: NarrationClient, settings: Settings, start_worker: Callable[..., services.Worker]
) -> None:
    worker = start_worker(settings, name="flowerwatch")
    assert requests.get(f"{flower}/api/workers", timeout=10).status_code == 401

    workers = _poll(f"{flower}/api/workers?refresh=1", lambda body: bool(body))
    assert any(name.startswith(f"{worker.name}@") for name in workers)

    job = client.submit({"text": "Watched in Flower."})
    assert client.wait(job.id, timeout=60).state is JobState.SUCCEEDED
    tasks = _poll(f"{flower}/api/tasks", lambda body: body.get(job.id, {}).get("state") == "SUCCESS")
    assert tasks[job.id]["name"] == "echoforge.narrate"
    assert tasks[job.id]["state"] == "SUCCESS"
    assert tasks[job.id]["worker"].startswith(f"{worker.name}@")
