"""`echoforge up` on embedded defaults: no Redis or storage configured, a demo job runs to completion."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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
