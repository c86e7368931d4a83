"""Both stores (a local directory, and a real S3-compatible server: moto's, over HTTP) answer the same way when an
object is there and when it is not."""

from __future__ import annotations

import socket
import threading
import time
from contextlib import suppress
from pathlib import Path

import pytest

from producer.errors import StorageError, time_limit_hit
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
    previous = signal.signal(signal.SIGALRM, soft_limit)
    try:
        for upload in (lambda: storage.put_file("k.wav", wav, "audio/wav"),
                       lambda: storage.put_bytes("k.json", b"{}", "application/json")):
            signal.setitimer(signal.ITIMER_REAL, 0.3)
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
    """An S3 endpoint that reads each request, answers nothing for a second, then drops the connection."""

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
            time.sleep(1)

    def close(self) -> None:
        self.listener.close()
