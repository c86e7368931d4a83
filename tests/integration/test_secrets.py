"""Secrets (AWS keys, a Hugging Face token, the Redis password) never reach a log, a job record or an error."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis

from producer import processes
from producer.client import NarrationClient
from producer.settings import Settings
from producer.states import JobState
from tests import services
from tests.network import TcpRelay

SECRETS = {"AWS_ACCESS_KEY_ID": "AKIAECHOFORGESECRET01", "AWS_SECRET_ACCESS_KEY": "s3cr3t-aws-key-never-logged",
           "HF_TOKEN": "hf_echoforgeSecretToken0123456789"}
REDIS_PASSWORD = "r3dis-pass-never-logged"


@pytest.fixture
def secret_redis(tmp_path: Path) -> Iterator[str]:
    proc, url = services.start_redis(tmp_path, password=REDIS_PASSWORD)
    yield url
    processes.stop(proc, grace_s=5)


def _everything_in(url: str) -> str:
    """Every key and value in Redis, as text."""
    r = redis.Redis.from_url(url)
    dump = []
    for key in r.scan_iter():
        kind = r.type(key).decode()
        value: object = {"hash": r.hgetall, "string": r.get, "list": lambda k: r.lrange(k, 0, -1),
                         "set": r.smembers, "zset": lambda k: r.zrange(k, 0, -1)}.get(kind, lambda k: b"")(key)
        dump.append(f"{key!r} {value!r}")
    return "\n".join(dump)


def test_no_secret_appears_in_logs_records_or_errors(
    secret_redis: str, s3_endpoint: str, bucket: str, tmp_path: Path, start_worker: Callable[..., services.Worker]
) -> None:
    relay = TcpRelay(int(urlsplit(s3_endpoint).port or 0))
    settings = Settings(redis_url=secret_redis, storage_url=f"s3://{bucket}/narrations", s3_endpoint_url=relay.url,
                        model_id="echoforge/not-a-real-model", storage_retry_s=1)
    env = {**SECRETS, "HUGGING_FACE_HUB_TOKEN": SECRETS["HF_TOKEN"]}
    worker = start_worker(settings, extra_env=env)
    client = NarrationClient(settings)
    outputs: list[str] = []

    def cli(*args: str, url: str = secret_redis) -> None:
        done = services.run_cli(settings, *args, extra_env={**env, "ECHOFORGE_REDIS_URL": url})
        outputs.append(done.stdout + done.stderr)

    try:
        ok = client.wait(client.submit({"text": "A quiet secret."}).id, timeout=120)
        assert ok.state is JobState.SUCCEEDED
        relay.cut()
        lost = client.wait(client.submit({"text": "The bucket went away."}).id, timeout=120)
        assert lost.state is JobState.FAILED and lost.error is not None
        cli("status", ok.id, "--json")
        cli("list", "--json")
        cli("download", lost.id, str(tmp_path / "x.wav"))
        cli("list", url=secret_redis.replace(REDIS_PASSWORD, "wrong-" + REDIS_PASSWORD))  # refused login
        cli("list", url=f"redis://:{REDIS_PASSWORD}@127.0.0.1:{processes.free_port()}/0")  # nothing listening
        cli("submit", "x", "--wait", url=f"redis://:{REDIS_PASSWORD}@127.0.0.1:{processes.free_port()}/0")
    finally:
        client.close()
        relay.cut()
    seen = "\n".join([worker.log(), _everything_in(secret_redis), *outputs, repr(ok), repr(lost)])
    assert "cannot reach Redis" in seen and "unreachable" in seen, "the errors themselves were captured"
    for name, secret in [*SECRETS.items(), ("redis password", REDIS_PASSWORD)]:
        assert secret not in seen, f"{name} leaked"
