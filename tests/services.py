"""Real service processes for the tests: redis-server, moto's S3 server, Celery workers (narration and webhook),
Flower."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from producer import processes
from producer.settings import Settings

REPO = Path(__file__).resolve().parents[1]
# The `echoforge` console script of this venv (with PYTHONPATH, it runs the checkout's code).
ECHOFORGE_CLI = Path(sys.executable).parent / "echoforge"


def start_redis(log_dir: Path, port: int | None = None, persist: bool = False,
                password: str | None = None) -> tuple[subprocess.Popen[bytes], str]:
    """A redis-server on a free port; `persist` turns the append-only file on (it survives a restart)."""
    port = port or processes.free_port()
    args = [processes.redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "yes" if persist else "no", "--appendfsync", "always",
            "--dir", str(log_dir), *(["--requirepass", password] if password else [])]
    proc = processes.start(args, log_dir / f"redis-{port}.log")
    processes.wait_for_port(port, 15, proc)
    return proc, f"redis://{f':{password}@' if password else ''}127.0.0.1:{port}/0"


# boto3 in the tests, the benchmarks and their worker subprocesses talks to moto with throwaway credentials.
TEST_AWS_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing-secret-key",
                "AWS_DEFAULT_REGION": "us-east-1"}


def use_test_environment() -> None:
    """Throwaway S3 credentials, and no ECHOFORGE_* setting leaking in from the caller's shell."""
    for name in [k for k in os.environ if k.startswith("ECHOFORGE_")]:
        del os.environ[name]
    os.environ.update(TEST_AWS_ENV)


def start_s3(log_dir: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = processes.free_port()
    args = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    proc = processes.start(args, log_dir / "moto.log")
    processes.wait_for_port(port, 30, proc)
    return proc, f"http://127.0.0.1:{port}"


@contextmanager
def bench_services(prefix: str = "echoforge-bench-") -> Iterator[tuple[Path, str, str]]:
    """(scratch dir, redis URL, S3 endpoint with a bucket named "bench") for a benchmark; all stopped after."""
    import boto3

    use_test_environment()
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp_name:
        tmp = Path(tmp_name)
        redis_proc, redis_url = start_redis(tmp)
        s3_proc, s3_url = start_s3(tmp)
        try:
            boto3.client("s3", endpoint_url=s3_url).create_bucket(Bucket="bench")
            yield tmp, redis_url, s3_url
        finally:
            processes.stop(redis_proc, 5)
            processes.stop(s3_proc, 5)


def env_without_settings() -> dict[str, str]:
    """This process's environment without any ECHOFORGE_* variable, as a user with nothing exported has it."""
    return {k: v for k, v in os.environ.items() if not k.startswith("ECHOFORGE_")}


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment a worker subprocess needs to see `settings`."""
    env = env_without_settings()
    for name, value in settings.model_dump().items():
        if value is not None:
            env[f"ECHOFORGE_{name.upper()}"] = str(value)
    env["PYTHONPATH"] = str(REPO)
    return env


@dataclass
class Worker:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    extra: dict[str, str] = field(default_factory=dict)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        processes.stop(self.process, grace_s=20)


def start_worker(settings: Settings, log_dir: Path, name: str | None = None,
                 extra_env: dict[str, str] | None = None, timeout: float = 60, pool: str = "prefork",
                 concurrency: int = 1) -> Worker:
    """A real `celery -A worker.app worker` (by default prefork with one child), returned once it is ready."""
    name = name or f"w{uuid.uuid4().hex[:6]}"
    env = {**settings_env(settings), **(extra_env or {})}
    log_path = log_dir / f"worker-{name}.log"
    args = processes.celery_command("worker", "--pool", pool, "--concurrency", str(concurrency), "--loglevel", "INFO",
                                    "--hostname", f"{name}@%h", "--queues", settings.queue,
                                    "--without-mingle", "--without-gossip")
    return _until_ready(Worker(name, processes.start(args, log_path, env), log_path), timeout)


def start_webhook_worker(settings: Settings, log_dir: Path, name: str | None = None,
                         extra_env: dict[str, str] | None = None, timeout: float = 60) -> Worker:
    """A real webhook worker (`celery -A producer.webhooks.app worker -Q echoforge.webhooks --pool threads`: the
    deliver task, the relay, the metrics), returned once it is ready."""
    name = name or f"hooks{uuid.uuid4().hex[:6]}"
    env = {**settings_env(settings), **(extra_env or {})}
    log_path = log_dir / f"webhooks-{name}.log"
    args = processes.webhook_worker_command("--loglevel", "INFO", "--hostname", f"{name}@%h", "--without-mingle",
                                            "--without-gossip")
    return _until_ready(Worker(name, processes.start(args, log_path, env), log_path), timeout)


def _until_ready(worker: Worker, timeout: float) -> Worker:
    deadline = time.monotonic() + timeout
    while "ready." not in (worker.log_path.read_text(errors="replace") if worker.log_path.exists() else ""):
        if worker.process.poll() is not None or time.monotonic() > deadline:
            worker.stop()
            raise RuntimeError(f"worker {worker.name} did not start:\n{worker.log()[-3000:]}")
        time.sleep(0.1)
    return worker


def run_cli(settings: Settings, *args: str, extra_env: dict[str, str] | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """The `echoforge` CLI of this venv, configured by `settings` (and `extra_env`), as a user runs it."""
    return subprocess.run([str(ECHOFORGE_CLI), *args],
                          env={**settings_env(settings), **(extra_env or {})}, capture_output=True, text=True,
                          timeout=timeout)


def start_up(data_dir: Path, *args: str, cwd: Path = REPO) -> subprocess.Popen[str]:
    """`echoforge up` with nothing exported and a free Flower port; its stdout and stderr on `.stdout`."""
    return subprocess.Popen([str(ECHOFORGE_CLI), "up", "--data-dir", str(data_dir),
                             "--flower-port", str(processes.free_port()), "--api-port", str(processes.free_port()),
                             *args],
                            cwd=cwd, env=env_without_settings(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def flush(url: str) -> None:
    client = redis.Redis.from_url(url)
    client.flushall()
    client.close()


def start_api(settings: Settings, log_dir: Path, extra_env: dict[str, str] | None = None,
              args: tuple[str, ...] = ()) -> tuple[subprocess.Popen[bytes], str]:
    """A real `echoforge serve [args]` on a free port, configured by `settings`; (process, base URL) once it
    answers. Its log is `log_dir/api-<port>.log`."""
    port = processes.free_port()
    env = {**settings_env(settings), **(extra_env or {})}
    proc = processes.start([str(ECHOFORGE_CLI), "serve", "--port", str(port), *args], log_dir / f"api-{port}.log",
                           env)
    processes.wait_for_port(port, 60, proc)
    return proc, f"http://127.0.0.1:{port}"


class Started:
    """Service processes started for one test, stopped together (last started, first stopped)."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self._stops: list[Callable[[], None]] = []

    def worker(self, settings: Settings, **kwargs: Any) -> Worker:
        worker = start_worker(settings, self.log_dir, **kwargs)
        self._stops.append(worker.stop)
        return worker

    def webhook_worker(self, settings: Settings, **kwargs: Any) -> Worker:
        worker = start_webhook_worker(settings, self.log_dir, **kwargs)
        self._stops.append(worker.stop)
        return worker

    def api(self, settings: Settings, extra_env: dict[str, str] | None = None, args: tuple[str, ...] = ()) -> str:
        proc, url = start_api(settings, self.log_dir, extra_env, args)
        self._stops.append(lambda: processes.stop(proc, grace_s=10))
        return url

    def stop_all(self) -> None:
        for stop in reversed(self._stops):
            stop()


class LogWatch:
    """Follows a log file as it grows: `wait_for(pattern)` returns as soon as a line written after the last match
    matches, checking every 2 ms (so a test can act at the moment a worker reaches a phase)."""

    def __init__(self, path: Path) -> None:
        self.path, self.text, self._read, self._checked = path, "", 0, 0

    def wait_for(self, pattern: str, timeout: float = 60) -> re.Match[str]:
        regex, deadline = re.compile(pattern), time.monotonic() + timeout
        with self.path.open("rb") as log:
            while time.monotonic() < deadline:
                log.seek(self._read)
                new = log.read()
                self._read += len(new)
                self.text += new.decode(errors="replace")
                if found := regex.search(self.text, self._checked):
                    self._checked = found.end()
                    return found
                self._checked = max(self._checked, self.text.rfind("\n") + 1)
                time.sleep(0.002)
        raise AssertionError(f"{self.path.name}: no line matching {pattern!r} in {timeout} s:\n{self.text[-3000:]}")
