"""A newcomer's first steps: `echoforge` in the folder of a running `echoforge up` reaches that stack, with nothing
exported, even when another Redis listens on the default port; a wait on a queue no worker consumes says so."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from producer import keys, processes, stack_state
from producer.client import NarrationClient
from producer.settings import Settings, redact_url
from tests import services

DEFAULT_REDIS_PORT = 6379


@pytest.fixture
def decoy_redis(tmp_path: Path) -> Iterator[redis.Redis]:
    """Something on 127.0.0.1:6379, where the CLI goes by default: this machine's Redis, else one started here.

    Only read from: a Redis that was already there is somebody else's.
    """
    proc = None
    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", DEFAULT_REDIS_PORT)) != 0:
            proc, _ = services.start_redis(tmp_path, port=DEFAULT_REDIS_PORT)
    client = redis.Redis(port=DEFAULT_REDIS_PORT)
    yield client
    client.close()
    if proc is not None:
        processes.stop(proc, grace_s=5)


def test_cli_in_the_folder_of_up_reaches_its_stack_not_the_redis_on_6379(
        tmp_path: Path, decoy_redis: redis.Redis) -> None:
    up = services.start_up(tmp_path / "data", "--no-demo", cwd=tmp_path)
    state_file = tmp_path / "data" / "stack.json"
    try:
        deadline = time.monotonic() + 120
        while not state_file.exists():
            assert up.poll() is None and time.monotonic() < deadline, "no stack.json from `up`"
            time.sleep(0.2)
        assert stat.S_IMODE(state_file.stat().st_mode) == 0o600
        state = json.loads(state_file.read_text())
        assert state["pid"] == up.pid

        done = subprocess.run([str(services.ECHOFORGE_CLI), "submit", "Hello.", "--wait"], cwd=tmp_path,
                              env=services.env_without_settings(), capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, done.stdout + done.stderr
        assert (f"echoforge: using the stack of `echoforge up` (pid {up.pid}, ./data/stack.json): "
                f"{state['redis_url']}") in done.stderr
        job_id = done.stdout.split()[0]
        assert done.stdout.split()[1] == "succeeded", done.stdout
        assert decoy_redis.exists(keys.job_key(job_id)) == 0, "nothing was queued into the Redis on 6379"
        stack_redis = redis.Redis.from_url(state["redis_url"])
        assert stack_redis.exists(keys.job_key(job_id)) == 1
        stack_redis.close()

        up.send_signal(signal.SIGINT)
        assert up.wait(timeout=60) == 0
        assert not state_file.exists(), "removed when `up` stops"
    finally:
        if up.poll() is None:
            up.send_signal(signal.SIGINT)
            try:
                up.wait(timeout=60)
            except subprocess.TimeoutExpired:
                up.kill()
        assert up.stdout is not None
        print(up.stdout.read())


def test_a_stale_state_file_is_ignored_with_a_note(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    stack_state.write(tmp_path / "data", stack_state.StackState(
        redis_url="redis://:secret@127.0.0.1:1/0", storage_url="file:///nowhere", flower_url="http://127.0.0.1:1/",
        pid=gone.pid, queue="elsewhere"))
    monkeypatch.chdir(tmp_path)

    settings = stack_state.cli_settings()

    assert (settings.redis_url, settings.queue) == (Settings().redis_url, keys.NARRATION_QUEUE)
    err = capsys.readouterr().err
    assert err == f"echoforge: ignoring ./data/stack.json: its `echoforge up` (pid {gone.pid}) is not running\n"


def test_a_live_stack_fills_in_only_what_the_environment_does_not_set(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    path = stack_state.write(tmp_path, stack_state.StackState(
        redis_url="redis://:secret@127.0.0.1:1/0", storage_url="file:///from-the-stack",
        flower_url="http://127.0.0.1:1/", pid=os.getpid(), queue="the-stacks-queue"))
    monkeypatch.setenv("ECHOFORGE_STORAGE_URL", "file:///from-the-environment")

    settings = stack_state.cli_settings(path)

    assert (settings.redis_url, settings.storage_url, settings.queue) == (
        "redis://:secret@127.0.0.1:1/0", "file:///from-the-environment", "the-stacks-queue")
    err = capsys.readouterr().err
    assert err == f"echoforge: using the stack of `echoforge up` (pid {os.getpid()}, {path}): redis://:***@127.0.0.1:1/0\n"
    assert "secret" not in err

    monkeypatch.setenv("ECHOFORGE_REDIS_URL", "redis://127.0.0.1:2/0")
    assert stack_state.cli_settings(path).redis_url == "redis://127.0.0.1:2/0"
    assert capsys.readouterr().err == "", "with ECHOFORGE_REDIS_URL set, the state file is not read"
    stack_state.remove(tmp_path)
    assert not path.exists()


def test_wait_on_a_queue_no_worker_consumes_says_so_once(settings: Settings, client: NarrationClient) -> None:
    job = client.submit({"text": "Nobody will narrate this."})
    assert client.queue_consumers() == []

    done = services.run_cli(settings, "wait", job.id, "--timeout", "8")

    assert done.returncode == 1, done.stdout + done.stderr
    warning = (f"echoforge: no worker is consuming queue {settings.queue} on {redact_url(settings.redis_url)} "
               "(job still queued after 5 s); is one running?")
    assert done.stderr.count(warning) == 1, done.stderr
    assert client.get(job.id).state.value == "queued"


def test_queue_consumers_names_a_running_worker(settings: Settings, client: NarrationClient,
                                                start_worker: Callable[..., services.Worker]) -> None:
    worker = start_worker(settings, extra_env={"ECHOFORGE_USE_PLACEHOLDER": "1"})
    assert client.queue_consumers(timeout=5) == [f"{worker.name}@{socket.gethostname()}"]
