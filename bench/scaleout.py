"""Throughput with 1, 2 and 4 worker processes on one queue, when jobs take wall time rather than CPU.

ECHOFORGE_PLACEHOLDER_RTF makes the placeholder model sleep RTF seconds per second of audio, as a GPU would keep a
worker busy, so the figure is about the queue and the workers' coordination, not this machine's cores. Each round
submits the same burst of jobs (real client -> Redis -> real `celery worker` processes -> moto S3 server) and
measures jobs / (last finished - first submitted). Baseline: one worker, in the same run. Target: 2 workers >= 1.8x.

    ./dev bench scaleout [--jobs 16] [--rtf 0.5] [--workers 1 2 4]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from producer.client import NarrationClient
from producer.settings import Settings
from producer.states import JobState
from tests import services

# 3.7 s of placeholder audio (15 characters a second): 1.8 s of simulated GPU time per job at RTF 0.5.
TEXT = "The river ran quietly past the mill, and a heron stood."


def burst(client: NarrationClient, jobs: int) -> tuple[float, int]:
    """(jobs per second, distinct workers that ran them) for `jobs` submitted at once."""
    t0 = time.time()
    ids = [client.submit({"text": TEXT}).id for _ in range(jobs)]
    finals = [client.wait(job_id, timeout=600) for job_id in ids]
    assert all(f.state is JobState.SUCCEEDED for f in finals), [f.error for f in finals if f.error]
    assert all(f.attempts == 1 for f in finals)
    last = max(f.finished_at or 0.0 for f in finals)
    return jobs / (last - t0), len({f.worker for f in finals})


def run(settings: Settings, tmp: Path, args: argparse.Namespace) -> dict[int, float]:
    client = NarrationClient(settings)
    workers: list[services.Worker] = []
    rates: dict[int, float] = {}
    extra = {"ECHOFORGE_PLACEHOLDER_RTF": str(args.rtf)}
    try:
        burst_size = max(args.workers)
        for count in sorted(args.workers):
            while len(workers) < count:
                workers.append(services.start_worker(settings, tmp, name=f"scale{len(workers) + 1}", extra_env=extra))
            burst(client, burst_size)  # warm-up: every worker has run a job (imports, connections, S3 client)
            rates[count], used = burst(client, args.jobs)
            print(f"{count} worker(s)  {rates[count]:6.2f} jobs/s   ({args.jobs} jobs, {used} workers ran them)",
                  flush=True)
    finally:
        for worker in workers:
            worker.stop()
        client.close()
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=16, help="jobs per round, submitted at once")
    parser.add_argument("--rtf", type=float, default=0.5, help="ECHOFORGE_PLACEHOLDER_RTF for the workers")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    args = parser.parse_args()
    if 1 not in args.workers:
        parser.error("--workers must include 1: it is the baseline")
    seconds = max(0.4, len(TEXT) / 15.0)
    print(f"job: {len(TEXT)} chars -> {seconds:.2f} s of audio -> {seconds * args.rtf:.2f} s of simulated GPU time "
          f"(RTF {args.rtf}); ideal: 1 worker {1 / (seconds * args.rtf):.2f} jobs/s")
    with services.bench_services("echoforge-scaleout-") as (tmp, redis_url, s3_url):
        settings = Settings(redis_url=redis_url, storage_url="s3://bench/narrations", s3_endpoint_url=s3_url)
        rates = run(settings, tmp, args)
    for count in sorted(args.workers):
        if count > 1:
            target = "   (target >= 1.8x)" if count == 2 else ""
            print(f"{count} vs 1 worker: {rates[count] / rates[1]:.2f}x  (ideal {count}.00x){target}")


if __name__ == "__main__":
    main()
