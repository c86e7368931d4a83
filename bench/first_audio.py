"""Time to first audio on OpenAI's speech endpoint: streaming (the first stored chunk is sent at once) against the
whole file (what a server that does not stream answers with), for one sentence and for a 30-chunk text.

The placeholder model sleeps ECHOFORGE_PLACEHOLDER_RTF seconds per second of audio, so generation costs wall time as
on a GPU; a chunk's generation time is then its audio seconds x RTF, read back from the job's manifest. Targets:
streaming's first byte within the first chunk's generation time + 150 ms, whatever the text's length; and, thanks to
the short first chunk, that generation time is at most 1/3 of a normal (300-character) chunk's.

    ./dev bench first_audio [--rtf 0.1] [--repeats 3] [--json]

`--frames` measures frame-level streaming instead, on the model itself (CSMModel, in process, no queue): the
random-weight reduced CSM architecture (CSM-1B's widths, `--backbone-layers` / `--depth-layers`), one normal
300-character chunk with its frame count forced to what it would speak (20 s at 15 characters a second), seconds
from the call to the first mp3 bytes, in the same run: chunk streaming (generate_speech, then encode: what a worker
stores and the endpoint sends today) against frame streaming (stream_speech, `--frames-per-chunk` frames a piece,
each piece encoded as it comes). Target: frame streaming's first bytes in 1/10 of chunk streaming's or less.

    ./dev bench first_audio --frames [--repeats 3] [--frames-per-chunk 2] [--backbone-layers 4 --depth-layers 1]

`--endpoint` measures it end to end: OpenAI's speech endpoint through the real stack (two APIs, one prefork worker
on the tiny random CSM checkpoint of the tests, on the CPU), one 300-character chunk (`ECHOFORGE_FIRST_CHUNK_CHARS=0`)
in mp3, seconds from the request to the first audio bytes, in the same run: one API frame-streams (the default),
the other has `ECHOFORGE_OPENAI_FRAME_STREAMING=false` (each chunk sent once stored). The client leaves after the
first bytes (its job is canceled) and the next request waits for that job to end.

    ./dev bench first_audio --endpoint [--repeats 3]
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from producer import processes
from producer.api_keys import ApiKeyStore
from producer.audio_formats import AudioEncoder
from producer.settings import Settings
from producer.store import connect_redis
from tests import services

SENTENCE = "The lighthouse keeper counted the waves before the dawn, as he had done for forty years."
NORMAL_CHUNK_CHARS = 300


def chapter(chunks: int) -> str:
    """About `chunks` normal chunks of text (each sentence ~75 characters, four to a chunk)."""
    return " ".join(f"Sentence {i} tells how the keeper climbed the stairs and lit the lamp again."
                    for i in range(chunks * 4))


def one_request(http: httpx.Client, key: str, text: str) -> dict[str, float | str]:
    """Seconds from sending the request to the first audio byte and to the last. The client is made once and reused,
    as the openai package does (making one loads the TLS certificates: ~20 ms that are not the server's)."""
    started = time.perf_counter()
    first = None
    with http.stream("POST", "/v1/audio/speech", headers={"Authorization": f"Bearer {key}"}, timeout=900,
                     json={"model": "tts-1", "voice": "alloy", "input": text, "response_format": "mp3"}) as response:
        response.raise_for_status()
        for piece in response.iter_bytes():
            if piece and first is None:
                first = time.perf_counter() - started
        job_id = response.headers["x-echoforge-job"]
    return {"first_byte_s": first or 0.0, "whole_s": time.perf_counter() - started, "job": job_id}


def first_chunk_generation_s(http: httpx.Client, key: str, job_id: str, rtf: float) -> tuple[float, int]:
    """(the first chunk's generation time = its audio x RTF, chunks in the job), from the job's manifest."""
    manifest = http.get(f"/v1/narrations/{job_id}/manifest", headers={"Authorization": f"Bearer {key}"},
                        timeout=30).json()
    return manifest["chunks"][0]["duration_s"] * rtf, len(manifest["chunks"])


def summary(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 4), "min": round(min(values), 4), "max": round(max(values), 4)}


def measure(http: httpx.Client, key: str, text: str, rtf: float, repeats: int) -> dict[str, Any]:
    runs = []
    for _ in range(repeats):
        run = one_request(http, key, text)
        generation, chunks = first_chunk_generation_s(http, key, str(run["job"]), rtf)
        runs.append({**run, "first_chunk_generation_s": generation, "chunks": chunks,
                     "overhead_s": float(run["first_byte_s"]) - generation})
    return {"chunks": runs[0]["chunks"], "chars": len(text),
            **{name: summary([float(r[name]) for r in runs])
               for name in ("first_byte_s", "whole_s", "first_chunk_generation_s", "overhead_s")}}


def first_bytes(pieces: Iterator[np.ndarray], started: float) -> float:
    """Seconds from `started` until the mp3 encoder gives its first bytes for the audio `pieces` hand over (a second
    at a time, as the endpoint encodes); the rest of the pieces are not waited for."""
    sink = io.BytesIO()
    with AudioEncoder.open("mp3", 24_000, sink) as encoder:
        for piece in pieces:
            for start in range(0, len(piece), 24_000):
                encoder.write(piece[start: start + 24_000])
                if sink.tell():
                    return time.perf_counter() - started
    return time.perf_counter() - started


def frame_vs_chunk(args: argparse.Namespace) -> dict[str, Any]:
    """Time to first mp3 bytes of a 300-character chunk: chunk streaming vs frame streaming, same model, same run."""
    import torch

    from bench.generation import bench_config, build_full_size, cpu_features
    from worker.models import CSMModel

    torch.set_num_threads(args.threads)  # OpenMP threads fight over a shared 2-core machine
    processor, model = build_full_size(bench_config(args.backbone_layers, args.depth_layers))
    layer = CSMModel.from_loaded(processor, model, device="cpu", model_id="random-reduced")
    text = chapter(1)[:NORMAL_CHUNK_CHARS]
    speech_ms = NORMAL_CHUNK_CHARS / 15.0 * 1000  # forced: random weights never end by themselves

    def chunk_streaming() -> Iterator[np.ndarray]:
        yield layer.generate_speech(text, max_audio_length_ms=speech_ms, seed=1)[0]

    def frame_streaming() -> Iterator[np.ndarray]:
        stream = layer.stream_speech(text, max_audio_length_ms=speech_ms, seed=1,
                                     frames_per_chunk=args.frames_per_chunk)
        try:
            yield from stream
        finally:
            stream.close()  # the first bytes are what is measured: stop generating

    first_bytes(layer.stream_speech("Warm up.", max_audio_length_ms=160), time.perf_counter())
    runs: dict[str, list[float]] = {"chunk": [], "frame": []}
    for _ in range(args.repeats):
        runs["frame"].append(first_bytes(frame_streaming(), time.perf_counter()))
        runs["chunk"].append(first_bytes(chunk_streaming(), time.perf_counter()))
    ratio = statistics.median(runs["frame"]) / statistics.median(runs["chunk"])
    return {"model": f"CSM-1B widths, {args.backbone_layers} backbone / {args.depth_layers} depth layers, random",
            "dtype": layer.dtype, "threads": args.threads, "cpu": cpu_features(), "chars": len(text),
            "speech_s": speech_ms / 1000, "frames_per_chunk": args.frames_per_chunk, "repeats": args.repeats,
            "chunk_first_bytes_s": summary(runs["chunk"]), "frame_first_bytes_s": summary(runs["frame"]),
            "frame_over_chunk": round(ratio, 4), "target_ok": ratio <= 0.1}


def first_bytes_from(http: httpx.Client, key: str, text: str) -> float:
    """Seconds from the request to the endpoint's first audio bytes; the job ends (canceled) before this returns."""
    auth = {"Authorization": f"Bearer {key}"}
    started = time.perf_counter()
    with http.stream("POST", "/v1/audio/speech", headers=auth, timeout=900,
                     json={"model": "tts-1", "voice": "alloy", "input": text, "response_format": "mp3"}) as response:
        response.raise_for_status()
        first = next(piece for piece in response.iter_bytes() if piece)
        elapsed = time.perf_counter() - started
        job_id = response.headers["x-echoforge-job"]
    assert first
    while http.get(f"/v1/narrations/{job_id}", headers=auth, timeout=30).json()["state"] in ("queued", "running"):
        time.sleep(0.1)
    return elapsed


def endpoint_frames_vs_chunks(args: argparse.Namespace) -> dict[str, Any]:
    """First audio bytes from POST /v1/audio/speech: frame streaming vs chunk streaming, one worker, same run."""
    from tests.csm_checkpoint import build_tiny_checkpoint

    text = chapter(1)[:NORMAL_CHUNK_CHARS]
    with services.bench_services("echoforge-first-audio-") as (tmp, redis_url, s3_url):
        settings = Settings(redis_url=redis_url, storage_url="s3://bench/narrations", s3_endpoint_url=s3_url)
        env = {"ECHOFORGE_MODEL_PATH": str(build_tiny_checkpoint(tmp / "tiny-csm")), "ECHOFORGE_DEVICE": "cpu",
               "ECHOFORGE_MAX_CHUNK_CHARS": str(NORMAL_CHUNK_CHARS), "ECHOFORGE_FIRST_CHUNK_CHARS": "0"}
        worker = services.start_worker(settings, tmp, extra_env=env)
        quota = {"ECHOFORGE_TENANT_MAX_CHARS_PER_DAY": "0"}
        apis = {"frame": services.start_api(settings, tmp, quota),
                "chunk": services.start_api(settings, tmp, {**quota, "ECHOFORGE_OPENAI_FRAME_STREAMING": "false"})}
        runs: dict[str, list[float]] = {"frame": [], "chunk": []}
        try:
            key = ApiKeyStore(connect_redis(settings)).create("bench")[1]
            clients = {name: httpx.Client(base_url=url) for name, (_, url) in apis.items()}
            first_bytes_from(clients["frame"], key, "Warm up.")
            for _ in range(args.repeats):
                for name, http in clients.items():
                    runs[name].append(first_bytes_from(http, key, text))
        finally:
            for proc, _ in apis.values():
                processes.stop(proc, 10)
            worker.stop()
    ratio = statistics.median(runs["frame"]) / statistics.median(runs["chunk"])
    return {"model": "tiny random CSM (tests/csm_checkpoint.py), cpu", "chars": len(text), "repeats": args.repeats,
            "chunk_first_bytes_s": summary(runs["chunk"]), "frame_first_bytes_s": summary(runs["frame"]),
            "frame_over_chunk": round(ratio, 4), "target_ok": ratio <= 0.1}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rtf", type=float, default=0.1, help="placeholder wall seconds per second of audio")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--frames", action="store_true", help="frame streaming vs chunk streaming, on the model")
    parser.add_argument("--endpoint", action="store_true", help="frame vs chunk streaming, OpenAI's endpoint")
    parser.add_argument("--frames-per-chunk", type=int, default=2)
    parser.add_argument("--backbone-layers", type=int, default=4)
    parser.add_argument("--depth-layers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if args.frames:
        result = frame_vs_chunk(args)
        print(f"first mp3 bytes of a {result['chars']}-character chunk ({result['speech_s']:.0f} s of speech), "
              f"{result['model']}, {result['dtype']}: chunk streaming {result['chunk_first_bytes_s']}, frame "
              f"streaming ({args.frames_per_chunk} frames a piece) {result['frame_first_bytes_s']}; frame/chunk "
              f"{result['frame_over_chunk']} (target <= 0.1: {result['target_ok']})")
        print(json.dumps(result))
        return
    if args.endpoint:
        result = endpoint_frames_vs_chunks(args)
        print(f"first mp3 bytes from /v1/audio/speech, a {result['chars']}-character chunk, {result['model']}: chunk "
              f"streaming {result['chunk_first_bytes_s']}, frame streaming {result['frame_first_bytes_s']}; "
              f"frame/chunk {result['frame_over_chunk']} (target <= 0.1: {result['target_ok']})")
        print(json.dumps(result))
        return
    with services.bench_services("echoforge-first-audio-") as (tmp, redis_url, s3_url):
        settings = Settings(redis_url=redis_url, storage_url="s3://bench/narrations", s3_endpoint_url=s3_url)
        env = {"ECHOFORGE_USE_PLACEHOLDER": "true", "ECHOFORGE_PLACEHOLDER_RTF": str(args.rtf)}
        worker = services.start_worker(settings, tmp, extra_env=env)
        api, url = services.start_api(settings, tmp, {"ECHOFORGE_TENANT_MAX_CHARS_PER_DAY": "0"})
        try:
            key = ApiKeyStore(connect_redis(settings)).create("bench")[1]
            with httpx.Client(base_url=url) as http:
                one_request(http, key, "Warm up.")
                results = {"sentence": measure(http, key, SENTENCE, args.rtf, args.repeats),
                           "chapter": measure(http, key, chapter(30), args.rtf, args.repeats)}
        finally:
            processes.stop(api, 10)
            worker.stop()
    normal_chunk_generation_s = NORMAL_CHUNK_CHARS / 15.0 * args.rtf  # the placeholder speaks 15 characters a second
    report(results, args, normal_chunk_generation_s)


def report(results: dict[str, Any], args: argparse.Namespace, normal_chunk_generation_s: float) -> None:
    overhead = max(r["overhead_s"]["max"] for r in results.values())
    first_chunk = max(r["first_chunk_generation_s"]["max"] for r in results.values())
    out = {"rtf": args.rtf, "repeats": args.repeats, "python": platform.python_version(),
           "cpu": platform.processor() or platform.machine(), **results,
           "normal_chunk_generation_s": round(normal_chunk_generation_s, 4),
           "target_overhead_ok": overhead <= 0.150,
           "target_first_chunk_ok": first_chunk <= normal_chunk_generation_s / 3}
    if args.json:
        print(json.dumps(out))
        return
    for name, r in results.items():
        print(f"{name:9} {r['chunks']:3d} chunks  first byte {r['first_byte_s']['median']:.3f} s "
              f"(min {r['first_byte_s']['min']:.3f}, max {r['first_byte_s']['max']:.3f})  whole "
              f"{r['whole_s']['median']:.3f} s  first chunk's generation {r['first_chunk_generation_s']['median']:.3f} "
              f"s  overhead {r['overhead_s']['median'] * 1000:.0f} ms (max {r['overhead_s']['max'] * 1000:.0f})")
    print(f"normal chunk's generation {normal_chunk_generation_s:.3f} s; targets: overhead <= 150 ms: "
          f"{out['target_overhead_ok']}; first chunk <= 1/3 normal: {out['target_first_chunk_ok']}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
