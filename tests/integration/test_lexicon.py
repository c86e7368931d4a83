"""A pronunciation lexicon through real processes (placeholder model, real Redis, moto S3): submitted with the CLI it
respells exactly the chunks with its words, the captions keep the written words, the manifest records it; a bad
lexicon is refused by the CLI (exit 2, the line named) and by the API (422 naming `lexicon`); a book's lexicon
reaches every chapter's job."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import httpx
import numpy as np
import redis
import soundfile as sf

from producer.api_keys import ApiKeyStore
from producer.books.client import BookClient
from producer.client import NarrationClient
from producer.lexicon import lexicon_sha256
from producer.request import NarrationRequest
from producer.settings import Settings
from producer.states import JobState
from tests import services
from worker.narration.text import chunk_text

TEXT = ("Hermione crossed the square before dawn. The bakery was still dark and the fountain had frozen over "
        "completely.\n\n"
        "Nobody else was awake. The church clock struck six, and a cart rattled somewhere past the market.\n\n"
        "By noon Anne and Ann had reached New York City, where Hermione's letter was waiting.")
LEXICON_TSV = ("# how to say the names\nHermione\ther-MY-oh-nee\nAnn\tahn\n"
               "New York City\tnoo york sitty\n")
LEXICON = {"Hermione": "her-MY-oh-nee", "Ann": "ahn", "New York City": "noo york sitty"}


def _read(settings: Settings, key: str) -> bytes:
    s3 = boto3.client("s3", endpoint_url=settings.s3_endpoint_url)
    return s3.get_object(Bucket=settings.storage_url[5:].split("/")[0], Key=key)["Body"].read()  # type: ignore[no-any-return]


def test_a_job_submitted_with_a_lexicon_respells_only_its_chunks_and_captions_keep_the_written_words(
        client: NarrationClient, settings: Settings, start_worker: Callable[..., services.Worker],
        tmp_path: Path) -> None:
    start_worker(settings)
    (tmp_path / "names.tsv").write_text(LEXICON_TSV)
    done = services.run_cli(settings, "submit", TEXT, "--lexicon", str(tmp_path / "names.tsv"), "--wait", "--json")
    assert done.returncode == 0, done.stderr
    final = client.get(json.loads(done.stdout)["id"])
    assert final.state is JobState.SUCCEEDED and final.result is not None and final.request["lexicon"] == LEXICON

    manifest = json.loads(_read(settings, final.result["manifest_key"]))
    assert manifest["settings"]["lexicon"] == LEXICON
    assert manifest["settings"]["lexicon_sha256"] == lexicon_sha256(LEXICON)
    plain = chunk_text(NarrationRequest.parse({"text": TEXT}).text, settings.max_chunk_chars,
                       settings.first_chunk_chars)
    chunks = manifest["chunks"]
    assert [c["display"] for c in chunks] == [c.display for c in plain], "the same plan, the written words shown"
    affected = [i for i, c in enumerate(plain) if re.search(r"Hermione|\bAnn\b|New York City", c.display)]
    assert affected and len(affected) < len(chunks)
    for i, (chunk, before) in enumerate(zip(chunks, plain, strict=True)):
        if i in affected:
            assert chunk["text"] != before.text and chunk["lexicon"], chunk
            assert not re.search(r"Hermione|\bAnn\b|New York City", chunk["text"])
        else:
            assert chunk["text"] == before.text and "lexicon" not in chunk, chunk
    assert {w for c in chunks for w in c.get("lexicon", [])} == set(LEXICON)
    said = " ".join(c["text"] for c in chunks)
    assert "her-MY-oh-nee crossed" in said and "Anne and ahn" in said and "her-MY-oh-nee's letter" in said

    for name in ("srt", "vtt"):
        captions = _read(settings, final.result["captions"][name]).decode()
        flat = " ".join(captions.split())
        assert "Hermione crossed" in flat and "Anne and Ann had reached New York City" in flat, flat
        assert not re.search(r"her-MY|ahn|noo york", flat)


def test_a_bad_lexicon_file_exits_2_naming_the_line_and_enqueues_nothing(
        client: NarrationClient, settings: Settings, tmp_path: Path) -> None:
    (tmp_path / "names.tsv").write_text("# names\nHermione\ther-MY-oh-nee\nann\tahn\nANN\tan\n")
    (tmp_path / "names.json").write_text('{"R2D2": "ar 2 dee 2"}')
    (tmp_path / "names.csv").write_text("Ann,ahn\n")
    for name, message in (("names.tsv", "line 4: 'ANN' repeats line 3"), ("names.json", "key 'R2D2'"),
                          ("names.csv", "not a .json or .tsv file"), ("missing.tsv", "cannot read lexicon")):
        refused = services.run_cli(settings, "submit", TEXT, "--lexicon", str(tmp_path / name))
        assert refused.returncode == 2 and message in refused.stderr, refused.stderr
    assert redis.Redis.from_url(settings.redis_url).dbsize() == 0


def _auth(settings: Settings, tenant: str) -> dict[str, str]:
    _, token = ApiKeyStore(redis.Redis.from_url(settings.redis_url)).create(tenant)
    return {"Authorization": f"Bearer {token}"}


def test_the_api_takes_a_lexicon_object_and_refuses_a_bad_one_with_422_naming_lexicon(
        client: NarrationClient, settings: Settings, start_api: Callable[..., str]) -> None:
    headers = _auth(settings, "acme")
    with httpx.Client(base_url=start_api(settings), timeout=30) as api:
        for bad in ({"Ann": "ahn", "ann": "an"}, {"Hermione": "her 2"}, {"Hermione!": "x"}, ["Ann"]):
            refused = api.post("/v1/narrations", json={"text": TEXT, "lexicon": bad}, headers=headers)
            assert refused.status_code == 422, refused.text
            problem = refused.json()
            assert "lexicon" in problem["detail"] and problem["errors"][0]["field"].startswith("lexicon"), problem
        assert client.list() == []
        posted = api.post("/v1/narrations", json={"text": TEXT, "lexicon": LEXICON}, headers=headers)
        assert posted.status_code == 202, posted.text
        assert client.get(posted.json()["id"]).request["lexicon"] == LEXICON
        schema = api.get("/openapi.json").json()
        assert "pronunciation lexicon" in json.dumps(schema["paths"]["/v1/narrations"]["post"])


BOOK = "# The Winter Letters\n\n" + "".join(f"## Part {n}\n\nHermione wrote to Ann from New York City. The snow "
                                         "fell all week.\n\n" for n in (1, 2, 3))


def test_a_books_lexicon_reaches_every_chapters_job(
        client: NarrationClient, settings: Settings, start_api: Callable[..., str], tmp_path: Path) -> None:
    (tmp_path / "book.md").write_text(BOOK)
    (tmp_path / "names.json").write_text(json.dumps(LEXICON))
    prompt = tmp_path / "me.wav"
    sf.write(prompt, 0.3 * np.sin(2 * np.pi * 180 * np.arange(32_000) / 16_000), 16_000)
    done = services.run_cli(settings, "submit", "--file", str(tmp_path / "book.md"), "--book", "--lexicon",
                            str(tmp_path / "names.json"), "--voice-prompt", str(prompt), "--voice-text",
                            "This is how I sound.", "--json")
    assert done.returncode == 0, done.stderr
    book: dict[str, Any] = json.loads(done.stdout)
    assert book["options"]["lexicon"] == LEXICON and len(book["chapters"]) == 3
    assert [client.get(c["job"]).request["lexicon"] for c in book["chapters"]] == [LEXICON] * 3

    headers = _auth(settings, "acme")
    with httpx.Client(base_url=start_api(settings), timeout=30) as api:
        bad = api.post("/v1/books", files={"file": ("book.md", BOOK.encode(), "text/markdown"),
                                           "lexicon": ("names.tsv", b"Ann\tahn\nHermione\n", "text/plain")},
                       headers=headers)
        assert bad.status_code == 422 and "line 2" in bad.json()["detail"], bad.text
        assert bad.json()["errors"][0]["field"] == "lexicon"
        posted = api.post("/v1/books", files={"file": ("book.md", BOOK.encode(), "text/markdown"),
                                              "lexicon": ("names.tsv", LEXICON_TSV.encode(), "text/plain")},
                          headers=headers)
        assert posted.status_code == 202, posted.text
    anchor = client.get(posted.json()["anchor"]["job"])  # no voice given: the anchor job comes first, then chapters
    assert anchor.request["lexicon"] == LEXICON
    assert BookClient(client).books.get(posted.json()["id"]).options["lexicon"] == LEXICON
