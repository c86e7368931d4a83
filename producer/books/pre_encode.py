"""Each chapter encoded to AAC as soon as it is narrated, on the service worker, while the book's other chapters are
still being narrated: the assembly then only copies packets (producer/books/assembly.py). The file is named by the
narration's SHA-256, so a re-rendered chapter gets a new one and the assembly can never take a stale file; a missing
one (its task lost, failed or not done yet) is only slower: the assembly encodes that chapter itself."""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from producer.audio_formats import audio_format
from producer.books.chapter_aac import aac_rate, encode_aac
from producer.storage import Storage

if TYPE_CHECKING:
    from producer.books.client import BookClient

__all__ = ["aac_key", "narration_file", "pre_encode_chapter"]

log = logging.getLogger(__name__)


def aac_key(books: BookClient, book_id: str, index: int, sha256: str) -> str:
    """Where chapter `index`'s AAC lies when its narration's SHA-256 is `sha256`."""
    return books.object_key(book_id, f"aac/{index:04d}-{sha256[:16]}.m4a")


def narration_file(storage: Storage, result: dict[str, Any], folder: Path, name: str) -> tuple[Path, int | None]:
    """A chapter job's narration downloaded into `folder`, and the rate to read it at when it is raw pcm (else None:
    other formats say their own rate)."""
    spec = audio_format(result.get("format") or "wav")
    path = folder / f"{name}.{spec.extension}"
    storage.download(result["key"], path)
    return path, result.get("sample_rate") if spec.name == "pcm" else None


def pre_encode_chapter(storage: Storage, key: str, index: int, result: dict[str, Any]) -> None:
    """Chapter `index`'s narration (its job's `result`) encoded to AAC at the next AAC rate up from the narration's
    and stored at `key` (aac_key)."""
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="echoforge-chapter-") as tmp:
        narration, raw_rate = narration_file(storage, result, Path(tmp), "narration")
        out = Path(tmp) / "chapter.m4a"
        encode_aac(f"chapter {index}", narration, out, aac_rate(int(result["sample_rate"])), raw_rate)
        storage.put_file(key, out, "audio/mp4")
    log.info("chapter %d: encoded to AAC in %.2f s (%.1f s of audio)", index, time.monotonic() - started,
             float(result.get("duration_s") or 0.0))
