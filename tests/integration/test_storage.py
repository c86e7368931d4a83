"""Every store (a local directory; a real S3-compatible server, moto's, over HTTP; the same behind a relay as strict
as the S3-compatible servers without AWS's flexible checksums) answers the same way to every operation."""

from __future__ import annotations

import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path

import pytest

from producer.errors import StorageError, time_limit_hit
from producer.storage import LocalStorage, S3Storage, Storage
from tests.s3_relay import S3Relay


@pytest.fixture(params=["local", "s3", "strict-s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Storage]:
    if request.param == "local":
        yield LocalStorage(tmp_path / "objects")
        return
    endpoint, strict = request.getfixturevalue("s3_endpoint"), None
    if request.param == "strict-s3":
        strict = S3Relay(endpoint, strict=True)
        endpoint = strict.url
    yield S3Storage(request.getfixturevalue("bucket"), "narrations", endpoint, retry_s=5)
    if strict is not None:
        strict.close()
        assert strict.refused == [], "a request a strict S3-compatible server would refuse"


def test_a_named_s3_compatible_server_is_addressed_by_path_not_by_a_bucket_subdomain() -> None:
    url = S3Storage("narrations-bucket", "p", "https://objects.example.internal:9000").presigned_url("p/k.wav", 60)
    assert url is not None and url.startswith("https://objects.example.internal:9000/narrations-bucket/p/k.wav?")


def test_every_operation_round_trips(storage: Storage, tmp_path: Path) -> None:
    wav, audio = tmp_path / "chunk.wav", b"RIFF" + bytes(range(256)) * 4096
    wav.write_bytes(audio)
    keys = [storage.key_for("job", name) for name in ("chunk.wav", "manifest.json", "other.json")]
    storage.put_file(keys[0], wav, "audio/wav")
    storage.put_bytes(keys[1], b'{"chunks": 1}', "application/json")
    storage.put_bytes(keys[2], b"{}", "application/json")
    storage.download(keys[0], tmp_path / "back.wav")
    assert (tmp_path / "back.wav").read_bytes() == audio and storage.get_bytes(keys[1]) == b'{"chunks": 1}'
    if (url := storage.presigned_url(keys[0], 60, attachment="chunk.wav")) is not None:
        with urllib.request.urlopen(url) as answer:
            assert answer.read() == audio
    storage.delete(keys)
    assert all(storage.get_bytes(key) is None for key in keys)


def test_an_object_is_read_back_and_a_missing_one_is_reported_as_missing(storage: Storage, tmp_path: Path) -> None:
    key = storage.key_for("job", "chapter.m4a")
    storage.put_bytes(key, b"\x00aac packets", "audio/mp4")
    copy = tmp_path / "copy.m4a"
    assert storage.download_if_exists(key, copy) and copy.read_bytes() == b"\x00aac packets"
    assert storage.get_bytes(key) == b"\x00aac packets"

    missing, gone = storage.key_for("job", "never-written.m4a"), tmp_path / "gone.m4a"
    assert storage.download_if_exists(missing, gone) is False and not gone.exists()
    assert storage.get_bytes(missing) is None


def test_a_time_limit_that_interrupts_an_upload_ends_it_as_the_jobs_timeout(tmp_path: Path) -> None:
    """Celery's soft limit is a signal raised wherever the job's thread is: mid-upload, it must come out as the
    time limit (a timeout), not be retried for minutes nor be reported as the store's failure."""
    import signal

    from celery.exceptions import SoftTimeLimitExceeded

    def soft_limit(signum: int, frame: object) -> None:  # what billiard installs in a prefork child
        raise SoftTimeLimitExceeded()

    store, wav = _StallingStore(), tmp_path / "chunk.wav"
    wav.write_bytes(b"RIFF" + bytes(4096))
    storage = S3Storage("bucket", "narrations", store.url, retry_s=30)
    assert storage.client is not None  # built before, as in a worker after its first upload (building is slow)
    previous = signal.signal(signal.SIGALRM, soft_limit)
    try:
        for upload in (lambda: storage.put_file("k.wav", wav, "audio/wav"),
                       lambda: storage.put_bytes("k.json", b"{}", "application/json")):
            signal.setitimer(signal.ITIMER_REAL, 1.0)  # well inside the store's stall: the upload waits on it
            started = time.monotonic()
            with pytest.raises(Exception) as raised:
                upload()
            assert time_limit_hit(raised.value) and not isinstance(raised.value, StorageError), raised.value
            assert time.monotonic() - started < 10, "retried after the time limit"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        store.close()


class _StallingStore:
    """An S3 endpoint that reads each request, answers nothing for 3 s, then drops the connection."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        with suppress(OSError):
            while True:
                conn, _ = self.listener.accept()
                threading.Thread(target=self._stall, args=(conn,), daemon=True).start()

    @staticmethod
    def _stall(conn: socket.socket) -> None:
        with conn, suppress(OSError):
            conn.recv(65536)
            time.sleep(3)

    def close(self) -> None:
        self.listener.close()
