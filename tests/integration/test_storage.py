"""Both stores (a local directory, and a real S3-compatible server: moto's, over HTTP) answer the same way when an
object is there and when it is not."""

from __future__ import annotations

from pathlib import Path

import pytest

from producer.storage import LocalStorage, S3Storage, Storage


@pytest.fixture(params=["local", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    if request.param == "local":
        return LocalStorage(tmp_path / "objects")
    return S3Storage(request.getfixturevalue("bucket"), "narrations", request.getfixturevalue("s3_endpoint"),
                     retry_s=5)


def test_an_object_is_read_back_and_a_missing_one_is_reported_as_missing(storage: Storage, tmp_path: Path) -> None:
    key = storage.key_for("job", "chapter.m4a")
    storage.put_bytes(key, b"\x00aac packets", "audio/mp4")
    copy = tmp_path / "copy.m4a"
    assert storage.download_if_exists(key, copy) and copy.read_bytes() == b"\x00aac packets"
    assert storage.get_bytes(key) == b"\x00aac packets"

    missing, gone = storage.key_for("job", "never-written.m4a"), tmp_path / "gone.m4a"
    assert storage.download_if_exists(missing, gone) is False and not gone.exists()
    assert storage.get_bytes(missing) is None
