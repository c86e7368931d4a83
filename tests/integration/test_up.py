"""`echoforge up` on embedded defaults: no Redis or storage configured, a demo job runs to completion."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import soundfile as sf

from producer import processes
from tests.services import REPO


def test_up_runs_the_demo_job_and_stops_cleanly(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ECHOFORGE_")}
    cli = Path(sys.executable).parent / "echoforge"
    done = subprocess.run(
        [str(cli), "up", "--exit-after-job", "--data-dir", str(tmp_path / "data"),
         "--flower-port", str(processes.free_port())],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=240,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "demo job   succeeded" in done.stdout
    assert "flower     http://127.0.0.1:" in done.stdout
    wav_url = next(line.split()[-1] for line in done.stdout.splitlines() if line.startswith("narration"))
    wav = Path(wav_url.removeprefix("file://"))
    assert wav.is_relative_to(tmp_path / "data" / "outputs")
    info = sf.info(str(wav))
    assert (info.samplerate, info.channels) == (24_000, 1) and info.duration > 1
    leftovers = subprocess.run(["pgrep", "-f", str(tmp_path / "data")], capture_output=True, text=True)
    assert leftovers.stdout == "", "every child process was stopped"


def test_up_stays_up_until_ctrl_c_then_stops_every_child(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ECHOFORGE_")}
    cli = Path(sys.executable).parent / "echoforge"
    proc = subprocess.Popen([str(cli), "up", "--data-dir", str(tmp_path / "data"),
                             "--flower-port", str(processes.free_port())],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if line.startswith("EchoForge is running"):
            break
    assert any(line.startswith("demo job   succeeded") for line in seen), "".join(seen)
    children = psutil.Process(proc.pid).children(recursive=True)
    assert len(children) >= 3, "redis, worker (and its pool child) and flower"
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 0
    assert "stopping..." in proc.stdout.read()
    _, alive = psutil.wait_procs(children, timeout=10)
    assert alive == []
