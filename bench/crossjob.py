"""Many short jobs on one worker: one job at a time (prefork, batches within a job) vs jobs sharing batches.

Short jobs are where batching within a job gives nothing: a one-sentence job is a batch of one. A worker started
with `--pool threads --concurrency N` runs N jobs in one process and decodes their chunks in common batches
(worker/batcher.py). Both rounds run the same burst of one-chunk jobs through the real stack (client -> Redis ->
`celery worker` -> moto S3) on the same random-weight checkpoint, loaded by the worker like a user's, and measure
jobs / (last finished - first submitted). Random weights never end a chunk, so each runs to its frame cap, is
flagged as runaway and generated once more: every job costs the same two generations in both rounds.

--model mid-random (default): CSM's layout at about a tenth of its size (backbone 1024 wide, 8 layers; depth
decoder 512 wide, 4 layers; the real Mimi codec), so the baseline round takes about a minute here.
--model full-random: CSM-1B's architecture (slow on a CPU: minutes per job at batch 1).

--device cuda runs the worker on the GPU (bench/gpu_check.sh); --figures also prints one JSON line per figure.

    ./dev bench crossjob [--jobs 8] [--model mid-random|full-random] [--device cpu|cuda] [--figures]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from producer.client import NarrationClient
from producer.settings import Settings
from producer.states import JobState
from tests import services

TEXTS = ["Waves sang.", "Gulls cried.", "Rain fell.", "Boats rocked.", "Wind rose.", "Bells rang.", "Ropes creaked.",
         "Fog came."]  # one chunk each, capped at 44-48 frames


def mid_config() -> Any:
    from transformers import CsmConfig

    depth = {"hidden_size": 512, "intermediate_size": 2048, "num_hidden_layers": 4, "num_attention_heads": 8,
             "num_key_value_heads": 2, "backbone_hidden_size": 1024}
    return CsmConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=8, num_attention_heads=16,
                     num_key_value_heads=4, depth_decoder_config=depth)


def save_checkpoint(directory: Path, model_name: str) -> Path:
    from bench.generation import build_full_size

    processor, model = build_full_size(mid_config() if model_name == "mid-random" else None)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


def burst(client: NarrationClient, jobs: int) -> float:
    """Jobs per second for `jobs` one-chunk jobs submitted at once."""
    t0 = time.time()
    ids = [client.submit({"text": TEXTS[i % len(TEXTS)], "speaker_id": i % 4}).id for i in range(jobs)]
    finals = [client.wait(job_id, timeout=3600) for job_id in ids]
    assert all(f.state is JobState.SUCCEEDED and f.result for f in finals), [f.error for f in finals]
    return jobs / (max(f.finished_at or 0.0 for f in finals) - t0)


def round_on(settings: Settings, tmp: Path, name: str, jobs: int, pool: str,
             concurrency: int) -> tuple[float, str]:
    worker = services.start_worker(settings, tmp, name=name, pool=pool, concurrency=concurrency, timeout=1800)
    try:
        client = NarrationClient(settings)
        burst(client, 1)  # warm-up: first allocations, S3 client
        return burst(client, jobs), worker.log()
    finally:
        worker.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=8, help="jobs per burst, and the threads pool's concurrency")
    parser.add_argument("--model", choices=["mid-random", "full-random"], default="mid-random")
    parser.add_argument("--device", default="cpu", help="the worker's device (cpu, cuda)")
    parser.add_argument("--figures", action="store_true", help="also one JSON line per figure")
    args = parser.parse_args()
    with services.bench_services() as (tmp, redis_url, s3_url):
        checkpoint = save_checkpoint(tmp / args.model, args.model)
        settings = Settings(redis_url=redis_url, storage_url="s3://bench/narrations", s3_endpoint_url=s3_url,
                            model_path=str(checkpoint), device=args.device, allow_placeholder=False)
        alone, _ = round_on(settings, tmp, "alone", args.jobs, "prefork", 1)
        print(f"one job at a time (prefork -c 1):        {alone:6.3f} jobs/s", flush=True)
        shared, log = round_on(settings, tmp, "shared", args.jobs, "threads", args.jobs)
        print(f"{args.jobs} jobs sharing batches (threads -c {args.jobs}): {shared:6.3f} jobs/s")
        sizes = [int(n) for n in re.findall(r"generated (\d+) texts of \d+ jobs together", log)]
        print(f"batches in the shared round: {len(sizes)}, texts per batch {sizes}")
        print(f"throughput ratio shared / one at a time: {shared / alone:.2f}x")
    if args.figures:
        common = {"bench": "crossjob", "model": args.model, "device": args.device, "jobs": args.jobs}
        for what, batch, value, unit in (("one job at a time (prefork -c 1)", 1, alone, "jobs/s"),
                                         (f"{args.jobs} jobs sharing batches (threads)", args.jobs, shared, "jobs/s"),
                                         ("shared / one at a time", args.jobs, shared / alone, "x")):
            print(json.dumps({**common, "what": what, "batch": batch, "dtype": "auto", "graphs": None,
                              "value": round(value, 4), "unit": unit}))


if __name__ == "__main__":
    main()
