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

--mixed: static batching vs continuous batching (ECHOFORGE_CONTINUOUS_BATCHING), one round each on a threads worker:
one long job of chapter-length chunks (--long-chunks, default 40) and --short-jobs one-sentence jobs (default 16)
submitted one after another while it runs, the same schedule in both rounds. Each short job's completion time
(finished - submitted), its p50 and p95, and jobs/s over all of them (jobs / (last finished - first submitted));
--json prints them as one object. --model small-random (the default with --mixed; its codec reduced too) keeps both
rounds within minutes on a 2-core CPU.

    ./dev bench crossjob [--jobs 8] [--model mid-random|full-random] [--device cpu|cuda] [--figures]
    ./dev bench crossjob --mixed [--long-chunks 40] [--short-jobs 16] [--batch 8] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import time
from datetime import datetime
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


def small_config() -> Any:
    """CSM's layout much reduced, codec included (backbone 256 wide, 2 layers; depth decoder 128 wide, 1 layer; a
    Mimi of 32 codebooks of 2048 ids, 32 wide): 32 codebooks per 80 ms frame as in CSM-1B, a few ms a frame."""
    from transformers import CsmConfig, MimiConfig

    codec = MimiConfig(hidden_size=32, num_filters=4, codebook_size=2048, codebook_dim=16, num_quantizers=32,
                       vector_quantization_hidden_dimension=16, upsample_groups=32, num_hidden_layers=1,
                       intermediate_size=64, num_attention_heads=2, num_key_value_heads=2, head_dim=16)
    depth = {"hidden_size": 128, "intermediate_size": 512, "num_hidden_layers": 1, "num_attention_heads": 4,
             "num_key_value_heads": 2, "backbone_hidden_size": 256}
    return CsmConfig(hidden_size=256, intermediate_size=1024, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, depth_decoder_config=depth, codec_config=codec.to_dict())


CONFIGS = {"small-random": small_config, "mid-random": mid_config, "full-random": lambda: None}


def save_checkpoint(directory: Path, model_name: str) -> Path:
    from bench.generation import build_full_size

    processor, model = build_full_size(CONFIGS[model_name]())
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


def long_text(chunks: int, chars: int) -> str:
    """About `chunks` chunks of at most `chars` characters, of sentences of varied length as in prose (so its rows
    end at different frames): each chunk one sentence of `chars` / 2 to `chars` characters."""
    words = ["the", "keeper", "climbed", "the", "stair", "and", "counted", "every", "wave", "that", "broke", "below",
             "the", "light"]
    sentences = []
    for i in range(chunks):
        target, sentence = chars // 2 + 2 + (i * 7919) % (chars // 2 - 8), []
        while len(" ".join(sentence)) < target:
            sentence.append(words[(i + len(sentence)) % len(words)])
        sentences.append(" ".join(sentence).capitalize() + ".")
    return " ".join(sentences)


def mixed_round(settings: Settings, tmp: Path, args: argparse.Namespace, continuous: bool) -> dict[str, Any]:
    """One long job, then the short jobs one every --gap-s while it runs; completion times, jobs/s, and where the
    short jobs' time went (from the worker's log)."""
    env = {"ECHOFORGE_CONTINUOUS_BATCHING": str(continuous).lower(), "ECHOFORGE_BATCH_SIZE": str(args.batch),
           "ECHOFORGE_MAX_CHUNK_CHARS": str(args.chunk_chars), "ECHOFORGE_FIRST_CHUNK_CHARS": "0",
           **({"OMP_NUM_THREADS": str(args.threads)} if args.threads else {})}
    name = "continuous" if continuous else "static"
    worker = services.start_worker(settings, tmp, name=name, pool="threads", concurrency=args.short_jobs + 1,
                                   timeout=1800, extra_env=env)
    try:
        client = NarrationClient(settings)
        client.wait(client.submit({"text": TEXTS[0]}).id, timeout=600)  # warm-up: first allocations, S3 client
        t0 = time.time()
        long_id = client.submit({"text": long_text(args.long_chunks, args.chunk_chars), "speaker_id": 0}).id
        time.sleep(args.lead_s)
        short: list[tuple[str, float]] = []
        for i in range(args.short_jobs):
            short.append((client.submit({"text": TEXTS[i % len(TEXTS)], "speaker_id": 1 + i % 3}).id, time.time()))
            time.sleep(args.gap_s)
        finals = {job_id: client.wait(job_id, timeout=3600) for job_id in [long_id, *(j for j, _ in short)]}
        assert all(f.state is JobState.SUCCEEDED for f in finals.values()), [f.error for f in finals.values()]
        assert finals[long_id].progress["chunks_total"] >= args.long_chunks * 0.9, finals[long_id].progress
        waits = sorted((finals[j].finished_at or 0.0) - at for j, at in short)
        end = max(f.finished_at or 0.0 for f in finals.values())
        phases = short_job_phases(worker.log(), [(j, at, finals[j].finished_at or 0.0) for j, at in short])
        long_end = finals[long_id].finished_at or 0.0
        during = sum(at < long_end for _, at in short)
        if during < len(short):
            print(f"warning: {len(short) - during} of {len(short)} short jobs arrived after the long job ended; "
                  "shorten --lead-s/--gap-s to measure jobs sharing batches", file=sys.stderr, flush=True)
        return {"p50": statistics.median(waits), "p95": waits[min(len(waits) - 1, round(0.95 * len(waits)) - 1)],
                "jobs_per_s": len(finals) / (end - t0), "long_s": (finals[long_id].finished_at or 0.0) - t0,
                "long_chunks": finals[long_id].progress["chunks_total"], "short_during_long": during, **phases}
    finally:
        worker.stop()


_LINE = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}): [^\]]*\] job (\S+): (.*)$", re.M)
_PHASE_MARKS = {"first": "chunk 0 started (attempt 1)", "retry": "chunk 0 started (attempt 2)",
                "stored": "chunk 0 generated"}


def short_job_phases(log: str, jobs: list[tuple[str, float, float]]) -> dict[str, float]:
    """Median seconds of a short job (one chunk, tried twice) in each phase, from the worker's log timestamps:
    submitted -> its first try started (queue, planning and, under continuous batching, the wait for a slot; a static
    batcher logs the start when the job hands the text over, so there the batch's wait counts as generation) ->
    its retry started (first generation) -> stored (retry) -> finished (stitch, upload, ack)."""
    marks: dict[tuple[str, str], float] = {}
    for stamp, job_id, message in _LINE.findall(log):
        for mark, text in _PHASE_MARKS.items():
            if message.startswith(text):
                marks.setdefault((job_id, mark), datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp())
    phases: dict[str, list[float]] = {"to_first_start_s": [], "first_try_s": [], "retry_s": [], "finish_s": []}
    for job_id, submitted, finished in jobs:
        if all((job_id, mark) in marks for mark in _PHASE_MARKS):
            times = [submitted, *(marks[job_id, mark] for mark in _PHASE_MARKS), finished]
            for name, start, stop in zip(phases, times, times[1:], strict=False):
                phases[name].append(stop - start)
    return {name: statistics.median(values) for name, values in phases.items() if values}


FIGURES = {"short_during_long": "short_during_long", "short_p50_s": "p50", "short_p95_s": "p95",
           "jobs_per_s": "jobs_per_s", "long_job_s": "long_s",
           "short_to_first_start_s": "to_first_start_s", "short_first_try_s": "first_try_s",
           "short_retry_s": "retry_s", "short_finish_s": "finish_s"}
RATIOS = {"short_p50_ratio": "p50", "short_p95_ratio": "p95", "jobs_per_s_ratio": "jobs_per_s"}


def mixed(args: argparse.Namespace) -> None:
    """--repeats pairs of rounds, static and continuous back to back, their order alternated to cancel drift."""
    rounds: dict[bool, list[dict[str, Any]]] = {False: [], True: []}
    with services.bench_services() as (tmp, redis_url, s3_url):
        checkpoint = save_checkpoint(tmp / args.model, args.model)
        settings = Settings(redis_url=redis_url, storage_url="s3://bench/narrations", s3_endpoint_url=s3_url,
                            model_path=str(checkpoint), device=args.device, allow_placeholder=False)
        for repeat in range(args.repeats):
            for continuous in (False, True) if repeat % 2 == 0 else (True, False):
                load_before = os.getloadavg()[0]
                result = mixed_round(settings, tmp, args, continuous)
                result.update(repeat=repeat, load_before=load_before, load_after=os.getloadavg()[0])
                rounds[continuous].append(result)
                print(f"repeat {repeat + 1}, {'continuous' if continuous else 'static'}: "
                      f"{json.dumps({k: round(v, 3) for k, v in result.items()})}", file=sys.stderr, flush=True)
    figures = mixed_figures(rounds[False], rounds[True])
    figures.update(long_job_chunks=rounds[True][0]["long_chunks"], short_jobs=args.short_jobs, batch=args.batch,
                   chunk_chars=args.chunk_chars, threads=args.threads, model=args.model, device=args.device)
    if args.json:
        print(json.dumps(figures))
        return
    print_mixed(figures)


def mixed_figures(static: list[dict[str, Any]], cont: list[dict[str, Any]]) -> dict[str, Any]:
    """Each figure's median (the --json keys), min/max and per-repeat list, of both rounds and of their ratios."""
    series: dict[str, list[float]] = {}
    for mode, results in (("static", static), ("continuous", cont)):
        for key, field_ in FIGURES.items():
            if all(field_ in r for r in results):
                series[f"{mode}_{key}"] = [r[field_] for r in results]
        series[f"{mode}_load_before"] = [r["load_before"] for r in results]
        series[f"{mode}_load_after"] = [r["load_after"] for r in results]
    for key, field_ in RATIOS.items():
        series[key] = [c[field_] / s[field_] for s, c in zip(static, cont, strict=True)]
    figures: dict[str, Any] = {"repeats": len(static)}
    for key, values in series.items():
        figures[key] = round(statistics.median(values), 3)
        figures[f"{key}_min"], figures[f"{key}_max"] = round(min(values), 3), round(max(values), 3)
    figures["per_repeat"] = {key: [round(v, 3) for v in values] for key, values in series.items()}
    return figures


def print_mixed(f: dict[str, Any]) -> None:
    def line(key: str) -> str:
        return f"{f[key]:.2f} ({f[key + '_min']:.2f}-{f[key + '_max']:.2f})"

    print(f"medians of {f['repeats']} repeats (min-max); load average (1 min) before/after each round: static "
          f"{f['per_repeat']['static_load_before']}/{f['per_repeat']['static_load_after']}, continuous "
          f"{f['per_repeat']['continuous_load_before']}/{f['per_repeat']['continuous_load_after']}")
    print(f"short jobs, p50: static {line('static_short_p50_s')} s, continuous {line('continuous_short_p50_s')} s, "
          f"ratio {line('short_p50_ratio')}x (target <= 0.33)")
    print(f"short jobs, p95: static {line('static_short_p95_s')} s, continuous {line('continuous_short_p95_s')} s, "
          f"ratio {line('short_p95_ratio')}x")
    print(f"jobs/s: static {line('static_jobs_per_s')}, continuous {line('continuous_jobs_per_s')}, "
          f"ratio {line('jobs_per_s_ratio')}x (target >= 1)")
    print(f"long job: static {line('static_long_job_s')} s, continuous {line('continuous_long_job_s')} s")
    print(f"short jobs arriving while the long job ran (of {f['short_jobs']}): static "
          f"{line('static_short_during_long')}, continuous {line('continuous_short_during_long')}")
    for mode in ("static", "continuous"):
        parts = [f"{name} {f[f'{mode}_short_{name}_s']:.2f} s" for name in ("to_first_start", "first_try", "retry",
                                                                             "finish") if f"{mode}_short_{name}_s" in f]
        print(f"a short job's time, {mode} (medians): {', '.join(parts)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=8, help="jobs per burst, and the threads pool's concurrency")
    parser.add_argument("--model", choices=sorted(CONFIGS), default=None,
                        help="mid-random (small-random with --mixed)")
    parser.add_argument("--device", default="cpu", help="the worker's device (cpu, cuda)")
    parser.add_argument("--figures", action="store_true", help="also one JSON line per figure")
    parser.add_argument("--mixed", action="store_true", help="static vs continuous batching: a long job, short jobs")
    parser.add_argument("--long-chunks", type=int, default=40)
    parser.add_argument("--short-jobs", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1,
                        help="the worker's OMP_NUM_THREADS (0: torch's default; 1 on a CPU shared with other work)")
    parser.add_argument("--chunk-chars", type=int, default=90, help="the long job's longest chunks, in characters")
    parser.add_argument("--batch", type=int, default=20, help="ECHOFORGE_BATCH_SIZE of the mixed rounds")
    parser.add_argument("--lead-s", type=float, default=3.0, help="the long job's head start")
    parser.add_argument("--gap-s", type=float, default=2.0,
                        help="between short jobs (all must arrive while the long job runs: see short_during_long)")
    parser.add_argument("--json", action="store_true", help="--mixed: one JSON object")
    parser.add_argument("--repeats", type=int, default=3,
                        help="--mixed: pairs of rounds (static and continuous, order alternated); medians reported")
    args = parser.parse_args()
    args.model = args.model or ("small-random" if args.mixed else "mid-random")
    if args.mixed:
        mixed(args)
        return
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
