"""Quotas, back-pressure and the API's metrics, against real `echoforge serve` processes and a real Redis."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import httpx
import redis

from producer import keys
from producer.settings import Settings
from tests import services

TEXT = "The lighthouse keeper counted the waves."


def _new_key(settings: Settings, tenant: str) -> dict[str, str]:
    """A key made the way an operator makes one: `echoforge keys create --json` (id, secret, webhook_secret, …)."""
    done = services.run_cli(settings, "keys", "create", "--tenant", tenant, "--json")
    assert done.returncode == 0, done.stderr
    shown: dict[str, str] = json.loads(done.stdout)
    return shown


def _auth(settings: Settings, tenant: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {_new_key(settings, tenant)['secret']}"}


def _job_keys(url: str) -> list[bytes]:
    return sorted(k for k in redis.Redis.from_url(url).scan_iter() if not k.startswith((b"echoforge:apikey",
                                                                                      b"echoforge:tenant:")))


def _chars_used(url: str, tenant: str) -> int:
    day = datetime.now(UTC).date().isoformat()
    return int(redis.Redis.from_url(url).get(keys.tenant_daily_chars_key(tenant, day)) or 0)


def _refused(response: httpx.Response, status: int, code: str, quota: str) -> int:
    """Checks a refusal names its quota and says when to come back; returns its Retry-After."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert (body["code"], body["quota"]) == (code, quota) and quota in body["detail"], body
    retry_after = int(response.headers["retry-after"])
    assert retry_after >= 1
    return retry_after


def test_a_burst_beyond_the_bucket_gets_429_with_retry_after_then_succeeds_after_it(
        settings: Settings, start_api: Callable[..., str]) -> None:
    limited = settings.model_copy(update={"tenant_rate_limit_per_s": 0.5, "tenant_rate_limit_burst": 5})
    headers = _auth(settings, "acme")
    with httpx.Client(base_url=start_api(limited), timeout=30) as api:
        answers = [api.get("/v1/narrations", headers=headers) for _ in range(8)]
        assert [a.status_code for a in answers] == [200] * 5 + [429] * 3, "the burst, then refusals"
        retry_after = _refused(answers[-1], 429, "rate_limited", "request_rate")
        assert 1 <= retry_after <= 2, "a token every 2 s: the next is at most 2 s away"
        other = api.get("/v1/narrations", headers=_auth(settings, "globex"))
        assert other.status_code == 200, "every tenant has its own bucket"
        time.sleep(retry_after)
        assert api.get("/v1/narrations", headers=headers).status_code == 200
        assert api.get("/healthz").status_code == 200, "unauthenticated probes are not limited"


def test_two_api_processes_share_one_bucket(settings: Settings, start_api: Callable[..., str]) -> None:
    limited = settings.model_copy(update={"tenant_rate_limit_per_s": 0.1, "tenant_rate_limit_burst": 6})
    headers = _auth(settings, "acme")
    with httpx.Client(timeout=30) as http:
        urls = [start_api(limited), start_api(limited)]
        answers = [http.get(f"{urls[i % 2]}/v1/narrations", headers=headers) for i in range(12)]
    statuses = [a.status_code for a in answers]
    assert statuses == [200] * 6 + [429] * 6, "six tokens in all, taken from either process"
    assert all(5 <= int(a.headers["retry-after"]) <= 10 for a in answers[6:]), "0.1 tokens a second"


def test_the_queued_jobs_cap_refuses_the_next_job_and_writes_nothing_for_it(
        settings: Settings, start_api: Callable[..., str]) -> None:
    capped = settings.model_copy(update={"tenant_max_queued_jobs": 2})
    headers = _auth(settings, "acme")
    with httpx.Client(base_url=start_api(capped), timeout=30) as api:
        first, second = (api.post("/v1/narrations", json={"text": f"Line {i}."}, headers=headers) for i in (1, 2))
        assert first.status_code == second.status_code == 202
        before, chars = _job_keys(settings.redis_url), _chars_used(settings.redis_url, "acme")
        third = api.post("/v1/narrations", json={"text": "Line 3."}, headers=headers)
        _refused(third, 429, "quota_exceeded", "queued_jobs")
        assert _job_keys(settings.redis_url) == before, "no record, index entry or message for the refused job"
        assert _chars_used(settings.redis_url, "acme") == chars, "a refused submit uses no characters"
        assert len(api.get("/v1/narrations", headers=headers).json()["data"]) == 2
        assert api.post("/v1/narrations", json={"text": "Mine."}, headers=_auth(settings, "globex")).status_code \
            == 202, "the cap is per tenant"
        api.post(f"/v1/narrations/{first.json()['id']}/cancel", headers=headers)
        assert api.post("/v1/narrations", json={"text": "Line 3."}, headers=headers).status_code == 202, \
            "a canceled job no longer counts"


def test_characters_per_day_refuse_a_submit_over_the_limit_and_a_refused_one_uses_nothing(
        settings: Settings, start_api: Callable[..., str]) -> None:
    daily = settings.model_copy(update={"tenant_max_chars_per_day": 100})
    headers = _auth(settings, "acme")
    thirty, fifty, forty = "a" * 30, "b" * 50, "c" * 40
    replay = {**headers, "Idempotency-Key": "k1"}
    with httpx.Client(base_url=start_api(daily), timeout=30) as api:
        first = api.post("/v1/narrations", json={"text": thirty}, headers=replay)
        assert first.status_code == 202 and _chars_used(settings.redis_url, "acme") == 30
        again = api.post("/v1/narrations", json={"text": thirty}, headers=replay)
        assert again.json()["id"] == first.json()["id"] and _chars_used(settings.redis_url, "acme") == 30, \
            "an idempotent replay is charged once"
        assert api.post("/v1/narrations", json={"text": thirty}, headers=headers).status_code == 202
        bad = api.post("/v1/narrations", json={"text": fifty, "speaker_id": -5}, headers=headers)
        assert bad.status_code == 422 and _chars_used(settings.redis_url, "acme") == 60, "invalid: nothing used"

        over = api.post("/v1/narrations", json={"text": fifty}, headers=headers)
        retry_after = _refused(over, 429, "quota_exceeded", "characters_per_day")
        now = datetime.now(UTC)
        midnight = datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), UTC)
        assert abs(retry_after - (midnight - now).total_seconds()) < 5, "Retry-After: the next 00:00 UTC"
        assert "60 of its 100 characters" in over.json()["detail"]
        assert _chars_used(settings.redis_url, "acme") == 60, "the refused submit used nothing"

        assert api.post("/v1/narrations", json={"text": forty}, headers=headers).status_code == 202, "exactly 100"
        _refused(api.post("/v1/narrations", json={"text": "d"}, headers=headers), 429, "quota_exceeded",
                 "characters_per_day")
        late = api.post("/v1/narrations", json={"text": thirty}, headers=replay)
        assert late.status_code == 202 and late.json()["id"] == first.json()["id"], \
            "a replay is answered with its job even when the day's characters are used up"
        assert api.post("/v1/narrations", json={"text": fifty}, headers=_auth(settings, "globex")).status_code == 202
    ttl = redis.Redis.from_url(settings.redis_url).ttl(keys.tenant_daily_chars_key("acme", now.date().isoformat()))
    assert 2 * 24 * 3600 - 60 < ttl <= 2 * 24 * 3600, "a day's count expires after two days"


def test_a_deep_queue_gets_503_overloaded_with_retry_after(settings: Settings, start_api: Callable[..., str]) -> None:
    shallow = settings.model_copy(update={"max_queue_depth": 3, "overloaded_retry_after_s": 7})
    headers = _auth(settings, "acme")
    with httpx.Client(base_url=start_api(shallow), timeout=30) as api:
        for i in range(3):  # no worker runs: each job's message stays in the queue
            assert api.post("/v1/narrations", json={"text": f"Line {i}."}, headers=headers).status_code == 202
        lists = keys.priority_queue_lists(settings.queue)
        redis.Redis.from_url(settings.redis_url).rpush(lists[2], "waiting")  # another producer's message
        time.sleep(0.6)  # each API process reads the depth at most every 0.5 s
        refused = api.post("/v1/narrations", json={"text": TEXT}, headers=headers)
        assert _refused(refused, 503, "overloaded", "queue_depth") == 7
        assert "4 jobs are waiting" in refused.json()["detail"]
        assert api.get("/v1/narrations", headers=headers).status_code == 200, "only new work is refused"
        redis.Redis.from_url(settings.redis_url).delete(*lists)
        time.sleep(0.6)
        assert api.post("/v1/narrations", json={"text": TEXT}, headers=headers).status_code == 202


def _samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Every sample of one metric in a Prometheus text exposition, by its labels."""
    found = {}
    for labels, value in re.findall(rf"^{re.escape(name)}\{{(.*)\}} (\S+)$", text, flags=re.M):
        found[tuple(sorted(re.findall(r'(\w+)="([^"]*)"', labels)))] = float(value)
    return found


def test_metrics_count_requests_by_route_template_and_refusals_and_hold_no_id_or_secret(
        settings: Settings, start_api: Callable[..., str]) -> None:
    limited = settings.model_copy(update={"tenant_rate_limit_per_s": 0.1, "tenant_rate_limit_burst": 4})
    key = _new_key(settings, "acme")
    headers = {"Authorization": f"Bearer {key['secret']}"}
    with httpx.Client(base_url=start_api(limited), timeout=30) as api:
        job = api.post("/v1/narrations", json={"text": TEXT}, headers=headers).json()
        assert api.get(f"/v1/narrations/{job['id']}", headers=headers).status_code == 200
        assert api.get(f"/v1/narrations/{'0' * 32}", headers=headers).status_code == 404
        assert api.get("/v1/narrations").status_code == 401
        assert api.get(f"/no/such/{job['id']}").status_code == 404
        assert api.get("/v1/narrations", headers=headers).status_code == 200
        assert api.get("/v1/narrations", headers=headers).status_code == 429
        exposition = api.get("/metrics")
    assert exposition.status_code == 200 and exposition.headers["content-type"].startswith("text/plain")
    text = exposition.text
    requests = _samples(text, "echoforge_api_requests_total")
    by_item = "/v1/narrations/{job_id}"
    assert requests[(("method", "GET"), ("route", by_item), ("status", "200"))] == 1
    assert requests[(("method", "GET"), ("route", by_item), ("status", "404"))] == 1
    assert requests[(("method", "POST"), ("route", "/v1/narrations"), ("status", "202"))] == 1
    assert requests[(("method", "GET"), ("route", "/v1/narrations"), ("status", "429"))] == 1
    assert requests[(("method", "GET"), ("route", "/v1/narrations"), ("status", "401"))] == 1
    assert requests[(("method", "GET"), ("route", "unmatched"), ("status", "404"))] == 1
    counts = _samples(text, "echoforge_api_request_duration_seconds_count")
    assert counts[(("method", "GET"), ("route", by_item))] == 2
    refused = _samples(text, "echoforge_api_rate_limited_total")
    assert refused[(("quota", "request_rate"),)] == 1 and refused[(("quota", "queued_jobs"),)] == 0
    secret_part = key["secret"].split(".", 1)[1]
    for value in (job["id"], "0" * 32, key["id"], secret_part, key["webhook_secret"], "acme"):
        assert value not in text


def test_several_api_processes_report_their_requests_together(
        settings: Settings, start_api: Callable[..., str]) -> None:
    with httpx.Client(base_url=start_api(settings, args=("--workers", "2")), timeout=30) as api:
        for _ in range(20):
            assert api.get("/healthz", headers={"Connection": "close"}).status_code == 200
        scrapes = [_samples(api.get("/metrics", headers={"Connection": "close"}).text, "echoforge_api_requests_total")
                   for _ in range(6)]
    healthz = (("method", "GET"), ("route", "/healthz"), ("status", "200"))
    assert [s[healthz] for s in scrapes] == [20] * 6, "every scrape, whichever process answers, counts all"

