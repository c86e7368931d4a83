"""Operators dispatched and host syncs per generated frame, on CSM-1B's full-size architecture, at batch 1.

A CPU proxy for GPU launch overhead (issue 18): every ATen operator the engine dispatches is counted with a
`TorchDispatchMode` (views, which launch no kernel on a GPU, are counted apart), and every call that makes the host
wait for the device on CUDA (`.tolist()`, `.item()`, `bool(tensor)`, `.cpu()`, `torch.tensor(...)` built from host
data, `nonzero`) with a `TorchFunctionMode`. The counts depend on the code path, not on the device or the weights'
values, so the random-weight model on the CPU gives the numbers a GPU would launch.

Steady state: the generation loop is run for F and 2F frames (same prompt, same seed) and the difference, divided by
F, is one frame's cost, without the prefill or the first frame. F defaults to the engine's CHECK_EVERY (8), so the
read of the rows' end state the engine makes every F frames (its one host sync) counts, amortized, too. A frame
is split where the engine does it: the depth decoder with sampling (`CsmEngine._frame`: codebook 0's head, then one
depth-decoder step per further codebook) and the rest of the loop (the backbone step, end-of-row checks, storing
the codes). "Per depth step" is
the depth part divided by the codebooks after the first. Targets: depth step <= 40 ops, backbone <= 150 ops per
frame, 0 host syncs per steady-state frame.

`--compile` measures the engine with its steps compiled (ECHOFORGE_TORCH_COMPILE: the depth decoder's frame and the
backbone step through torch.compile, inductor). A compiled step's operators are fused into generated kernels that
the dispatcher never sees, so it is counted apart: each call of a compiled step adds the kernels its generated code
launches (the fused kernels, the library calls such as matmuls, and ATen fallbacks; not allocations or views),
read from that code. The eager operators around the steps are counted as above; a compiled step has no host sync
(fullgraph: a sync would be a graph break, a compile error).

    ./dev bench dispatch [--frames 8] [--backbone-layers 16] [--depth-layers 4] [--compile] [--json]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from torch.overrides import TorchFunctionMode, _pop_mode_temporarily
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes

from bench.generation import FRAME_S, TEXT, bench_config, build_full_size
from worker.models import CSMModel
from worker.models.compiled import CompiledStep
from worker.models.engine import CHECK_EVERY

# Calls that copy device memory to the host (or host lists to the device) and so block the CPU on CUDA.
SYNCS = {"tolist", "item", "__bool__", "cpu", "tensor", "nonzero", "__int__", "__float__", "__index__"}
STEPS = {"depth_frame": "depth", "backbone_step": "loop", "store_frame": "loop"}  # compiled steps: engine attr -> phase
# A kernel launched by inductor's generated code: a fused C++ or Triton kernel, a library call, an ATen fallback.
KERNEL = re.compile(r"^\s+(?:\w+ = )?(?:cpp_fused_\w+\(|triton_\w+\.run\(|extern_kernels\.\w+\(|"
                    r"torch\.ops\.\w+\.\w+)", re.M)


def _is_view(func: Any) -> bool:
    returns = func._schema.returns
    return bool(returns) and all(r.alias_info is not None and not r.alias_info.is_write for r in returns)


class Counts(TorchDispatchMode):
    """ATen operators by phase ("depth" inside the engine's `_frame`, else "loop"), kernels and views apart."""

    def __init__(self) -> None:
        super().__init__()
        self.phase = "loop"
        self.ops: Counter[str] = Counter()
        self.names: Counter[str] = Counter()
        self.compiled_calls: Counter[str] = Counter()  # calls of the engine's compiled steps, by step
        self.compiled_args: dict[str, tuple[Any, ...]] = {}  # the last call's arguments, by step

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kind = "views" if _is_view(func) else "ops"
        self.ops[f"{self.phase}_{kind}"] += 1
        if kind == "ops":
            self.names[f"{self.phase}:{func.overloadpacket.__name__}"] += 1
        return func(*args, **(kwargs or {}))


class Syncs(TorchFunctionMode):
    """Host-device synchronizing calls, by name."""

    def __init__(self, counts: Counts) -> None:
        super().__init__()
        self.counts = counts
        self.calls: Counter[str] = Counter()

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        name = getattr(func, "__name__", "")
        if name in SYNCS:
            self.calls[f"{self.counts.phase}:{name}"] += 1
        return func(*args, **(kwargs or {}))


def kernel_calls(source: str) -> int:
    """Kernels one call of inductor's generated module launches: the kernel calls in its `call` function."""
    body = source[source.index("def call("):]
    end = re.search(r"\n(?=\S|    def )", body[1:])
    return len(KERNEL.findall(body[: end.start() + 1] if end else body))


def compiled_launches(step: CompiledStep, args: tuple[Any, ...]) -> int:
    """Kernels per call of a compiled step, from the code inductor generates for `args`, compiled afresh with their
    shapes fixed (the run may have used a dynamic-shape compile of the same step: the same kernels, sizes symbolic).
    It runs the step once more on the finished run's buffers, which nothing reads after."""
    from torch._inductor import config
    from torch._inductor.utils import run_and_get_code

    torch._dynamo.reset()
    assert step.compiled is not None, f"the {step.name} did not compile: {step.failures}"
    with config.patch(fx_graph_cache=False), torch.inference_mode():
        _, sources = run_and_get_code(step.compiled, *args)
    return sum(kernel_calls(source) for source in sources)


def outside_modes(step: Any, name: str, counts: Counts) -> Callable[..., Any]:
    """`step` run without the counting modes (its kernels are counted from its code); its calls and last args kept."""
    def call(*args: Any) -> Any:
        counts.compiled_calls[name] += 1
        counts.compiled_args[name] = args
        with _pop_mode_temporarily(), _disable_current_modes():
            return step(*args)
    return call


def count_run(layer: CSMModel, frames: int) -> tuple[Counts, Syncs]:
    """Counts of one generation of exactly `frames` frames, inside the engine's generation loop only."""
    engine = layer.engine
    assert engine is not None and hasattr(engine, "_frame") and hasattr(engine, "_run"), \
        "the engine's _frame/_run are gone: update the bench's hooks"
    counts = Counts()
    syncs = Syncs(counts)
    frame, loop, steps = engine._frame, engine._run, {attr: getattr(engine, attr) for attr in STEPS}

    def in_depth(*args: Any) -> Any:
        counts.phase = "depth"
        try:
            return frame(*args)
        finally:
            counts.phase = "loop"

    def counted(*args: Any, **kwargs: Any) -> Any:
        with counts, syncs:
            return loop(*args, **kwargs)

    engine._frame, engine._run = in_depth, counted  # type: ignore[method-assign,assignment]
    if engine.compiled:
        for attr, step in steps.items():
            setattr(engine, attr, outside_modes(step, attr, counts))
    try:
        results = layer.generate_batch([TEXT], speaker_id=0, seeds=[1], max_audio_length_ms=frames * FRAME_S * 1000)
    finally:
        del engine._frame, engine._run
        for attr, step in steps.items():
            setattr(engine, attr, step)
    assert results[0].stats.frames == frames, "random weights emitted an end frame; rerun"
    return counts, syncs


def per_frame(short: Counter[str], long: Counter[str], frames: int) -> dict[str, float]:
    return {key: (long[key] - short[key]) / frames for key in sorted(set(long) | set(short))
            if long[key] != short[key]}


def measure(layer: CSMModel, frames: int, codebooks: int) -> dict[str, Any]:
    count_run(layer, frames)  # warm-up: buffers sized and steps compiled before anything is counted
    (short, short_syncs), (long, long_syncs) = count_run(layer, frames), count_run(layer, 2 * frames)
    ops = per_frame(short.ops, long.ops, frames)
    calls = per_frame(short.compiled_calls, long.compiled_calls, frames)
    launches = {attr: compiled_launches(step, long.compiled_args[attr]) for attr, step in compiled_steps(layer)}
    for attr, kernels in launches.items():  # a compiled call launches its generated code's kernels
        phase = f"{STEPS[attr]}_ops"
        ops[phase] = ops.get(phase, 0.0) + calls.get(attr, 0.0) * kernels
    syncs = per_frame(short_syncs.calls, long_syncs.calls, frames)
    return {
        "compiled": bool(launches),
        "compiled_kernels_per_call": launches,
        "depth_ops_per_frame": ops.get("depth_ops", 0.0),
        "depth_ops_per_step": ops.get("depth_ops", 0.0) / (codebooks - 1),
        "backbone_ops_per_frame": ops.get("loop_ops", 0.0),
        "views_per_frame": ops.get("depth_views", 0.0) + ops.get("loop_views", 0.0),
        "host_syncs_per_frame": sum(syncs.values()),
        "host_syncs": syncs,
        "top_ops": dict(Counter(per_frame(short.names, long.names, frames)).most_common(12)),
    }


def compiled_steps(layer: CSMModel) -> list[tuple[str, CompiledStep]]:
    """The engine's compiled steps by phase (none unless compiled); it must not have fallen back to eager."""
    engine = layer.engine
    assert engine is not None
    if not engine.compiled:
        return []
    assert not engine.compile_failures, f"torch.compile failed, the figures would be eager: {engine.compile_failures}"
    return [(attr, getattr(engine, attr)) for attr in STEPS]


def report(result: dict[str, Any], say: Callable[[str], None]) -> None:
    how = (f"compiled steps, kernels per call {result['compiled_kernels_per_call']} + eager ops around them"
           if result["compiled"] else "eager")
    say(f"per steady-state frame at batch 1 ({result['shape']}; {how}):")
    say(f"  depth decoder + sampling  {result['depth_ops_per_frame']:8.0f} ops  "
        f"({result['depth_ops_per_step']:.1f} per codebook step; target <= 40)")
    say(f"  rest of the loop          {result['backbone_ops_per_frame']:8.0f} ops  (backbone step and "
        "bookkeeping; target <= 150)")
    say(f"  views (no kernel)         {result['views_per_frame']:8.0f}")
    say(f"  host syncs                {result['host_syncs_per_frame']:8.1f}  {result['host_syncs']}  (target 0)")
    say("  most frequent ops: " + ", ".join(f"{k} {v:.0f}" for k, v in result["top_ops"].items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=CHECK_EVERY,
                        help="F: the difference of F and 2F frames is measured (a multiple of the end-check interval)")
    parser.add_argument("--backbone-layers", type=int, default=16, help="backbone layers (CSM-1B: 16)")
    parser.add_argument("--depth-layers", type=int, default=4, help="depth-decoder layers (CSM-1B: 4)")
    parser.add_argument("--compile", action="store_true", help="the engine's steps through torch.compile")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    t0 = time.perf_counter()
    config = bench_config(args.backbone_layers, args.depth_layers)
    processor, model = build_full_size(config)
    layer = CSMModel.from_loaded(processor, model, device="cpu", dtype="float32", model_id="random-full-size")
    if args.compile:
        assert layer.engine is not None
        layer.engine.compile_steps()
    full = (config.num_hidden_layers, config.depth_decoder_config.num_hidden_layers) == (16, 4)
    result = measure(layer, args.frames, int(config.num_codebooks))
    result["shape"] = (f"backbone {config.num_hidden_layers} layers, depth decoder "
                       f"{config.depth_decoder_config.num_hidden_layers} layers"
                       f"{'' if full else ' (REDUCED: not the full-size model)'}")
    result["torch"] = torch.__version__
    result["run_s"] = round(time.perf_counter() - t0, 1)
    if args.json:
        print(json.dumps(result))
    else:
        report(result, print)
        print(f"run took {result['run_s']:.0f} s")


if __name__ == "__main__":
    main()
