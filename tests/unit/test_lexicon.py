"""The pronunciation lexicon: its files (.json, .tsv) and the request field refused by the same rules, naming the
line or key; matching (whole words, any case, longest first) and what it changes in a chunk plan."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from producer.errors import InvalidRequestError
from producer.lexicon import MAX_ENTRIES, lexicon_sha256, parse_lexicon
from producer.request import NarrationRequest
from producer.storage import LocalStorage
from worker.models.placeholder import PlaceholderCSMModel
from worker.narration.lexicon import Lexicon
from worker.narration.narrate import narrate
from worker.narration.text import chunk_text, first_chunk_guess, speakable

ENTRIES = {"Hermione": "her-MY-oh-nee", "Ann": "an", "New York City": "noo york sitty", "York": "yawk",
           "O'Brien": "oh BRY-en"}


def test_a_tsv_file_skips_blank_lines_and_comments_and_a_json_file_is_an_object() -> None:
    tsv = "# names in the book\n\nHermione\ther-MY-oh-nee\r\n  # indented comment\nNew York City\t noo york sitty \n"
    assert parse_lexicon(tsv.encode(), "names.tsv") == {"Hermione": "her-MY-oh-nee", "New York City": "noo york sitty"}
    assert parse_lexicon(json.dumps(ENTRIES).encode(), "names.JSON") == ENTRIES
    assert parse_lexicon("\ufeffZoë\tzo-ee\n".encode(), "bom.tsv") == {"Zoë": "zo-ee"}


TSV_REFUSALS = [
    (b"Hermione\ther-MY-oh-nee\n\xff\xfe\tx\n", "line 2: not UTF-8"),
    (b"# one\nHermione her-MY-oh-nee\n", "line 2: 1 column, not two"),
    (b"Hermione\tx\ty\n", "line 1: 3 columns, not two"),
    (b"\tx\n", "line 1: the word is empty"),
    (b"Hermione\t  \n", "line 1: the respelling is empty"),
    (b"Hermione!\tx\n", "line 1: the word 'Hermione!' has '!'"),
    (b"New  York\tx\n", "line 1: the word 'New  York' has spaces"),
    (b"Hermione\ther 2\n", "line 1: the respelling 'her 2' has a digit"),
    (b"Hermione\ther\x07my\n", "line 1: the respelling has a control character"),
    (b"Ann\tan\n\nANN\tahn\n", "line 3: 'ANN' repeats line 1"),
    (b"x" * 65 + b"\ty\n", "line 1: the word has 65 characters; the limit is 64"),
    (b"x\t" + b"y" * 129 + b"\n", "line 1: the respelling has 129 characters; the limit is 128"),
    ("".join(f"w{i}\tx\n" for i in range(MAX_ENTRIES + 1)).encode(), "has 1,001 entries; the limit is 1,000"),
]


@pytest.mark.parametrize(("data", "reason"), TSV_REFUSALS)
def test_a_bad_tsv_entry_is_refused_naming_its_line(data: bytes, reason: str) -> None:
    with pytest.raises(InvalidRequestError, match=r"lexicon names\.tsv: ") as refused:
        parse_lexicon(data, "names.tsv")
    assert refused.value.fields[0][0] == "lexicon" and reason in refused.value.fields[0][1], refused.value


@pytest.mark.parametrize(("data", "reason"), [
    (b'{"Hermione": "x", "Hermione": "y"}', "key 'Hermione': 'Hermione' repeats key 'Hermione'"),
    (b'{"Ann": "an", "ann": "ahn"}', "key 'ann': 'ann' repeats key 'Ann'"),
    (b'{"Hermione": 2}', "key 'Hermione': the respelling must be a string"),
    (b'{"C3PO": "see three pee oh", "R2D2": "ar 2 dee 2"}', "key 'R2D2': the respelling 'ar 2 dee 2' has a digit"),
    (b'{"a/b": "x"}', "key 'a/b': the word 'a/b' has '/'"),
    (b'["Hermione"]', "must be a JSON object"),
    (b'{"Hermione": ', "not valid JSON"),
])
def test_a_bad_json_entry_is_refused_naming_its_key(data: bytes, reason: str) -> None:
    with pytest.raises(InvalidRequestError) as refused:
        parse_lexicon(data, "names.json")
    assert refused.value.fields == [("lexicon", refused.value.fields[0][1])] and reason in str(refused.value)


def test_every_bad_entry_is_named_and_other_files_are_refused() -> None:
    with pytest.raises(InvalidRequestError, match=r"line 1: .*; line 2: .*; line 3") as refused:
        parse_lexicon(b"a!\tx\nb\ty1\nc\n", "names.tsv")
    assert "line 3: 1 column" in str(refused.value)
    with pytest.raises(InvalidRequestError, match=r"not a \.json or \.tsv file"):
        parse_lexicon(b"Hermione,her-MY-oh-nee", "names.csv")


def test_the_request_field_follows_the_same_rules_and_is_normalized() -> None:
    request = NarrationRequest.parse({"text": "Hi.", "lexicon": {" Zoe\u0308 ": " zo-ee "}})
    assert request.lexicon == {"Zoë": "zo-ee"}
    assert NarrationRequest.parse({"text": "Hi.", "lexicon": {}}).lexicon is None
    assert NarrationRequest.parse({"text": "Hi."}).lexicon is None
    for data, name in ((b"Ann\tan\nann\tahn\n", "x.tsv"), (b'{"Ann": "an", "ann": "ahn"}', "x.json")):
        with pytest.raises(InvalidRequestError) as from_file:
            parse_lexicon(data, name)
        with pytest.raises(InvalidRequestError, match="lexicon: key 'ann': 'ann' repeats key 'Ann'"):
            NarrationRequest.parse({"text": "Hi.", "lexicon": {"Ann": "an", "ann": "ahn"}})
        assert "repeats" in from_file.value.fields[0][1]
    assert lexicon_sha256({"b": "x", "a": "y"}) == lexicon_sha256({"a": "y", "b": "x"}) != lexicon_sha256({"a": "x"})


@pytest.mark.parametrize(("written", "spoken"), [
    ("Hermione met Anne, then ANN, then ann's dog.", "her-MY-oh-nee met Anne, then an, then an's dog."),
    ("He flew to New York City, not York.", "He flew to noo york sitty, not yawk."),
    ("new york  city is big.", "noo york sitty is big."),
    ("O\u2019Brien and O'Brien.", "oh BRY-en and oh BRY-en."),
    ("Yorkshire and Annals are left alone.", "Yorkshire and Annals are left alone."),
])
def test_whole_words_and_phrases_match_in_any_case_longest_first(written: str, spoken: str) -> None:
    assert speakable(written, Lexicon(ENTRIES)) == spoken


def test_the_respelling_comes_first_and_is_then_normalized_like_any_text() -> None:
    lexicon = Lexicon({"Dr.": "Drive", "Rx": "Doctor & Co.", "St. Ives": "saint eves"})
    assert speakable("Dr. Smith lives on Elm Dr. near St. Ives.", lexicon) == \
        "Drive Smith lives on Elm Drive near saint eves."
    assert speakable("Rx signed.", lexicon) == "Doctor and Company signed."
    assert speakable("Dr. Smith.") == "Doctor Smith.", "without the lexicon the usual rules apply"


PARAGRAPHS = ("Hermione walked to the station at dawn. The platform was empty and the trains were late again.\n\n"
              "Nobody came for an hour. The clock above the door ticked on, and the pigeons slept in the rafters.\n\n"
              "Then Anne arrived with Ann, and they talked about New York City until the train pulled in.")


@pytest.mark.parametrize("first_chunk_chars", [0, 60])
def test_only_the_chunks_with_lexicon_words_change_and_captions_keep_the_written_words(first_chunk_chars: int) -> None:
    plain = chunk_text(PARAGRAPHS, 80, first_chunk_chars)
    respelled = chunk_text(PARAGRAPHS, 80, first_chunk_chars, lexicon=ENTRIES)
    assert [c.display for c in respelled] == [c.display for c in plain], "captions keep the written words"
    assert [c.lexicon for c in respelled] == [("Hermione",), (), (), (), ("Ann",), ("New York City",)]
    for before, after in zip(plain, respelled, strict=True):
        if after.lexicon:
            assert after.text != before.text
            assert not any(re.search(rf"\b{word}\b", after.text, re.I) for word in after.lexicon)
        else:
            assert after == before, "untouched chunks are exactly the plan without a lexicon"
    assert respelled[0].text == "her-MY-oh-nee walked to the station at dawn."
    assert respelled[4].text == "Then Anne arrived with an,", "Anne is another word"
    assert respelled[5].text == "and they talked about noo york sitty until the train pulled in."
    assert first_chunk_guess(PARAGRAPHS, 80, first_chunk_chars, lexicon=ENTRIES) == respelled[0]


def test_the_budget_counts_the_respelled_text() -> None:
    long = {"Hermione": "her-my-oh-nee-of-the-very-long-respelling-that-fills-the-chunk-budget-quickly"}
    chunks = chunk_text("Hermione came. Hermione left. Hermione came back.", 100, lexicon=long)
    assert all(len(c.text) <= 100 for c in chunks) and len(chunks) > 1


@pytest.mark.parametrize(("second_lexicon", "resumed"), [(ENTRIES, True), ({**ENTRIES, "Ann": "ahn"}, False),
                                                         (None, False)])
def test_stored_chunks_are_resumed_only_under_the_same_lexicon(
        tmp_path: Path, second_lexicon: dict[str, str] | None, resumed: bool) -> None:
    """narrate() itself, with the placeholder model and local storage: the manifest records the lexicon and which
    words each chunk respelled; a second run of the job reuses its chunks only when the lexicon is the same."""
    storage, model = LocalStorage(tmp_path), PlaceholderCSMModel()

    def run(lexicon: dict[str, str] | None) -> tuple[dict[str, Any], dict[str, Any]]:
        request = NarrationRequest.parse({"text": PARAGRAPHS, "lexicon": lexicon})
        outcome = narrate("f" * 32, request, model, storage, 80, {"kind": "placeholder", "id": "tone"},
                          lambda progress: "go")
        assert outcome.verdict == "done" and outcome.result and outcome.progress
        return json.loads(storage.get_bytes(outcome.result["manifest_key"]) or b""), outcome.progress

    manifest, _ = run(ENTRIES)
    assert manifest["settings"]["lexicon"] == ENTRIES
    assert manifest["settings"]["lexicon_sha256"] == lexicon_sha256(ENTRIES)
    assert [c.get("lexicon") for c in manifest["chunks"]] == [["Hermione"], None, None, None, ["Ann"],
                                                              ["New York City"]]
    _, progress = run(second_lexicon)
    assert progress["chunks_resumed"] == (progress["chunks_total"] if resumed else 0)
