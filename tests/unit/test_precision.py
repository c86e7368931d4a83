"""bf16 where it computes, fp32 where precision matters: the codec and the rotary tables (what a GPU job runs)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from worker.models import CSMModel
from worker.models.engine import Sampling, fp32_rotary

TEXT = "The lighthouse keeper counted the waves."
GREEDY = Sampling(temperature=1.0, top_k=1)
BF16_STEP = 2.0**-8  # the spacing of bf16 values in [1, 2): a rounded value in [-1, 1] is off by at most half


@pytest.fixture(scope="module")
def bf16_model(tiny_checkpoint: Path) -> CSMModel:
    return CSMModel(str(tiny_checkpoint), device="cpu", dtype="bfloat16")


def test_the_codec_is_bit_identical_to_the_checkpoint_in_a_bf16_model(bf16_model: CSMModel,
                                                                       tiny_checkpoint: Path) -> None:
    from transformers import CsmForConditionalGeneration

    saved = load_file(str(tiny_checkpoint / "model.safetensors"))
    reference = CsmForConditionalGeneration.from_pretrained(tiny_checkpoint, dtype=torch.float32).codec_model
    codec = bf16_model.model.codec_model.state_dict()
    expected = {name: saved.get(f"codec_model.{name}", tensor) for name, tensor in reference.state_dict().items()}
    assert len(expected) == len(codec) > 50  # weights and buffers
    changed = [name for name, tensor in expected.items() if not torch.equal(codec[name], tensor)]
    assert changed == []
    assert {t.dtype for t in codec.values() if t.is_floating_point()} == {torch.float32}
    assert bf16_model.model.backbone_model.layers[0].mlp.up_proj.weight.dtype == torch.bfloat16


def test_rotary_frequencies_stay_fp32_in_a_bf16_model(bf16_model: CSMModel) -> None:
    for name, module in bf16_model.model.named_modules():
        if hasattr(module, "inv_freq"):
            assert module.inv_freq.dtype == torch.float32, name
            assert torch.equal(module.inv_freq, fp32_rotary(module, "cpu").inv_freq), name


@pytest.mark.parametrize("stack", ["backbone", "depth"])
def test_engine_cos_sin_match_fp32_within_bf16_resolution_up_to_the_last_position(bf16_model: CSMModel,
                                                                                  stack: str) -> None:
    assert bf16_model.engine is not None
    tables = getattr(bf16_model.engine, stack)
    rotary = (bf16_model.model.backbone_model if stack == "backbone" else bf16_model.model.depth_decoder.model)
    positions = torch.arange(len(tables.cos))[None]
    assert stack == "depth" or len(tables.cos) >= 2048
    cos, sin = fp32_rotary(rotary.rotary_emb, "cpu")(torch.empty(0), positions)
    assert tables.cos.dtype == torch.bfloat16
    turned, half = tables.heads + tables.kv_heads, tables.head_dim // 2  # q and k heads turn; v heads do not
    sign = torch.tensor([-1.0] * half + [1.0] * half)  # the rotated half's sign rides in the sin table
    assert (tables.cos[:, :turned].float() - cos[0][:, None]).abs().max() <= BF16_STEP / 2
    assert (tables.sin[:, :turned].float() - (sin[0] * sign)[:, None]).abs().max() <= BF16_STEP / 2
    assert bool((tables.cos[:, turned:] == 1).all()) and bool((tables.sin[:, turned:] == 0).all())


def test_a_bf16_rounded_frequency_table_would_be_caught() -> None:
    """The bound above is tight enough to see the bug it guards against: bf16 inv_freq at position 2,000."""
    freqs = 1.0 / (500_000 ** (torch.arange(0, 16, 2).float() / 16))
    rounded = freqs.bfloat16().float()
    assert ((2000 * rounded).cos() - (2000 * freqs).cos()).abs().max() > 100 * BF16_STEP


def test_bf16_greedy_codes_match_fp32_for_the_first_frames(tiny_checkpoint: Path, bf16_model: CSMModel) -> None:
    fp32 = CSMModel(str(tiny_checkpoint), device="cpu", dtype="float32")

    def greedy(model: CSMModel) -> torch.Tensor:
        assert model.engine is not None
        prompt = model.engine.embed_prompt(model._turn_ids(TEXT, 0))
        return model.engine.generate(None, [prompt], [8], [GREEDY])[0]

    full, half = greedy(fp32), greedy(bf16_model)
    frames = min(len(full), len(half))
    agree = next((i for i in range(frames) if not torch.equal(full[i], half[i])), frames)
    # Random weights give near-tied logits, so bf16 rounding may flip a later pick; the first frames agree.
    assert agree >= 2, f"bf16 and fp32 greedy codes diverge at frame {agree}"
