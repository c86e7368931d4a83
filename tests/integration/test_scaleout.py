"""Workers on two separate network hosts share one queue: each job runs once, both hosts work.

Two network namespaces stand in for two machines: each has its own interfaces, addresses and loopback, joined to
the root namespace by veth pairs on a bridge (a private /24). Redis and the S3 server listen only on the bridge
address in the root namespace; one real `celery worker` runs in each namespace (`ip netns exec`). Needs root and
`ip netns` (skipped with the reason otherwise); the namespaces and the bridge are removed even when the test fails.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import boto3
import pytest
import redis

from producer import processes
from producer.client import NarrationClient
from producer.settings import Settings
from producer.states import JobState
from tests import services

JOBS = 40
HOSTS = ("hosta", "hostb")


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=30)


def netns_unavailable() -> str | None:
    """Why network namespaces cannot be used here, or None when they can."""
    if sys.platform != "linux" or shutil.which("ip") is None:
        return "needs Linux with iproute2 (`ip`)"
    if os.geteuid() != 0:
        return "`ip netns add` needs root"
    probe = f"efprobe{os.getpid()}"
    added = ip("netns", "add", probe, check=False)
    if added.returncode != 0:
        return f"`ip netns add` is not permitted here: {added.stderr.strip()}"
    ip("netns", "del", probe, check=False)
    return None


@contextmanager
def network(tag: str, subnet: str) -> Iterator[tuple[str, dict[str, str]]]:
    """A bridge at <subnet>.1 in the root namespace and one namespace per host at .2, .3: (root address, ns→addr)."""
    bridge, names = f"{tag}br", {host: f"{tag}{host[-1]}" for host in HOSTS}
    try:
        ip("link", "add", bridge, "type", "bridge")
        ip("addr", "add", f"{subnet}.1/24", "dev", bridge)
        ip("link", "set", bridge, "up")
        addresses = {}
        for n, (host, ns) in enumerate(names.items(), start=2):
            ip("netns", "add", ns)
            ip("link", "add", f"{ns}0", "type", "veth", "peer", "name", f"{ns}1")
            ip("link", "set", f"{ns}1", "netns", ns)
            ip("link", "set", f"{ns}0", "master", bridge)
            ip("link", "set", f"{ns}0", "up")
            ip("-n", ns, "addr", "add", f"{subnet}.{n}/24", "dev", f"{ns}1")
            ip("-n", ns, "link", "set", f"{ns}1", "up")
            ip("-n", ns, "link", "set", "lo", "up")
            addresses[host] = f"{subnet}.{n}"
        yield f"{subnet}.1", addresses
    finally:
        for ns in names.values():
            ip("netns", "del", ns, check=False)  # takes its veth pair with it
            ip("link", "del", f"{ns}0", check=False)
        ip("link", "del", bridge, check=False)


def wait_for_address(host: str, port: int, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, f"process {proc.pid} exited with {proc.returncode}"
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            assert time.monotonic() < deadline, f"nothing listened on {host}:{port}"
            time.sleep(0.05)


def start_services(stack: ExitStack, address: str, log_dir: Path) -> Settings:
    """Redis and moto's S3 server, listening only on the root namespace's bridge address."""
    redis_port, s3_port = processes.free_port(), processes.free_port()
    redis_proc = processes.start([processes.redis_server_binary(), "--port", str(redis_port), "--bind", address,
                                  "--protected-mode", "no",  # clients from other namespaces are not loopback
                                  "--save", "", "--appendonly", "no", "--dir", str(log_dir)], log_dir / "redis.log")
    stack.callback(processes.stop, redis_proc, 5)
    s3_proc = processes.start([sys.executable, "-m", "moto.server", "-H", address, "-p", str(s3_port)],
                              log_dir / "moto.log")
    stack.callback(processes.stop, s3_proc, 5)
    wait_for_address(address, redis_port, redis_proc)
    wait_for_address(address, s3_port, s3_proc)
    endpoint = f"http://{address}:{s3_port}"
    bucket = f"scaleout-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
    return Settings(redis_url=f"redis://{address}:{redis_port}/0", storage_url=f"s3://{bucket}/narrations",
                    s3_endpoint_url=endpoint)


def start_worker_in(stack: ExitStack, ns: str, host: str, settings: Settings, log_dir: Path) -> Path:
    env = {**services.settings_env(settings), "ECHOFORGE_PLACEHOLDER_RTF": "0.05"}
    args = ["ip", "netns", "exec", ns, *processes.celery_command(
        "worker", "--pool", "prefork", "--concurrency", "1", "--loglevel", "INFO", "--hostname", f"{host}@%h",
        "--queues", settings.queue, "--without-mingle", "--without-gossip")]
    log = log_dir / f"worker-{host}.log"
    proc = processes.start(args, log, env)
    stack.callback(processes.stop, proc, 20)
    deadline = time.monotonic() + 90
    while "ready." not in (log.read_text(errors="replace") if log.exists() else ""):
        assert proc.poll() is None and time.monotonic() < deadline, f"{host} did not start:\n{log.read_text()[-3000:]}"
        time.sleep(0.1)
    return log


@pytest.fixture
def hosts(tmp_path: Path) -> Iterator[tuple[Settings, dict[str, str], dict[str, Path]]]:
    """(settings as the hosts see them, host → its address, host → its worker log)."""
    reason = netns_unavailable()
    if reason:
        pytest.skip(reason)
    tag = f"ef{os.getpid() % 100000}"
    subnet = f"10.231.{os.getpid() % 200 + 20}"
    with ExitStack() as stack:
        root, addresses = stack.enter_context(network(tag, subnet))
        settings = start_services(stack, root, tmp_path)
        logs = {host: start_worker_in(stack, f"{tag}{host[-1]}", host, settings, tmp_path) for host in HOSTS}
        yield settings, addresses, logs


def test_workers_in_two_network_namespaces_share_the_queue_and_run_each_job_once(
    hosts: tuple[Settings, dict[str, str], dict[str, Path]],
) -> None:
    settings, addresses, logs = hosts
    peers: list[dict[str, str]] = redis.Redis.from_url(settings.redis_url).client_list()  # type: ignore[assignment]
    assert {p["addr"].rsplit(":", 1)[0] for p in peers} >= set(addresses.values()), \
        "each worker reaches Redis over its own namespace's address"

    client = NarrationClient(settings)
    try:
        jobs = [client.submit({"text": f"Job {i} of {JOBS}, read on whichever host is free."}) for i in range(JOBS)]
        finals = [client.wait(job.id, timeout=180) for job in jobs]
    finally:
        client.close()

    assert all(f.state is JobState.SUCCEEDED for f in finals), [f.error for f in finals if f.error]
    assert all(f.attempts == 1 for f in finals)
    by_host = {host: sum(1 for f in finals if (f.worker or "").startswith(f"{host}@")) for host in HOSTS}
    assert all(count > 0 for count in by_host.values()), f"both hosts must work: {by_host}"
    assert sum(by_host.values()) == JOBS
    text = "".join(log.read_text(errors="replace") for log in logs.values())
    for job in jobs:
        assert len(re.findall(rf"job {job.id}: attempt", text)) == 1, f"{job.id} ran more or less than once"
