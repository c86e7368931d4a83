"""Seconds per 80 ms frame on CSM's architecture: the engine vs transformers' plain `generate`, in one run.

The model is CsmConfig()'s architecture (1.77 B parameters counted with the text embeddings and the Mimi codec) with
random weights: compute does not depend on the weights' values. `--backbone-layers` / `--depth-layers` (16 / 4)
reduce the layer counts (widths, heads and vocabularies stay CSM-1B's) for a quicker run; the output says so. The
default (full size, batch 32, 4 frames, 3 repeats) took 5 minutes on the 2-core development machine.
The frame count is forced (random weights never emit the end frame). A figure is the time of one frame of the
generation loop (backbone step, 32 depth-decoder positions, sampling) per sequence: each run stamps the end of
every frame, and its figure is the median of its frame-to-frame intervals, so the prompt's prefill, the first frame
and the codec decode after the last frame are left out (their seconds per run are reported as "outside"). Each
figure is the median of `--repeats` runs, with min and max. Paths, same prompt, same run:

    naive   transformers' plain generate(..., output_audio=True), fp32, batch 1
    plain   the same at the engine's batch, once in each dtype (fp32, bf16): the one in the engine's dtype is the
            like-for-like baseline, the faster one is the best plain configuration on this machine
    engine  CSMModel.generate_batch (worker/models/engine.py) at --batch in its dtype ("auto": bf16 on CUDA and on
            CPUs with bf16 arithmetic, else fp32); on CUDA with the depth decoder's CUDA graphs on and/or off

Two limits are printed beside them, floors rather than promises. The bandwidth bound: the bytes of weights one
frame reads (each weight once per frame for the whole batch, counted from the config, in the engine's dtype) over
the memory bandwidth measured here by a 1 GiB copy; it bounds small batches on a GPU. The compute bound: the
model's FLOPs per frame (weights only, from the config: backbone + 32 depth-decoder positions + heads) at the peak
GEMM throughput measured here with large square matrices in that dtype; it bounds large batches. No frame can cost
less than either; real frames also pay for attention, sampling and kernel launches. Ratios are labelled for what
they compare (engine alone, dtype, batching). `--compile on` runs the engine with its steps compiled
(ECHOFORGE_TORCH_COMPILE); `--compile both` times the eager engine, then the same engine compiled, in one run, and
prints the ratio. The compile happens in the warm-up frames, outside the timed ones.

    ./dev bench generation [--frames 4] [--batch 32 [64 ...]] [--repeats 3] [--device cpu|cuda]
                           [--compile off|on|both] [--json|--figures]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from producer.settings import Settings
from tests.csm_checkpoint import build_tokenizer
from worker.models import CSMModel
from worker.models.csm_model import undecodable_codes
from worker.models.engine import compute_dtype

TEXT = "The lighthouse keeper counted the waves before the dawn, and each one sang."
FRAME_S = 0.08
# Warm-up runs of these lengths: a compiled backbone step meets a second key width and a second cache width (runs
# of different lengths size their caches differently), so its dynamic compile is done before anything is timed.
WARM_FRAMES = (4, 5)
DTYPES = ("float32", "bfloat16")
Say = Callable[[str], None]


@dataclass(frozen=True)
class Timing:
    """Seconds per frame (per sequence, once divided by the batch), one sample per repeat; `outside`: the median
    seconds per run outside the timed frames (prompt prefill, the first frame, codec decode, set-up)."""

    samples: tuple[float, ...]
    outside: float = 0.0

    def per(self, batch: int) -> Timing:
        return Timing(tuple(s / batch for s in self.samples), self.outside)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    def text(self) -> str:
        return (f"{self.median:8.4f}  ({min(self.samples):.4f}-{max(self.samples):.4f}, n={len(self.samples)}; "
                f"{self.outside:.1f} s/run outside)")

    def as_dict(self) -> dict[str, Any]:
        return {"median": round(self.median, 5), "min": round(min(self.samples), 5),
                "max": round(max(self.samples), 5), "samples": [round(s, 5) for s in self.samples],
                "outside_s_per_run": round(self.outside, 3)}


# ---- the model -------------------------------------------------------------------------------------------------


def build_full_size(config: Any = None, device: str = "cpu") -> tuple[Any, Any]:
    """A processor and a random-weight CsmForConditionalGeneration of `config` (default: CSM-1B's architecture),
    built in fp32 directly on `device`."""
    from transformers import CsmConfig, CsmForConditionalGeneration, CsmProcessor, EncodecFeatureExtractor
    from transformers.modeling_utils import no_init_weights

    torch.manual_seed(0)
    with no_init_weights(), torch.device(device):
        model = CsmForConditionalGeneration(config or CsmConfig())
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.02)
    processor = CsmProcessor(feature_extractor=EncodecFeatureExtractor(feature_size=1, sampling_rate=24_000),
                             tokenizer=build_tokenizer())
    return processor, model.eval()


def bench_config(backbone_layers: int | None, depth_layers: int | None) -> Any:
    """CsmConfig() with fewer layers where asked (widths, heads and vocabularies unchanged)."""
    from transformers import CsmConfig

    config = CsmConfig()
    if backbone_layers:
        config.num_hidden_layers = backbone_layers
    if depth_layers:
        config.depth_decoder_config.num_hidden_layers = depth_layers
    return config


def cast(model: Any, dtype: str) -> None:
    """Backbone and depth decoder in `dtype`; the Mimi codec stays fp32 (as the engine keeps it)."""
    model.to(getattr(torch, dtype))
    model.codec_model.to(torch.float32)


def _layer_weights(config: Any) -> int:
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    attention = config.hidden_size * head_dim * 2 * (config.num_attention_heads + config.num_key_value_heads)
    return attention + 3 * config.hidden_size * config.intermediate_size


def frame_flops(config: Any) -> dict[str, float]:
    """FLOPs (2 x multiply-adds) of one frame of one sequence, weights only, from the config: one backbone step and
    codebook 0's head; the depth decoder's layers at its 32 positions, its input projector once (on the backbone's
    state: the codes' inputs are projected once at load) and the other 31 heads."""
    depth = config.depth_decoder_config
    backbone = config.num_hidden_layers * _layer_weights(config) + config.hidden_size * config.vocab_size
    layers = config.num_codebooks * depth.num_hidden_layers * _layer_weights(depth)
    projector = depth.backbone_hidden_size * depth.hidden_size
    heads = (config.num_codebooks - 1) * depth.hidden_size * depth.vocab_size
    return {"backbone": 2.0 * backbone, "depth_decoder": 2.0 * (layers + projector + heads)}


# ---- the machine -----------------------------------------------------------------------------------------------


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def cpu_features() -> dict[str, Any]:
    """The CPU's vector features from /proc/cpuinfo, whether bf16 arithmetic is native, and what torch dispatches to."""
    flags: set[str] = set()
    model = "unknown"
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        key, _, value = line.partition(":")
        if key.strip() == "flags" and not flags:
            flags = set(value.split())
        elif key.strip() == "model name" and model == "unknown":
            model = value.strip()
    native = [name for name in ("amx_bf16", "avx512_bf16") if name in flags]
    return {"model": model, "avx2": "avx2" in flags, "avx512f": "avx512f" in flags,
            "avx512_bf16": "avx512_bf16" in flags, "amx_bf16": "amx_bf16" in flags,
            "bf16": f"native ({', '.join(native)})" if native else "emulated (no AVX512-BF16 or AMX)",
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "onednn_bf16": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()), "threads": torch.get_num_threads()}


def peak_gemm_gflops(dtype: str, device: str) -> float:
    """The best GFLOP/s of large square matmuls (n x n @ n x n) in `dtype` on `device`, over a few sizes."""
    sizes, loops = ((1024, 2048, 4096), 1) if device == "cpu" else ((4096, 8192), 20)
    best = 0.0
    for n in sizes:
        a = torch.randn(n, n, dtype=getattr(torch, dtype), device=device)
        b = torch.randn_like(a)
        a @ b
        for _ in range(3):
            _sync(device)
            t0 = time.perf_counter()
            for _ in range(loops):
                a @ b
            _sync(device)
            best = max(best, 2 * n**3 * loops / (time.perf_counter() - t0) / 1e9)
    return best


def copy_gb_s(device: str, size_mb: int = 1024) -> float:
    """Memory bandwidth: bytes read plus written per second by copying a `size_mb` MB buffer (best of 5)."""
    source = torch.empty(size_mb * 2**20, dtype=torch.uint8, device=device)
    target = torch.empty_like(source)
    best = float("inf")
    for _ in range(5):
        _sync(device)
        t0 = time.perf_counter()
        target.copy_(source)
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * source.numel() / best / 1e9


def weights_gb_s(dtype: str, device: str) -> float:
    """GB/s of weights read by one (8192 x 2048) matrix-vector product (batch 1): what a batch-1 step is bound by."""
    weight = torch.randn(8192, 2048, dtype=getattr(torch, dtype), device=device)
    x = torch.randn(1, 2048, dtype=weight.dtype, device=device)
    for _ in range(3):
        torch.nn.functional.linear(x, weight)
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(20):
        torch.nn.functional.linear(x, weight)
    _sync(device)
    return weight.numel() * weight.element_size() * 20 / (time.perf_counter() - t0) / 1e9


def describe_machine(device: str, say: Say) -> dict[str, Any]:
    features = cpu_features()
    say(f"CPU: {features['model']}, {features['threads']} torch threads; AVX2 {_yn(features['avx2'])}, "
        f"AVX-512F {_yn(features['avx512f'])}, AVX-512-BF16 {_yn(features['avx512_bf16'])}, "
        f"AMX-BF16 {_yn(features['amx_bf16'])}; bf16 arithmetic {features['bf16']}; torch CPU capability "
        f"{features['torch_cpu_capability']}, oneDNN bf16 {_yn(features['onednn_bf16'])}")
    if device.startswith("cuda"):
        properties = torch.cuda.get_device_properties(device)
        say(f"GPU: {properties.name}, {properties.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda}; fp32 "
            f"matmuls {'with' if torch.backends.cuda.matmul.allow_tf32 else 'without'} TF32")
        features["gpu"] = properties.name
    return features


def _load() -> str:
    return " / ".join(f"{x:.1f}" for x in os.getloadavg())


def _yn(value: bool) -> str:
    return "yes" if value else "no"


# ---- the paths -------------------------------------------------------------------------------------------------


Stamps = list[float]


def _frame_times(run: Callable[[int, Stamps], None], frames: int, repeats: int, device: str) -> Timing:
    """Seconds per frame: after warm-up runs of WARM_FRAMES frames, `repeats` runs of 1 + `frames` frames,
    each stamping the end of every frame; a run's figure is the median of its `frames` frame-to-frame intervals
    (the first frame, which carries the prefill, and the codec decode after the last are outside them)."""
    for warm in WARM_FRAMES:
        run(warm, [])
    samples, outside = [], []
    for _ in range(repeats):
        stamps: Stamps = []
        _sync(device)
        t0 = time.perf_counter()
        run(1 + frames, stamps)
        _sync(device)
        intervals = [b - a for a, b in itertools.pairwise(stamps)]
        assert len(intervals) == frames, f"{len(stamps)} frame stamps for {1 + frames} frames"
        samples.append(statistics.median(intervals))
        outside.append(time.perf_counter() - t0 - sum(intervals))
    return Timing(tuple(samples), statistics.median(outside))


def _stamper(stamps: Stamps, device: str) -> Callable[[], None]:
    def stamp() -> None:
        _sync(device)
        stamps.append(time.perf_counter())

    return stamp


def plain_generate(processor: Any, model: Any, frames: int, batch: int, repeats: int, device: str) -> Timing:
    """Seconds per frame per sequence for transformers' own path, in the model's current dtype; a frame starts where
    generate calls the depth decoder's own generate (once per backbone step; wrapped on this instance only; CSM's
    generate ignores custom stopping criteria)."""
    tokenizer = processor.tokenizer
    prompt = f"{tokenizer.bos_token}[0]{TEXT}{tokenizer.eos_token}"
    inputs = processor(text=[prompt] * batch, return_tensors="pt")
    inputs.pop("token_type_ids", None)
    inputs = inputs.to(device)
    # The same guard as the engine's, so random weights cannot sample ids the codec cannot decode.
    sampling = {"do_sample": True, "temperature": 0.9, "top_k": 50, "suppress_tokens": undecodable_codes(model.config)}
    depth_generate = model.depth_decoder.generate

    def run(count: int, stamps: Stamps) -> None:
        stamp = _stamper(stamps, device)

        def stamped(*args: Any, **kwargs: Any) -> Any:
            stamp()
            return depth_generate(*args, **kwargs)

        model.depth_decoder.generate = stamped
        try:
            with torch.inference_mode():
                audio = model.generate(**inputs, output_audio=True, max_new_tokens=count, **sampling,
                                       **{f"depth_decoder_{k}": v for k, v in sampling.items()})
        finally:
            del model.depth_decoder.generate
        assert all(a.numel() == count * 1920 for a in audio), "random weights emitted an end frame; rerun"

    return _frame_times(run, frames, repeats, device).per(batch)


def engine_generate(layer: CSMModel, frames: int, batch: int, repeats: int) -> Timing:
    """Seconds per frame per sequence through CSMModel.generate_batch (prompts, engine, codec decode); a frame ends
    where the engine starts the next one's depth decoder (`CsmEngine._frame`, wrapped on this instance only)."""
    engine = layer.engine
    assert engine is not None and hasattr(engine, "_frame"), "CsmEngine._frame is gone: update the bench's stamp"
    frame = engine._frame
    stamps: Stamps = []
    stamp = _stamper(stamps, layer.device)

    def stamped(*args: Any) -> Any:
        stamp()
        return frame(*args)

    def run(count: int, into: Stamps) -> None:
        stamps.clear()
        results = layer.generate_batch([TEXT] * batch, speaker_id=0, seeds=list(range(batch)),
                                       max_audio_length_ms=count * FRAME_S * 1000)
        assert all(r.stats.frames == count for r in results), "random weights emitted an end frame; rerun"
        into.extend(stamps)  # frame starts: 1 + frames stamps give `frames` whole frames between them

    engine._frame = stamped  # type: ignore[method-assign]
    try:
        return _frame_times(run, frames, repeats, layer.device).per(batch)
    finally:
        del engine._frame


# ---- one run ---------------------------------------------------------------------------------------------------


@dataclass
class Measured:
    """Every timing of one run: naive (fp32, batch 1), plain by (dtype, batch), engine by (batch, CUDA graphs)."""

    naive: Timing | None
    plain: dict[tuple[str, int], Timing]
    engine: dict[tuple[int, bool | None], Timing]
    compiled: dict[int, Timing]  # with --compile both: the compiled engine by batch (graphs as the first setting)


def graph_settings(args: argparse.Namespace) -> list[bool | None]:
    """The engine's CUDA graph settings to time: None (not applicable) off CUDA."""
    if not args.device.startswith("cuda"):
        return [None]
    return {"auto": [True], "on": [True], "off": [False], "both": [True, False]}[args.graphs]


def measure_paths(args: argparse.Namespace, processor: Any, model: Any, engine_dtype: str, say: Say) -> Measured:
    """Each dtype in turn (fp32 first, for naive): plain at every batch, then the engine in its own dtype."""
    measured = Measured(None, {}, {}, {})
    frames, repeats, device = args.frames, args.repeats, args.device
    for dtype in [*DTYPES, *([engine_dtype] if engine_dtype not in DTYPES else [])]:
        cast(model, dtype)
        if dtype == "float32" and "naive" not in args.skip:
            measured.naive = plain_generate(processor, model, frames, 1, repeats, device)
            say(f"naive   plain generate   float32   batch 1                 {measured.naive.text()} s/frame")
        for batch in args.batch if "plain" not in args.skip else []:
            timing = plain_generate(processor, model, frames, batch, repeats, device)
            measured.plain[(dtype, batch)] = timing
            say(f"plain   plain generate   {dtype:<9} batch {batch:<4}              {timing.text()} s/frame/seq")
        if dtype != engine_dtype:
            continue
        layer = CSMModel.from_loaded(processor, model, device=device, dtype=dtype, model_id="random-full-size")
        assert layer.engine is not None
        if args.compile == "on":
            layer.engine.compile_steps()
        for batch in args.batch:
            for graphs in graph_settings(args):
                measured.engine[(batch, graphs)] = time_engine(args, layer, batch, graphs, "generate_batch", say)
        if args.compile == "both":  # the same engine again, its steps compiled, at the first graph setting
            layer.engine.compile_steps()
            for batch in args.batch:
                measured.compiled[batch] = time_engine(args, layer, batch, graph_settings(args)[0], "compiled", say)
            assert not layer.engine.compile_failures, f"torch.compile failed: {layer.engine.compile_failures}"
        layer.engine = None  # the next dtype recasts the same weights
    return measured


def time_engine(args: argparse.Namespace, layer: CSMModel, batch: int, graphs: bool | None, label: str,
                say: Say) -> Timing:
    """The engine's seconds per frame per sequence at `batch` with CUDA graphs `graphs` (None: as it is)."""
    assert layer.engine is not None
    if graphs is not None:
        layer.engine.use_cuda_graphs = graphs
    timing = engine_generate(layer, args.frames, batch, args.repeats)
    say(f"engine  {label:<16} {layer.dtype:<9} batch {batch:<4} graphs {_graphs(graphs):<4}  "
        f"{timing.text()} s/frame/seq")
    return timing


def _graphs(graphs: bool | None) -> str:
    return "n/a" if graphs is None else "on" if graphs else "off"


def _ratio(a: Timing | None, b: Timing | None) -> float | None:
    return None if a is None or b is None else a.median / b.median


def _round(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 5)
    if isinstance(value, dict):
        return {k: _round(v) for k, v in value.items()}
    return value


def batch_result(args: argparse.Namespace, batch: int, measured: Measured, machine: dict[str, Any]) -> dict[str, Any]:
    """The figures of one batch size, under the keys `--json` has always printed and the new ones."""
    dtype, flops = machine["engine_dtype"], sum(machine["flops"].values())
    graphs = graph_settings(args)
    engine = measured.engine[(batch, graphs[0])]
    by_dtype = {d: t for (d, b), t in measured.plain.items() if b == batch}
    same = by_dtype.get(dtype)
    best_dtype = min(by_dtype, key=lambda d: by_dtype[d].median) if by_dtype else None
    best = by_dtype[best_dtype] if best_dtype else None
    limit = flops / (machine["peak_gemm_gflops"][dtype] * 1e9)
    # Each weight is read once per frame for the whole batch (FLOPs / 2 multiply-adds, one weight each per sequence)
    weight_bytes = flops / 2 * torch.finfo(getattr(torch, dtype)).bits / 8
    bandwidth_limit = weight_bytes / (machine["copy_gb_s"] * 1e9) / batch
    timings = {"naive": measured.naive, "engine": engine, **{f"plain_{d}": t for d, t in by_dtype.items()},
               **{f"engine_graphs_{_graphs(g)}": measured.engine[(batch, g)] for g in graphs if g is not None},
               "engine_compiled": measured.compiled.get(batch)}
    return _round({
        "naive_s_per_frame": measured.naive.median if measured.naive else None,
        "plain_s_per_frame_per_seq": same.median if same else None,
        "plain_same_dtype_s_per_frame_per_seq": same.median if same else None,
        "plain_s_per_frame_per_seq_by_dtype": {d: t.median for d, t in by_dtype.items()},
        "best_plain_s_per_frame_per_seq": best.median if best else None, "best_plain_dtype": best_dtype,
        "engine_s_per_frame_per_seq": engine.median, "engine_cuda_graphs": graphs[0],
        "engine_compiled": args.compile == "on", "compiled_vs_eager": _ratio(engine, measured.compiled.get(batch)),
        "batch_size": batch, "speedup": _ratio(measured.naive, engine), "speedup_label": _naive_label(batch, dtype),
        "speedup_vs_plain": _ratio(same, engine), "speedup_vs_best_plain": _ratio(best, engine),
        "aggregate_rtf": engine.median / FRAME_S, "device": args.device, "engine_dtype": dtype,
        "limit_s_per_frame_per_seq": limit, "limit_rtf": limit / FRAME_S,
        "limit_kind": f"compute bound: weight FLOPs per frame at the peak {dtype} GEMM throughput; not a promise",
        "engine_over_limit": engine.median / limit, "matmul_gflops": machine["peak_gemm_gflops"][dtype],
        "bandwidth_limit_s_per_frame_per_seq": bandwidth_limit, "bandwidth_limit_rtf": bandwidth_limit / FRAME_S,
        "bandwidth_limit_kind": "weight bytes read per frame (once per batch) / measured copy bandwidth; a floor",
        "weight_gb_per_frame": weight_bytes / 1e9, "copy_gb_s": machine["copy_gb_s"],
        "engine_over_bandwidth_limit": engine.median / bandwidth_limit,
        "peak_gemm_gflops": machine["peak_gemm_gflops"], "weights_gb_s_batch1": machine["weights_gb_s"],
        "gflop_per_frame": flops / 1e9, "model": machine["model"], "frames": args.frames, "repeats": args.repeats,
        "threads": torch.get_num_threads(), "cpu_features": machine["features"],
        "timings": {name: t.as_dict() for name, t in timings.items() if t is not None},
    })


def _naive_label(batch: int, dtype: str) -> str:
    parts = [f"batching (1 -> {batch})" if batch > 1 else "", "the engine",
             f"dtype (float32 -> {dtype})" if dtype != "float32" else ""]
    return " + ".join(p for p in parts if p)


def report(result: dict[str, Any], say: Say) -> None:
    """The ratios of one batch, each named for what it compares, and the bound."""
    batch, dtype, best = result["batch_size"], result["engine_dtype"], result["best_plain_dtype"]
    say(f"-- batch {batch}, engine in {dtype}, graphs {_graphs(result['engine_cuda_graphs'])}, "
        f"{'compiled' if result['engine_compiled'] else 'eager'}")
    if result["speedup_vs_plain"] is not None:
        say(f"   engine alone (vs plain generate, same dtype {dtype}, same batch): "
            f"{result['speedup_vs_plain']:.2f}x")
    if result["speedup_vs_best_plain"] is not None:
        say(f"   engine vs the best plain configuration here ({best}, batch {batch}): "
            f"{result['speedup_vs_best_plain']:.2f}x")
    by_dtype = result["plain_s_per_frame_per_seq_by_dtype"]
    if len(by_dtype) == 2:
        say(f"   dtype alone (plain float32 / plain bfloat16, batch {batch}): "
            f"{by_dtype['float32'] / by_dtype['bfloat16']:.2f}x")
    if result["compiled_vs_eager"] is not None:
        say(f"   compiled steps alone (eager / compiled engine, same dtype, batch and graphs): "
            f"{result['compiled_vs_eager']:.2f}x")
    if result["speedup"] is not None:
        say(f"   vs naive, i.e. {result['speedup_label']}: {result['speedup']:.2f}x")
    say(f"   aggregate RTF {result['aggregate_rtf']:.4f}; compute bound {result['limit_s_per_frame_per_seq']:.4f} "
        f"s/frame/seq (RTF {result['limit_rtf']:.4f}): {result['gflop_per_frame']:.2f} GFLOP/frame at the peak "
        f"{dtype} GEMM {result['matmul_gflops']:.0f} GFLOP/s, a floor, not a promise; the engine is at "
        f"{result['engine_over_limit']:.1f}x it")
    say(f"   bandwidth bound {result['bandwidth_limit_s_per_frame_per_seq']:.4f} s/frame/seq (RTF "
        f"{result['bandwidth_limit_rtf']:.4f}): {result['weight_gb_per_frame']:.2f} GB of {dtype} weights read per "
        f"frame, once for the batch of {batch}, at the measured {result['copy_gb_s']:,.0f} GB/s; the engine is at "
        f"{result['engine_over_bandwidth_limit']:.1f}x it")


def figures(result: dict[str, Any], graphs: list[bool | None]) -> list[dict[str, Any]]:
    """One self-describing record per figure of one batch (for `--figures` and bench/gpu_check.sh)."""
    batch, dtype, timings = result["batch_size"], result["engine_dtype"], result["timings"]
    common = {"bench": "generation", "device": result["device"], "frames": result["frames"],
              "compiled": result["engine_compiled"]}
    unit = "s/frame/seq"
    rows: list[dict[str, Any]] = []
    if "naive" in timings:
        rows.append({"what": "naive: plain generate", "batch": 1, "dtype": "float32", "graphs": None,
                     **timings["naive"], "unit": "s/frame"})
    for plain_dtype in DTYPES:
        if f"plain_{plain_dtype}" in timings:
            rows.append({"what": "plain generate", "batch": batch, "dtype": plain_dtype, "graphs": None,
                         **timings[f"plain_{plain_dtype}"], "unit": unit})
    for g in graphs:
        timing = timings.get(f"engine_graphs_{_graphs(g)}", timings["engine"])
        rows.append({"what": "engine generate_batch", "batch": batch, "dtype": dtype, "graphs": g, **timing,
                     "unit": unit})
    if "engine_compiled" in timings:
        rows.append({"what": "engine generate_batch, steps compiled", "batch": batch, "dtype": dtype,
                     "graphs": graphs[0], **timings["engine_compiled"], "unit": unit})
    rows.append({"what": "compute bound (a floor, not a promise)", "batch": batch, "dtype": dtype, "graphs": None,
                 "median": result["limit_s_per_frame_per_seq"], "unit": unit})
    rows.append({"what": "bandwidth bound (weights read once per frame per batch)", "batch": batch, "dtype": dtype,
                 "graphs": None, "median": result["bandwidth_limit_s_per_frame_per_seq"], "unit": unit})
    for key, what in (("speedup_vs_plain", "engine vs plain generate, same dtype and batch"),
                      ("speedup_vs_best_plain", f"engine vs best plain ({result['best_plain_dtype']})"),
                      ("speedup", f"engine vs naive: {result['speedup_label']}"),
                      ("compiled_vs_eager", "compiled engine vs eager engine, same dtype, batch and graphs")):
        if result[key] is not None:
            rows.append({"what": what, "batch": batch, "dtype": dtype, "graphs": graphs[0], "median": result[key],
                         "unit": "x"})
    return [{**common, **{("value" if k == "median" else k): v for k, v in row.items() if k != "samples"}}
            for row in rows]


def machine_figures(machine: dict[str, Any], device: str) -> list[dict[str, Any]]:
    return [{"bench": "generation", "what": "peak GEMM (large square matmul)", "batch": None, "dtype": d,
             "graphs": None, "value": round(v, 1), "unit": "GFLOP/s", "device": device}
            for d, v in machine["peak_gemm_gflops"].items()]


def prepare(args: argparse.Namespace, say: Say) -> tuple[Any, Any, dict[str, Any]]:
    """The model and what the run needs to know about it and the machine (features, peak GEMM, FLOPs)."""
    features = describe_machine(args.device, say)
    t0 = time.perf_counter()
    config = bench_config(args.backbone_layers, args.depth_layers)
    processor, model = build_full_size(config, args.device)
    params = sum(p.numel() for p in model.parameters())
    full = (config.num_hidden_layers, config.depth_decoder_config.num_hidden_layers) == (16, 4)
    shape = (f"backbone {config.num_hidden_layers} layers, depth decoder "
             f"{config.depth_decoder_config.num_hidden_layers} layers"
             f"{'' if full else ' (REDUCED from 16 and 4: not the full-size model)'}")
    flops = frame_flops(config)
    say(f"{'full-size' if full else 'reduced'} CSM: {params / 1e9:.2f} B parameters, {shape}; random weights, built "
        f"in {time.perf_counter() - t0:.0f} s; {sum(flops.values()) / 1e9:.2f} GFLOP per frame per sequence "
        f"(backbone {flops['backbone'] / 1e9:.2f}, depth decoder {flops['depth_decoder'] / 1e9:.2f}; weights only)")
    engine_dtype = str(compute_dtype(args.device)).removeprefix("torch.") if args.dtype == "auto" else args.dtype
    peaks = {d: peak_gemm_gflops(d, args.device) for d in dict.fromkeys([*DTYPES, engine_dtype])}
    say("peak GEMM (square matmuls, best of 3 at each size): "
        + ", ".join(f"{d} {v:,.0f} GFLOP/s" for d, v in peaks.items()))
    say(f"device {args.device}, torch {torch.__version__}, {torch.get_num_threads()} threads; engine dtype "
        f"{engine_dtype}; each figure: median (min-max) of {args.repeats} runs' median "
        f"frame time over {args.frames} frames; load average {_load()} (1 / 5 / 15 min) at the start")
    bandwidth = copy_gb_s(args.device)
    say(f"memory bandwidth (1 GiB copy, read + written, best of 5): {bandwidth:,.0f} GB/s")
    machine = {"features": features, "flops": flops, "peak_gemm_gflops": peaks, "engine_dtype": engine_dtype,
               "copy_gb_s": bandwidth,
               "weights_gb_s": weights_gb_s(engine_dtype, args.device),
               "model": {"parameters": params, "backbone_layers": config.num_hidden_layers,
                         "depth_layers": config.depth_decoder_config.num_hidden_layers, "full_size": full}}
    return processor, model, machine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=4, help="frames timed per run (after its first)")
    parser.add_argument("--batch", type=int, nargs="+", default=[Settings().batch_size])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto", help="the engine's dtype: auto, bfloat16 or float32")
    parser.add_argument("--graphs", choices=["auto", "on", "off", "both"], default="auto",
                        help="the engine's CUDA graphs (CUDA only; auto: the engine's default, on)")
    parser.add_argument("--compile", choices=["off", "on", "both"], default="off",
                        help="the engine's steps through torch.compile (both: eager, then compiled, same run)")
    parser.add_argument("--skip", choices=["naive", "plain"], action="append", default=[],
                        help="leave a baseline out (repeatable)")
    parser.add_argument("--backbone-layers", type=int, default=16, help="backbone layers (CSM-1B: 16)")
    parser.add_argument("--depth-layers", type=int, default=4, help="depth-decoder layers (CSM-1B: 4)")
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="one JSON object per batch (the lines go to stderr)")
    output.add_argument("--figures", action="store_true", help="one JSON line per figure (the lines go to stderr)")
    args = parser.parse_args()
    quiet = args.json or args.figures
    say: Say = lambda line: print(line, file=sys.stderr if quiet else sys.stdout, flush=True)  # noqa: E731
    t0 = time.perf_counter()
    processor, model, machine = prepare(args, say)
    measured = measure_paths(args, processor, model, machine["engine_dtype"], say)
    results = [batch_result(args, batch, measured, machine) for batch in args.batch]
    for result in results:
        report(result, say)
    say(f"run took {time.perf_counter() - t0:.0f} s; load average {_load()} at the end")
    if args.json:
        for result in results:
            print(json.dumps(result))
    if args.figures:
        rows = [f for result in results for f in figures(result, graph_settings(args))]
        for row in machine_figures(machine, args.device) + rows:
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
