"""ECHOFORGE_TORCH_COMPILE: the engine's depth-decoder frame and backbone step through torch.compile (inductor, a
real C++ compile on the CPU) give the codes the eager engine gives; a compile that fails is recorded in the model's
info and the step runs eagerly, the job unharmed."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from torch._inductor import codecache
from torch._inductor import config as inductor_config

from producer.settings import Settings
from worker.models import CSMModel, create_csm_model
from worker.models.compiled import CompiledStep
from worker.models.engine import Sampling

TEXTS = ["The lighthouse keeper counted the waves.", "Hi.", "A much longer sentence, with several clauses, to read."]
CAPS = [10, 4, 7]  # rows leave at different frames: the batch shrinks, so the compiled steps see new shapes
SAMPLINGS = {"greedy": [Sampling(1.0, 1)] * 3, "sampled": [Sampling(0.9, 50, seed=i) for i in range(3)]}


@pytest.fixture(scope="module")
def eager(tiny_checkpoint: Path) -> CSMModel:
    return CSMModel(str(tiny_checkpoint), device="cpu", dtype="float32")


def _compiled_model(checkpoint: Path) -> CSMModel:
    """fp32 as the eager model (in bf16, inductor computes fused pointwise ops in fp32: closer, not equal)."""
    model = CSMModel(str(checkpoint), device="cpu", dtype="float32")
    assert model.engine is not None
    model.engine.compile_steps()
    return model


def test_the_setting_compiles_the_engine_steps(tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ECHOFORGE_TORCH_COMPILE", "true")
    model = create_csm_model(str(tiny_checkpoint), device="cpu", settings=Settings())
    assert isinstance(model, CSMModel) and model.engine is not None and model.engine.compiled
    assert model.describe()["torch_compile"] is True
    monkeypatch.setenv("ECHOFORGE_TORCH_COMPILE", "false")
    model = create_csm_model(str(tiny_checkpoint), device="cpu", settings=Settings())
    assert isinstance(model, CSMModel) and model.engine is not None and not model.engine.compiled
    assert "torch_compile" not in model.describe()


def _codes(model: CSMModel, sampling: list[Sampling]) -> list[torch.Tensor]:
    assert model.engine is not None
    prefix, _ = model._prefix([])
    prompts = [model.engine.embed_prompt(model._turn_ids(text, 0)) for text in TEXTS]
    return model.engine.generate(prefix, prompts, CAPS, sampling)


def test_a_failed_compile_is_recorded_and_the_step_runs_eagerly(
        eager: CSMModel, tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    # Inductor cannot write its cache (a read-only or mis-mounted volume), and has nothing compiled to reuse.
    torch._dynamo.reset()
    codecache.CppCodeCache.cache_clear()
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "a-file" / "inductor"))
    model = _compiled_model(tiny_checkpoint)
    with caplog.at_level(logging.WARNING, logger="worker.models.compiled"), inductor_config.patch(fx_graph_cache=False):
        codes = _codes(model, SAMPLINGS["greedy"])
    assert all(torch.equal(a, b) for a, b in zip(codes, _codes(eager, SAMPLINGS["greedy"]), strict=True))
    info = model.describe()
    assert [failure.split(":")[:2] for failure in info["compile_failures"]] == [
        ["depth decoder", " NotADirectoryError"], ["backbone step", " NotADirectoryError"],
        ["frame store", " NotADirectoryError"]]
    assert "torch.compile failed for the depth decoder" in caplog.text
    torch._dynamo.reset()  # the next compile starts afresh, its cache writable again


def test_a_step_past_the_recompile_limit_runs_eagerly(eager: CSMModel, tiny_checkpoint: Path) -> None:
    # Every new shape (here the batch, shrinking as rows leave) is one more compile; past the limit dynamo raises.
    torch._dynamo.reset()
    model = _compiled_model(tiny_checkpoint)
    with torch._dynamo.config.patch(recompile_limit=1):
        codes = _codes(model, SAMPLINGS["greedy"])
    assert all(torch.equal(a, b) for a, b in zip(codes, _codes(eager, SAMPLINGS["greedy"]), strict=True))
    assert any("FailOnRecompileLimitHit" in failure for failure in model.describe()["compile_failures"])
    torch._dynamo.reset()


@pytest.mark.parametrize("how", SAMPLINGS)
def test_compiled_steps_give_the_eager_codes(eager: CSMModel, tiny_checkpoint: Path, how: str) -> None:
    model = _compiled_model(tiny_checkpoint)
    codes = _codes(model, SAMPLINGS[how])
    assert [len(c) for c in codes] == CAPS
    assert all(torch.equal(a, b) for a, b in zip(codes, _codes(eager, SAMPLINGS[how]), strict=True))
    engine = model.engine
    assert engine is not None and not engine.compile_failures
    depth, backbone, store = engine.depth_frame, engine.backbone_step, engine.store_frame
    assert isinstance(depth, CompiledStep) and isinstance(backbone, CompiledStep) and isinstance(store, CompiledStep)
    frames = max(CAPS)  # every frame of the batch served by compiled code
    assert (depth.calls, backbone.calls, store.calls) == (frames, frames - 1, frames)
    assert model.describe()["torch_compile"] is True


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_compiled_steps_under_cuda_graphs_give_the_eager_codes_on_cuda(tiny_checkpoint: Path) -> None:
    eager_cuda = CSMModel(str(tiny_checkpoint), device="cuda", dtype="float32")
    assert eager_cuda.engine is not None
    eager_cuda.engine.use_cuda_graphs = False
    model = CSMModel(str(tiny_checkpoint), device="cuda", dtype="float32")
    assert model.engine is not None and model.engine.use_cuda_graphs
    model.engine.compile_steps()
    for sampling in SAMPLINGS.values():
        codes, expected = _codes(model, sampling), _codes(eager_cuda, sampling)
        assert all(torch.equal(a, b) for a, b in zip(codes, expected, strict=True))
    assert not model.engine.compile_failures and not model.engine.graph_failures


def test_the_dispatch_bench_counts_each_kernel_a_compiled_step_launches() -> None:
    from torch._inductor.utils import run_and_get_code

    from bench.dispatch import kernel_calls

    def step(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return torch.relu(x @ w) * 2 + (x @ w.t()).sum(-1, keepdim=True)  # two matmuls, then the rest in one kernel

    torch._dynamo.reset()
    with inductor_config.patch(fx_graph_cache=False):
        _, sources = run_and_get_code(torch.compile(step, fullgraph=True), torch.randn(64, 64), torch.randn(64, 64))
    assert sum(kernel_calls(source) for source in sources) == 3
