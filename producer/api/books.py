"""/v1/books: upload a book (EPUB, Markdown or text) and follow, cancel or retry it; its parts are narrations."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from producer.api.auth import caller_with
from producer.api.bodies import multipart_route
from producer.api.problems import error_responses
from producer.api.voices import voice_store
from producer.api_keys import ApiKey
from producer.audio_formats import FORMATS
from producer.books.client import BookClient
from producer.books.source import read_book
from producer.errors import ErrorCode
from producer.lexicon import parse_lexicon
from producer.quotas import Quotas
from producer.request import MAX_TEXT_CHARS

__all__ = ["router"]

router = APIRouter(prefix="/v1/books", tags=["books"],
                   route_class=multipart_route(lambda settings: settings.max_book_upload_bytes))
Reader = Annotated[ApiKey, Depends(caller_with("narrations:read"))]
Writer = Annotated[ApiKey, Depends(caller_with("narrations:write"))]
_COMMON = (ErrorCode.UNAUTHORIZED, ErrorCode.FORBIDDEN, ErrorCode.RATE_LIMITED)
_ONE = error_responses(*_COMMON, ErrorCode.NOT_FOUND)
_FILE = ("the book: .epub (chapters from its spine and table of contents), .md (chapters at headings) or .txt "
         "(chapters at 'Chapter …' lines); at most ECHOFORGE_MAX_BOOK_UPLOAD_BYTES")
_LEXICON = "a pronunciation lexicon every chapter shares: .json (word -> respelling) or .tsv (word<TAB>respelling)"


def _books(request: Request) -> BookClient:
    return BookClient(request.app.state.client)


def _submit(request: Request, tenant: str, data: bytes, filename: str, options: dict[str, Any],
            voice_id: str | None) -> dict[str, Any]:
    """Read and check the whole book, charge its characters to the tenant, then submit it."""
    settings = request.app.state.settings
    source = read_book(data, filename, MAX_TEXT_CHARS, settings.max_book_chars)
    stored_voice = None
    if voice_id is not None:
        voice = voice_store(request).get(voice_id, tenant)
        options, stored_voice = {**options, "voice_text": voice.transcript}, voice.sha256
    quotas: Quotas = request.app.state.quotas
    quotas.check_queue_depth()
    charge = quotas.charge_characters(tenant, source.chars)
    try:
        book = _books(request).submit(source, options, tenant=tenant, stored_voice=stored_voice)
    except Exception:
        quotas.refund(charge)
        raise
    return _books(request).status(book.id, tenant)


@router.post("", status_code=202, responses=error_responses(
    *_COMMON, ErrorCode.INVALID_REQUEST, ErrorCode.PAYLOAD_TOO_LARGE, ErrorCode.UNSUPPORTED_MEDIA_TYPE,
    ErrorCode.QUOTA_EXCEEDED, ErrorCode.OVERLOADED, ErrorCode.NOT_FOUND))
async def create_book(
        request: Request, key: Writer,
        file: Annotated[UploadFile, File(description=_FILE)],
        speaker_id: Annotated[int | None, Form()] = None,
        output_format: Annotated[str | None, Form(description=f"each chapter's file: {', '.join(FORMATS)}")] = None,
        voice_id: Annotated[str | None, Form(description="a saved voice (POST /v1/voices) to narrate in")] = None,
        lexicon: Annotated[UploadFile | None, File(description=_LEXICON)] = None,
) -> JSONResponse:
    """A book: one narration per chapter in one voice, assembled into an M4B with a marker per chapter. Answers 202
    with the book's status; follow it with GET /v1/books/{id}."""
    data = await file.read()
    options: dict[str, Any] = {k: v for k, v in {"speaker_id": speaker_id, "output_format": output_format}.items()
                               if v is not None}
    if lexicon is not None:
        options["lexicon"] = parse_lexicon(await lexicon.read(), lexicon.filename or "lexicon")
    status = await run_in_threadpool(_submit, request, key.tenant, data, file.filename or "book", options, voice_id)
    return JSONResponse(status, status_code=202, headers={"Location": f"/v1/books/{status['id']}"})


@router.get("/{book_id}", responses=_ONE)
def get_book(book_id: str, request: Request, key: Reader) -> dict[str, Any]:
    """The book's status, read from its parts: chapters done of all, audio so far, ETA; when done, the M4B."""
    return _books(request).status(book_id, key.tenant)


@router.post("/{book_id}/cancel", responses=error_responses(*_COMMON, ErrorCode.NOT_FOUND, ErrorCode.CONFLICT))
def cancel_book(book_id: str, request: Request, key: Writer) -> dict[str, Any]:
    return _books(request).cancel(book_id, key.tenant)


@router.post("/{book_id}/retry", responses=error_responses(*_COMMON, ErrorCode.NOT_FOUND, ErrorCode.CONFLICT))
def retry_book(book_id: str, request: Request, key: Writer) -> dict[str, Any]:
    return _books(request).retry(book_id, key.tenant)
