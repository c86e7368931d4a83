"""CsmEngine's sampling checked against the model's own logits, on weights built to expose what random weights hide.

The reference logits come from transformers' modules run apart from the engine (teacher forcing on the engine's
codes), so a wrong mask, top-k or stopping rule in the engine shows up as a pick the model's logits do not allow.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.csm_checkpoint import CSM_UNDECODABLE, NUM_CODEBOOKS, build_tiny_checkpoint, scripted_code
from worker.models import CSMModel, Segment, SpeechRequest
from worker.models.csm_model import SAMPLES_PER_FRAME, _to_24k_mono, undecodable_codes
from worker.models.engine import Sampling

TEXT = "The lighthouse keeper counted the waves."
END_AFTER = 6  # the scripted checkpoint's audio frames before its end frame
FRAMES = 40
TOLERANCE = 1e-4  # engine and transformers compute the same logits to ~1e-6; closer ids count as tied
REFERENCE = (0.1 * np.sin(np.linspace(0, 2000, 16_000))).astype(np.float32)  # 1 s at 16 kHz
ANCHOR = [Segment(1, "Hello there.", REFERENCE, 16_000)]


def _load(directory: Path) -> CSMModel:
    return CSMModel(str(directory), device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def model(tiny_checkpoint: Path) -> CSMModel:
    return _load(tiny_checkpoint)


@pytest.fixture(scope="module")
def lured(tmp_path_factory: pytest.TempPathFactory) -> CSMModel:
    return _load(build_tiny_checkpoint(tmp_path_factory.mktemp("lured"), undecodable=CSM_UNDECODABLE))


@pytest.fixture(scope="module")
def scripted(tmp_path_factory: pytest.TempPathFactory) -> CSMModel:
    directory = tmp_path_factory.mktemp("scripted")
    return _load(build_tiny_checkpoint(directory, undecodable=CSM_UNDECODABLE, end_after=END_AFTER))


def _generate(model: CSMModel, sampling: list[Sampling], caps: list[int],
              context: list[Segment] | None = None) -> list[torch.Tensor]:
    """The engine's codes [frames, codebooks] for TEXT, one row per sampler, all in one batch."""
    assert model.engine is not None
    prefix, _ = model._prefix(context or [])
    prompt = model.engine.embed_prompt(model._turn_ids(TEXT, 0))
    return model.engine.generate(prefix, [prompt] * len(sampling), caps, sampling)


@torch.inference_mode()
def _logits(model: CSMModel, codes: torch.Tensor) -> torch.Tensor:
    """[frames, codebooks, vocab]: the unmasked logits of every pick behind `codes` (TEXT, no context), from
    transformers' backbone, lm_head, depth decoder and codebook heads fed the engine's codes."""
    csm = model.model
    prompt = csm.embed_text_tokens(model._turn_ids(TEXT, 0))
    frames = csm.backbone_model.embed_tokens(codes[None])[0]
    embeds = torch.cat([prompt, frames[:-1]])[None]
    hidden = csm.backbone_model(inputs_embeds=embeds).last_hidden_state[0, -len(codes):]
    depth = csm.depth_decoder(input_ids=F.pad(codes[:, :-1], (1, 0)), backbone_last_hidden_state=hidden).logits
    return torch.cat([csm.lm_head(hidden)[:, None], depth], dim=1).float()


def _ranks(model: CSMModel, codes: torch.Tensor) -> torch.Tensor:
    """[frames, codebooks]: how many ids the model's logits put clearly above each pick (0: the argmax)."""
    logits = _logits(model, codes)
    picked = logits.gather(-1, codes[..., None])
    return (logits > picked + TOLERANCE).sum(-1)


def test_ids_the_codec_cannot_decode_are_never_sampled_though_the_heads_favour_them(lured: CSMModel) -> None:
    config = lured.model.config
    limit = int(config.codec_config.codebook_size)
    assert int(config.vocab_size) == limit + CSM_UNDECODABLE
    settings = [(1.0, 1), (0.7, 2), (1.0, 3), (2.0, 4), (1.0, 50), (2.0, 2048), (0.5, 2048), (1.3, 7)]
    sampling = [Sampling(temperature, top_k, seed) for seed, (temperature, top_k) in enumerate(settings)]
    codes = _generate(lured, sampling, [FRAMES] * len(sampling))
    assert [len(c) for c in codes] == [FRAMES] * len(sampling)  # no row cut short by a pick gone wrong
    assert max(int(c.max()) for c in codes) < limit
    for row in codes:  # without the mask, every one of these picks would have been an undecodable id
        assert bool((_logits(lured, row).argmax(-1) >= limit).all())


def test_a_scripted_end_frame_is_where_the_engine_and_transformers_both_stop(scripted: CSMModel) -> None:
    for context in (None, ANCHOR):
        marker = scripted.processor.audio_token + scripted.processor.audio_eos_token
        prompt = "".join(scripted._turn(s.speaker, s.text) + marker for s in context or []) + scripted._turn(0, TEXT)
        audio = [_to_24k_mono(s) for s in context] if context else None
        inputs = scripted.processor(text=prompt, audio=audio, return_tensors="pt")
        inputs.pop("token_type_ids", None)
        suppress = undecodable_codes(scripted.model.config)
        with torch.inference_mode():
            expected = scripted.model.generate(**inputs, max_new_tokens=3 * END_AFTER, do_sample=False,
                                               suppress_tokens=suppress, depth_decoder_do_sample=False,
                                               depth_decoder_suppress_tokens=suppress)[0]
        eos = scripted.model.config.codebook_eos_token_id
        assert (expected[:, :-1] == eos).all(-1).tolist() == [False] * END_AFTER + [True], "transformers' own stop"
        assert expected[0].tolist() == [scripted_code(END_AFTER, j) for j in range(NUM_CODEBOOKS)]
        [ours] = _generate(scripted, [Sampling(1.0, 1)], [3 * END_AFTER], context)
        assert torch.equal(ours, expected[:-1]), f"context {context is not None}"  # same frames, same stop


def test_a_row_ends_at_its_end_frame_and_its_audio_stops_there(scripted: CSMModel) -> None:
    free = SpeechRequest([TEXT, TEXT], speaker_id=0, top_k=1, seeds=[1, 2])
    capped = SpeechRequest([TEXT], speaker_id=0, top_k=1, max_audio_length_ms=240)  # 3 frames
    [ended, [short]] = scripted.generate_requests([free, capped])
    for result in ended:
        assert result.stats.frames == END_AFTER < result.stats.frame_cap
        assert len(result.audio) + result.stats.trimmed_samples == END_AFTER * SAMPLES_PER_FRAME  # no end frame
    assert short.stats.frames == short.stats.frame_cap == 3


def test_top_k_1_is_greedy_at_any_temperature_and_seed(model: CSMModel) -> None:
    sampling = [Sampling(temperature, 1, seed) for seed, temperature in enumerate((0.3, 1.0, 2.0, 1.0))]
    codes = _generate(model, sampling, [FRAMES] * len(sampling))
    assert all(torch.equal(codes[0], c) for c in codes[1:])
    assert int(_ranks(model, codes[0]).max()) == 0, "a pick that is not the model's argmax"


@pytest.mark.parametrize(("top_k", "temperature"), [(2, 1.0), (3, 0.5), (5, 1.5), (12, 0.8), (40, 2.0)])
def test_every_sampled_id_is_in_the_top_k_of_the_models_logits(model: CSMModel, top_k: int,
                                                               temperature: float) -> None:
    sampling = [Sampling(temperature, top_k, seed) for seed in (11, 12)]
    ranks = torch.cat([_ranks(model, c) for c in _generate(model, sampling, [FRAMES] * 2)])
    assert int(ranks.max()) < top_k
    if top_k <= 5:  # and the set is not narrower: all of its ids come out
        assert set(ranks.flatten().tolist()) == set(range(top_k))


@pytest.mark.parametrize("every", [4, 5, 8])
def test_a_row_ending_between_end_checks_gives_what_checking_every_frame_gives(scripted: CSMModel, every: int,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The engine reads its rows' end state every few frames (no host sync in between): a row whose end frame falls
    between two reads runs on a few frames, and those frames must never reach its codes or audio."""
    assert scripted.engine is not None
    ending = SpeechRequest([TEXT, TEXT], speaker_id=0, top_k=1, seeds=[1, 2])  # ends after END_AFTER frames
    sampled = SpeechRequest([TEXT], speaker_id=0, temperature=0.9, top_k=5, seeds=[3], max_audio_length_ms=880)
    monkeypatch.setattr(scripted.engine, "check_every", 1)
    expected = scripted.generate_requests([ending, sampled])
    codes = _generate(scripted, [Sampling(1.0, 1), Sampling(0.9, 5, 3)], [3 * END_AFTER, 11])
    monkeypatch.setattr(scripted.engine, "check_every", every)
    assert all(torch.equal(a, b) for a, b in zip(codes, _generate(scripted, [Sampling(1.0, 1), Sampling(0.9, 5, 3)],
                                                                   [3 * END_AFTER, 11]), strict=True))
    assert len(codes[0]) == END_AFTER and END_AFTER % every != 0
    for want, got in zip(expected, scripted.generate_requests([ending, sampled]), strict=True):
        for a, b in zip(want, got, strict=True):
            assert a.stats == b.stats and np.array_equal(a.audio, b.audio)
