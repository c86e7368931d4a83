"""Time to first audio on OpenAI's speech endpoint: streaming (the first stored chunk is sent at once) against the
whole file (what a server that does not stream answers with), for one sentence and for a 30-chunk text.

The placeholder model sleeps ECHOFORGE_PLACEHOLDER_RTF seconds per second of audio, so generation costs wall time as
on a GPU; a chunk's generation time is then its audio seconds x RTF, read back from the job's manifest. Targets:
streaming's first byte within the first chunk's generation time + 150 ms, whatever the text's length; and, thanks to
the short first chunk, that generation time is at most 1/3 of a normal (300-character) chunk's.

    ./dev bench first_audio [--rtf 0.1] [--repeats 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from producer import processes
from producer.api_keys import ApiKeyStore
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rtf", type=float, default=0.1, help="placeholder wall seconds per second of audio")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
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
