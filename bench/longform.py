"""Long-form job on a real worker (moto S3): worker memory and time with the placeholder, or real generation cost.

--model placeholder (default): runs the 30,000-character chapter fixture, then the same chapter twice over (about
twice the audio), one after another in one worker process, sampling the pool process's RSS every 50 ms. Growth =
peak RSS during a job minus RSS when its first chunk was stored. If memory grew with the audio, the double-length
job would grow about twice as much; the per-hour figure extrapolates from the longer job. Target: growth <= 100 MB
per hour of audio.

--model full-random: the full-size CSM architecture with random weights, saved as a checkpoint and loaded by the
worker like a real one (ECHOFORGE_MODEL_PATH); one narration of --chunks short paragraphs with a voice prompt (so
every chunk is batched with the prompt as shared context). Random weights never end a chunk, so each runs to its
frame cap, is flagged by QA as runaway and generated a second time: the figure that matters is how much of the wall
time the engine's generation is (the worker logs each batch's seconds), i.e. what decode, QA, stitching and upload
add. Target: wall time <= 1.25x the generation time.

    ./dev bench longform [--rtf 0] [--model full-random --chunks 16 --batch 16]
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from producer.client import NarrationClient
from producer.settings import Settings
from producer.states import JobState
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
    parser.add_argument("--model", choices=["placeholder", "full-random"], default="placeholder")
    parser.add_argument("--chunks", type=int, default=16, help="full-random: paragraphs (chunks) in the narration")
    parser.add_argument("--batch", type=int, default=Settings().batch_size, help="full-random: ECHOFORGE_BATCH_SIZE")
    args = parser.parse_args()
    if args.model == "full-random":
        full_random(args.chunks, args.batch)
        return
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



PARAGRAPH = "Waves sang."  # one chunk each, with a cap of 48 frames (3.8 s)


def full_random(chunks: int, batch: int) -> None:
    import numpy as np
    import soundfile as sf
    import torch

    from bench.generation import build_full_size

    with services.bench_services() as (tmp, redis_url, s3_url):
        processor, model = build_full_size()
        model.to(torch.bfloat16).save_pretrained(tmp / "full-random")  # the worker loads it as a user's checkpoint
        processor.save_pretrained(tmp / "full-random")
        del model
        prompt = tmp / "voice.wav"
        sf.write(prompt, 0.3 * np.sin(2 * np.pi * 180 * np.arange(48_000) / 24_000), 24_000)
        settings = Settings(redis_url=redis_url, storage_url="s3://bench/narrations", s3_endpoint_url=s3_url,
                            model_path=str(tmp / "full-random"), device="cpu", allow_placeholder=False,
                            max_chunk_chars=40, batch_size=batch)
        t0 = time.perf_counter()
        worker = services.start_worker(settings, tmp, name="full-random", timeout=1800)
        print(f"worker loaded the full-size random checkpoint in {time.perf_counter() - t0:.0f} s")
        try:
            client = NarrationClient(settings)
            t0 = time.perf_counter()
            job = client.submit({"text": "\n\n".join([PARAGRAPH] * chunks), "voice_text": "This is how I sound."},
                                voice_prompt=prompt)
            final = client.wait(job.id, timeout=24 * 3600)
            wall = time.perf_counter() - t0
            report(final, wall, worker.log())
        finally:
            worker.stop()


def report(final: Any, wall: float, log: str) -> None:
    import re

    assert final.state is JobState.SUCCEEDED and final.result, final.error
    streams = [(float(s), float(a)) for s, a in re.findall(
        rf"job {final.id}: \d+ chunks \(\d+ tries\) generated in ([\d.]+) s, ([\d.]+) s of audio", log)]
    generation = sum(s for s, _ in streams)
    generated_audio = sum(a for _, a in streams)
    audio = final.result["duration_s"]
    print(f"{final.result['chunks']} chunks, {audio:.1f} s delivered ({generated_audio:.1f} s generated in "
          f"{len(streams)} streams, retries included)")
    print(f"wall {wall:.1f} s, generation {generation:.1f} s: wall / generation = {wall / generation:.3f} "
          "(target <= 1.25)")
    print(f"engine aggregate RTF in the pipeline {generation / generated_audio:.3f}; "
          f"end-to-end RTF {wall / generated_audio:.3f} per generated second, {wall / audio:.3f} per delivered second")


if __name__ == "__main__":
    main()
