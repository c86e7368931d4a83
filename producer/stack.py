"""`echoforge up`: the whole stack on embedded defaults — Redis, local storage, one worker, the webhook worker,
Flower, the API, a demo job."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from producer import processes, stack_state
from producer.progress import wait_with_progress
from producer.settings import Settings, redact_url

__all__ = ["DEMO_TEXT", "run_stack"]

DEMO_TEXT = (
    "Welcome to EchoForge. This narration was queued in Redis, synthesized by a Celery worker, "
    "and stored as a WAV file. Open Flower to watch the worker and the job."
)


class Stack:
    """The child processes of one `echoforge up`, stopped in reverse order of start."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.env = dict(os.environ)
        self.children: list[tuple[str, subprocess.Popen[bytes]]] = []

    def log(self, name: str) -> Path:
        return self.data_dir / "logs" / f"{name}.log"

    def start_redis(self) -> str:
        port = processes.free_port()
        redis_dir = self.data_dir / "redis"
        redis_dir.mkdir(parents=True, exist_ok=True)
        args = [processes.redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1",
                "--dir", str(redis_dir), "--appendonly", "yes", "--save", ""]
        proc = processes.start(args, self.log("redis"))
        self.children.append(("redis", proc))
        processes.wait_for_port(port, 15, proc)
        return f"redis://127.0.0.1:{port}/0"

    def start_celery(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        return self.start_process(name, processes.celery_command(*args))

    def start_process(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        proc = processes.start(args, self.log(name), self.env)
        self.children.append((name, proc))
        return proc

    def check_alive(self) -> None:
        for name, proc in self.children:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}; see {self.log(name)}")

    def stop(self) -> None:
        for _, proc in reversed(self.children):
            processes.stop(proc)


def _configure(stack: Stack) -> None:
    if "ECHOFORGE_REDIS_URL" not in stack.env:
        stack.env["ECHOFORGE_REDIS_URL"] = stack.start_redis()
        print(f"redis      started: {stack.env['ECHOFORGE_REDIS_URL']} (log {stack.log('redis')})")
    else:
        print(f"redis      using {redact_url(stack.env['ECHOFORGE_REDIS_URL'])}")
    if "ECHOFORGE_STORAGE_URL" not in stack.env:
        stack.env["ECHOFORGE_STORAGE_URL"] = (stack.data_dir / "outputs").resolve().as_uri()
    print(f"storage    {stack.env['ECHOFORGE_STORAGE_URL']}")


def run_stack(args: argparse.Namespace) -> int:
    stack = Stack(Path(args.data_dir).resolve())
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started in the background
    try:
        _configure(stack)
        settings = Settings(redis_url=stack.env["ECHOFORGE_REDIS_URL"], storage_url=stack.env["ECHOFORGE_STORAGE_URL"])
        stack.start_celery("worker", "worker", "--pool", "prefork", "--concurrency", "1", "--loglevel", "INFO",
                           "--hostname", "embedded@%h", "--queues", settings.queue)
        print(f"worker     started (log {stack.log('worker')})")
        stack.start_process("webhooks", processes.webhook_worker_command("--loglevel", "INFO",
                                                                         "--hostname", "webhooks@%h"))
        print(f"webhooks   started (log {stack.log('webhooks')})")
        flower_url = _start_flower(stack, args.flower_port)
        print(f"flower     {flower_url}")
        api_url = _start_api(stack, args.api_port)
        print(f"api        {api_url} (the studio; schema {api_url}openapi.json; development key "
              f"{_development_key(settings)})")
        stack_state.write(stack.data_dir, stack_state.StackState(
            redis_url=settings.redis_url, storage_url=settings.storage_url, flower_url=flower_url, pid=os.getpid(),
            queue=settings.queue, api_url=api_url))
        code = _demo(stack, settings) if args.demo else 0
        if args.exit_after_job:
            return code
        print("EchoForge is running. Submit with `echoforge submit \"text\"` using the settings above; "
              "Ctrl-C stops everything.")
        while True:
            stack.check_alive()
            time.sleep(1)
    except KeyboardInterrupt:
        print("\nstopping...")
        return 0
    finally:
        stack_state.remove(stack.data_dir)
        stack.stop()


def _start_flower(stack: Stack, port: int) -> str:
    port = port if _port_free(port) else processes.free_port()
    proc = stack.start_celery("flower", "flower", f"--port={port}", "--address=127.0.0.1")
    processes.wait_for_port(port, 60, proc)
    return f"http://127.0.0.1:{port}/"


def _start_api(stack: Stack, port: int) -> str:
    port = port if _port_free(port) else processes.free_port()
    proc = stack.start_process("api", [sys.executable, "-m", "producer.cli", "serve", "--port", str(port)])
    processes.wait_for_port(port, 60, proc)
    return f"http://127.0.0.1:{port}/"


def _development_key(settings: Settings) -> str:
    """A key of the tenant "dev" with every scope but admin, made for this run (it stays valid; revoke it with
    `echoforge keys revoke`)."""
    from producer.api_keys import ApiKeyStore
    from producer.store import connect_redis

    client = connect_redis(settings)
    try:
        return ApiKeyStore(client).create("dev")[1]
    finally:
        client.close()


def _port_free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def _demo(stack: Stack, settings: Settings) -> int:
    from producer.client import NarrationClient
    from producer.states import JobState

    client = NarrationClient(settings)
    job = client.submit({"text": DEMO_TEXT})
    print(f"demo job   {job.id} submitted; waiting for the worker...")
    job = wait_with_progress(client, job.id, timeout=300, warn_no_worker=False)  # its worker is still starting
    stack.check_alive()
    if job.state is not JobState.SUCCEEDED:
        print(f"demo job   ended {job.state.value}: {job.error}")
        return 1
    assert job.result is not None
    print(f"demo job   succeeded: {job.result['duration_s']:.1f} s of audio, model {job.model.get('kind')} "
          f"on {job.model.get('device')}")
    if job.model.get("fallback_reason"):
        print(f"           (why: {job.model['fallback_reason']})")
    print(f"narration  {job.result['url']}")
    return 0
