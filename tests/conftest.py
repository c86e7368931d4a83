"""Session-wide real services: one redis-server and one moto S3 server, each a subprocess on a free port."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import boto3
import pytest

from producer import processes
from producer.client import NarrationClient
from producer.settings import Settings
from tests import services
from tests.csm_checkpoint import build_tiny_checkpoint
from tests.original_checkpoint import build_original_twin

services.use_test_environment()


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random CSM checkpoint (tests/csm_checkpoint.py), saved once per session; never modify it."""
    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny-csm"))


@pytest.fixture(scope="session")
def original_twin(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny_checkpoint's weights in Sesame's original layout, with its Mimi for moshi (tests/original_checkpoint.py)."""
    return build_original_twin(tiny_checkpoint, tmp_path_factory.mktemp("tiny-csm-original"))


@pytest.fixture(scope="session")
def service_logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("service-logs")


@pytest.fixture(scope="session")
def redis_server(service_logs: Path) -> Iterator[str]:
    proc, url = services.start_redis(service_logs)
    yield url
    processes.stop(proc, grace_s=5)


@pytest.fixture
def redis_url(redis_server: str) -> Iterator[str]:
    """The session's Redis, emptied before and after each test."""
    services.flush(redis_server)
    yield redis_server
    services.flush(redis_server)


@pytest.fixture(scope="session")
def s3_endpoint(service_logs: Path) -> Iterator[str]:
    proc, url = services.start_s3(service_logs)
    yield url
    processes.stop(proc, grace_s=5)


@pytest.fixture
def bucket(s3_endpoint: str) -> str:
    name = f"echoforge-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=name)
    return name


@pytest.fixture
def settings(redis_url: str, s3_endpoint: str, bucket: str) -> Settings:
    return Settings(redis_url=redis_url, storage_url=f"s3://{bucket}/narrations", s3_endpoint_url=s3_endpoint)


@pytest.fixture
def client(settings: Settings) -> Iterator[NarrationClient]:
    c = NarrationClient(settings)
    yield c
    c.close()


@pytest.fixture
def started(tmp_path: Path) -> Iterator[services.Started]:
    """The service processes a test starts (workers, webhook workers, API servers); all stopped when it ends."""
    processes_started = services.Started(tmp_path)
    yield processes_started
    processes_started.stop_all()


@pytest.fixture
def start_worker(started: services.Started) -> Callable[..., services.Worker]:
    return started.worker


@pytest.fixture
def start_webhook_worker(started: services.Started) -> Callable[..., services.Worker]:
    return started.webhook_worker


@pytest.fixture
def start_api(started: services.Started) -> Callable[..., str]:
    """Start a real `echoforge serve`; returns its base URL."""
    return started.api
