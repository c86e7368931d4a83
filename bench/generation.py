"""Seconds per 80 ms frame on the full-size CSM architecture: this layer's path vs plain `generate` in fp32.

The model is CsmConfig() defaults (1.63 B parameters) with random weights; compute does not depend on the
weights' values. The frame count is forced (random weights never emit the end frame; both runs get the same cap).
Baseline, same run, same model: transformers' plain `generate(..., output_audio=True)` in fp32 at batch 1.
This layer: CSMModel.generate_speech (bf16 backbone + depth decoder, fp32 codec).

    ./dev bench generation [--frames 12] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from tests.csm_checkpoint import build_tokenizer
from worker.models import CSMModel
from worker.models.csm_model import undecodable_codes

TEXT = "The lighthouse keeper counted the waves before the dawn, and each one sang."


def build_full_size() -> tuple[object, object]:
    from transformers import CsmConfig, CsmForConditionalGeneration, CsmProcessor, EncodecFeatureExtractor
    from transformers.modeling_utils import no_init_weights

    torch.manual_seed(0)
    with no_init_weights():
        model = CsmForConditionalGeneration(CsmConfig())
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.02)
    processor = CsmProcessor(feature_extractor=EncodecFeatureExtractor(feature_size=1, sampling_rate=24_000),
                             tokenizer=build_tokenizer())
    return processor, model.eval()


def plain_generate(processor: object, model: object, frames: int, device: str) -> float:
    """Seconds per frame for transformers' own path: fp32, batch 1."""
    tokenizer = processor.tokenizer  # type: ignore[attr-defined]
    prompt = f"{tokenizer.bos_token}[0]{TEXT}{tokenizer.eos_token}"
    inputs = processor(text=prompt, return_tensors="pt")  # type: ignore[operator]
    inputs.pop("token_type_ids", None)
    inputs = inputs.to(device)
    # The same guard as the layer's, so random weights cannot sample ids the codec cannot decode.
    sampling = {"do_sample": True, "temperature": 0.9, "top_k": 50,
                "suppress_tokens": undecodable_codes(model.config)}  # type: ignore[attr-defined]
    t0 = time.perf_counter()
    with torch.inference_mode():
        audio = model.generate(**inputs, output_audio=True, max_new_tokens=frames, **sampling,  # type: ignore[attr-defined]
                               **{f"depth_decoder_{k}": v for k, v in sampling.items()})
    _sync(device)
    elapsed = time.perf_counter() - t0
    assert audio[0].numel() == frames * 1920, "random weights emitted an end frame; rerun"
    return elapsed / frames


def layer_generate(layer: CSMModel, frames: int) -> float:
    t0 = time.perf_counter()
    layer.generate_speech(TEXT, speaker_id=0, max_audio_length_ms=frames * 80)
    _sync(layer.device)
    assert layer.last_generation is not None and layer.last_generation.frames == frames
    return (time.perf_counter() - t0) / frames


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    t0 = time.perf_counter()
    processor, model = build_full_size()
    params = sum(p.numel() for p in model.parameters())  # type: ignore[attr-defined]
    print(f"full-size CSM: {params / 1e9:.2f} B parameters, random weights, built in {time.perf_counter() - t0:.0f} s")
    print(f"device {args.device}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{args.frames} frames forced per run")
    model.to(args.device)  # type: ignore[attr-defined]
    plain_generate(processor, model, 2, args.device)  # warm-up
    baseline = plain_generate(processor, model, args.frames, args.device)
    print(f"plain generate, fp32, batch 1      {baseline:7.3f} s/frame   (baseline)")

    layer = CSMModel.from_loaded(processor, model, device=args.device, dtype="bfloat16", model_id="random-full-size")
    layer_generate(layer, 2)  # warm-up
    ours = layer_generate(layer, args.frames)
    print(f"CSMModel.generate_speech, bf16     {ours:7.3f} s/frame   {baseline / ours:.2f}x faster than baseline")
    print(f"real-time factor (wall s per audio s): baseline {baseline / 0.08:.1f}, this layer {ours / 0.08:.1f}")


if __name__ == "__main__":
    main()
