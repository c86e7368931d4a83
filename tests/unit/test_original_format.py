"""Sesame's original checkpoint format (worker/models/original.py) and moshi's Mimi (moshi_codec.py), on a tiny
original-format checkpoint and its transformers-format twin holding the same weights (tests/original_checkpoint.py)."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from producer.settings import Settings
from worker.models import CSMModel, CSMModelLoadError, CSMModelNotFoundError, Segment, create_csm_model
from worker.models.engine import Sampling
from worker.models.moshi_codec import MoshiCodec
from worker.models.original import MIMI_WEIGHTS

REPO = Path(__file__).resolve().parents[2]
TEXT = "The lighthouse keeper counted the waves."
STRICT = Settings(allow_placeholder=False)


@pytest.fixture(scope="module")
def twins(tiny_checkpoint: Path, original_twin: Path) -> tuple[CSMModel, CSMModel]:
    """(transformers format, original format): the same weights, both in fp32 so they compute alike."""
    return (CSMModel(str(tiny_checkpoint), "cpu", dtype="float32"),
            CSMModel(str(original_twin), "cpu", dtype="float32"))


def greedy_codes(model: CSMModel, frames: int) -> torch.Tensor:
    ids = model.processor(text=f"<|begin_of_text|>[0]{TEXT}<|end_of_text|>", return_tensors="pt")["input_ids"][0]
    assert model.engine is not None
    return model.engine.generate(None, [model.engine.embed_prompt(ids)], [frames], [Sampling(top_k=1)])[0]


def test_the_format_is_found_by_the_files_and_the_job_record_names_it(tiny_checkpoint: Path,
                                                                      original_twin: Path) -> None:
    original = create_csm_model(model_path=str(original_twin), device="cpu", settings=STRICT)
    transformers = create_csm_model(model_path=str(tiny_checkpoint), device="cpu", settings=STRICT)
    assert original.describe()["format"] == "original" and original.describe()["codec"] == "moshi-mimi"
    assert transformers.describe()["format"] == "transformers"
    assert transformers.describe()["codec"] == "transformers-mimi"


def test_greedy_codes_are_identical_frame_for_frame_between_the_twins(twins: tuple[CSMModel, CSMModel]) -> None:
    transformers, original = twins
    codes = greedy_codes(transformers, 12)
    assert codes.shape == (12, 4) and len(set(codes[:, 0].tolist())) > 3  # random weights: varied codes
    assert torch.equal(greedy_codes(original, 12), codes)


def test_speech_after_a_voice_prompt_is_the_same_from_both_formats(twins: tuple[CSMModel, CSMModel]) -> None:
    """The prompt goes through each format's own codec (moshi's Mimi encodes it for the original)."""
    voice = (0.2 * np.sin(np.linspace(0, 3000, 24_000))).astype(np.float32)
    context = [Segment(1, "Hello there.", voice)]
    heard = [m.generate_speech(TEXT, top_k=1, context=context, max_audio_length_ms=1200)[0] for m in twins]
    assert len(heard[0]) == len(heard[1]) > 0
    assert np.abs(heard[0] - heard[1]).max() < 1e-4


def test_moshi_and_transformers_mimi_with_the_same_weights_decode_and_encode_alike(
        twins: tuple[CSMModel, CSMModel], original_twin: Path) -> None:
    codec_model = twins[0].model.codec_model
    moshi = MoshiCodec.load(original_twin / MIMI_WEIGHTS, 4)
    codes = torch.randint(0, 64, (25, 4), generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        expected = codec_model.decode(codes.T[None]).audio_values[0, 0]
        wave = (0.3 * torch.sin(torch.linspace(0, 4000, 24_000)))
        expected_codes = codec_model.encode(wave[None, None]).audio_codes[0, :4].T
    decoded = moshi.decode(codes)
    assert decoded.shape == expected.shape == (25 * 1920,)
    assert (decoded - expected).abs().max() < 1e-4
    assert torch.equal(moshi.encode(wave), expected_codes)


def test_the_reference_ckpt_pt_layout_loads_too(original_twin: Path, tmp_path: Path,
                                                twins: tuple[CSMModel, CSMModel]) -> None:
    directory = Path(shutil.copytree(original_twin, tmp_path / "ckpt"))
    torch.save(load_file(directory / "model.safetensors"), directory / "ckpt.pt")
    (directory / "model.safetensors").unlink()
    model = CSMModel(str(directory), "cpu", dtype="float32")
    assert model.describe()["format"] == "original"
    assert torch.equal(greedy_codes(model, 8), greedy_codes(twins[0], 8))


def _edit_weights(edit: Callable[[dict[str, torch.Tensor]], None]) -> Callable[[Path], None]:
    def apply(directory: Path) -> None:
        state = load_file(directory / "model.safetensors")
        edit(state)
        save_file(state, directory / "model.safetensors")
    return apply


def _edit_config(**changes: object) -> Callable[[Path], None]:
    def apply(directory: Path) -> None:
        config = json.loads((directory / "config.json").read_text())
        (directory / "config.json").write_text(json.dumps({**config, **changes}))
    return apply


def _truncate(name: str) -> Callable[[Path], None]:
    return lambda directory: (directory / name).write_bytes(b"\x00not weights" * 50)


BREAKAGES = {
    "no-mimi": (lambda d: (d / MIMI_WEIGHTS).unlink(), f"lacks Mimi's weights {MIMI_WEIGHTS}"),
    "no-tokenizer": (lambda d: [f.unlink() for f in d.glob("*token*.json")], "has no usable text tokenizer"),
    "corrupt-mimi": (_truncate(MIMI_WEIGHTS), f"{MIMI_WEIGHTS} does not load as moshi's Mimi"),
    "corrupt-weights": (_truncate("model.safetensors"), "model.safetensors is not a readable checkpoint"),
    "missing-parameter": (_edit_weights(lambda s: s.pop("decoder.layers.0.attn.q_proj.weight")),
                          "missing parameters .*depth_decoder.model.layers.0.self_attn.q_proj.weight"),
    "unknown-parameter": (_edit_weights(lambda s: s.update({"backbone.extra.weight": torch.zeros(2)})),
                          "unknown parameters .*backbone.extra.weight"),
    "wrong-shape": (_edit_config(audio_vocab_size=80), "wrong shape.*: audio_embeddings.weight is \\[256, 64\\], the "
                                                       "config needs \\[320, 64\\]"),
    "unknown-flavor": (_edit_config(backbone_flavor="llama-7B"), "unknown flavor llama-7B"),
    "too-few-codebooks": (_edit_config(audio_num_codebooks=8), "it has 4 codebooks, the model needs 8"),
}


@pytest.mark.parametrize("breakage", list(BREAKAGES))
def test_bad_or_mismatched_files_are_a_load_error_naming_the_problem(original_twin: Path, tmp_path: Path,
                                                                     breakage: str) -> None:
    directory = Path(shutil.copytree(original_twin, tmp_path / breakage))
    damage, problem = BREAKAGES[breakage]
    damage(directory)
    with pytest.raises(CSMModelLoadError, match=problem):
        create_csm_model(model_path=str(directory), device="cpu", settings=STRICT)


def test_the_original_format_asked_of_a_transformers_directory_says_what_is_missing(tiny_checkpoint: Path) -> None:
    with pytest.raises(CSMModelLoadError, match=r"no original-format weights: ckpt\.pt"):
        create_csm_model(model_path=str(tiny_checkpoint), device="cpu",
                         settings=Settings(allow_placeholder=False, model_format="original"))


def _cached_repo(hub: Path, repo: str, files: list[Path], commit: str) -> None:
    """`files` as the Hugging Face cache under HF_HOME holds a repo downloaded at `commit` (its main branch)."""
    root = hub / f"models--{repo.replace('/', '--')}"
    (root / "snapshots" / commit).mkdir(parents=True)
    for file in files:
        shutil.copy(file, root / "snapshots" / commit / file.name)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(commit)


def test_a_hub_id_in_the_original_format_loads_from_the_hf_cache_at_the_pinned_revision(
        original_twin: Path, tmp_path: Path) -> None:
    """HF_HOME, HF_HUB_OFFLINE and the revision pin, as for the transformers format; Mimi from moshi's repo, as the
    reference fetches it, when the model's repo has none."""
    commit, repo = "0123456789abcdef0123456789abcdef01234567", "echoforge/tiny-csm-original"
    ours = [f for f in original_twin.iterdir() if f.name not in (MIMI_WEIGHTS, "mimi_config.json")]
    _cached_repo(tmp_path / "hub", repo, ours, commit)
    mimi = [original_twin / MIMI_WEIGHTS, original_twin / "mimi_config.json"]
    _cached_repo(tmp_path / "hub", "kyutai/moshiko-pytorch-bf16", mimi, "f" * 40)
    env = {**os.environ, "HF_HOME": str(tmp_path), "HF_HUB_OFFLINE": "1", "ECHOFORGE_MODEL_ID": repo,
           "ECHOFORGE_MODEL_REVISION": commit, "ECHOFORGE_MODEL_FORMAT": "original",
           "ECHOFORGE_ALLOW_PLACEHOLDER": "false", "PYTHONPATH": str(REPO)}
    script = "import json; from worker.models import create_csm_model; print(json.dumps(create_csm_model(" \
             "device='cpu').describe()))"
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    info = json.loads(done.stdout.strip().splitlines()[-1])
    assert (info["id"], info["revision"], info["format"], info["codec"]) == (repo, commit, "original", "moshi-mimi")


def test_an_uncached_hub_model_in_the_original_format_is_not_found() -> None:
    with pytest.raises(CSMModelNotFoundError, match="no-such-org/no-such-model"):
        CSMModel(None, device="cpu", model_id="no-such-org/no-such-model", model_format="original")


def torchtune_llama3_frequencies(head_dim: int, base: float, scale: float = 32, low: float = 1, high: float = 4,
                                 old_context: int = 8192) -> torch.Tensor:
    """torchtune's Llama3ScaledRoPE frequencies (the reference's rotary embedding), written out."""
    frequencies = 1.0 / (base ** (torch.arange(0, head_dim, 2)[: head_dim // 2].float() / head_dim))
    scaled = []
    for frequency in frequencies.tolist():
        wavelength = 2 * math.pi / frequency
        if wavelength < old_context / high:
            scaled.append(frequency)
        elif wavelength > old_context / low:
            scaled.append(frequency / scale)
        else:
            smooth = (old_context / wavelength - low) / (high - low)
            scaled.append((1 - smooth) * frequency / scale + smooth * frequency)
    return torch.tensor(scaled)


def test_the_reference_csm_1b_model_args_give_transformers_csm_1b_architecture() -> None:
    """sesame/csm-1b's ckpt.pt is read with the reference's ModelArgs and flavors: the config built from them is
    transformers' CSM-1B, with the reference's rotary frequencies (torchtune's Llama3 scaling)."""
    from transformers import CsmConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from tests.csm_checkpoint import build_tokenizer
    from worker.models.original import CSM_1B_ARGS, _csm_config

    built, reference = _csm_config(CSM_1B_ARGS, build_tokenizer(), 2048), CsmConfig()
    fields = ["hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
              "head_dim", "rms_norm_eps", "rope_theta", "vocab_size"]
    for ours, theirs in ((built, reference), (built.depth_decoder_config, reference.depth_decoder_config)):
        assert {f: getattr(ours, f) for f in fields} == {f: getattr(theirs, f) for f in fields}
        frequencies = ROPE_INIT_FUNCTIONS["llama3"](ours, "cpu")[0]
        assert torch.allclose(frequencies, torchtune_llama3_frequencies(ours.head_dim, ours.rope_theta), rtol=1e-5)
    assert (built.text_vocab_size, built.num_codebooks, built.max_position_embeddings) == (128_256, 32, 2048)
    assert built.codec_config.codebook_size == reference.codec_config.codebook_size
