"""The CSM model layer on a tiny random CSM checkpoint, loaded through the same code users use."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
import soundfile as sf
import torch

from producer.settings import Settings
from tests.csm_checkpoint import build_tiny_checkpoint
from worker.models import (
    SAMPLE_RATE,
    CSMModel,
    CSMModelLoadError,
    CSMModelNotFoundError,
    PlaceholderCSMModel,
    Segment,
    create_csm_model,
)
from worker.models.csm_model import SAMPLES_PER_FRAME, frame_budget
from worker.models.device import select_device
from worker.models.engine import compute_dtype
from worker.runtime import Runtime

REPO = Path(__file__).resolve().parents[2]
TEXT = "The lighthouse keeper counted the waves."
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU with 2 GB free")


@pytest.fixture(scope="module")
def model(tiny_checkpoint: Path) -> CSMModel:
    return CSMModel(str(tiny_checkpoint), device="cpu")


def test_generation_returns_24k_float32_matching_the_frames_generated(model: CSMModel) -> None:
    audio, rate = model.generate_speech(TEXT, speaker_id=0, temperature=0.8, top_k=20, max_audio_length_ms=1200)
    stats = model.last_generation
    assert stats is not None
    assert rate == SAMPLE_RATE and audio.dtype == np.float32 and audio.ndim == 1
    assert 1 <= stats.frames <= stats.frame_cap == 15
    assert len(audio) + stats.trimmed_samples == stats.frames * SAMPLES_PER_FRAME
    dtype = str(compute_dtype("cpu")).removeprefix("torch.")  # bf16 where the CPU has bf16 arithmetic, else fp32
    assert model.describe() == {"kind": "csm", "id": model.model_id, "revision": None, "device": "cpu",
                                "fallback_reason": None, "dtype": dtype, "format": "transformers",
                                "codec": "transformers-mimi"}


def test_a_16khz_reference_segment_works_as_context(model: CSMModel) -> None:
    model.generate_speech(TEXT, max_audio_length_ms=240)
    alone = model.last_generation
    reference = (0.1 * np.sin(np.linspace(0, 2000, 16_000))).astype(np.float32)  # 1 s at 16 kHz
    audio, _ = model.generate_speech(TEXT, context=[Segment(1, "Hello there.", reference, 16_000)],
                                     max_audio_length_ms=240)
    with_context = model.last_generation
    assert alone is not None and with_context is not None
    # 1 s resampled to 24 kHz is 13 Mimi frames, plus the segment's text tokens.
    assert with_context.prompt_tokens >= alone.prompt_tokens + 13
    assert len(audio) > 0


def test_frame_budget_caps_runaway_generation_by_text_length() -> None:
    assert frame_budget("Hi.") < frame_budget("A much longer sentence, with several clauses, to read.")
    assert frame_budget("x" * 60) == 150  # (2 s + 60 chars at 6 per s) at 12.5 frames/s
    assert frame_budget("x" * 6000, max_audio_length_ms=800) == 10


def test_context_that_fills_the_position_budget_is_refused(tmp_path: Path) -> None:
    small = build_tiny_checkpoint(tmp_path / "short", max_positions=40)
    with pytest.raises(Exception, match="positions"):
        CSMModel(str(small), device="cpu").generate_speech("word " * 60)


def test_missing_path_is_not_found_with_a_fix(tmp_path: Path) -> None:
    with pytest.raises(CSMModelNotFoundError, match="ECHOFORGE_MODEL_PATH"):
        CSMModel(str(tmp_path / "nowhere"), device="cpu")


def test_uncached_hub_model_is_not_found_quickly() -> None:
    with pytest.raises(CSMModelNotFoundError, match="no-such-org/no-such-model"):
        CSMModel(None, device="cpu", model_id="no-such-org/no-such-model")


def test_corrupted_weights_are_a_load_error(tiny_checkpoint: Path, tmp_path: Path) -> None:
    broken = Path(shutil.copytree(tiny_checkpoint, tmp_path / "broken"))
    (broken / "model.safetensors").write_bytes(b"\x00not a safetensors file" * 100)
    with pytest.raises(CSMModelLoadError, match="cannot load"):
        CSMModel(str(broken), device="cpu")


def test_create_falls_back_to_the_placeholder_only_when_allowed(tiny_checkpoint: Path, tmp_path: Path) -> None:
    real = create_csm_model(model_path=str(tiny_checkpoint), device="cpu", settings=Settings(end_check_frames=3))
    assert isinstance(real, CSMModel) and real.engine is not None and real.engine.check_every == 3
    fallback = create_csm_model(model_path=str(tmp_path / "missing"), settings=Settings(allow_placeholder=True))
    assert isinstance(fallback, PlaceholderCSMModel)
    assert fallback.fallback_reason is not None and "missing" in fallback.fallback_reason
    with pytest.raises(CSMModelNotFoundError):
        create_csm_model(model_path=str(tmp_path / "missing"), settings=Settings(allow_placeholder=False))
    assert isinstance(create_csm_model(use_placeholder=True, settings=Settings()), PlaceholderCSMModel)


SECRET = "hf_not_a_real_token_0123456789"
GPU_FAILURES = [torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB"),
                torch.AcceleratorError("CUDA error: no kernel image is available for execution on the device")]


def _fake_gpu(monkeypatch: pytest.MonkeyPatch, move_failure: BaseException | None = None,
              probe_failure: BaseException | None = None) -> None:
    """A CUDA GPU with 80 GB free as far as torch's queries tell (no GPU runs here), on which moving weights raises
    `move_failure` and asking for free memory raises `probe_failure`; moves to the CPU work as ever."""
    def mem_get_info(index: int | None = None) -> tuple[int, int]:
        if probe_failure is not None:
            raise probe_failure
        return 80 * 1024**3, 80 * 1024**3

    move = torch.nn.Module.to

    def to(self: torch.nn.Module, *args: Any, **kwargs: Any) -> torch.nn.Module:
        device = torch._C._nn._parse_to(*args, **kwargs)[0]
        if device is not None and device.type == "cuda" and move_failure is not None:
            raise move_failure
        return move(self, *args, **kwargs)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "mem_get_info", mem_get_info)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: "Fake GPU")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    monkeypatch.setattr(torch.nn.Module, "to", to)


@pytest.mark.parametrize("failure", GPU_FAILURES, ids=["out-of-memory", "cuda-error"])
def test_a_model_the_gpu_fails_to_load_runs_on_the_cpu_and_the_job_record_says_why(
        tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch, failure: BaseException) -> None:
    monkeypatch.setenv("HF_TOKEN", SECRET)
    _fake_gpu(monkeypatch, move_failure=failure)
    assert select_device() == ("cuda:0", None), "the fake GPU is the device the factory tries first"
    model = create_csm_model(model_path=str(tiny_checkpoint), settings=Settings())
    assert isinstance(model, CSMModel) and model.device == "cpu"
    info = Runtime(Settings(), cast(Any, None), cast(Any, None), model).model_info()  # what a job record stores
    assert info["kind"] == "csm" and info["device"] == "cpu"
    reason = f"cuda:0: cannot move {tiny_checkpoint} to cuda:0 ({type(failure).__name__}: {failure})"
    assert info["fallback_reason"] == reason and SECRET not in json.dumps(info)
    audio, _ = model.generate_speech("Hi.", max_audio_length_ms=160)
    assert len(audio) > 0


def test_a_gpu_that_fails_when_asked_for_free_memory_leaves_the_model_on_the_cpu(
        tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_gpu(monkeypatch, probe_failure=torch.AcceleratorError("CUDA error: out of memory"))
    model = create_csm_model(model_path=str(tiny_checkpoint), settings=Settings())
    assert isinstance(model, CSMModel) and model.device == "cpu"
    assert model.describe()["fallback_reason"] == "CUDA failed: AcceleratorError: CUDA error: out of memory"


def test_device_selection() -> None:
    assert select_device("cpu") == ("cpu", None)
    if torch.cuda.is_available():
        assert select_device("cuda") == ("cuda:0", None)
        assert select_device(f"cuda:{torch.cuda.device_count()}")[0] == "cpu"
    else:
        assert select_device("cuda") == ("cpu", "CUDA is not available")
    with pytest.raises(ValueError, match="unknown device"):
        select_device("tpu")


@needs_cuda
def test_cuda_path_runs_bf16_with_an_fp32_codec_and_cleanup_frees_memory(tiny_checkpoint: Path) -> None:
    model = create_csm_model(model_path=str(tiny_checkpoint), settings=Settings())
    assert isinstance(model, CSMModel) and model.device == "cuda:0" and model.fallback_reason is None
    assert next(model.model.backbone_model.parameters()).dtype == torch.bfloat16
    assert next(model.model.codec_model.parameters()).dtype == torch.float32
    audio, rate = model.generate_speech(TEXT, max_audio_length_ms=800)
    assert rate == SAMPLE_RATE and audio.dtype == np.float32 and np.isfinite(audio).all()
    allocated = torch.cuda.memory_allocated()
    model.cleanup()
    assert torch.cuda.memory_allocated() < allocated


def test_save_audio_and_cleanup(tiny_checkpoint: Path, tmp_path: Path) -> None:
    model = CSMModel(str(tiny_checkpoint), device="cpu")
    audio, rate = model.generate_speech("Hello.", max_audio_length_ms=400)
    for name in ("speech.wav", "speech.flac"):
        info = sf.info(str(model.save_audio(audio, rate, tmp_path / name)))
        assert (info.samplerate, info.channels) == (SAMPLE_RATE, 1)
    model.cleanup()
    assert model.model is None


def test_example_script_runs_with_and_without_weights(tiny_checkpoint: Path, tmp_path: Path) -> None:
    script = REPO / "examples" / "csm_model_example.py"
    for extra, kind in ((["--model-path", str(tiny_checkpoint)], "'csm'"), ([], "'placeholder'")):
        out = tmp_path / f"example-{kind.strip(chr(39))}.wav"
        done = subprocess.run([sys.executable, str(script), *extra, "--text", "Hi.", "-o", str(out)],
                              capture_output=True, text=True, timeout=180, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert f"'kind': {kind}" in done.stdout and out.exists()


@pytest.mark.parametrize(
    ("cause", "kind", "says"),
    [
        ("GatedRepoError", CSMModelNotFoundError, "HF_TOKEN"),
        ("RepositoryNotFoundError", CSMModelNotFoundError, "not found on the Hub"),
        ("RevisionNotFoundError", CSMModelNotFoundError, "no such revision"),
        ("LocalEntryNotFoundError", CSMModelNotFoundError, "local Hugging Face cache"),
    ],
)
def test_hub_errors_become_not_found_with_the_fix(cause: str, kind: type, says: str) -> None:
    from huggingface_hub import errors

    from worker.models.loading import classify_error

    try:
        try:
            raise getattr(errors, cause)("from the hub")
        except Exception as inner:
            raise OSError("transformers wrapped it") from inner
    except OSError as outer:
        error = classify_error(outer, "sesame/csm-1b")
    assert isinstance(error, kind) and says in str(error)
