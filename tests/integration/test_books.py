"""Books through real processes (placeholder model, moto S3): an EPUB fanned out over two GPU workers, assembled
once by the service worker into an M4B with a chapter marker per chapter; a killed worker; cancel; bad files."""

from __future__ import annotations

import io
import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import psutil
import pytest

from producer.books.client import BookClient
from producer.client import NarrationClient
from producer.settings import Settings
from tests import services
from tests.book_files import cover_png, make_epub

PARAGRAPH = ("The keeper climbed the stairs at dusk and lit the lamp. The light swept over the water, and the ships "
             "far out turned toward the harbour. ")
CHAPTERS = [(f"Chapter {n}", "\n\n".join([PARAGRAPH * 3] * (2 + n % 3))) for n in range(1, 7)]
# Simulated GPU time, so that chapters overlap on two workers; a short lock TTL so a killed chapter is redelivered fast.
SLOW = {"ECHOFORGE_PLACEHOLDER_RTF": "0.01", "ECHOFORGE_JOB_LOCK_TTL_S": "2"}


def _s3(settings: Settings) -> tuple[Any, str]:
    return boto3.client("s3", endpoint_url=settings.s3_endpoint_url), settings.storage_url[5:].split("/")[0]


def _objects(settings: Settings, prefix: str) -> list[str]:
    s3, bucket = _s3(settings)
    listing = s3.list_objects_v2(Bucket=bucket, Prefix=f"narrations/{prefix}")
    return sorted(item["Key"] for item in listing.get("Contents", []))


def _read(settings: Settings, key: str) -> bytes:
    s3, bucket = _s3(settings)
    return s3.get_object(Bucket=bucket, Key=key)["Body"].read()  # type: ignore[no-any-return]


def _submit(settings: Settings, tmp_path: Path, epub: bytes) -> str:
    path = tmp_path / "book.epub"
    path.write_bytes(epub)
    submitted = services.run_cli(settings, "submit", "--file", str(path), "--json")
    assert submitted.returncode == 0, submitted.stderr
    status = json.loads(submitted.stdout)
    assert status["kind"] == "book" and [c["title"] for c in status["chapters"]] == [t for t, _ in CHAPTERS]
    return str(status["id"])


def _wait(books: BookClient, book_id: str, ready: Callable[[dict[str, Any]], bool],
          timeout: float = 240) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = books.status(book_id)
        if ready(status):
            return status
        time.sleep(0.2)
    raise AssertionError(f"book {book_id} never got there: {books.status(book_id)}")


def _m4b_chapters(path: Path) -> list[tuple[str, float, float]]:
    """The M4B's chapters as a player's demuxer (FFmpeg's, through PyAV) reads them: (title, start_s, end_s); and
    mutagen (the Nero chapter list) reads the same titles and starts."""
    import av
    import mutagen.mp4

    with av.open(str(path)) as container:
        found = [(c["metadata"].get("title", ""), float(c["start"] * c["time_base"]),
                  float(c["end"] * c["time_base"])) for c in container.chapters()]
    nero = mutagen.mp4.MP4(str(path)).chapters or []
    assert [c.title for c in nero] == [t for t, _, _ in found]
    assert all(abs(c.start - s) <= 0.002 for c, (_, s, _) in zip(nero, found, strict=True))
    return found


def test_an_epub_becomes_one_m4b_with_a_marker_per_chapter_narrated_on_two_workers(
    client: NarrationClient, settings: Settings, start_worker: Callable[..., services.Worker],
    start_webhook_worker: Callable[..., services.Worker], tmp_path: Path,
) -> None:
    workers = [start_worker(settings, name=n, extra_env=SLOW) for n in ("gpu1", "gpu2")]
    service = start_webhook_worker(settings)
    books = BookClient(client)
    book_id = _submit(settings, tmp_path, make_epub(CHAPTERS, cover=cover_png()))
    final = _wait(books, book_id, lambda s: s["state"] in ("succeeded", "failed"))
    assert final["state"] == "succeeded", final["error"]
    assert final["progress"]["chapters_done"] == 6 and final["result"]["chapters"] == 6

    jobs = [client.get(c["job"]) for c in final["chapters"]]
    assert {job.worker.split("@")[0] for job in jobs if job.worker} == {"gpu1", "gpu2"}, "chapters ran on both"
    assert all(any(job.id in w.log() for w in workers) for job in jobs)
    anchor = final["anchor"]
    assert anchor["source"] == "anchor_job" and client.get(anchor["job"]).state.value == "succeeded"
    for job in jobs:  # every chapter in the book's one voice
        manifest = json.loads(_read(settings, job.result["manifest_key"]))  # type: ignore[index]
        assert manifest["voice_anchor"]["sha256"] == anchor["sha256"]

    m4b = tmp_path / "book.m4b"
    assert services.run_cli(settings, "download", book_id, "-o", str(m4b)).returncode == 0
    book_manifest = json.loads(_read(settings, final["result"]["manifest_key"]))
    read_back = _m4b_chapters(m4b)
    assert [title for title, _, _ in read_back] == [t for t, _ in CHAPTERS]
    frame_s = 1024 / 24_000
    for (_, start, end), mark in zip(read_back, book_manifest["chapters"], strict=True):
        assert abs(start - mark["start_s"]) <= frame_s and abs(end - mark["end_s"]) <= frame_s
    _assert_captions_inside_chapters(_read(settings, final["result"]["captions"]["vtt"]).decode(), book_manifest)
    assert [k for k in _objects(settings, f"books/{book_id}/") if k.endswith(".m4b")] == \
        [f"narrations/books/{book_id}/book.m4b"], "exactly one M4B"
    _assert_chapters_sound_as_narrated(settings, m4b, jobs, book_manifest)
    assert re.search(rf"book {book_id}: [0-5] of 6 chapters already encoded", service.log())
    named = {f"narrations/books/{book_id}/aac/{i:04d}-{job.result['sha256'][:16]}.m4a"  # type: ignore[index]
             for i, job in enumerate(jobs)}  # every chapter but the one that completed the book is encoded ahead
    _wait(books, book_id, lambda _: len(named & set(_objects(settings, f"books/{book_id}/aac/"))) == 5, timeout=120)


def _assert_chapters_sound_as_narrated(settings: Settings, m4b: Path, jobs: list[Any],
                                       manifest: dict[str, Any]) -> None:
    """Each chapter's audio in the M4B, from its mark plus its priming, is its own narration (AAC-coded)."""
    import av
    import soundfile as sf

    with av.open(str(m4b)) as container:
        book = np.concatenate([f.to_ndarray().reshape(-1) for f in container.decode(audio=0)])
    for job, mark in zip(jobs, manifest["chapters"], strict=True):
        narration, rate = sf.read(io.BytesIO(_read(settings, job.result["key"])), dtype="float32")
        start = round((mark["start_s"] + mark["audio_offset_s"]) * rate)
        heard = book[start: start + len(narration)]
        assert len(heard) == len(narration) and start + len(narration) <= round(mark["end_s"] * rate)
        assert np.corrcoef(heard, narration)[0, 1] > 0.95, f"chapter {mark['index']} is not its narration"


def _assert_captions_inside_chapters(vtt: str, manifest: dict[str, Any]) -> None:
    def seconds(stamp: str) -> float:
        h, m, s = stamp.split(":")
        return int(h) * 3600 + int(m) * 60 + float(s)

    cues = [(seconds(a), seconds(b)) for a, b in re.findall(r"(\S+) --> (\S+)", vtt)]
    marks = [(c["start_s"] - 0.001, c["end_s"] + 0.001) for c in manifest["chapters"]]
    assert len(cues) >= len(marks)
    assert all(any(lo <= a < b <= hi for lo, hi in marks) for a, b in cues), "every cue inside one chapter"
    assert {next(i for i, (lo, hi) in enumerate(marks) if lo <= a <= hi) for a, _ in cues} == set(range(len(marks)))


def test_a_book_whose_chapter_worker_is_killed_still_ends_with_exactly_one_m4b(
    client: NarrationClient, settings: Settings, start_worker: Callable[..., services.Worker],
    start_webhook_worker: Callable[..., services.Worker], tmp_path: Path,
) -> None:
    workers = [start_worker(settings, name=n, extra_env=SLOW) for n in ("gpu1", "gpu2")]
    start_webhook_worker(settings)
    books = BookClient(client)
    book_id = _submit(settings, tmp_path, make_epub(CHAPTERS))
    running = _wait(books, book_id, lambda s: any(
        (c["job"] and client.get(c["job"]).progress.get("chunks_done", 0) >= 1
         and client.get(c["job"]).state.value == "running") for c in s["chapters"]))
    victim_job = next(client.get(c["job"]) for c in running["chapters"]
                      if c["job"] and client.get(c["job"]).state.value == "running")
    owner = next(w for w in workers if victim_job.worker and victim_job.worker.startswith(w.name + "@"))
    psutil.Process(owner.process.pid).children()[0].kill()  # SIGKILL mid-chapter

    final = _wait(books, book_id, lambda s: s["state"] in ("succeeded", "failed"))
    assert final["state"] == "succeeded", final["error"]
    assert client.get(victim_job.id).attempts >= 2, "the killed chapter ran again"
    assert [k for k in _objects(settings, f"books/{book_id}/") if k.endswith(".m4b")] == \
        [f"narrations/books/{book_id}/book.m4b"]


def test_canceling_a_book_stops_every_chapter_and_leaves_nothing_partial(
    client: NarrationClient, settings: Settings, start_worker: Callable[..., services.Worker],
    start_webhook_worker: Callable[..., services.Worker], tmp_path: Path,
) -> None:
    start_worker(settings, extra_env=SLOW)
    start_webhook_worker(settings)
    books = BookClient(client)
    book_id = _submit(settings, tmp_path, make_epub(CHAPTERS))
    _wait(books, book_id, lambda s: s["progress"]["phase"] == "chapters" and s["progress"]["audio_s"] > 0)
    canceled = services.run_cli(settings, "cancel", book_id, "--json")
    assert canceled.returncode == 0, canceled.stderr
    final = _wait(books, book_id, lambda s: all(c["state"] in ("canceled", "succeeded") for c in s["chapters"]))
    assert final["state"] == "canceled" and final["result"] is None
    assert any(c["state"] == "canceled" for c in final["chapters"])
    for chapter in final["chapters"]:
        if chapter["state"] == "canceled":
            assert _objects(settings, f"{chapter['job']}/") == [], f"chapter {chapter['index']} left objects"
    assert not [k for k in _objects(settings, f"books/{book_id}/") if k.endswith((".m4b", ".vtt", ".srt"))]


@pytest.mark.parametrize(("name", "data", "message"), [
    ("locked.epub", None, "DRM"),
    ("broken.epub", b"PK\x03\x04 not really a zip", "EPUB"),
    ("empty.md", b"# Title\n\n", "no readable text"),
])
def test_a_bad_book_file_is_refused_before_anything_is_enqueued(
    client: NarrationClient, settings: Settings, tmp_path: Path, name: str, data: bytes | None, message: str,
) -> None:
    path = tmp_path / name
    path.write_bytes(data if data is not None else _drm_epub())
    refused = services.run_cli(settings, "submit", "--file", str(path), "--book")
    assert refused.returncode == 2 and message in refused.stderr, refused.stderr
    assert client.list() == [] and BookClient(client).books.list() == []


def _drm_epub() -> bytes:
    """An EPUB whose chapter is encrypted (AES), as a store's DRM leaves it."""
    import io
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(make_epub(CHAPTERS[:1]))) as source, zipfile.ZipFile(buffer, "w") as target:
        for item in source.infolist():
            target.writestr(item, source.read(item.filename))
        target.writestr("META-INF/encryption.xml", (
            '<encryption xmlns="urn:oasis:names:tc:opendocument:xmlns:container" '
            'xmlns:enc="http://www.w3.org/2001/04/xmlenc#"><enc:EncryptedData>'
            '<enc:EncryptionMethod Algorithm="http://www.w3.org/2001/04/xmlenc#aes128-cbc"/>'
            '<enc:CipherData><enc:CipherReference URI="EPUB/chapter-0.xhtml"/></enc:CipherData>'
            '</enc:EncryptedData></encryption>'))
    return buffer.getvalue()


def test_a_book_uploaded_over_http_is_the_tenants_alone_and_its_characters_are_charged(
    client: NarrationClient, settings: Settings, start_api: Callable[..., str],
    start_worker: Callable[..., services.Worker], start_webhook_worker: Callable[..., services.Worker],
) -> None:
    import httpx
    import redis

    from producer.api_keys import ApiKeyStore

    def auth(tenant: str) -> dict[str, str]:
        _, token = ApiKeyStore(redis.Redis.from_url(settings.redis_url)).create(tenant)
        return {"Authorization": f"Bearer {token}"}

    start_worker(settings)
    start_webhook_worker(settings)
    acme, other = auth("acme"), auth("other")
    markdown = "# Short Book\n\n" + "".join(f"## Part {n}\n\n{PARAGRAPH}\n\n" for n in (1, 2))
    with httpx.Client(base_url=start_api(settings, {"ECHOFORGE_TENANT_MAX_CHARS_PER_DAY": "5000"}),
                      timeout=30) as api:
        posted = api.post("/v1/books", files={"file": ("short.md", markdown.encode(), "text/markdown")},
                          data={"output_format": "flac"}, headers=acme)
        assert posted.status_code == 202, posted.text
        book = posted.json()
        assert posted.headers["location"] == f"/v1/books/{book['id']}" and book["title"] == "Short Book"
        assert [c["title"] for c in book["chapters"]] == ["Part 1", "Part 2"] and book["tenant"] == "acme"
        assert api.get(f"/v1/books/{book['id']}", headers=other).status_code == 404
        assert api.post(f"/v1/books/{book['id']}/cancel", headers=other).status_code == 404
        too_long = api.post("/v1/books", files={"file": ("long.txt", (PARAGRAPH * 40).encode(), "text/plain")},
                            headers=acme)
        assert too_long.status_code == 429 and too_long.json()["code"] == "quota_exceeded", too_long.text
        bad = api.post("/v1/books", files={"file": ("notes.pdf", b"%PDF-1.7", "application/pdf")}, headers=acme)
        assert bad.status_code == 422 and "not a book file" in bad.json()["detail"], bad.text
        final = _wait(BookClient(client), book["id"], lambda s: s["state"] in ("succeeded", "failed"))
        assert final["state"] == "succeeded", final["error"]
        chapter = client.get(final["chapters"][0]["job"])
        assert chapter.tenant == "acme" and chapter.result["format"] == "flac"  # type: ignore[index]
        assert api.get(f"/v1/books/{book['id']}", headers=acme).json()["result"]["key"].endswith("book.m4b")


def test_rerendering_a_chapters_chunk_replaces_the_books_m4b(
    client: NarrationClient, settings: Settings, start_worker: Callable[..., services.Worker],
    start_webhook_worker: Callable[..., services.Worker], tmp_path: Path,
) -> None:
    start_worker(settings)
    start_webhook_worker(settings)
    books = BookClient(client)
    path = tmp_path / "two.md"
    path.write_text("# Two Parts\n\n" + "".join(f"## Part {n}\n\n{PARAGRAPH * 2}\n\n" for n in (1, 2)))
    submitted = services.run_cli(settings, "submit", "--file", str(path), "--book", "--json")
    assert submitted.returncode == 0, submitted.stderr
    book_id = json.loads(submitted.stdout)["id"]
    first = _wait(books, book_id, lambda s: s["state"] in ("succeeded", "failed"))
    assert first["state"] == "succeeded", first["error"]
    before = json.loads(_read(settings, first["result"]["manifest_key"]))["chapters"]

    chapter = first["chapters"][0]["job"]
    edited = services.run_cli(settings, "rerender", chapter, "--chunk", "1", "--text",
                              "A much longer corrected sentence, read again in the book's own voice, slowly.")
    assert edited.returncode == 0, edited.stderr
    second = _wait(books, book_id, lambda s: s["state"] in ("succeeded", "failed") and s["finished_at"] !=
                   first["finished_at"])
    assert second["state"] == "succeeded", second["error"]
    after = json.loads(_read(settings, second["result"]["manifest_key"]))["chapters"]
    shift = after[0]["end_s"] - before[0]["end_s"]
    assert abs(shift) > 0.1 and abs(after[1]["start_s"] - before[1]["start_s"] - shift) < 0.05
    assert after[1]["text_sha256"] == before[1]["text_sha256"]
    assert [k for k in _objects(settings, f"books/{book_id}/") if k.endswith(".m4b")] == \
        [f"narrations/books/{book_id}/book.m4b"]
