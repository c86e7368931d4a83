"""OpenAI's speech endpoint: `POST /v1/audio/speech`, `GET /v1/models`, `GET /v1/audio/voices`, so OpenAI clients
work unchanged. A request becomes a narration job at top priority on the same queue that asks for frame streaming: its
first chunk streams back a few frames at a time while it is generated, the later ones as each is stored (chunked
transfer), so speech starts after the first few frames (producer/api/speech_stream.py: every chunk at its raw level).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

import anyio
from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, Field

from producer.api.auth import caller_with
from producer.api.bodies import json_object
from producer.api.narrations import submit_within_quotas
from producer.api.problems import error_responses
from producer.api.speech_stream import stream_job_audio
from producer.api_keys import ApiKey
from producer.audio_formats import FORMATS, audio_format
from producer.errors import ErrorCode, JobNotFoundError, MalformedRequestError
from producer.job import Job
from producer.request import MAX_PAYLOAD_BYTES, NarrationRequest
from producer.voices import VoiceStore

__all__ = ["OPENAI_VOICES", "router"]

router = APIRouter(tags=["openai"])
Writer = Annotated[ApiKey, Depends(caller_with("narrations:write"))]
Reader = Annotated[ApiKey, Depends(caller_with("narrations:read"))]

# OpenAI's built-in voices, each mapped to one of CSM's speakers.
OPENAI_VOICES = {name: speaker for speaker, name in enumerate(
    ("alloy", "ash", "ballad", "coral", "echo", "fable", "onyx", "nova", "sage", "shimmer", "verse", "marin", "cedar"))}
MODEL_ID = "csm-1b"
MODEL_ALIASES = ("tts-1", "tts-1-hd", "gpt-4o-mini-tts", "gpt-4o-mini-tts-2025-12-15", "sesame/csm-1b", MODEL_ID)
OPENAI_PRIORITY = 9  # interactive speech goes before queued narrations


class VoiceRef(BaseModel):
    id: str = Field(description="a voice id from POST /v1/voices")


class SpeechBody(BaseModel):
    """OpenAI's speech request; `keep` is EchoForge's: the job is not canceled when the client goes away."""

    model: str = Field(description=f"{MODEL_ID}, or one of OpenAI's: {', '.join(MODEL_ALIASES[:4])}")
    input: str = Field(description="the text; long texts are narrated chunk by chunk (up to 100,000 characters)")
    voice: str | VoiceRef = Field(description="an OpenAI voice name, a stored voice's name, or {\"id\": voice id}")
    response_format: str = Field(default="mp3", description=", ".join(FORMATS))
    speed: float = Field(default=1.0, description="only 1.0 is supported")
    stream_format: Literal["audio", "sse"] = Field(default="audio", description="only audio is supported")
    instructions: str | None = Field(default=None, description="not supported")
    keep: bool = Field(default=False, description="EchoForge: finish the job even if the client disconnects")


def _refuse(field: str, message: str) -> MalformedRequestError:
    """OpenAI's clients raise BadRequestError for a 400: unsupported options are 400, not 422."""
    return MalformedRequestError(f"{field}: {message}", [(field, message)])


def _check_options(body: dict[str, Any]) -> None:
    unknown = sorted(set(body) - set(SpeechBody.model_fields))
    if unknown:
        raise _refuse(unknown[0], "not a parameter of this endpoint")
    if body.get("model") not in MODEL_ALIASES:
        raise _refuse("model", f"unknown model {body.get('model')!r}; use {MODEL_ID} or {', '.join(MODEL_ALIASES[:4])}")
    if body.get("speed", 1.0) != 1.0:
        raise _refuse("speed", "only 1.0 is supported (CSM speaks at its own pace)")
    if body.get("stream_format", "audio") != "audio":
        raise _refuse("stream_format", "only audio is supported")
    if body.get("instructions"):
        raise _refuse("instructions", "not supported by CSM")
    if body.get("response_format", "mp3") not in FORMATS:
        raise _refuse("response_format", f"use one of {', '.join(FORMATS)}")
    if not isinstance(body.get("input"), str):
        raise _refuse("input", "the text to speak, a string")


def _voice_fields(voice: Any, tenant: str, voices: VoiceStore) -> dict[str, Any]:
    """The narration fields for `voice`: a built-in speaker, or a stored voice (by id, or by its name)."""
    if isinstance(voice, str) and voice.lower() in OPENAI_VOICES:
        return {"speaker_id": OPENAI_VOICES[voice.lower()]}
    if isinstance(voice, dict) and isinstance(voice.get("id"), str):
        stored = voices.get(voice["id"], tenant)  # another tenant's voice: JobNotFoundError (404)
    elif isinstance(voice, str):
        named = next((v for v in voices.list(tenant, limit=200) if v.name == voice), None)
        if named is None:
            raise _refuse("voice", f"unknown voice {voice!r}; use one of {', '.join(OPENAI_VOICES)} or a stored "
                                   "voice's name or {\"id\": …}")
        stored = named
    else:
        raise _refuse("voice", "a voice name or {\"id\": voice id}")
    return {"voice_prompt_sha256": stored.sha256, "voice_text": stored.transcript}


def speech_request(body: dict[str, Any], tenant: str, voices: VoiceStore, frames: bool = True) -> NarrationRequest:
    """The narration job an OpenAI speech request asks for (validated here, once); `frames`: frame streaming, for a
    format that streams (ECHOFORGE_OPENAI_FRAME_STREAMING)."""
    _check_options(body)
    fmt = body.get("response_format", "mp3")
    fields = {"text": body["input"], "output_format": fmt, "priority": OPENAI_PRIORITY, "stream_chunks": True,
              "stream_frames": frames and audio_format(fmt).streamable,
              **_voice_fields(body.get("voice"), tenant, voices)}
    return NarrationRequest.parse(fields)


@router.post("/v1/audio/speech", response_class=StreamingResponse, responses={
    200: {"description": "the audio, streamed: the first chunk as its frames are generated, the rest as each chunk "
                         "is stored",
          "content": {f.content_type: {} for f in FORMATS.values()}},
    **error_responses(ErrorCode.INVALID_REQUEST, ErrorCode.UNAUTHORIZED, ErrorCode.FORBIDDEN, ErrorCode.NOT_FOUND,
                      ErrorCode.RATE_LIMITED, ErrorCode.QUOTA_EXCEEDED, ErrorCode.OVERLOADED)},
    openapi_extra={"requestBody": {"required": True, "content": {
        "application/json": {"schema": SpeechBody.model_json_schema()}}}})
async def create_speech(request: Request, key: Writer) -> Response:
    """Speech for `input`, like OpenAI's endpoint: the first chunk's audio is sent a few frames at a time as it is
    generated, each later chunk's as soon as it is stored."""
    body = await json_object(request, MAX_PAYLOAD_BYTES)
    state = request.app.state
    parsed = await run_in_threadpool(speech_request, body, key.tenant,
                                     VoiceStore(state.client.jobs.redis, state.storage),
                                     state.settings.openai_frame_streaming)
    job: Job = await run_in_threadpool(submit_within_quotas, request, parsed, key.tenant)
    keep = bool(body.get("keep"))
    spec = audio_format(parsed.output_format)
    chunks = stream_job_audio(state, job.id, spec.name, frames=parsed.stream_frames)
    first = await _first_piece(chunks, state, job.id, keep)
    return StreamingResponse(_then(first, chunks, state, job.id, keep), media_type=spec.content_type,
                             headers={"X-EchoForge-Job": job.id})


async def _first_piece(chunks: AsyncIterator[bytes], state: Any, job_id: str, keep: bool) -> bytes:
    """The first audio bytes, before the response starts: a job that fails before any audio is an error response."""
    try:
        return await chunks.__anext__()
    except StopAsyncIteration:
        return b""
    except BaseException:
        await _cancel_unless_kept(state, job_id, keep)
        raise


async def _then(first: bytes, chunks: AsyncIterator[bytes], state: Any, job_id: str, keep: bool
                ) -> AsyncIterator[bytes]:
    finished = False
    try:
        yield first
        async for piece in chunks:
            yield piece
        finished = True
    finally:
        if not finished:  # the client went away (or the stream broke): the job is not wanted any more
            await _cancel_unless_kept(state, job_id, keep)


async def _cancel_unless_kept(state: Any, job_id: str, keep: bool) -> None:
    """Cancel the job; shielded, since this runs while the response's task is being cancelled (client gone)."""
    if not keep:
        with anyio.CancelScope(shield=True), contextlib.suppress(JobNotFoundError):
            await run_in_threadpool(state.client.cancel, job_id)


@router.get("/v1/models", responses=error_responses(ErrorCode.UNAUTHORIZED))
def list_models(key: Reader) -> dict[str, Any]:
    """The model, under its own id and OpenAI's names (all the same model)."""
    created = int(time.time())
    return {"object": "list", "data": [{"id": name, "object": "model", "created": created, "owned_by": "echoforge"}
                                       for name in MODEL_ALIASES]}


@router.get("/v1/audio/voices", responses=error_responses(ErrorCode.UNAUTHORIZED))
def list_voices(request: Request, key: Reader) -> dict[str, Any]:
    """The voices this key may use: the built-in speakers by OpenAI's names, and the tenant's stored voices."""
    state = request.app.state
    stored = VoiceStore(state.client.jobs.redis, state.storage).list(key.tenant, limit=200)
    builtin = [{"id": name, "name": name, "type": "builtin", "speaker_id": speaker}
               for name, speaker in OPENAI_VOICES.items()]
    return {"object": "list", "data": builtin + [{"id": v.id, "name": v.name or v.id, "type": "stored"}
                                                 for v in stored]}
