"""`echoforge up` on embedded defaults: no Redis or storage configured, a demo job runs to completion."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import httpx
import psutil
import soundfile as sf

from tests.services import start_up


def test_up_runs_the_demo_job_and_stops_cleanly(tmp_path: Path) -> None:
    proc = start_up(tmp_path / "data", "--exit-after-job")
    try:
        stdout, _ = proc.communicate(timeout=240)
    finally:
        proc.kill()
    assert proc.returncode == 0, stdout
    assert "demo job   succeeded" in stdout
    assert "flower     http://127.0.0.1:" in stdout
    assert not (tmp_path / "data" / "stack.json").exists(), "removed when `up` stops"
    wav_url = next(line.split()[-1] for line in stdout.splitlines() if line.startswith("narration"))
    wav = Path(wav_url.removeprefix("file://"))
    assert wav.is_relative_to(tmp_path / "data" / "outputs")
    info = sf.info(str(wav))
    assert (info.samplerate, info.channels) == (24_000, 1) and info.duration > 1
    leftovers = subprocess.run(["pgrep", "-f", str(tmp_path / "data")], capture_output=True, text=True)
    assert leftovers.stdout == "", "every child process was stopped"


def test_up_stays_up_until_ctrl_c_then_stops_every_child(tmp_path: Path) -> None:
    proc = start_up(tmp_path / "data")
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if line.startswith("EchoForge is running"):
            break
    assert any(line.startswith("demo job   succeeded") for line in seen), "".join(seen)
    api_line = next(line for line in seen if line.startswith("api "))
    url, key = api_line.split()[1], api_line.rstrip(")\n").split()[-1]
    listed = httpx.get(f"{url}v1/narrations", headers={"Authorization": f"Bearer {key}"}, timeout=10)
    assert listed.status_code == 200, "the API answers with the printed development key"
    children = psutil.Process(proc.pid).children(recursive=True)
    assert len(children) >= 4, "redis, worker (and its pool child), flower and the API"
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 0
    assert "stopping..." in proc.stdout.read()
    _, alive = psutil.wait_procs(children, timeout=10)
    assert alive == []
