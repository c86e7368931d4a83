"""Where narrations live: S3-compatible object storage (boto3) or a local directory.

Both producers (download) and workers (upload) use it, so it lives on the contract side. boto3 is
imported only when S3 is used. Keys are built from server-generated job ids only, never user text.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from producer.errors import StorageError, StorageUnavailableError, error_chain, time_limit_hit
from producer.settings import Settings

__all__ = ["LocalStorage", "S3Storage", "Storage", "open_storage"]

log = logging.getLogger(__name__)
_T = TypeVar("_T")
MAX_CONNECTIONS = 50  # the HTTP pool of one client: several jobs at once (threads pool), each uploading in parallel

class Storage(ABC):
    """Where a job's objects live; keys are <prefix>/<job id or folder>/<name>, never built from user text."""

    bucket: str | None = None
    prefix = ""

    def key_for(self, job_id: str, name: str) -> str:
        return "/".join(part for part in (self.prefix.strip("/"), job_id, name) if part)

    @abstractmethod
    def url_for(self, key: str) -> str: ...

    @abstractmethod
    def put_file(self, key: str, path: Path, content_type: str) -> None: ...

    @abstractmethod
    def download(self, key: str, destination: Path) -> None: ...

    @abstractmethod
    def put_bytes(self, key: str, data: bytes, content_type: str) -> None: ...

    @abstractmethod
    def get_bytes(self, key: str) -> bytes | None: ...

    @abstractmethod
    def delete(self, keys: list[str]) -> None: ...

    @abstractmethod
    def download_if_exists(self, key: str, destination: Path) -> bool:
        """Like download, but False (and nothing written) when there is no such object."""

    def local_path(self, key: str) -> Path | None:
        """The object's file, where storage is a local directory (else None)."""
        return None

    def presigned_url(self, key: str, expires_s: int, attachment: str | None = None) -> str | None:
        """A URL anyone may GET the object from for `expires_s` seconds, where the store offers one (else None);
        `attachment`: the file name a browser saves it as (Content-Disposition) instead of showing it."""
        return None


class LocalStorage(Storage):
    """Objects as files below a root directory; writes are atomic (temp file + rename)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def url_for(self, key: str) -> str:
        return (self.root / key).as_uri()

    def local_path(self, key: str) -> Path | None:
        return self.root / key

    def put_file(self, key: str, path: Path, content_type: str) -> None:
        self._write(key, lambda tmp: shutil.copyfile(path, tmp))

    def _write(self, key: str, fill: Callable[[str], object]) -> None:
        """Fill a temp file beside the target, then rename it over the target: readers never see half a file."""
        target = self.root / key
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = str(target.parent / f".upload-{uuid.uuid4().hex}")
            os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))  # the kernel applies the umask
            try:
                fill(tmp)
                os.replace(tmp, target)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        except OSError as e:
            raise StorageError(f"cannot write {target}: {e.strerror}") from e

    def download(self, key: str, destination: Path) -> None:
        try:
            shutil.copyfile(self.root / key, destination)
        except OSError as e:
            raise StorageError(f"cannot read {self.root / key}: {e.strerror}") from e

    def download_if_exists(self, key: str, destination: Path) -> bool:
        if not (self.root / key).is_file():
            return False
        self.download(key, destination)
        return True

    def put_bytes(self, key: str, data: bytes, content_type: str) -> None:
        self._write(key, lambda tmp: Path(tmp).write_bytes(data))

    def get_bytes(self, key: str) -> bytes | None:
        try:
            return (self.root / key).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise StorageError(f"cannot read {self.root / key}: {e.strerror}") from e

    def delete(self, keys: list[str]) -> None:
        try:
            for key in keys:
                (self.root / key).unlink(missing_ok=True)
        except OSError as e:
            raise StorageError(f"cannot delete below {self.root}: {e.strerror}") from e


class S3Storage(Storage):
    """An S3-compatible bucket; large files go up as multipart uploads.

    Connection failures, timeouts, throttling and 5xx answers are retried with backoff for `retry_s` seconds, then
    raise StorageUnavailableError; anything else (no such bucket, access denied) raises StorageError at once.
    """

    def __init__(self, bucket: str, prefix: str, endpoint_url: str | None, retry_s: float = 120.0) -> None:
        self.bucket = bucket
        self.prefix = prefix
        self.endpoint_url = endpoint_url
        self.retry_s = retry_s
        self._client: Any = None
        self._client_lock = threading.Lock()

    @property
    def client(self) -> Any:
        """One client, built on first use; shared by the jobs of a threads-pool worker (clients are thread-safe,
        building one from the default session is not)."""
        with self._client_lock:
            if self._client is None:
                import boto3
                from botocore.config import Config

                # One attempt per call: `_retrying` is the only retry loop, so it sees every failure (botocore's
                # own retry would swallow a Celery time limit raised mid-request and carry on). Checksums only
                # where S3 requires them: many S3-compatible servers refuse botocore's CRC headers and trailers.
                config = Config(retries={"total_max_attempts": 1, "mode": "standard"}, connect_timeout=5,
                                read_timeout=60, max_pool_connections=MAX_CONNECTIONS,
                                request_checksum_calculation="when_required",
                                response_checksum_validation="when_required",
                                s3={"addressing_style": "path" if self.endpoint_url else "auto"})
                client = boto3.session.Session().client("s3", endpoint_url=self.endpoint_url, config=config)
                client.meta.events.register("before-call.s3.DeleteObjects", _md5_not_crc)
                self._client = client
            return self._client

    def url_for(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def presigned_url(self, key: str, expires_s: int, attachment: str | None = None) -> str | None:
        params = {"Bucket": self.bucket, "Key": key}
        if attachment is not None:
            params["ResponseContentDisposition"] = f'attachment; filename="{attachment}"'
        return str(self.client.generate_presigned_url("get_object", Params=params, ExpiresIn=expires_s))

    def put_file(self, key: str, path: Path, content_type: str) -> None:
        from boto3.s3.transfer import TransferConfig

        transfer = TransferConfig(multipart_threshold=16 * 1024 * 1024, multipart_chunksize=16 * 1024 * 1024)
        self._retrying(f"upload to {self.url_for(key)}", lambda: self.client.upload_file(
            str(path), self.bucket, key, ExtraArgs={"ContentType": content_type}, Config=transfer))

    def download(self, key: str, destination: Path) -> None:
        self._retrying(f"download of {self.url_for(key)}",
                       lambda: self.client.download_file(self.bucket, key, str(destination)))

    def download_if_exists(self, key: str, destination: Path) -> bool:
        from botocore.exceptions import ClientError

        def fetch() -> bool:
            try:
                self.client.download_file(self.bucket, key, str(destination))
                return True
            except ClientError as e:
                if not _missing(e):
                    raise
                destination.unlink(missing_ok=True)
                return False

        return self._retrying(f"download of {self.url_for(key)}", fetch)

    def put_bytes(self, key: str, data: bytes, content_type: str) -> None:
        self._retrying(f"upload to {self.url_for(key)}", lambda: self.client.put_object(
            Bucket=self.bucket, Key=key, Body=data, ContentType=content_type))

    def get_bytes(self, key: str) -> bytes | None:
        from botocore.exceptions import ClientError

        def read() -> bytes | None:
            try:
                return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
            except ClientError as e:
                if _missing(e):
                    return None
                raise

        return self._retrying(f"download of {self.url_for(key)}", read)

    def delete(self, keys: list[str]) -> None:
        for start in range(0, len(keys), 1000):
            batch = {"Objects": [{"Key": key} for key in keys[start:start + 1000]], "Quiet": True}
            self._retrying(f"delete in s3://{self.bucket}", partial(self.client.delete_objects,
                                                                     Bucket=self.bucket, Delete=batch))

    def _retrying(self, what: str, operation: Callable[[], _T]) -> _T:
        deadline, delay = time.monotonic() + self.retry_s, 0.5
        while True:
            try:
                return operation()
            except Exception as e:
                if time_limit_hit(e):
                    raise  # the job's time ran out mid-request: neither retried nor the store's fault
                if not is_transient(e):
                    raise StorageError(f"{what} failed: {_reason(e)}") from e
                if time.monotonic() + delay > deadline:
                    raise StorageUnavailableError(f"{what} failed: the object store was unreachable for "
                                                  f"{self.retry_s:.0f} s ({_reason(e)})") from e
                log.warning("%s: %s; retrying in %.1f s", what, _reason(e), delay)
                time.sleep(delay)
                delay = min(delay * 2, 10.0)


_TRANSIENT_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "InternalError",
                    "ServiceUnavailable", "503", "500", "502", "504"}


def _md5_not_crc(params: dict[str, Any], **_: Any) -> None:
    """DeleteObjects, which must carry a checksum, carries Content-MD5 as before botocore 1.36, not a CRC32: the
    S3-compatible servers that predate flexible checksums require the one and refuse the other."""
    from botocore.utils import calculate_md5

    checksum = params.get("context", {}).get("checksum", {})
    checksum.pop("request_algorithm", None)
    checksum.pop("request_algorithm_header", None)
    params["headers"]["Content-MD5"] = calculate_md5(params["body"])


def _missing(error: Any) -> bool:
    """A ClientError saying there is no such object (by code: `client.exceptions.NoSuchKey` is built lazily, racily
    across threads)."""
    return bool(error.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"))


def is_transient(error: BaseException) -> bool:
    """A network failure, timeout, throttling or 5xx anywhere in the exception's cause chain."""
    from botocore.exceptions import ClientError, HTTPClientError
    from botocore.exceptions import ConnectionError as BotoConnectionError

    for seen in error_chain(error):
        if isinstance(seen, BotoConnectionError | HTTPClientError | ConnectionError | TimeoutError):
            return True
        if isinstance(seen, ClientError):
            response: Any = seen.response
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
            return status >= 500 or response.get("Error", {}).get("Code") in _TRANSIENT_CODES
    return False


def _reason(error: Exception) -> str:
    """A short cause that names no credential (botocore messages never include the secret key)."""
    return f"{type(error).__name__}: {error}"[:300]


def open_storage(settings: Settings) -> Storage:
    parts = urlsplit(settings.storage_url)
    if parts.scheme == "file":
        return LocalStorage(settings.local_storage_root())
    if not parts.netloc:
        raise StorageError("ECHOFORGE_STORAGE_URL s3://bucket/prefix names no bucket")
    return S3Storage(parts.netloc, parts.path.strip("/"), settings.s3_endpoint_url, settings.storage_retry_s)
