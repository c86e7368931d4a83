"""The narration request: the one place its fields, defaults, limits and normalization are defined."""

from __future__ import annotations

import hashlib
import json
import math
import re
import unicodedata
from typing import Any
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from producer.audio_formats import FormatName
from producer.errors import InvalidRequestError
from producer.lexicon import MAX_ENTRIES, MAX_RESPELLING_CHARS, MAX_WORD_CHARS, check_lexicon
from producer.states import DEFAULT_WEBHOOK_EVENTS, WebhookEvent

__all__ = [
    "DEFAULT_PRIORITY",
    "DEFAULT_SPEAKER_ID",
    "DEFAULT_TEMPERATURE",
    "DEFAULT_TOP_K",
    "MAX_PAYLOAD_BYTES",
    "MAX_TEXT_CHARS",
    "MAX_WEBHOOK_URL_CHARS",
    "NarrationRequest",
    "normalize_text",
    "rerender_edit",
]

MAX_TEXT_CHARS = 100_000
MAX_PAYLOAD_BYTES = 1024 * 1024
MAX_SPEAKER_ID = 99
MAX_TOP_K = 2048  # the size of one CSM audio codebook
MAX_QUEUE_TTL_S = 7 * 24 * 3600
MAX_VOICE_TEXT_CHARS = 1000
MAX_WEBHOOK_URL_CHARS = 2048
DEFAULT_SPEAKER_ID = 1
DEFAULT_TEMPERATURE = 0.9
DEFAULT_TOP_K = 50
DEFAULT_PRIORITY = 5

VOICE_UPLOAD_PENDING = "voice_upload_pending"  # validation context: the recording is not stored yet
_FORBIDDEN_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")
_HORIZONTAL_SPACE = re.compile(r"[^\S\n]+")
_PARAGRAPH_BREAK = re.compile(r"\n{3,}")


def normalize_text(text: str) -> str:
    """NFC, one space between words, paragraph breaks kept as one blank line; refuses control characters."""
    bad = _FORBIDDEN_CHARS.search(text)
    if bad:
        raise ValueError(f"text contains a control or invalid character {bad.group()!r} at {bad.start()}")
    text = unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\r", "\n"))
    lines = (_HORIZONTAL_SPACE.sub(" ", line).strip() for line in text.split("\n"))
    return _PARAGRAPH_BREAK.sub("\n\n", "\n".join(lines)).strip()


class NarrationRequest(BaseModel):
    """A validated, immutable narration request. Unknown fields and loose types are refused."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    text: StrictStr = Field(description="The text to narrate; normalized before its length is checked.")
    speaker_id: StrictInt = Field(default=DEFAULT_SPEAKER_ID, ge=0, le=MAX_SPEAKER_ID)
    temperature: StrictFloat | StrictInt = Field(default=DEFAULT_TEMPERATURE, gt=0.0, le=2.0)
    top_k: StrictInt = Field(default=DEFAULT_TOP_K, ge=1, le=MAX_TOP_K)
    output_format: FormatName = Field(default="wav", description="wav, flac, mp3, opus (Ogg), aac (ADTS), m4a or "
                                      "pcm (raw 16-bit little-endian, 24 kHz mono)")
    idempotency_key: StrictStr | None = Field(default=None, pattern=r"^[A-Za-z0-9._:-]{1,128}$")
    priority: StrictInt = Field(default=DEFAULT_PRIORITY, ge=0, le=9, description="0 lowest, 9 most urgent")
    queue_ttl_s: StrictInt | None = Field(default=None, ge=1, le=MAX_QUEUE_TTL_S)
    voice_prompt_sha256: StrictStr | None = Field(default=None, pattern=r"^[0-9a-f]{64}$",
                                                  description="a reference recording stored by the client")
    stream_chunks: StrictBool = Field(default=False, description="store every chunk as soon as it is made, even a "
                                      "job's only one, so the API can stream it (set by /v1/audio/speech)")
    stream_frames: StrictBool = Field(default=False, description="also stream the first chunk a few frames at a "
                                      "time while it is generated (needs stream_chunks; set by /v1/audio/speech)")
    voice_text: StrictStr | None = Field(default=None, max_length=MAX_VOICE_TEXT_CHARS,
                                         description="what the reference recording says")
    webhook_url: StrictStr | None = Field(default=None, max_length=MAX_WEBHOOK_URL_CHARS,
                                          description="http(s) URL that gets a signed POST for each event asked for")
    webhook_events: list[WebhookEvent] = Field(default_factory=lambda: list(DEFAULT_WEBHOOK_EVENTS),
                                               description="the events to send; progress only when asked for")
    lexicon: dict[StrictStr, StrictStr] | None = Field(
        default=None, description="a pronunciation lexicon: word or phrase -> respelling, matched whole and "
        f"case-insensitively, longest first; changes what the model reads, never the captions. At most {MAX_ENTRIES} "
        f"entries; a word (at most {MAX_WORD_CHARS} characters) is letters, digits, apostrophes, hyphens, periods and "
        f"single spaces; a respelling (at most {MAX_RESPELLING_CHARS}) has no digits or control characters")

    @field_validator("text")
    @classmethod
    def _normalize(cls, value: str) -> str:
        text = normalize_text(value)
        if not text:
            raise ValueError("text is empty after whitespace normalization")
        if len(text) > MAX_TEXT_CHARS:
            raise ValueError(f"text has {len(text)} characters; the limit is {MAX_TEXT_CHARS}")
        return text

    @field_validator("voice_text")
    @classmethod
    def _normalize_voice_text(cls, value: str | None) -> str | None:
        return None if value is None else normalize_text(value)

    @field_validator("lexicon")
    @classmethod
    def _check_lexicon(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        return (check_lexicon(value) or None) if value is not None else None

    @field_validator("webhook_url")
    @classmethod
    def _check_webhook_url(cls, value: str | None) -> str | None:
        if value is not None:
            _check_webhook_url_form(value)
        return value

    @field_validator("webhook_events")
    @classmethod
    def _distinct_events(cls, value: list[WebhookEvent]) -> list[WebhookEvent]:
        if not value:
            raise ValueError("name at least one event (or leave webhook_events out for the default ones)")
        return list(dict.fromkeys(value))

    @model_validator(mode="after")
    def _voice_pair(self, info: ValidationInfo) -> NarrationRequest:
        recording = self.voice_prompt_sha256 is not None or bool((info.context or {}).get(VOICE_UPLOAD_PENDING))
        if recording != bool(self.voice_text):
            raise ValueError("a voice prompt needs both the recording and its transcript (voice_text)")
        if self.stream_frames and not self.stream_chunks:
            raise ValueError("stream_frames needs stream_chunks: the chunks after the first are streamed from storage")
        return self

    @field_validator("temperature")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("temperature must be a finite number")
        return float(value)

    @classmethod
    def parse(cls, data: Any, voice_upload_pending: bool = False) -> NarrationRequest:
        """Validate a mapping; any problem becomes one InvalidRequestError naming every bad field.

        `voice_upload_pending`: the recording of `voice_text` is yet to be stored (its hash is added after upload).
        """
        if not isinstance(data, dict):
            raise InvalidRequestError(f"a narration request must be an object, not {type(data).__name__}")
        try:
            return cls.model_validate(data, context={VOICE_UPLOAD_PENDING: voice_upload_pending})
        except ValidationError as e:
            raise _invalid(e) from e

    def with_voice_prompt(self, sha256: str) -> NarrationRequest:
        """This request with its stored recording's hash (a sha256 we computed: nothing left to validate)."""
        return self.model_copy(update={"voice_prompt_sha256": sha256})

    @classmethod
    def from_json(cls, raw: str | bytes) -> NarrationRequest:
        """Decode a JSON payload (at most 1 MiB, UTF-8)."""
        if len(raw) > MAX_PAYLOAD_BYTES:
            raise InvalidRequestError(f"payload is {len(raw)} bytes; the limit is {MAX_PAYLOAD_BYTES}")
        try:
            data = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise InvalidRequestError(f"payload is not valid UTF-8 JSON: {e}") from e
        return cls.parse(data)

    def text_sha256(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()

    def without_text(self) -> dict[str, Any]:
        """The request as kept after success: the text replaced by its size and hash."""
        kept = self.model_dump(exclude={"text"})
        kept.update(text_chars=len(self.text), text_sha256=self.text_sha256())
        return kept


def _check_webhook_url_form(url: str) -> None:
    """An absolute http(s) URL with a host and no credentials (the record shows the URL; the signature is the
    receiver's proof of origin). Where its host points is checked at the edge and at delivery, not here."""
    if url != url.strip() or any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in url):
        raise ValueError("must not contain whitespace or control characters")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ValueError("must be an http:// or https:// URL")
    if not parts.hostname:
        raise ValueError("must name a host")
    if parts.username is not None or parts.password is not None:
        raise ValueError("must not carry credentials (receivers check the webhook-signature header instead)")
    _ = parts.port  # raises ValueError for a port out of range


def _fields(error: ValidationError) -> list[tuple[str, str]]:
    """(field, problem) for each problem pydantic found."""
    return [(".".join(str(p) for p in item["loc"]) or "request", str(item["msg"]).removeprefix("Value error, "))
            for item in error.errors(include_url=False, include_input=False)]


def _invalid(error: ValidationError) -> InvalidRequestError:
    fields = _fields(error)
    return InvalidRequestError("invalid narration request: " + "; ".join(f"{f}: {m}" for f, m in fields), fields)




def rerender_edit(chunks: list[int], text: str | None, chunks_total: int, max_chars: int) -> dict[str, Any]:
    """A re-render's edit, checked: chunk indices of the job (0 .. chunks_total - 1), and at most one new text, for
    a single chunk, normalized as a request's text and at most `max_chars` characters."""
    if not chunks or not all(isinstance(i, int) and not isinstance(i, bool) for i in chunks):
        raise InvalidRequestError("name the chunks to re-render (their indices)", [("chunks", "a list of indices")])
    outside = [i for i in chunks if not 0 <= i < chunks_total]
    if outside:
        raise InvalidRequestError(f"chunk {outside[0]} is not one of the job's chunks (0-{chunks_total - 1})",
                                  [("chunks", f"{outside[0]} is out of range")])
    if text is None:
        return {"chunks": sorted(set(chunks)), "text": None}
    if len(set(chunks)) != 1:
        raise InvalidRequestError("a corrected text replaces one chunk: name exactly one", [("text", "one chunk")])
    normalized = NarrationRequest.parse({"text": text}).text
    if len(normalized) > max_chars:
        raise InvalidRequestError(f"the corrected text has {len(normalized)} characters; a chunk holds at most "
                                  f"{max_chars}", [("text", f"at most {max_chars} characters")])
    return {"chunks": [chunks[0]], "text": normalized}
