"""What the HTTP API adds to a submit, how many submits per second one API process accepts, and SSE fan-out.

One run, one Redis (and a moto S3 server: tests.services.bench_services), one real `echoforge serve` process:

(a) sequential latency: N submits through NarrationClient.submit in this process (the baseline) against N
    `POST /v1/narrations` through one keep-alive httpx client; p50/p99/min/max, the median of R repeats.
(b) throughput: C concurrent clients submitting a burst: C threads sharing one NarrationClient (the baseline), an
    httpx AsyncClient with C requests in flight, and C bare keep-alive connections (a load generator that costs
    next to nothing, so that on a small machine it leaves the CPU to the API); accepted (202) submits per second,
    and the API process's CPU time per request.
(c) SSE fan-out: M clients watch J jobs (M/J each) through /v1/narrations/{id}/events until they end, run by a
    placeholder worker: the time from a job's end (its finished_at) to each watcher, and to its last watcher,
    seeing the terminal event.

No worker runs in (a) and (b): jobs stay queued. Redis is flushed between rounds (and the key made again).
Targets on a 2-core machine: the API adds <= 3 ms p50 over the client; >= 500 accepted submits/s, one API process.

    ./dev bench api [--n 500] [--repeats 3] [--concurrency 1 8 32] [--burst 2000] [--watchers 50 200] [--json]
                    [--py-spy PATH] [--api-env NAME=VALUE]

--py-spy PATH (pip install py-spy) adds one more round with the API process under `py-spy record --gil` and says
where its CPU time goes (bench/api_profile.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import statistics
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
import psutil
import redis

from bench.api_profile import print_shares, recording, shares
from producer import processes
from producer.api_keys import ApiKeyStore
from producer.client import NarrationClient
from producer.settings import Settings
from producer.states import JobState
from tests import services

TEXT = "A short line, read aloud."
TENANT = "bench"
TARGET_ADDED_P50_MS = 3.0
TARGET_SUBMITS_PER_S = 500.0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def summary(values: list[float]) -> dict[str, float]:
    return {"p50": percentile(values, 50), "p99": percentile(values, 99), "min": min(values), "max": max(values)}


def machine() -> dict[str, Any]:
    """The CPU and its features that matter (a figure from this machine is a ratio, not an absolute)."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "?")
    flags = next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), [])
    wanted = [f for f in flags if f in ("avx2", "avx512f", "avx512_bf16") or f.startswith("amx")]
    return {"cpu": model, "cores": psutil.cpu_count(), "features": wanted, "python": platform.python_version(),
            "load_average_1m": os.getloadavg()[0]}


class Stack:
    """The services of one run: Redis, an API process, a key; `fresh()` empties Redis and makes the key again."""

    def __init__(self, settings: Settings, tmp: Path, api_env: dict[str, str] | None = None) -> None:
        self.settings, self.tmp = settings, tmp
        self.quota_env = _lifted_limits()
        self.process, self.url = services.start_api(settings, tmp, {**self.quota_env, **(api_env or {})})
        self.api = psutil.Process(self.process.pid)
        self.client = NarrationClient(settings)
        self.headers: dict[str, str] = {}

    def fresh(self) -> None:
        services.flush(self.settings.redis_url)
        _, token = ApiKeyStore(redis.Redis.from_url(self.settings.redis_url)).create(TENANT)
        self.headers = {"Authorization": f"Bearer {token}"}

    def api_cpu_s(self) -> float:
        times = self.api.cpu_times()
        return float(times.user + times.system)

    def close(self) -> None:
        self.client.close()
        processes.stop(self.process, grace_s=10)


def _lifted_limits() -> dict[str, str]:
    """Rate limits and quotas (where these settings exist) raised so they do not throttle the benchmark."""
    off = ("tenant_rate_limit_per_s", "tenant_max_queued_jobs", "tenant_max_chars_per_day", "max_queue_depth")
    return {f"ECHOFORGE_{name.upper()}": "0" for name in off if name in Settings.model_fields}  # 0: no limit


def timed(n: int, one: Callable[[], None]) -> list[float]:
    for _ in range(20):  # warm-up: connections, code paths
        one()
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        one()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def latency(stack: Stack, n: int, repeats: int) -> dict[str, Any]:
    """(a): the median over `repeats` of each statistic, for the client and the API, and the API's addition."""
    rounds: dict[str, list[dict[str, float]]] = {"client": [], "api": []}
    with httpx.Client(base_url=stack.url, timeout=30) as http:
        def via_client() -> None:
            stack.client.submit({"text": TEXT}, tenant=TENANT)

        def via_api() -> None:
            response = http.post("/v1/narrations", json={"text": TEXT}, headers=stack.headers)
            assert response.status_code == 202, response.text

        for _ in range(repeats):
            stack.fresh()
            rounds["client"].append(summary(timed(n, via_client)))
            stack.fresh()
            rounds["api"].append(summary(timed(n, via_api)))
    result: dict[str, Any] = {side: {stat: statistics.median(r[stat] for r in runs)
                                     for stat in ("p50", "p99", "min", "max")} for side, runs in rounds.items()}
    result["added_p50_ms"] = result["api"]["p50"] - result["client"]["p50"]
    result["added_p99_ms"] = result["api"]["p99"] - result["client"]["p99"]
    return result


def client_throughput(stack: Stack, concurrency: int, burst: int) -> float:
    """(b), baseline: `concurrency` threads sharing one NarrationClient submit `burst` jobs."""
    stack.fresh()
    left, lock = [burst], threading.Lock()

    def submitter() -> None:
        while True:
            with lock:
                if left[0] == 0:
                    return
                left[0] -= 1
            stack.client.submit({"text": TEXT}, tenant=TENANT)

    with ThreadPoolExecutor(concurrency) as pool:
        for _ in range(concurrency):  # warm-up: every thread's connection
            pool.submit(stack.client.submit, {"text": TEXT}, None, TENANT).result()
        t0 = time.perf_counter()
        for future in [pool.submit(submitter) for _ in range(concurrency)]:
            future.result()
        return burst / (time.perf_counter() - t0)


async def api_throughput(stack: Stack, concurrency: int, burst: int) -> dict[str, float]:
    """(b), API: `concurrency` requests in flight until `burst` are answered; accepted (202) per second."""
    stack.fresh()
    statuses: dict[int, int] = {}
    left = [burst]
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=stack.url, limits=limits, timeout=60) as http:
        async def post() -> int:
            response = await http.post("/v1/narrations", json={"text": TEXT}, headers=stack.headers)
            return response.status_code

        async def submitter() -> None:
            while left[0] > 0:
                left[0] -= 1
                status = await post()
                statuses[status] = statuses.get(status, 0) + 1

        await asyncio.gather(*(post() for _ in range(concurrency)))  # warm-up: every connection open
        cpu0, t0 = stack.api_cpu_s(), time.perf_counter()
        await asyncio.gather(*(submitter() for _ in range(concurrency)))
        elapsed, cpu = time.perf_counter() - t0, stack.api_cpu_s() - cpu0
    accepted = statuses.get(202, 0)
    return {"accepted_per_s": accepted / elapsed, "refused": burst - accepted, "api_cpu_ms_per_request": cpu / burst
            * 1000, "api_cpu_share": cpu / elapsed}


async def raw_throughput(stack: Stack, concurrency: int, burst: int) -> dict[str, float]:
    """(b), API again, from `concurrency` bare keep-alive HTTP/1.1 connections (asyncio streams, one prepared
    request): the load generator costs next to nothing, so on a small machine the figure is the API's own."""
    stack.fresh()
    url = httpx.URL(stack.url)
    body = json.dumps({"text": TEXT}).encode()
    request = (f"POST /v1/narrations HTTP/1.1\r\nHost: {url.host}:{url.port}\r\nContent-Type: application/json\r\n"
               f"Authorization: {stack.headers['Authorization']}\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    message = request + body
    left, accepted = [burst], [0]

    async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(message)
        head = await reader.readuntil(b"\r\n\r\n")
        length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
        await reader.readexactly(int(length.group(1)) if length else 0)
        return head.startswith(b"HTTP/1.1 202 ")

    async def submitter(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while left[0] > 0:
            left[0] -= 1
            ok = await exchange(reader, writer)  # awaited first: `x += await …` would read x before the wait
            accepted[0] += ok

    streams = await asyncio.gather(*(asyncio.open_connection(url.host, url.port) for _ in range(concurrency)))
    await asyncio.gather(*(exchange(*stream) for stream in streams))  # warm-up
    cpu0, t0 = stack.api_cpu_s(), time.perf_counter()
    await asyncio.gather(*(submitter(*stream) for stream in streams))
    elapsed, cpu = time.perf_counter() - t0, stack.api_cpu_s() - cpu0
    for _, writer in streams:
        writer.close()
    return {"accepted_per_s": accepted[0] / elapsed, "refused": burst - accepted[0],
            "api_cpu_ms_per_request": cpu / burst * 1000, "api_cpu_share": cpu / elapsed}


def throughput(stack: Stack, levels: list[int], burst: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for concurrency in levels:
        client = client_throughput(stack, concurrency, burst)
        via_httpx = asyncio.run(api_throughput(stack, concurrency, burst))
        bare = asyncio.run(raw_throughput(stack, concurrency, burst))
        out[str(concurrency)] = {"client_per_s": client, "api_httpx": via_httpx, "api_bare": bare}
        print(f"  {concurrency:>3} concurrent: client {client:6.1f}/s;  API accepted "
              f"{via_httpx['accepted_per_s']:6.1f}/s from httpx, {bare['accepted_per_s']:6.1f}/s from bare "
              f"connections ({bare['refused']} refused; the API process: {bare['api_cpu_ms_per_request']:.2f} ms "
              f"CPU a request, {bare['api_cpu_share'] * 100:.0f}% of a core)", flush=True)
    return out


async def _watch(http: httpx.AsyncClient, job_id: str, headers: dict[str, str], connected: Callable[[], None]) -> float:
    """Follow one job's events until its terminal state; when (wall clock) that event arrived."""
    async with http.stream("GET", f"/v1/narrations/{job_id}/events", headers=headers) as response:
        assert response.status_code == 200, await response.aread()
        first = True
        async for line in response.aiter_lines():
            if not line.startswith("data:"):
                continue
            if first:
                connected()
                first = False
            if JobState(json.loads(line[5:])["state"]).is_terminal:
                return time.time()
    raise AssertionError(f"the event stream of job {job_id} ended before the job")


async def fanout(stack: Stack, watchers: int, jobs: int) -> dict[str, Any]:
    """(c): `watchers` streams over `jobs` jobs (round robin), all connected before a placeholder worker starts."""
    stack.fresh()
    timeout = httpx.Timeout(30, read=None)  # a stream is quiet until its job moves (pings every 15 s)
    async with httpx.AsyncClient(base_url=stack.url, timeout=timeout,
                                 limits=httpx.Limits(max_connections=watchers + 8)) as http:
        ids = [(await http.post("/v1/narrations", json={"text": TEXT}, headers=stack.headers)).json()["id"]
               for _ in range(jobs)]
        count, everyone = [0], asyncio.Event()

        def connected() -> None:
            count[0] += 1
            if count[0] == watchers:
                everyone.set()

        t0 = time.perf_counter()
        tasks = [asyncio.create_task(_watch(http, ids[i % jobs], stack.headers, connected)) for i in range(watchers)]
        await asyncio.wait_for(everyone.wait(), 120)
        connect_s = time.perf_counter() - t0
        worker = await asyncio.to_thread(services.start_worker, stack.settings, stack.tmp, f"sse{watchers}",
                                         {"ECHOFORGE_USE_PLACEHOLDER": "true"})
        try:
            seen = await asyncio.wait_for(asyncio.gather(*tasks), 600)
        finally:
            await asyncio.to_thread(worker.stop)
    ended = {job_id: stack.client.get(job_id).finished_at or 0.0 for job_id in ids}
    delays = [(seen[i] - ended[ids[i % jobs]]) * 1000 for i in range(watchers)]
    last = [max(d for i, d in enumerate(delays) if ids[i % jobs] == job_id) for job_id in ids]
    return {"watchers": watchers, "jobs": jobs, "connect_all_s": connect_s, "each_watcher_ms": summary(delays),
            "last_watcher_ms": summary(last)}


def profile(stack: Stack, py_spy: str, out: Path, concurrency: int, burst: int) -> dict[str, Any]:
    """One more round of bare connections at `concurrency`, the API process under py-spy; where its time goes."""
    with recording(py_spy, stack.process.pid, out):
        asyncio.run(raw_throughput(stack, concurrency, burst))
    return shares(out.read_text())


def report(figures: dict[str, Any]) -> None:
    lat = figures["latency"]
    print(f"\n(a) sequential submit latency, median of {figures['repeats']} repeats of {figures['n']} (ms):")
    for side in ("client", "api"):
        row = lat[side]
        print(f"  {side:<7} " + "   ".join(f"{stat} {row[stat]:6.2f}" for stat in ("p50", "p99", "min", "max")))
    added_ok = lat["added_p50_ms"] <= TARGET_ADDED_P50_MS
    print(f"  the API adds {lat['added_p50_ms']:.2f} ms p50 ({lat['added_p99_ms']:.2f} ms p99) over the client: "
          f"target <= {TARGET_ADDED_P50_MS} ms {'MET' if added_ok else 'NOT MET'}")
    best = max(max(row["api_httpx"]["accepted_per_s"], row["api_bare"]["accepted_per_s"])
               for row in figures["throughput"].values())
    print(f"(b) best accepted submits/s, one API process: {best:.1f}: target >= {TARGET_SUBMITS_PER_S:.0f} "
          f"{'MET' if best >= TARGET_SUBMITS_PER_S else 'NOT MET'}")
    print("(c) SSE fan-out: job end -> terminal event at the watcher (ms):")
    for row in figures["fanout"]:
        each, last = row["each_watcher_ms"], row["last_watcher_ms"]
        print(f"  {row['watchers']:>4} watchers on {row['jobs']} jobs (all connected in {row['connect_all_s']:.2f} s): "
              f"each p50 {each['p50']:.1f} p99 {each['p99']:.1f} max {each['max']:.1f};  last watcher of a job "
              f"p50 {last['p50']:.1f} p99 {last['p99']:.1f}")
    if "profile" in figures:
        print("where the API process computes (py-spy --gil, bare connections at the highest concurrency):")
        print_shares(figures["profile"])


def run(stack: Stack, args: argparse.Namespace) -> dict[str, Any]:
    figures: dict[str, Any] = {**machine(), "n": args.n, "repeats": args.repeats, "burst": args.burst,
                               "lifted_limits": sorted(stack.quota_env)}
    print(f"(a) {args.repeats} x {args.n} sequential submits each way...", flush=True)
    figures["latency"] = latency(stack, args.n, args.repeats)
    print(f"(b) bursts of {args.burst} submits:", flush=True)
    figures["throughput"] = throughput(stack, args.concurrency, args.burst)
    print(f"(c) SSE fan-out to {args.watchers} watchers...", flush=True)
    figures["fanout"] = [asyncio.run(fanout(stack, m, min(args.jobs_watched, m))) for m in args.watchers]
    if args.py_spy:
        out = Path(args.profile_out).resolve()
        figures["profile"] = profile(stack, args.py_spy, out, max(args.concurrency), args.burst)
        print(f"py-spy raw stacks: {out}")
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=500, help="sequential submits per side and repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--burst", type=int, default=2000, help="submits per throughput round")
    parser.add_argument("--watchers", type=int, nargs="+", default=[50, 200])
    parser.add_argument("--jobs-watched", type=int, default=10, help="jobs the watchers share (round robin)")
    parser.add_argument("--py-spy", help="path of a py-spy binary: profile the API process in one more round")
    parser.add_argument("--profile-out", default="api-profile.txt", help="where py-spy's raw stacks go")
    parser.add_argument("--api-env", action="append", default=[], metavar="NAME=VALUE",
                        help="more environment for the API process (e.g. PYTHONPATH with extra packages)")
    parser.add_argument("--json", action="store_true", help="end with one line of JSON: every figure")
    args = parser.parse_args()
    about = machine()
    print(f"cpu: {about['cpu']} ({about['cores']} cores), features: {' '.join(about['features']) or 'none'}; "
          f"python {about['python']}; load average {about['load_average_1m']:.2f} (other processes share the CPUs)")
    with services.bench_services("echoforge-api-bench-") as (tmp, redis_url, s3_url):
        settings = Settings(redis_url=redis_url, storage_url="s3://bench/narrations", s3_endpoint_url=s3_url)
        stack = Stack(settings, tmp, dict(item.split("=", 1) for item in args.api_env))
        print(f"api: {stack.url} (pid {stack.process.pid}); limits lifted: {sorted(stack.quota_env) or 'none exist'}")
        try:
            figures = run(stack, args)
        finally:
            stack.close()
    figures["load_average_1m_after"] = os.getloadavg()[0]
    report(figures)
    if args.json:
        print(json.dumps(figures, separators=(",", ":")))


if __name__ == "__main__":
    main()
