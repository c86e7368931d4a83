"""Secrets (AWS keys, a Hugging Face token, the Redis password, API key secrets, webhook secrets) never reach a log,
a job record, an error, a metric or an API response."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import redis

from producer import keys, processes
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


def _shown(response: httpx.Response) -> str:
    """What a caller sees of a response: status, headers and body."""
    return f"{response.status_code} {dict(response.headers)!r} {response.text}"


def _use_the_api(api: httpx.Client, token: str) -> list[httpx.Response]:
    """Every kind of answer the API gives: jobs through to their files, errors, probes, metrics, a rate limit."""
    key_id, secret = token.removeprefix("ef_").split(".", 1)
    auth = {"Authorization": f"Bearer {token}"}
    done = api.post("/v1/narrations", json={"text": "A quiet secret."}, headers={**auth, "Prefer": "wait=60"})
    assert done.status_code == 200 and done.json()["state"] == "succeeded", done.text
    job = done.json()["id"]
    seen = [done, *(api.get(f"/v1/narrations/{job}{path}", headers=auth)
                    for path in ("", "/audio", "/captions.srt", "/captions.vtt", "/manifest", "/events"))]
    queued = api.post("/v1/narrations", json={"text": "Later."}, headers={**auth, "Idempotency-Key": "k"})
    seen += [queued, api.post(f"/v1/narrations/{queued.json()['id']}/cancel", headers=auth),
             api.post(f"/v1/narrations/{job}/retry", headers=auth), api.get("/v1/narrations", headers=auth),
             api.post("/v1/narrations", json={"text": "x", "speaker_id": "x"}, headers=auth)]
    for wrong in (f"ef_{key_id}.{'A' * 43}", f"ef_{'0' * 16}.{secret}", f"{secret}", f"ef_{key_id}.{secret}x"):
        refused = api.get("/v1/narrations", headers={"Authorization": f"Bearer {wrong}"})
        assert refused.status_code == 401
        seen.append(refused)
    seen += [api.get(path) for path in ("/healthz", "/readyz", "/openapi.json", "/metrics")]
    for _ in range(100):
        seen.append(api.get("/v1/narrations", headers=auth))
        if seen[-1].status_code == 429:
            break
    assert seen[-1].status_code == 429
    return seen


def test_the_api_never_shows_an_api_key_secret_or_a_webhook_secret(
    secret_redis: str, s3_endpoint: str, bucket: str, tmp_path: Path, start_worker: Callable[..., services.Worker],
    start_api: Callable[..., str],
) -> None:
    settings = Settings(redis_url=secret_redis, storage_url=f"s3://{bucket}/narrations", s3_endpoint_url=s3_endpoint,
                        use_placeholder=True, tenant_rate_limit_per_s=0.1, tenant_rate_limit_burst=30)
    created = services.run_cli(settings, "keys", "create", "--tenant", "acme", "--json", extra_env=SECRETS)
    assert created.returncode == 0, created.stderr
    shown = json.loads(created.stdout)  # the one place both secrets are shown, once, to the operator
    token, webhook_secret = shown["secret"], shown["webhook_secret"]
    worker = start_worker(settings, extra_env=SECRETS)
    with httpx.Client(base_url=start_api(settings, extra_env=SECRETS), timeout=60) as api:
        responses = _use_the_api(api, token)
        metrics = api.get("/metrics").text
    logs = "\n".join(path.read_text(errors="replace") for path in tmp_path.glob("api-*.log"))
    webhook_key = repr(keys.tenant_webhook_secret_key("acme").encode())
    stored = "\n".join(line for line in _everything_in(secret_redis).splitlines()
                       if not line.startswith(webhook_key))  # where the signer reads it: the one copy kept
    seen = "\n".join([logs, metrics, stored, worker.log(), *map(_shown, responses)])
    assert "echoforge_api_requests_total" in metrics and "rate_limited" in seen, "the answers were captured"
    for name, secret in [("API key secret", token.split(".", 1)[1]), ("webhook secret", webhook_secret),
                         ("webhook secret's key material", webhook_secret.removeprefix("whsec_")),
                         ("AWS secret key", SECRETS["AWS_SECRET_ACCESS_KEY"]), ("redis password", REDIS_PASSWORD)]:
        assert secret not in seen, f"{name} leaked"
    presigned = next(r for r in responses if r.status_code == 307)
    assert SECRETS["AWS_ACCESS_KEY_ID"] not in seen.replace(presigned.headers["location"], ""), \
        "the access key id is only in the presigned URL (as in any S3 presigned URL)"
    assert shown["id"] not in metrics
