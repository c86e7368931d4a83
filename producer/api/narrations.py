"""/v1/narrations: submit, read, list, cancel, retry, download and watch a tenant's narration jobs."""

from __future__ import annotations

import re
import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse
from sse_starlette.sse import EventSourceResponse

from producer import keys
from producer.api.auth import caller_with
from producer.api.bodies import json_object, page_cursor
from producer.api.events import job_events
from producer.api.models import AudioLink, JobList, JobOut
from producer.api.problems import error_responses
from producer.api.voices import voice_store
from producer.api_keys import ApiKey
from producer.audio_formats import FORMATS, audio_format
from producer.client import NarrationClient
from producer.errors import ErrorCode, InvalidRequestError, JobNotReadyError, RefusedForNowError
from producer.job import Job
from producer.quotas import Quotas
from producer.request import MAX_PAYLOAD_BYTES, NarrationRequest
from producer.states import JobState

__all__ = ["router"]

router = APIRouter(prefix="/v1/narrations", tags=["narrations"])
Reader = Annotated[ApiKey, Depends(caller_with("narrations:read"))]
Writer = Annotated[ApiKey, Depends(caller_with("narrations:write"))]
_COMMON = (ErrorCode.UNAUTHORIZED, ErrorCode.FORBIDDEN, ErrorCode.RATE_LIMITED)
_ONE = error_responses(*_COMMON, ErrorCode.NOT_FOUND)
_PREFER_WAIT = re.compile(r"(?:^|[,;\s])wait=(\d+(?:\.\d+)?)")


def _client(request: Request) -> NarrationClient:
    client: NarrationClient = request.app.state.client
    return client


def _public(job: Job) -> dict[str, Any]:
    return job.to_public()


def _request_schema() -> dict[str, Any]:
    """The body of POST /v1/narrations: a NarrationRequest, or one naming a saved voice by `voice_id`."""
    schema = NarrationRequest.model_json_schema()
    schema["properties"]["voice_id"] = {
        "type": "string", "title": "Voice Id",
        "description": "a voice saved with POST /v1/voices (this tenant's): its recording and transcript become "
                       "the voice prompt; not together with voice_prompt_sha256 or voice_text"}
    return schema


async def _resolve_voice(request: Request, fields: dict[str, Any], tenant: str) -> None:
    """Replace `voice_id` by the tenant's voice's recording and transcript (another tenant's voice: not_found)."""
    voice_id = fields.pop("voice_id")
    clash = [name for name in ("voice_prompt_sha256", "voice_text") if fields.get(name) is not None]
    if clash or not isinstance(voice_id, str):
        problem = f"not together with {' or '.join(clash)}" if clash else "must be a voice id (a string)"
        raise InvalidRequestError(f"invalid narration request: voice_id: {problem}", [("voice_id", problem)])
    voice = await run_in_threadpool(voice_store(request).get, voice_id, tenant)
    fields.update(voice_prompt_sha256=voice.sha256, voice_text=voice.transcript)


@router.post("", status_code=202, response_model=JobOut, responses={
    200: {"model": JobOut, "description": "the job ended within `Prefer: wait=N`"},
    **error_responses(*_COMMON, ErrorCode.NOT_FOUND, ErrorCode.INVALID_REQUEST, ErrorCode.PAYLOAD_TOO_LARGE,
                      ErrorCode.UNSUPPORTED_MEDIA_TYPE, ErrorCode.QUOTA_EXCEEDED, ErrorCode.OVERLOADED,
                      ErrorCode.ENQUEUE_FAILED)},
    openapi_extra={"requestBody": {"required": True, "content": {
        "application/json": {"schema": _request_schema()}}}})
async def submit(request: Request, key: Writer,
                 idempotency_key: str | None = Header(default=None, description="the same key returns the same job"),
                 prefer: str | None = Header(default=None, description="wait=N: answer when the job ends within N s"),
                 ) -> Response:
    """Queue a narration. Answers 202 with the job and its `Location`, or 200 with the finished job when it ended
    within `Prefer: wait=N` seconds. `voice_id` names one of the tenant's saved voices (another tenant's: 404)."""
    fields = await json_object(request, MAX_PAYLOAD_BYTES)
    if idempotency_key is not None:
        if fields.get("idempotency_key") not in (None, idempotency_key):
            raise InvalidRequestError("the Idempotency-Key header and the body's idempotency_key differ",
                                      [("idempotency_key", "differs from the header")])
        fields["idempotency_key"] = idempotency_key
    if "voice_id" in fields:
        await _resolve_voice(request, fields, key.tenant)
    parsed = NarrationRequest.parse(fields)
    client = _client(request)
    job = await run_in_threadpool(submit_within_quotas, request, parsed, key.tenant)
    wait_s = _prefer_wait(prefer, request.app.state.settings.max_prefer_wait_s)
    headers = {"Location": f"/v1/narrations/{job.id}"}
    if wait_s:
        job = await run_in_threadpool(client.wait, job.id, wait_s)
        headers["Preference-Applied"] = f"wait={wait_s:g}"
    status = 200 if job.state.is_terminal else 202
    return JSONResponse(_public(job), status_code=status, headers=headers)


def submit_within_quotas(request: Request, parsed: NarrationRequest, tenant: str) -> Job:
    """Submit for `tenant` unless the queue is too deep, within its characters per day and jobs queued at once.
    The characters are charged just before the job is created, and given back when no job was created: refused, not
    enqueued, or an idempotency key used before (its job was charged when it was created)."""
    quotas: Quotas = request.app.state.quotas
    client = _client(request)
    quotas.check_queue_depth()  # OVERLOADED while the queue is deeper than max_queue_depth (read every 0.5 s)
    try:
        charge = quotas.charge_characters(tenant, len(parsed.text))  # QUOTA_EXCEEDED over the day's limit
    except RefusedForNowError:
        if not parsed.idempotency_key or not client.jobs.idempotency_key_used(parsed.idempotency_key, tenant):
            raise
        charge = None  # a repeated submit: answered with the job it created, which was charged then
    submitted_at = time.time()
    try:
        job = client.submit(parsed, None, tenant, request.app.state.settings.tenant_max_queued_jobs)
    except Exception:
        quotas.refund(charge)
        raise
    if job.created_at < submitted_at:  # an earlier submit with this idempotency key created it
        quotas.refund(charge)
    return job


def _prefer_wait(prefer: str | None, cap: float) -> float:
    match = _PREFER_WAIT.search(prefer or "")
    return min(float(match.group(1)), cap) if match else 0.0


@router.get("", response_model=JobList, responses=error_responses(*_COMMON, ErrorCode.INVALID_REQUEST))
def list_jobs(request: Request, key: Reader, state: JobState | None = None,
              limit: int = Query(default=20, ge=1, le=200), cursor: str | None = None) -> dict[str, Any]:
    """The tenant's jobs, newest first, a page at a time."""
    before = page_cursor(cursor)
    jobs = _client(request).list(limit=limit, state=state, tenant=key.tenant, before=before)
    next_cursor = repr(jobs[-1].created_at) if len(jobs) == limit else None
    return {"data": [_public(j) for j in jobs], "next_cursor": next_cursor}


@router.get("/{job_id}", response_model=JobOut, responses=_ONE)
def get_job(job_id: str, request: Request, key: Reader) -> dict[str, Any]:
    return _public(_client(request).get(job_id, key.tenant))


@router.post("/{job_id}/cancel", response_model=JobOut, responses=_ONE)
def cancel_job(job_id: str, request: Request, key: Writer) -> dict[str, Any]:
    """A queued job is canceled at once; a running one stops at its next check (watch its events)."""
    return _public(_client(request).cancel(job_id, key.tenant))


@router.post("/{job_id}/retry", response_model=JobOut,
             responses=error_responses(*_COMMON, ErrorCode.NOT_FOUND, ErrorCode.CONFLICT))
def retry_job(job_id: str, request: Request, key: Writer) -> dict[str, Any]:
    """Queue a failed or expired job again; it resumes from its stored chunks."""
    return _public(_client(request).retry(job_id, key.tenant))


@router.post("/{job_id}/rerender", response_model=JobOut, status_code=202, responses=error_responses(
    *_COMMON, ErrorCode.NOT_FOUND, ErrorCode.CONFLICT, ErrorCode.INVALID_REQUEST),
    openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": {
        "type": "object", "required": ["chunks"], "properties": {
            "chunks": {"type": "array", "items": {"type": "integer"}, "description": "the chunks to make again"},
            "text": {"type": "string", "description": "the corrected text of that one chunk"}}}}}}})
async def rerender_job(job_id: str, request: Request, key: Writer) -> dict[str, Any]:
    """Make some chunks of a succeeded job again (one may get corrected text), after its same anchor, on new seeds;
    its narration (and its book's M4B) is then replaced by the new version. Follow it as any job."""
    body = await json_object(request, MAX_PAYLOAD_BYTES)
    unknown = sorted(set(body) - {"chunks", "text"})
    if unknown:
        raise InvalidRequestError(f"{unknown[0]}: not a field of a re-render", [(unknown[0], "unknown field")])
    text = body.get("text")
    if text is not None and not isinstance(text, str):
        raise InvalidRequestError("text: a string", [("text", "a string")])
    chunks = body.get("chunks")
    job = await run_in_threadpool(_client(request).rerender, job_id, chunks if isinstance(chunks, list) else [],
                                  text, key.tenant)
    return _public(job)


def _finished(request: Request, job_id: str, key: ApiKey) -> Job:
    job = _client(request).get(job_id, key.tenant)
    if job.state is not JobState.SUCCEEDED or not job.result:
        raise JobNotReadyError(f"job {job_id} has no narration yet (state {job.state.value})")
    return job


_FILES = error_responses(*_COMMON, ErrorCode.NOT_FOUND, ErrorCode.NOT_READY, ErrorCode.STORAGE_ERROR)


@router.get("/{job_id}/audio", response_class=Response, responses={
    307: {"description": "a short-lived presigned URL of the audio (S3)"},
    200: {"description": "the audio (local storage)",
          "content": {t: {} for t in dict.fromkeys(f.content_type for f in FORMATS.values())}}, **_FILES})
def audio(job_id: str, request: Request, key: Reader) -> Response:
    job = _finished(request, job_id, key)
    assert job.result is not None
    storage, object_key = request.app.state.storage, job.result["key"]
    url = storage.presigned_url(object_key, request.app.state.settings.presigned_url_ttl_s)
    if url is not None:
        return RedirectResponse(url, status_code=307)
    spec = audio_format(job.result["format"])
    return FileResponse(storage.local_path(object_key), media_type=spec.content_type,
                        filename=f"{job_id}.{spec.extension}")


@router.get("/{job_id}/audio-url", response_model=AudioLink, responses=_FILES)
def audio_url(job_id: str, request: Request, key: Reader) -> dict[str, Any]:
    """Presigned URLs of the audio (S3 storage; null for local storage), so that a browser's `<audio>` or a download
    link, which cannot send the key, fetch it straight from storage: the studio page uses them."""
    job = _finished(request, job_id, key)
    assert job.result is not None
    storage, object_key = request.app.state.storage, job.result["key"]
    ttl = request.app.state.settings.presigned_url_ttl_s
    url = storage.presigned_url(object_key, ttl)
    if url is None:
        return {"url": None}
    download = storage.presigned_url(object_key, ttl, attachment=f"{job.id}.{job.result['format']}")
    return {"url": url, "download_url": download, "expires_in_s": ttl}


def _object(request: Request, job: Job, object_key: str, media_type: str) -> Response:
    data = request.app.state.storage.get_bytes(object_key)
    if data is None:
        raise JobNotReadyError(f"job {job.id}: {object_key.rsplit('/', 1)[-1]} is not in storage")
    return Response(data, media_type=media_type)


@router.get("/{job_id}/captions.srt", response_class=Response, responses={
    200: {"content": {"application/x-subrip": {}}, "description": "SubRip captions"}, **_FILES})
def captions_srt(job_id: str, request: Request, key: Reader) -> Response:
    job = _finished(request, job_id, key)
    assert job.result is not None
    return _object(request, job, job.result["captions"]["srt"], "application/x-subrip")


@router.get("/{job_id}/captions.vtt", response_class=Response, responses={
    200: {"content": {"text/vtt": {}}, "description": "WebVTT captions"}, **_FILES})
def captions_vtt(job_id: str, request: Request, key: Reader) -> Response:
    job = _finished(request, job_id, key)
    assert job.result is not None
    return _object(request, job, job.result["captions"]["vtt"], "text/vtt")


@router.get("/{job_id}/manifest", response_class=Response, responses={
    200: {"content": {"application/json": {}}, "description": "the job's manifest: every chunk, the model"},
    **_FILES})
def manifest(job_id: str, request: Request, key: Reader) -> Response:
    job = _client(request).get(job_id, key.tenant)
    storage = request.app.state.storage
    return _object(request, job, storage.key_for(job.id, keys.MANIFEST_OBJECT), "application/json")


@router.get("/{job_id}/events", response_class=EventSourceResponse, responses={
    200: {"content": {"text/event-stream": {}},
          "description": "`state` and `progress` events, each the job record, until the job ends"}, **_ONE})
async def events(job_id: str, request: Request, key: Reader) -> EventSourceResponse:
    await run_in_threadpool(_client(request).get, job_id, key.tenant)  # 404 before the stream starts
    return EventSourceResponse(job_events(request.app.state.async_redis, job_id), ping=15)
