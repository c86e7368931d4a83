"""NarrationRequest refuses bad input with a message naming the field, before anything is enqueued."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from producer.errors import InvalidRequestError
from producer.request import MAX_PAYLOAD_BYTES, MAX_TEXT_CHARS, NarrationRequest, normalize_text


def test_whitespace_is_normalized_and_paragraphs_kept() -> None:
    text = "  Hello\t\tthere,   world. \r\n\r\n\r\n\n Second   paragraph.\u00a0 "
    assert normalize_text(text) == "Hello there, world.\n\nSecond paragraph."


def test_defaults() -> None:
    request = NarrationRequest.parse({"text": "Hi."})
    assert (request.speaker_id, request.temperature, request.top_k, request.output_format) == (1, 0.9, 50, "wav")
    assert request.priority == 5 and request.idempotency_key is None


# (fields, what the error names): the bad-input matrix, reused by the client, CLI and raw-message tests.
BAD_FIELDS: list[tuple[dict[str, object], str]] = [
    ({"text": ""}, "text"),
    ({"text": " \n\t  "}, "empty after whitespace"),
    ({"text": "x" * (MAX_TEXT_CHARS + 1)}, "limit"),
    ({"text": 42}, "text"),
    ({"text": ["a"]}, "text"),
    ({"text": "bell\x07"}, "control"),
    ({"text": "nul\x00"}, "control"),
    ({"text": "lone \ud800 surrogate"}, "invalid character"),
    ({"text": "ok", "speaker_id": -1}, "speaker_id"),
    ({"text": "ok", "speaker_id": 10**9}, "speaker_id"),
    ({"text": "ok", "speaker_id": 1.5}, "speaker_id"),
    ({"text": "ok", "speaker_id": "1"}, "speaker_id"),
    ({"text": "ok", "speaker_id": True}, "speaker_id"),
    ({"text": "ok", "temperature": 0}, "temperature"),
    ({"text": "ok", "temperature": -0.5}, "temperature"),
    ({"text": "ok", "temperature": math.nan}, "temperature"),
    ({"text": "ok", "temperature": math.inf}, "temperature"),
    ({"text": "ok", "top_k": 0}, "top_k"),
    ({"text": "ok", "top_k": 10**6}, "top_k"),
    ({"text": "ok", "output_format": "ogg"}, "output_format"),
    ({"text": "ok", "priority": 10}, "priority"),
    ({"text": "ok", "idempotency_key": "../../etc"}, "idempotency_key"),
    ({"text": "ok", "queue_ttl_s": 0}, "queue_ttl_s"),
    ({"text": "ok", "voice": "x"}, "voice"),
    ({"text": "ok", "webhook_url": "ftp://hooks.example.com/x"}, "webhook_url"),
    ({"text": "ok", "webhook_url": "https://user:pass@hooks.example.com/x"}, "webhook_url"),
    ({"text": "ok", "webhook_url": "https://hooks.example.com/" + "x" * 2048}, "webhook_url"),
    ({"text": "ok", "webhook_url": "https://hooks.example.com/x", "webhook_events": ["done"]}, "webhook_events"),
    ({"text": "ok", "lexicon": {"Hermione": "her-my-oh-nee 2"}}, "lexicon: key 'Hermione': the respelling"),
    ({"text": "ok", "lexicon": {"Ann": "an", "ANN": "ahn"}}, "lexicon: key 'ANN': 'ANN' repeats key 'Ann'"),
    ({"text": "ok", "lexicon": ["Hermione", "her-my-oh-nee"]}, "lexicon"),
]


@pytest.mark.parametrize(("fields", "names"), BAD_FIELDS)
def test_bad_fields_are_refused_with_the_field_named(fields: dict[str, object], names: str) -> None:
    with pytest.raises(InvalidRequestError, match=names):
        NarrationRequest.parse(fields)


def test_payload_checks() -> None:
    with pytest.raises(InvalidRequestError, match="limit"):
        NarrationRequest.from_json(b" " * (MAX_PAYLOAD_BYTES + 1))
    with pytest.raises(InvalidRequestError, match="UTF-8"):
        NarrationRequest.from_json(b'{"text": "\xff\xfe"}')
    with pytest.raises(InvalidRequestError, match="must be an object"):
        NarrationRequest.from_json(b'["text"]')
    assert NarrationRequest.from_json(json.dumps({"text": "fine"})).text == "fine"


def test_request_is_frozen_and_without_text_keeps_a_hash() -> None:
    request = NarrationRequest.parse({"text": "Keep me."})
    with pytest.raises(Exception, match="frozen"):
        request.text = "changed"  # type: ignore[misc]
    kept = request.without_text()
    assert "text" not in kept and kept["text_chars"] == 8 and len(kept["text_sha256"]) == 64


_FIELDS = ["text", "speaker_id", "temperature", "top_k", "output_format", "idempotency_key", "priority",
           "queue_ttl_s", "voice_prompt_sha256", "voice_text", "voice", "extra", "webhook_url", "webhook_events"]
_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True),
                    st.text(max_size=60),
                    st.sampled_from(["Hello there.", "wav", "flac", "mp3", "pcm", "key-1", "0" * 64,
                                     "https://hooks.example.com/x", "http://[::1", "http://h:99999/"]),
                    st.lists(st.sampled_from(["started", "progress", "done"]), max_size=3),
                    st.lists(st.integers(), max_size=3))


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(st.sampled_from(_FIELDS), _VALUES, max_size=6))
def test_validation_either_refuses_clearly_or_yields_a_request_within_every_limit(fields: dict[str, object]) -> None:
    try:
        request = NarrationRequest.parse(fields)
    except InvalidRequestError as e:
        assert str(e)  # never another exception type, never an empty message
        return
    assert request.text and request.text == normalize_text(request.text) and len(request.text) <= MAX_TEXT_CHARS
    assert 0 <= request.speaker_id <= 99 and 1 <= request.top_k <= 2048 and 0 <= request.priority <= 9
    assert math.isfinite(request.temperature) and 0 < request.temperature <= 2
    assert not set(fields) - set(NarrationRequest.model_fields)
    assert NarrationRequest.parse(request.model_dump()) == request, "what is stored validates again"
