"""What the queue adds to a short placeholder job, and how many short jobs per second 1 and 2 workers finish.

Baseline (same run, same services): the job's work done in-process by the worker's own narration core
(worker/narration/narrate.py) — placeholder synthesis, chunk and manifest to storage, stitch, upload, captions.
End to end: NarrationClient.submit -> real celery worker -> NarrationClient.wait.
Overhead = p50(end to end) - p50(baseline). Targets: overhead <= 5 ms p50, >= 100 short jobs/s.

    ./dev bench queue_overhead [--jobs 200] [--burst 400] [--storage s3|file]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from producer.client import NarrationClient
from producer.request import NarrationRequest
from producer.settings import Settings
from producer.states import JobState
from producer.storage import open_storage
from tests import services
from worker.models import PlaceholderCSMModel
from worker.narration.narrate import narrate

TEXT = "A short line, read aloud."


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def timed(n: int, one: Callable[[int], None]) -> list[float]:
    one(-1)  # warm-up
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        one(i)
        out.append((time.perf_counter() - t0) * 1000)
    return out


def in_process(settings: Settings) -> Callable[[int], None]:
    """The worker's own narration core, called directly: synthesis, chunk + manifest, stitch, upload, captions."""
    model, storage, request = PlaceholderCSMModel(), open_storage(settings), NarrationRequest.parse({"text": TEXT})

    def one(i: int) -> None:
        outcome = narrate(uuid.uuid4().hex, request, model, storage, settings.max_chunk_chars, model.describe(),
                          lambda progress: "go")
        assert outcome.verdict == "done"

    return one


def end_to_end(client: NarrationClient) -> Callable[[int], None]:
    def one(i: int) -> None:
        job = client.wait(client.submit({"text": TEXT}).id, timeout=60)
        assert job.state is JobState.SUCCEEDED, job.error

    return one


def throughput(client: NarrationClient, burst: int) -> float:
    t0 = time.perf_counter()
    ids = [client.submit({"text": TEXT}).id for _ in range(burst)]
    for job_id in ids:
        assert client.wait(job_id, timeout=300).state is JobState.SUCCEEDED
    last = max(client.get(i).finished_at or 0 for i in ids)
    first = min(client.get(i).created_at for i in ids)
    assert time.perf_counter() - t0 > 0
    return burst / (last - first)


def summary(name: str, values: list[float]) -> str:
    return (f"{name:<22} p50 {percentile(values, 50):7.2f} ms   p99 {percentile(values, 99):7.2f} ms   "
            f"mean {statistics.fmean(values):7.2f} ms   (n={len(values)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=200, help="sequential jobs for the latency figures")
    parser.add_argument("--burst", type=int, default=400, help="jobs submitted at once for jobs/s")
    parser.add_argument("--storage", choices=["s3", "file"], default="s3")
    args = parser.parse_args()
    with services.bench_services() as (tmp, redis_url, s3_url):
        if args.storage == "s3":
            settings = Settings(redis_url=redis_url, storage_url="s3://bench/narrations", s3_endpoint_url=s3_url)
        else:
            settings = Settings(redis_url=redis_url, storage_url=(tmp / "outputs").as_uri())
        run(settings, tmp, args)


def run(settings: Settings, tmp: Path, args: argparse.Namespace) -> None:
    print(f"storage: {args.storage}; short job = {len(TEXT)} chars -> placeholder WAV; {args.jobs} sequential jobs")
    base = timed(args.jobs, in_process(settings))
    client = NarrationClient(settings)
    workers = [services.start_worker(settings, tmp, name="bench1")]
    try:
        e2e = timed(args.jobs, end_to_end(client))
        one_worker = throughput(client, args.burst)
        workers.append(services.start_worker(settings, tmp, name="bench2"))
        two_workers = throughput(client, args.burst)
    finally:
        for worker in workers:
            worker.stop()
    overhead = percentile(e2e, 50) - percentile(base, 50)
    print(summary("in-process (baseline)", base))
    print(summary("end to end (queued)", e2e))
    print(f"queue overhead p50     {overhead:7.2f} ms   (target <= 5 ms)  ratio e2e/baseline p50 "
          f"{percentile(e2e, 50) / percentile(base, 50):.2f}x")
    print(f"p99 overhead           {percentile(e2e, 99) - percentile(base, 99):7.2f} ms")
    print(f"throughput, 1 worker   {one_worker:7.1f} jobs/s  (burst of {args.burst}; target >= 100)")
    print(f"throughput, 2 workers  {two_workers:7.1f} jobs/s  ({two_workers / one_worker:.2f}x of 1 worker)")


if __name__ == "__main__":
    main()
