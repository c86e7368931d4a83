"""Seconds per 80 ms frame on the full-size CSM architecture: the engine vs plain transformers `generate`, one run.

The model is CsmConfig() defaults (1.63 B parameters) with random weights; compute does not depend on the
weights' values. The frame count is forced (random weights never emit the end frame; every run gets the same caps).
Every figure is marginal: (time for `--frames` + 2 frames - time for 2 frames) / frames, so the prompt's prefill
and the codec's start-up cancel out and what is left is the cost of one more frame. Three paths, same prompt:

    naive   transformers' plain generate(..., output_audio=True), fp32, batch 1
    plain   the same, bf16 backbone and depth decoder (codec fp32), at the engine's batch size
    engine  CSMModel.generate_batch (worker/models/engine.py) at --batch, in its dtype for the device ("auto":
            bf16 on CUDA and on CPUs with bf16 arithmetic, else fp32)

The limit printed beside it: the best a frame can cost on this machine at that batch, from the FLOPs of one frame
(1 backbone step + 32 depth-decoder positions, weights only) at the GFLOP/s of one (8192 x 2048) matmul measured here.

    ./dev bench generation [--frames 6] [--batch N] [--device cpu|cuda] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from producer.settings import Settings
from tests.csm_checkpoint import build_tokenizer
from worker.models import CSMModel
from worker.models.csm_model import undecodable_codes

TEXT = "The lighthouse keeper counted the waves before the dawn, and each one sang."
FRAME_S = 0.08
WARM_FRAMES = 2


def build_full_size(config: Any = None) -> tuple[Any, Any]:
    """A processor and a random-weight CsmForConditionalGeneration of `config` (default: CSM-1B's architecture)."""
    from transformers import CsmConfig, CsmForConditionalGeneration, CsmProcessor, EncodecFeatureExtractor
    from transformers.modeling_utils import no_init_weights

    torch.manual_seed(0)
    with no_init_weights():
        model = CsmForConditionalGeneration(config or CsmConfig())
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.02)
    processor = CsmProcessor(feature_extractor=EncodecFeatureExtractor(feature_size=1, sampling_rate=24_000),
                             tokenizer=build_tokenizer())
    return processor, model.eval()


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _marginal(run: Any, frames: int, device: str, warm: bool = True) -> float:
    """Seconds per extra frame: run(2 + frames) - run(2), after a warm-up run (if `warm`)."""
    if warm:
        run(1)
    times = []
    for count in (WARM_FRAMES, WARM_FRAMES + frames):
        t0 = time.perf_counter()
        run(count)
        _sync(device)
        times.append(time.perf_counter() - t0)
    return (times[1] - times[0]) / frames


def plain_generate(processor: Any, model: Any, frames: int, batch: int, device: str, warm: bool = True) -> float:
    """Seconds per frame per sequence for transformers' own path, in the model's current dtype."""
    tokenizer = processor.tokenizer
    prompt = f"{tokenizer.bos_token}[0]{TEXT}{tokenizer.eos_token}"
    inputs = processor(text=[prompt] * batch, return_tensors="pt")
    inputs.pop("token_type_ids", None)
    inputs = inputs.to(device)
    # The same guard as the engine's, so random weights cannot sample ids the codec cannot decode.
    sampling = {"do_sample": True, "temperature": 0.9, "top_k": 50, "suppress_tokens": undecodable_codes(model.config)}

    def run(count: int) -> None:
        with torch.inference_mode():
            audio = model.generate(**inputs, output_audio=True, max_new_tokens=count, **sampling,
                                   **{f"depth_decoder_{k}": v for k, v in sampling.items()})
        assert all(a.numel() == count * 1920 for a in audio), "random weights emitted an end frame; rerun"

    return _marginal(run, frames, device, warm) / batch


def engine_generate(layer: CSMModel, frames: int, batch: int) -> float:
    """Seconds per frame per sequence through CSMModel.generate_batch (prompts, engine, codec decode)."""

    def run(count: int) -> None:
        results = layer.generate_batch([TEXT] * batch, speaker_id=0, seeds=list(range(batch)),
                                       max_audio_length_ms=count * FRAME_S * 1000)
        assert all(r.stats.frames == count for r in results), "random weights emitted an end frame; rerun"

    return _marginal(run, frames, layer.device) / batch


def frame_flops(model: Any) -> float:
    """Multiply-adds x 2 of one frame for one sequence: weights only (attention over the cache is extra)."""
    def params(module: Any) -> int:
        return sum(p.numel() for p in module.parameters())

    depth = model.depth_decoder
    codebooks = model.config.num_codebooks
    backbone = params(model.backbone_model.layers) + params(model.lm_head)
    per_position = params(depth.model.layers) + params(depth.model.inputs_embeds_projector)
    heads = depth.codebooks_head.weight[0].numel() * (codebooks - 1)
    return 2.0 * (backbone + codebooks * per_position + heads)


def matmul_limit(dtype: torch.dtype, batch: int, device: str) -> tuple[float, float]:
    """(GFLOP/s at `batch`, GB/s of weights at batch 1) of an (8192 x 2048) matmul in `dtype` on this machine."""
    weight = torch.randn(8192, 2048, dtype=dtype, device=device)
    rates = []
    for rows in (batch, 1):
        x = torch.randn(rows, 2048, dtype=dtype, device=device)
        for _ in range(3):
            torch.nn.functional.linear(x, weight)
        _sync(device)
        repeats = 20 if rows == 1 else 5
        t0 = time.perf_counter()
        for _ in range(repeats):
            torch.nn.functional.linear(x, weight)
        _sync(device)
        rates.append((time.perf_counter() - t0) / repeats)
    return 2 * batch * weight.numel() / rates[0] / 1e9, weight.numel() * weight.element_size() / rates[1] / 1e9


def measure(args: argparse.Namespace, say: Any) -> dict[str, Any]:
    t0 = time.perf_counter()
    processor, model = build_full_size()
    params = sum(p.numel() for p in model.parameters())
    say(f"full-size CSM: {params / 1e9:.2f} B parameters, random weights, built in {time.perf_counter() - t0:.0f} s")
    say(f"device {args.device}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{args.frames} frames measured per run (marginal), batch {args.batch}")
    model.to(args.device)
    naive = plain_generate(processor, model, args.frames, 1, args.device)
    say(f"naive   plain generate, fp32, batch 1          {naive:8.4f} s/frame")
    layer = CSMModel.from_loaded(processor, model, device=args.device, dtype=args.dtype, model_id="random-full-size")
    engine = engine_generate(layer, args.frames, args.batch)
    say(f"engine  generate_batch, {layer.dtype}, batch {args.batch:<4}  {engine:8.4f} s/frame/seq")
    gflops, gbs = matmul_limit(getattr(torch, layer.dtype), args.batch, args.device)
    floor = frame_flops(model) / (gflops * 1e9)
    say(f"limit   {frame_flops(model) / 1e9:.1f} GFLOP/frame at {gflops:.0f} GFLOP/s ({layer.dtype} matmul, batch "
        f"{args.batch}) = {floor:.4f} s/frame/seq (RTF {floor / FRAME_S:.2f}); batch-1 weights {gbs:.1f} GB/s")
    layer.engine = None  # the plain run below recasts the same weights
    model.to(torch.bfloat16)
    model.codec_model.to(torch.float32)
    plain = plain_generate(processor, model, args.frames, args.batch, args.device, warm=False)  # naive warmed it
    say(f"plain   plain generate, bf16, batch {args.batch:<4}      {plain:8.4f} s/frame/seq")
    result = {"naive_s_per_frame": naive, "plain_s_per_frame_per_seq": plain, "engine_s_per_frame_per_seq": engine,
              "batch_size": args.batch, "speedup": naive / engine, "speedup_vs_plain": plain / engine,
              "aggregate_rtf": engine / FRAME_S, "device": args.device, "engine_dtype": layer.dtype,
              "limit_s_per_frame_per_seq": floor, "limit_rtf": floor / FRAME_S, "matmul_gflops": gflops,
              "weights_gb_s_batch1": gbs, "frames": args.frames, "threads": torch.get_num_threads()}
    say(f"speedup {result['speedup']:.1f}x vs naive, {result['speedup_vs_plain']:.2f}x vs plain; aggregate RTF "
        f"{result['aggregate_rtf']:.3f} (limit {result['limit_rtf']:.3f})")
    return {k: round(v, 5) if isinstance(v, float) else v for k, v in result.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=6)
    parser.add_argument("--batch", type=int, default=Settings().batch_size)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto", help="the engine's dtype: auto, bfloat16 or float32")
    parser.add_argument("--json", action="store_true", help="print one JSON object (the lines go to stderr)")
    args = parser.parse_args()
    result = measure(args, lambda line: print(line, file=sys.stderr if args.json else sys.stdout, flush=True))
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
