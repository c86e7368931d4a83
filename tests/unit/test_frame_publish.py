"""FramePublisher (worker/narration/frame_publish.py) on the tiny CSM checkpoint's streaming Mimi and a real Redis:
what it publishes joined equals the one-shot decode; a held guess the plan drops publishes nothing; one streaming
decode per codec at a time; a Redis that cannot be reached never reaches the caller."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import redis
import torch

from producer import keys
from worker.models import CSMModel
from worker.narration.frame_publish import FramePublisher, _codec_lock


@pytest.fixture(scope="module")
def model(tiny_checkpoint: Path) -> CSMModel:
    return CSMModel(str(tiny_checkpoint), "cpu", dtype="float32")


def _codes(frames: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 64, (frames, 4), generator=torch.Generator().manual_seed(seed))


def _entries(client: redis.Redis, job_id: str) -> list[dict[bytes, bytes]]:
    return [fields for _, fields in client.xrange(keys.frame_stream_key(job_id))]  # type: ignore[union-attr]


def _publish(publisher: FramePublisher, codes: torch.Tensor) -> None:
    for frame in codes:
        publisher.sink(0, frame)
    publisher.close()


def test_the_pieces_joined_equal_the_one_shot_decode_and_expire(model: CSMModel, redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    codes = _codes(9)
    _publish(FramePublisher(client, "job-a", 3, model.streaming_codec()), codes)
    *pieces, end = _entries(client, "job-a")
    assert [int(p[b"seq"]) for p in pieces] == list(range(5)) and end[b"end"] == b"1"  # 2 frames a piece, then 1
    assert {p[b"run"] for p in [*pieces, end]} == {b"3"}
    joined = np.concatenate([np.frombuffer(p[b"pcm"], dtype="<f4") for p in pieces])
    assert int(end[b"samples"]) == len(joined)
    np.testing.assert_allclose(joined, model.decode(codes), atol=1e-4)
    assert 0 < client.ttl(keys.frame_stream_key("job-a")) <= keys.FRAME_STREAM_TTL_S  # type: ignore[operator]


def test_a_held_guess_the_plan_drops_publishes_nothing(model: CSMModel, redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    publisher = FramePublisher(client, "job-b", 1, model.streaming_codec())
    publisher.hold()
    for frame in _codes(6):
        publisher.sink(0, frame)
    publisher.settle(False)
    publisher.close()
    assert _entries(client, "job-b") == []


def test_a_second_job_finding_the_codec_busy_publishes_nothing(model: CSMModel, redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    first = FramePublisher(client, "job-c", 1, model.streaming_codec())
    first.hold()  # keeps its streaming decode (and the codec) busy
    first.sink(0, _codes(1)[0])
    while not _codec_lock(model.streaming_codec()).locked():
        time.sleep(0.01)
    _publish(FramePublisher(client, "job-d", 1, model.streaming_codec()), _codes(4))
    first.settle(True)
    first.close()
    assert _entries(client, "job-d") == [] and _entries(client, "job-c")[-1][b"end"] == b"1"


def test_a_redis_it_cannot_reach_stops_publishing_without_failing_the_job(model: CSMModel) -> None:
    unreachable = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=1)
    publisher = FramePublisher(unreachable, "job-e", 1, model.streaming_codec())
    _publish(publisher, _codes(6))  # nothing raised, close() returned
    publisher.sink(0, _codes(1)[0])  # dropped once stopped
