"""Saved voices over HTTP against a real `echoforge serve`, real Redis, a real S3 server and, once, a real worker."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import boto3
import httpx
import numpy as np
import pytest
import redis
import soundfile as sf

from producer.api_keys import ApiKeyStore
from producer.settings import Settings
from tests import services

TRANSCRIPT = "This is how I sound on a quiet morning."
SMALL_UPLOAD_LIMIT = 256 * 1024  # the API under test refuses bodies above this (ECHOFORGE_MAX_VOICE_UPLOAD_BYTES)


@pytest.fixture
def api(settings: Settings, start_api: Callable[..., str]) -> Iterator[httpx.Client]:
    env = {"ECHOFORGE_MAX_VOICE_UPLOAD_BYTES": str(SMALL_UPLOAD_LIMIT)}
    with httpx.Client(base_url=start_api(settings, env), timeout=30) as client:
        yield client


def _auth(settings: Settings, tenant: str, *scopes: str) -> dict[str, str]:
    _, token = ApiKeyStore(redis.Redis.from_url(settings.redis_url)).create(tenant, list(scopes) or None)
    return {"Authorization": f"Bearer {token}"}


def _tone(seconds: float, amplitude: float = 0.3, rate: int = 16_000) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    buffer = io.BytesIO()
    sf.write(buffer, amplitude * np.sin(2 * np.pi * 180 * t), rate, format="WAV")
    return buffer.getvalue()


def _upload(api: httpx.Client, headers: dict[str, str], audio: bytes, transcript: str = TRANSCRIPT,
            name: str | None = "Morning") -> httpx.Response:
    data = {"transcript": transcript, **({"name": name} if name is not None else {})}
    return api.post("/v1/voices", files={"audio": ("me.wav", audio, "audio/wav")}, data=data, headers=headers)


def _stored_recordings(settings: Settings) -> list[str]:
    bucket = urlsplit(settings.storage_url).netloc
    listed = boto3.client("s3", endpoint_url=settings.s3_endpoint_url).list_objects_v2(
        Bucket=bucket, Prefix="narrations/voices/")
    return sorted(item["Key"] for item in listed.get("Contents", []))


def _redis_keys(settings: Settings, pattern: str) -> list[bytes]:
    return sorted(redis.Redis.from_url(settings.redis_url).scan_iter(pattern))


def test_a_saved_voice_is_listed_read_and_narrates_a_job(
        api: httpx.Client, settings: Settings, start_worker: Callable[..., services.Worker]) -> None:
    headers = _auth(settings, "acme")
    created = _upload(api, headers, _tone(2.0), transcript="  This is how I sound\ton a quiet morning. ")
    assert created.status_code == 201, created.text
    voice = created.json()
    assert created.headers["location"] == f"/v1/voices/{voice['id']}"
    assert voice["tenant"] == "acme" and voice["name"] == "Morning" and voice["seconds"] == 2.0
    assert voice["transcript"] == TRANSCRIPT, "normalized as a narration's voice_text is"
    assert _stored_recordings(settings) == [f"narrations/voices/{voice['sha256']}.wav"]
    assert api.get("/v1/voices", headers=headers).json()["data"] == [voice]
    assert api.get(f"/v1/voices/{voice['id']}", headers=headers).json() == voice

    start_worker(settings, extra_env={"ECHOFORGE_USE_PLACEHOLDER": "true"})
    posted = api.post("/v1/narrations", json={"text": "First sentence here. " * 20, "voice_id": voice["id"]},
                      headers={**headers, "Prefer": "wait=60"})
    assert posted.status_code == 200, posted.text
    job = posted.json()
    assert job["state"] == "succeeded", job["error"]
    assert job["request"]["voice_prompt_sha256"] == voice["sha256"] and job["request"]["voice_text"] == TRANSCRIPT
    manifest = api.get(f"/v1/narrations/{job['id']}/manifest", headers=headers).json()
    assert manifest["voice_anchor"] == {"source": "voice_prompt", "text": TRANSCRIPT, "sha256": voice["sha256"],
                                        "seconds": 2.0}
    assert len(manifest["chunks"]) > 1 and all(c["context"] == "anchor" for c in manifest["chunks"])


def test_a_tenant_never_sees_uses_or_deletes_another_tenants_voice(api: httpx.Client, settings: Settings) -> None:
    alice, bob = _auth(settings, "alice"), _auth(settings, "bob")
    voice = _upload(api, alice, _tone(2.0)).json()
    for method, path in [("GET", f"/v1/voices/{voice['id']}"), ("DELETE", f"/v1/voices/{voice['id']}")]:
        refused = api.request(method, path, headers=bob)
        assert refused.status_code == 404 and refused.json()["code"] == "not_found", (method, refused.text)
    assert api.get("/v1/voices", headers=bob).json()["data"] == []
    borrowed = api.post("/v1/narrations", json={"text": "Hello.", "voice_id": voice["id"]}, headers=bob)
    assert borrowed.status_code == 404 and borrowed.json()["code"] == "not_found"
    assert _redis_keys(settings, "echoforge:job:*") == [], "nothing enqueued"
    assert api.get(f"/v1/voices/{voice['id']}", headers=alice).status_code == 200, "still alice's"

    deleted = api.delete(f"/v1/voices/{voice['id']}", headers=alice)
    assert deleted.status_code == 204 and deleted.content == b""
    assert api.get(f"/v1/voices/{voice['id']}", headers=alice).status_code == 404
    assert api.delete(f"/v1/voices/{voice['id']}", headers=alice).status_code == 404
    assert api.get("/v1/voices", headers=alice).json()["data"] == []
    gone = api.post("/v1/narrations", json={"text": "Hello.", "voice_id": voice["id"]}, headers=alice)
    assert gone.status_code == 404 and _redis_keys(settings, "echoforge:job:*") == []
    assert _stored_recordings(settings) == [f"narrations/voices/{voice['sha256']}.wav"], "the recording stays"


def test_voice_scopes_and_a_voice_id_beside_a_prompt_of_its_own(api: httpx.Client, settings: Settings) -> None:
    headers = _auth(settings, "acme")
    voice = _upload(api, headers, _tone(2.0)).json()
    for extra in ({"voice_text": "Hi."}, {"voice_prompt_sha256": voice["sha256"]}, {"voice_id": 7}):
        refused = api.post("/v1/narrations", json={"text": "Hello.", "voice_id": voice["id"], **extra},
                           headers=headers)
        assert refused.status_code == 422, refused.text
        assert [e["field"] for e in refused.json()["errors"]] == ["voice_id"]
    assert _redis_keys(settings, "echoforge:job:*") == []
    reader = _auth(settings, "acme", "voices:read")
    assert api.get("/v1/voices", headers=reader).status_code == 200
    assert _upload(api, reader, _tone(2.0)).json()["code"] == "forbidden"
    narrator = _auth(settings, "acme", "narrations:write")
    assert api.get(f"/v1/voices/{voice['id']}", headers=narrator).status_code == 403
    assert api.get("/v1/voices").status_code == 401


def _chunked(body: bytes) -> Iterator[bytes]:
    for start in range(0, len(body), 16 * 1024):
        yield body[start:start + 16 * 1024]


def test_bad_uploads_are_problems_naming_the_field_and_store_nothing(api: httpx.Client, settings: Settings) -> None:
    headers = _auth(settings, "acme")
    big = _tone(10.0)  # a good recording, but over the API's upload limit
    assert len(big) > SMALL_UPLOAD_LIMIT
    multipart = httpx.Request("POST", "http://x", files={"audio": ("big.wav", big)}, data={"transcript": "Hi."})
    cases: list[tuple[str, int, str, str | None, dict[str, Any]]] = [
        ("too short", 422, "invalid_request", "audio", {"files": {"audio": ("a.wav", _tone(0.2))},
                                                        "data": {"transcript": "Hi."}}),
        ("too long", 422, "invalid_request", "audio", {"files": {"audio": ("a.wav", _tone(25.0, rate=4000))},
                                                       "data": {"transcript": "Hi."}}),
        ("silent", 422, "invalid_request", "audio", {"files": {"audio": ("a.wav", _tone(2.0, amplitude=0.0))},
                                                     "data": {"transcript": "Hi."}}),
        ("not audio", 422, "invalid_request", "audio", {"files": {"audio": ("a.wav", b"RIFF and then nothing")},
                                                        "data": {"transcript": "Hi."}}),
        ("no transcript", 422, "invalid_request", "transcript", {"files": {"audio": ("a.wav", _tone(2.0))}}),
        ("blank transcript", 422, "invalid_request", "transcript", {"files": {"audio": ("a.wav", _tone(2.0))},
                                                                    "data": {"transcript": " \n "}}),
        ("long name", 422, "invalid_request", "name", {"files": {"audio": ("a.wav", _tone(2.0))},
                                                       "data": {"transcript": "Hi.", "name": "n" * 101}}),
        ("too large", 413, "payload_too_large", None, {"files": {"audio": ("big.wav", big)},
                                                       "data": {"transcript": "Hi."}}),
        ("too large, streamed", 413, "payload_too_large", None, {
            "content": _chunked(multipart.read()), "headers": {"Content-Type": multipart.headers["content-type"]}}),
        ("JSON", 415, "unsupported_media_type", None, {"json": {"audio": "aGk=", "transcript": "Hi."}}),
        ("raw WAV", 415, "unsupported_media_type", None, {"content": _tone(2.0),
                                                          "headers": {"Content-Type": "audio/wav"}}),
    ]
    for what, status, code, field, request in cases:
        response = api.post("/v1/voices", headers={**headers, **request.pop("headers", {})}, **request)
        assert (response.status_code, response.headers["content-type"]) == (status, "application/problem+json"), (
            what, response.text)
        problem = response.json()
        assert problem["code"] == code, what
        if field is not None:
            assert field in [e["field"] for e in problem["errors"]], (what, problem)
    assert _redis_keys(settings, "echoforge:voice:*") == [] and _redis_keys(settings, "*:voices") == []
    assert _stored_recordings(settings) == []


def test_the_same_recording_is_stored_once_for_two_voices(api: httpx.Client, settings: Settings) -> None:
    headers = _auth(settings, "acme")
    first = _upload(api, headers, _tone(2.0), name=None).json()
    second = _upload(api, headers, _tone(2.0), transcript="Another transcript.", name="Evening").json()
    assert first["id"] != second["id"] and first["sha256"] == second["sha256"] and first["name"] is None
    assert _stored_recordings(settings) == [f"narrations/voices/{first['sha256']}.wav"]
    page = api.get("/v1/voices", params={"limit": 1}, headers=headers).json()
    rest = api.get("/v1/voices", params={"limit": 1, "cursor": page["next_cursor"]}, headers=headers).json()
    assert [v["id"] for v in page["data"] + rest["data"]] == [second["id"], first["id"]]
    assert api.delete(f"/v1/voices/{first['id']}", headers=headers).status_code == 204
    assert api.get(f"/v1/voices/{second['id']}", headers=headers).json() == second


def test_openapi_documents_the_voice_routes_and_their_problems(api: httpx.Client) -> None:
    paths = api.get("/openapi.json").json()["paths"]
    post = paths["/v1/voices"]["post"]
    form = post["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert {"401", "403", "413", "415", "422"} <= set(post["responses"]) and "201" in post["responses"]
    assert {"get"} <= set(paths["/v1/voices"]) and {"get", "delete"} == set(paths["/v1/voices/{voice_id}"])
    for method in ("get", "delete"):
        assert "404" in paths["/v1/voices/{voice_id}"][method]["responses"]
    narration = paths["/v1/narrations"]["post"]
    assert "voice_id" in narration["requestBody"]["content"]["application/json"]["schema"]["properties"]
    assert "404" in narration["responses"]
    components = api.get("/openapi.json").json()["components"]["schemas"]
    body = components[form["$ref"].rsplit("/", 1)[-1]] if "$ref" in form else form
    assert {"audio", "transcript"} == set(body["required"]) and "name" in body["properties"]
