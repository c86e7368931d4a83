"""Where an `echoforge serve` process spends its CPU: py-spy's raw stacks summed by layer and by step of a submit.

bench/api.py records the API process with `py-spy record --gil` (only the thread holding the GIL is sampled, i.e.
where the process computes Python) during a burst of submits; this summarizes such a file again:

    python bench/api_profile.py api-profile.txt
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# By the package of the innermost frame (self time); py-spy names a frame "function (package/module.py:line)".
LAYERS = [("HTTP server: uvicorn + h11", {"uvicorn", "h11", "httptools"}),
          ("web framework: FastAPI, Starlette, pydantic", {"fastapi", "starlette", "pydantic", "pydantic_core"}),
          ("asyncio event loop", {"asyncio (stdlib)", "selectors (stdlib)", "uvloop"}),
          ("worker-thread hand-offs: anyio, threading", {"anyio", "threading (stdlib)", "concurrent (stdlib)",
                                                        "queue (stdlib)", "sniffio"}),
          ("Celery + kombu: send_task, publish", {"celery", "kombu", "vine", "amqp"}),
          ("redis-py", {"redis"}),
          ("JSON (stdlib)", {"json (stdlib)"}),
          ("EchoForge code (producer/)", {"producer"})]
OTHER = "other (stdlib helpers, interpreter)"
# The steps of one submit, by a frame anywhere in a sample's stack (inclusive).
STEPS = [("API key check (ApiKeyStore.verify)", r"^ApiKeyStore\.verify "),
         ("body read + NarrationRequest.parse", r"^(NarrationRequest\.parse|json_object) "),
         ("NarrationClient.submit", r"^NarrationClient\.submit "),
         ("  JobStore.create (Lua script)", r"^JobStore\.create "),
         ("  send_job (Celery send_task)", r"^send_job "),
         ("    of which the task-sent event", r"^EventDispatcher\.(publish|send) "),
         ("  JobStore.mark_sent", r"^JobStore\.mark_sent "),
         ("response: Job.to_public + JSONResponse", r"^(Job\.to_public|JSONResponse\.render) ")]


@contextmanager
def recording(py_spy: str, pid: int, out: Path, rate: int = 250) -> Iterator[None]:
    """py-spy samples process `pid` (GIL holder only) while the block runs; its raw stacks land in `out`."""
    recorder = subprocess.Popen([py_spy, "record", "--gil", "--rate", str(rate), "--format", "raw", "-o", str(out),
                                 "-p", str(pid)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # attached
    try:
        yield
    finally:
        recorder.send_signal(signal.SIGINT)  # as Ctrl-C: py-spy writes what it sampled, then exits
        recorder.wait(timeout=30)


def _package(path: str) -> str:
    top = path.split("/", 1)[0].removesuffix(".py")
    return f"{top} (stdlib)" if top in sys.stdlib_module_names else top


def shares(raw: str) -> dict[str, list[tuple[str, float]]]:
    """The share of samples by layer (self time) and by step of a submit (inclusive)."""
    layers = dict.fromkeys([label for label, _ in LAYERS] + [OTHER], 0)
    steps = dict.fromkeys((label for label, _ in STEPS), 0)
    total = 0
    for line in raw.splitlines():
        stack, _, number = line.rpartition(" ")
        frames, count = stack.split(";"), int(number)
        total += count
        package = _package(frames[-1][frames[-1].rfind("(") + 1:].rsplit(":", 1)[0])
        layers[next((label for label, packages in LAYERS if package in packages), OTHER)] += count
        for label, pattern in STEPS:
            if any(re.search(pattern, frame) for frame in frames):
                steps[label] += count
    total = total or 1
    return {"self_by_layer": [(label, n / total) for label, n in layers.items()],
            "inclusive_by_step": [(label, steps[label] / total) for label, _ in STEPS]}


def print_shares(found: dict[str, list[tuple[str, float]]]) -> None:
    for label, share in found["self_by_layer"]:
        print(f"  {share * 100:5.1f}%  {label}")
    print("  steps of a submit (inclusive):")
    for label, share in found["inclusive_by_step"]:
        print(f"  {share * 100:5.1f}%  {label}")


if __name__ == "__main__":
    print_shares(shares(Path(sys.argv[1]).read_text()))
