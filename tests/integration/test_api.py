"""The HTTP API against a real `echoforge serve` process, real Redis, a real S3 server and a real worker."""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator

import httpx
import pytest
import redis
import soundfile as sf

from producer.api_keys import ApiKeyStore
from producer.errors import ErrorCode
from producer.settings import Settings
from tests import services
from tests.unit.test_request import BAD_FIELDS

TEXT = "The lighthouse keeper counted the waves. Then he slept."


@pytest.fixture
def api(settings: Settings, start_api: Callable[..., str]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=start_api(settings), timeout=30) as client:
        yield client


@pytest.fixture
def key_store(settings: Settings) -> ApiKeyStore:
    return ApiKeyStore(redis.Redis.from_url(settings.redis_url))


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _token(settings: Settings, tenant: str, *scopes: str) -> str:
    """A key made the way an operator makes one: `echoforge keys create --json`."""
    done = services.run_cli(settings, "keys", "create", "--tenant", tenant, *[f"--scope={s}" for s in scopes],
                            "--json")
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)
    assert shown["tenant"] == tenant and shown["webhook_secret"].startswith("whsec_")
    return str(shown["secret"])


def _events(api: httpx.Client, job_id: str, headers: dict[str, str]) -> list[tuple[str, dict[str, object]]]:
    events, kind = [], ""
    with api.stream("GET", f"/v1/narrations/{job_id}/events", headers=headers, timeout=120) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("event:"):
                kind = line.split(":", 1)[1].strip()
            elif line.startswith("data:"):
                events.append((kind, json.loads(line.split(":", 1)[1])))
    return events


def test_a_narration_over_http_from_submit_to_download(
        api: httpx.Client, settings: Settings, start_worker: Callable[..., services.Worker]) -> None:
    headers = _auth(_token(settings, "acme"))
    start_worker(settings, extra_env={"ECHOFORGE_USE_PLACEHOLDER": "true", "ECHOFORGE_PLACEHOLDER_RTF": "0.3"})
    posted = api.post("/v1/narrations", json={"text": TEXT, "speaker_id": 2}, headers=headers)
    assert posted.status_code == 202, posted.text
    job = posted.json()
    assert posted.headers["location"] == f"/v1/narrations/{job['id']}" and job["tenant"] == "acme"

    events = _events(api, job["id"], headers)
    states = [e["state"] for kind, e in events if kind == "state"]
    assert states[-1] == "succeeded" and states == sorted(set(states), key=states.index), "in order, each once"
    assert "running" in states and any(kind == "progress" for kind, _ in events)
    done = api.get(f"/v1/narrations/{job['id']}", headers=headers).json()
    assert done["state"] == "succeeded" and done["result"]["duration_s"] > 1

    audio = api.get(f"/v1/narrations/{job['id']}/audio", headers=headers)
    assert audio.status_code == 307, "S3 audio is a redirect to a presigned URL"
    wav = httpx.get(audio.headers["location"], timeout=30)
    samples, rate = sf.read(io.BytesIO(wav.content))
    assert abs(len(samples) / rate - done["result"]["duration_s"]) < 0.01
    link = api.get(f"/v1/narrations/{job['id']}/audio-url", headers=headers).json()
    assert link["expires_in_s"] == 300 and httpx.get(link["url"], timeout=30).content == wav.content
    saved = httpx.get(link["download_url"], timeout=30)
    assert saved.headers["content-disposition"] == f'attachment; filename="{job["id"]}.wav"'
    srt = api.get(f"/v1/narrations/{job['id']}/captions.srt", headers=headers)
    vtt = api.get(f"/v1/narrations/{job['id']}/captions.vtt", headers=headers)
    assert "lighthouse keeper" in srt.text and vtt.text.startswith("WEBVTT")
    manifest = api.get(f"/v1/narrations/{job['id']}/manifest", headers=headers).json()
    assert manifest["job_id"] == job["id"] and len(manifest["chunks"]) == done["result"]["chunks"]


def test_prefer_wait_answers_with_the_finished_job(
        api: httpx.Client, settings: Settings, start_worker: Callable[..., services.Worker]) -> None:
    headers = _auth(_token(settings, "acme"))
    start_worker(settings, extra_env={"ECHOFORGE_USE_PLACEHOLDER": "true"})
    posted = api.post("/v1/narrations", json={"text": "Short."}, headers={**headers, "Prefer": "wait=30"})
    assert posted.status_code == 200 and posted.json()["state"] == "succeeded"
    assert posted.headers["preference-applied"] == "wait=30"


def test_the_same_idempotency_key_twice_is_one_job(api: httpx.Client, settings: Settings) -> None:
    headers = {**_auth(_token(settings, "acme")), "Idempotency-Key": "order-17"}
    first = api.post("/v1/narrations", json={"text": TEXT}, headers=headers)
    second = api.post("/v1/narrations", json={"text": TEXT}, headers=headers)
    assert first.status_code == second.status_code == 202 and first.json()["id"] == second.json()["id"]
    other = api.post("/v1/narrations", json={"text": "Another text."}, headers=headers)
    assert other.status_code == 422 and other.json()["code"] == "invalid_request"
    listed = api.get("/v1/narrations", headers=headers).json()["data"]
    assert [j["id"] for j in listed] == [first.json()["id"]]


def test_a_tenant_never_sees_another_tenants_jobs(api: httpx.Client, settings: Settings) -> None:
    alice, bob = _auth(_token(settings, "alice")), _auth(_token(settings, "bob"))
    job = api.post("/v1/narrations", json={"text": TEXT}, headers={**alice, "Idempotency-Key": "same"}).json()
    theirs = api.post("/v1/narrations", json={"text": TEXT}, headers={**bob, "Idempotency-Key": "same"}).json()
    assert theirs["id"] != job["id"], "idempotency keys are per tenant"
    for method, path in [("GET", ""), ("POST", "/cancel"), ("POST", "/retry"), ("GET", "/audio"),
                         ("GET", "/captions.srt"), ("GET", "/manifest"), ("GET", "/events"),
                         ("GET", "/webhook-deliveries")]:
        response = api.request(method, f"/v1/narrations/{job['id']}{path}", headers=bob)
        assert response.status_code == 404 and response.json()["code"] == "not_found", (method, path)
    assert [j["id"] for j in api.get("/v1/narrations", headers=bob).json()["data"]] == [theirs["id"]]
    assert api.get(f"/v1/narrations/{job['id']}", headers=alice).json()["state"] == "queued"


def test_listing_pages_with_a_cursor_and_filters_by_state(api: httpx.Client, settings: Settings) -> None:
    headers = _auth(_token(settings, "acme"))
    ids = [api.post("/v1/narrations", json={"text": f"Line {i}."}, headers=headers).json()["id"] for i in range(5)]
    api.post(f"/v1/narrations/{ids[0]}/cancel", headers=headers)
    first = api.get("/v1/narrations", params={"limit": 3}, headers=headers).json()
    second = api.get("/v1/narrations", params={"limit": 3, "cursor": first["next_cursor"]}, headers=headers).json()
    assert [j["id"] for j in first["data"] + second["data"]] == ids[::-1] and second["next_cursor"] is None
    canceled = api.get("/v1/narrations", params={"state": "canceled"}, headers=headers).json()["data"]
    assert [j["id"] for j in canceled] == [ids[0]]


def test_keys_are_required_checked_scoped_and_revoked_at_once(
        api: httpx.Client, settings: Settings, key_store: ApiKeyStore) -> None:
    assert api.get("/v1/narrations").status_code == 401, "no anonymous access by default"
    assert api.get("/v1/narrations", headers=_auth("ef_0000000000000000.x" + "y" * 42)).status_code == 401
    reader = _auth(_token(settings, "acme", "narrations:read"))
    refused = api.post("/v1/narrations", json={"text": TEXT}, headers=reader)
    assert refused.status_code == 403 and refused.json()["code"] == "forbidden"
    token = _token(settings, "acme")
    assert api.get("/v1/narrations", headers=_auth(token)).status_code == 200
    key_id = token.removeprefix("ef_").split(".")[0]
    assert services.run_cli(settings, "keys", "revoke", key_id).returncode == 0
    gone = api.get("/v1/narrations", headers=_auth(token))
    assert gone.status_code == 401 and gone.headers["content-type"] == "application/problem+json"


def _job_keys(url: str) -> list[bytes]:
    return sorted(k for k in redis.Redis.from_url(url).scan_iter() if not k.startswith((b"echoforge:apikey",
                                                                                      b"echoforge:tenant:")))


@pytest.mark.parametrize(("fields", "names"), BAD_FIELDS)
def test_bad_fields_are_422_problems_naming_the_field_and_enqueue_nothing(
        api: httpx.Client, settings: Settings, fields: dict[str, object], names: str) -> None:
    headers = _auth(_token(settings, "acme"))
    before = _job_keys(settings.redis_url)
    raw = json.dumps(fields)  # NaN and lone surrogates as a careless client sends them (httpx's json= refuses)
    refused = api.post("/v1/narrations", content=raw, headers={**headers, "Content-Type": "application/json"})
    assert refused.status_code == 422 and refused.headers["content-type"] == "application/problem+json"
    body = refused.json()
    assert body["code"] == "invalid_request" and names in body["detail"] and body["errors"]
    assert _job_keys(settings.redis_url) == before


def test_wrong_type_bad_json_and_oversized_bodies_are_refused_before_anything_is_written(
        api: httpx.Client, settings: Settings) -> None:
    headers = _auth(_token(settings, "acme"))
    before = _job_keys(settings.redis_url)
    cases = [(415, "unsupported_media_type", {"content": b"text=hi", "headers": {"Content-Type": "text/plain"}}),
             (400, "invalid_request", {"content": b"{not json", "headers": {"Content-Type": "application/json"}}),
             (400, "invalid_request", {"content": b"[1, 2]", "headers": {"Content-Type": "application/json"}}),
             (413, "payload_too_large", {"json": {"text": "word " * 300_000}, "headers": {}})]
    for status, code, request in cases:
        response = api.post("/v1/narrations", headers={**headers, **request.pop("headers")}, **request)
        assert (response.status_code, response.json()["code"]) == (status, code), response.text
    assert _job_keys(settings.redis_url) == before


def test_retrying_a_queued_job_is_a_conflict(api: httpx.Client, settings: Settings) -> None:
    headers = _auth(_token(settings, "acme"))
    job = api.post("/v1/narrations", json={"text": TEXT}, headers=headers).json()
    refused = api.post(f"/v1/narrations/{job['id']}/retry", headers=headers)
    assert refused.status_code == 409 and refused.json()["code"] == "conflict"
    early = api.get(f"/v1/narrations/{job['id']}/audio", headers=headers)
    assert early.status_code == 409 and early.json()["code"] == "not_ready"


def test_openapi_documents_every_path_and_its_problems(api: httpx.Client) -> None:
    schema = api.get("/openapi.json").json()
    paths = schema["paths"]
    for path in ["/v1/narrations", "/v1/narrations/{job_id}", "/v1/narrations/{job_id}/cancel",
                 "/v1/narrations/{job_id}/retry", "/v1/narrations/{job_id}/audio", "/v1/narrations/{job_id}/audio-url",
                 "/v1/narrations/{job_id}/events",
                 "/v1/narrations/{job_id}/captions.srt", "/v1/narrations/{job_id}/captions.vtt",
                 "/v1/narrations/{job_id}/manifest", "/v1/narrations/{job_id}/webhook-deliveries", "/healthz",
                 "/readyz"]:
        assert path in paths, path
    post = paths["/v1/narrations"]["post"]
    assert "text" in post["requestBody"]["content"]["application/json"]["schema"]["properties"]
    assert {"401", "403", "413", "415", "422", "429"} <= set(post["responses"])
    assert set(schema["components"]["schemas"]["Problem"]["properties"]["code"].get("enum", [])) or \
        "ErrorCode" in schema["components"]["schemas"]
    assert api.get("/docs").status_code == 200
    assert {c.value for c in ErrorCode} == set(schema["components"]["schemas"]["ErrorCode"]["enum"])


def test_readiness_checks_redis(api: httpx.Client) -> None:
    assert api.get("/healthz").json() == {"status": "ok"}
    assert api.get("/readyz").json() == {"status": "ready"}
