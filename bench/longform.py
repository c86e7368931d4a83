"""Long-form job on a real worker (placeholder model, moto S3): worker memory, time to first chunk, total time.

Runs the 30,000-character chapter fixture, then the same chapter twice over (about twice the audio), one after
another in one worker process, sampling the pool process's RSS every 50 ms. Growth = peak RSS during a job minus
RSS when its first chunk was stored. If memory grew with the audio, the double-length job would grow about twice as
much; the per-hour figure extrapolates from the longer job. Target: growth <= 100 MB per hour of audio.

    ./dev bench longform [--rtf 0]
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from producer.client import NarrationClient
from producer.jobs import JobState
from producer.settings import Settings
from tests import services

CHAPTER = (Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "chapter.txt").read_text()
MB = 1024 * 1024


def measure(client: NarrationClient, pool: psutil.Process, text: str) -> dict[str, float]:
    samples: list[tuple[float, int]] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            samples.append((time.perf_counter(), pool.memory_info().rss))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    job = client.submit({"text": text})
    first_chunk = None
    while not (current := client.get(job.id)).state.is_terminal:
        if first_chunk is None and current.progress.get("chunks_done", 0) >= 1:
            first_chunk = time.perf_counter()
        time.sleep(0.02)
    total = time.perf_counter() - t0
    stop.set()
    sampler.join()
    assert current.state is JobState.SUCCEEDED and current.result, current.error
    first_chunk = first_chunk or t0 + total
    after_first = next((rss for t, rss in samples if t >= first_chunk), samples[-1][1])
    peak = max(rss for _, rss in samples)
    return {"chars": len(text), "chunks": current.result["chunks"], "audio_s": current.result["duration_s"],
            "first_chunk_s": first_chunk - t0, "total_s": total, "rss_first_mb": after_first / MB,
            "peak_mb": peak / MB, "growth_mb": (peak - after_first) / MB}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rtf", type=float, default=0.0, help="placeholder wall seconds per audio second")
    args = parser.parse_args()
    with services.bench_services() as (tmp, redis_url, s3_url):
        settings = Settings(redis_url=redis_url, storage_url="s3://bench/narrations", s3_endpoint_url=s3_url,
                            use_placeholder=True, placeholder_rtf=args.rtf)
        worker = services.start_worker(settings, tmp, name="longform")
        try:
            run(NarrationClient(settings), psutil.Process(worker.process.pid).children()[0])
        finally:
            worker.stop()


def run(client: NarrationClient, pool: psutil.Process) -> None:
    measure(client, pool, CHAPTER[:3000])  # warm-up: imports, first allocations
    results = [measure(client, pool, CHAPTER), measure(client, pool, CHAPTER + "\n\n" + CHAPTER)]
    print(f"{'job':<16}{'chars':>8}{'chunks':>8}{'audio':>10}{'1st chunk':>11}{'total':>9}"
          f"{'RSS@1st':>10}{'peak':>9}{'growth':>9}")
    for name, r in zip(("chapter", "chapter x2"), results, strict=True):
        print(f"{name:<16}{r['chars']:>8.0f}{r['chunks']:>8.0f}{r['audio_s'] / 60:>8.1f} m{r['first_chunk_s']:>10.2f}s"
              f"{r['total_s']:>8.1f}s{r['rss_first_mb']:>8.0f}MB{r['peak_mb']:>7.0f}MB{r['growth_mb']:>7.1f}MB")
    longer = results[1]
    per_hour = longer["growth_mb"] * 3600 / longer["audio_s"]
    print(f"growth ratio x2/x1 audio: {results[1]['growth_mb'] / max(results[0]['growth_mb'], 0.1):.2f} "
          f"(about 2 would mean memory grows with the narration's length)")
    print(f"extrapolated growth per hour of audio: {per_hour:.1f} MB (target <= 100 MB), "
          f"from {longer['growth_mb']:.1f} MB over {longer['audio_s'] / 60:.1f} min")
    print(f"RSS kept from one job to the next (first chunk of job 2 - first chunk of job 1): "
          f"{results[1]['rss_first_mb'] - results[0]['rss_first_mb']:.1f} MB")
    print(f"pipeline speed (placeholder, no GPU time): {longer['audio_s'] / longer['total_s']:.0f}x real time")


if __name__ == "__main__":
    main()
