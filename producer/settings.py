"""Settings, read from the environment (prefix ECHOFORGE_) in exactly one place."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from producer import keys

__all__ = ["DEFAULT_MODEL_ID", "Settings", "redact_url"]

DEFAULT_MODEL_ID = "sesame/csm-1b"


class Settings(BaseSettings):
    """Everything configurable. Credentials for S3 come from the standard AWS_* variables boto3 reads."""

    model_config = SettingsConfigDict(env_prefix="ECHOFORGE_", extra="ignore")

    redis_url: str = "redis://127.0.0.1:6379/0"
    storage_url: str = "file://./data/outputs"
    s3_endpoint_url: str | None = None
    queue: str = keys.NARRATION_QUEUE

    model_id: str = DEFAULT_MODEL_ID
    model_revision: str | None = None
    model_path: str | None = None
    # The checkpoint's layout: transformers' (config.json + model.safetensors), Sesame's original (ckpt.pt or a
    # fine-tune's model.safetensors, with Mimi's weights for moshi), or auto: found by the directory's files.
    model_format: Literal["auto", "transformers", "original"] = "auto"
    device: str | None = None
    use_placeholder: bool = False
    allow_placeholder: bool = True
    placeholder_rtf: float = Field(default=0.0, ge=0.0)
    max_chunk_chars: int = Field(default=300, ge=40, le=400)
    # The first chunk of a job is at most this long (its first sentence or clauses), so its first audio comes soon;
    # 0: off (the first chunk is as long as any other).
    first_chunk_chars: int = Field(default=100, ge=0, le=400)
    # Texts generated together: a job's chunks after its voice anchor and, in a worker running several jobs at once
    # (`--pool threads --concurrency N`), other jobs' chunks; see bench/generation.py and bench/crossjob.py.
    batch_size: int = Field(default=32, ge=1, le=256)
    # How long a batch that is not full waits for other running jobs to join it (threads pool, static batches only).
    batch_wait_ms: float = Field(default=50.0, ge=0.0, le=10_000.0)
    # Threads pool: a text's batch slot goes to the next waiting text (of any running job) as soon as it ends;
    # false: static batches, each job waiting for its whole batch.
    continuous_batching: bool = True
    # The generation loop reads its rows' end state (its one host-device sync) every this many frames; a row's end
    # is seen up to this many frames - 1 late (those frames are computed and discarded).
    end_check_frames: int = Field(default=8, ge=1, le=64)
    # Run the engine's depth-decoder frame, backbone step and frame store through torch.compile (fused kernels, fewer
    # launches per frame); the first batch of each new shape waits for the compile. Off until measured on your GPU.
    torch_compile: bool = False

    job_time_limit_s: int = Field(default=4 * 3600, ge=10)
    visibility_timeout_s: int | None = None
    model_load_timeout_s: int = Field(default=900, ge=4)
    job_lock_ttl_s: float = Field(default=60.0, ge=1.0)
    max_attempts: int = Field(default=3, ge=1)
    finished_job_ttl_s: int = Field(default=keys.FINISHED_JOB_TTL_S, ge=60)
    metrics_port: int = Field(default=0, ge=0, le=65535)  # a worker's Prometheus /metrics port; 0: off
    # How long a worker keeps retrying an unreachable object store (backoff 0.5 s doubling to 10 s) before the
    # job fails with storage_unavailable; `echoforge retry ID` resumes it later.
    storage_retry_s: float = Field(default=120.0, ge=0.0)
    # How long Redis calls retry a lost connection (a Redis restart) before raising.
    redis_retry_s: float = Field(default=30.0, ge=0.0)

    # The HTTP API (`echoforge serve`).
    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8000, ge=0, le=65535)
    # Requests without an API key are refused unless this is on; they then act as `anonymous_tenant`.
    allow_anonymous: bool = False
    anonymous_tenant: str = "anonymous"
    # How long a presigned audio URL (S3) stays valid.
    presigned_url_ttl_s: int = Field(default=300, ge=10, le=7 * 24 * 3600)
    # The longest `Prefer: wait=N` a POST honours.
    max_prefer_wait_s: float = Field(default=60.0, ge=0.0, le=600.0)
    # Quotas and back-pressure (docs/quotas.md). A tenant's requests: a token bucket of `burst` tokens refilled at
    # `per_s` a second, shared by every API process (0 per second: no limit).
    tenant_rate_limit_per_s: float = Field(default=50.0, ge=0.0)
    tenant_rate_limit_burst: int = Field(default=100, ge=1)
    # A tenant's jobs queued at once, and characters submitted per UTC day (0: no limit).
    tenant_max_queued_jobs: int = Field(default=100, ge=0)
    tenant_max_chars_per_day: int = Field(default=1_000_000, ge=0)
    # New jobs are refused (503 overloaded) while more messages than this wait in the queue (0: off), and told to
    # come back after `overloaded_retry_after_s`.
    max_queue_depth: int = Field(default=10_000, ge=0)
    overloaded_retry_after_s: float = Field(default=10.0, ge=1.0, le=3600.0)
    # OpenAI's speech endpoint asks its jobs to stream their first chunk frame by frame (docs/api.md); off: each
    # chunk is sent once stored, mastered.
    openai_frame_streaming: bool = True
    # The largest POST /v1/voices body (the recording and its form fields) taken; a larger one is refused (413).
    max_voice_upload_bytes: int = Field(default=10 * 1024 * 1024, ge=64 * 1024, le=1024 * 1024 * 1024)
    # Books (producer/books/): the most characters a book may hold (titles and texts; each chapter is a job, so
    # a longer chapter is split into parts of at most 100,000), and the largest book file the API takes (413).
    max_book_chars: int = Field(default=5_000_000, ge=1_000, le=100_000_000)
    max_book_upload_bytes: int = Field(default=100 * 1024 * 1024, ge=64 * 1024, le=2 * 1024 * 1024 * 1024)

    # Webhooks (producer/webhooks/). URLs whose host resolves to a loopback, private, link-local, reserved,
    # multicast or metadata address are refused (at submit and at each delivery) unless this is on.
    webhook_allow_private: bool = False
    # The retry schedule's unit: attempts follow after 1, 6, 24, 120, 360, 720, 1440, 2880, 7200, 7200 times it
    # (5 s: 5 s, 30 s, 2 min, 10 min, 30 min, 1 h, 2 h, 4 h, 10 h, 10 h; 27.7 h in all).
    webhook_retry_base_s: float = Field(default=5.0, gt=0.0, le=3600.0)
    # At most one progress webhook per job in this many seconds (applied by the worker recording progress).
    webhook_progress_interval_s: float = Field(default=keys.WEBHOOK_PROGRESS_INTERVAL_S, ge=0.0)
    # How long one delivery attempt may take (connect, send, the receiver's answer).
    webhook_timeout_s: float = Field(default=10.0, gt=0.0, le=60.0)

    @field_validator("storage_url")
    @classmethod
    def _check_storage_url(cls, value: str) -> str:
        scheme = urlsplit(value).scheme
        if scheme not in ("s3", "file"):
            raise ValueError("ECHOFORGE_STORAGE_URL must be s3://bucket/prefix or file:///path")
        return value

    @field_validator("first_chunk_chars")
    @classmethod
    def _check_first_chunk_chars(cls, value: int) -> int:
        if 0 < value < 20:
            raise ValueError("ECHOFORGE_FIRST_CHUNK_CHARS must be 0 (off) or 20-400")
        return value

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"auto|cpu|cuda(:\d+)?", value.strip().lower()):
            raise ValueError("ECHOFORGE_DEVICE must be auto, cpu, cuda or cuda:N")
        return value

    @property
    def soft_time_limit_s(self) -> int:
        """When a job is stopped as `timeout`: a minute before the hard limit, at which its process is killed."""
        return max(self.job_time_limit_s - 60, self.job_time_limit_s // 2)

    @property
    def broker_visibility_timeout_s(self) -> int:
        """Longer than the hard time limit, so Redis never redelivers a job that may still be running."""
        if self.visibility_timeout_s is not None:
            return self.visibility_timeout_s
        return self.job_time_limit_s + 600

    def local_storage_root(self) -> Path:
        """The directory of a file:// storage URL (relative paths resolve against the working directory)."""
        parts = urlsplit(self.storage_url)
        return Path(parts.netloc + parts.path).expanduser().resolve()


def redact_url(url: str) -> str:
    """The URL with any password replaced, safe for logs and errors."""
    parts = urlsplit(url)
    query = re.sub(r"(?i)(^|&)(password|passwd|pwd)=[^&]*", r"\1\2=***", parts.query)
    netloc = parts.netloc
    if parts.password is not None:
        host = parts.hostname or ""
        if parts.port:
            host = f"{host}:{parts.port}"
        netloc = (f"{parts.username}:***@" if parts.username else ":***@") + host
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
