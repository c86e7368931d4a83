"""/v1/voices: a tenant's saved voices (a recording and its transcript), for narrations to name as `voice_id`."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, Query, Request, Response, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from producer.api.auth import caller_with
from producer.api.bodies import multipart_route, page_cursor
from producer.api.models import VoiceList, VoiceOut
from producer.api.problems import error_responses
from producer.api_keys import ApiKey
from producer.errors import ErrorCode
from producer.request import MAX_VOICE_TEXT_CHARS
from producer.voice import MAX_VOICE_PROMPT_S, MIN_VOICE_PROMPT_S
from producer.voices import MAX_VOICE_NAME_CHARS, VoiceStore

__all__ = ["router", "voice_store"]

router = APIRouter(prefix="/v1/voices", tags=["voices"],
                   route_class=multipart_route(lambda settings: settings.max_voice_upload_bytes))
Reader = Annotated[ApiKey, Depends(caller_with("voices:read"))]
Writer = Annotated[ApiKey, Depends(caller_with("voices:write"))]
_COMMON = (ErrorCode.UNAUTHORIZED, ErrorCode.FORBIDDEN, ErrorCode.RATE_LIMITED)
_ONE = error_responses(*_COMMON, ErrorCode.NOT_FOUND)
_AUDIO = (f"the recording: {MIN_VOICE_PROMPT_S}-{MAX_VOICE_PROMPT_S:.0f} s of speech, in any format libsndfile reads "
          "(WAV, FLAC, OGG, MP3…); the whole upload at most ECHOFORGE_MAX_VOICE_UPLOAD_BYTES")


def voice_store(request: Request) -> VoiceStore:
    """The app's voices: its Redis client and its storage."""
    return VoiceStore(request.app.state.client.jobs.redis, request.app.state.storage)


@router.post("", status_code=201, response_model=VoiceOut, responses=error_responses(
    *_COMMON, ErrorCode.INVALID_REQUEST, ErrorCode.PAYLOAD_TOO_LARGE, ErrorCode.UNSUPPORTED_MEDIA_TYPE,
    ErrorCode.STORAGE_ERROR, ErrorCode.STORAGE_UNAVAILABLE))
async def create_voice(
        request: Request, key: Writer,
        audio: Annotated[UploadFile, File(description=_AUDIO)],
        transcript: Annotated[str, Form(description=f"what the recording says (≤ {MAX_VOICE_TEXT_CHARS} characters)")],
        name: Annotated[str | None, Form(description=f"a label (≤ {MAX_VOICE_NAME_CHARS} characters)")] = None,
) -> Response:
    """Save a voice: the recording is checked as `echoforge submit --voice-prompt` checks it (length, readable,
    not silent), mixed to mono and stored content-addressed. Answers 201 with the voice and its `Location`."""
    data = await audio.read()
    voice = await run_in_threadpool(voice_store(request).create, key.tenant, data, transcript, name)
    return JSONResponse(voice.to_public(), status_code=201, headers={"Location": f"/v1/voices/{voice.id}"})


@router.get("", response_model=VoiceList, responses=error_responses(*_COMMON, ErrorCode.INVALID_REQUEST))
def list_voices(request: Request, key: Reader, limit: int = Query(default=20, ge=1, le=200),
                cursor: str | None = None) -> dict[str, Any]:
    """The tenant's voices, newest first, a page at a time."""
    voices = voice_store(request).list(key.tenant, limit, page_cursor(cursor))
    next_cursor = repr(voices[-1].created_at) if len(voices) == limit else None
    return {"data": [v.to_public() for v in voices], "next_cursor": next_cursor}


@router.get("/{voice_id}", response_model=VoiceOut, responses=_ONE)
def get_voice(voice_id: str, request: Request, key: Reader) -> dict[str, Any]:
    return voice_store(request).get(voice_id, key.tenant).to_public()


@router.delete("/{voice_id}", status_code=204, response_class=Response, responses=error_responses(
    *_COMMON, ErrorCode.NOT_FOUND))
def delete_voice(voice_id: str, request: Request, key: Writer) -> Response:
    """Forget the voice: its id is `not_found` from now on. The recording object stays in storage (the same
    recording may be another voice's, and jobs already queued with this voice still read it)."""
    voice_store(request).delete(voice_id, key.tenant)
    return Response(status_code=204)
