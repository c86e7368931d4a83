"""CsmEngine on the tiny random CSM checkpoint: batching (within a job or across jobs) changes nothing but speed."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.csm_checkpoint import build_tiny_checkpoint
from worker.batcher import BatchingModel
from worker.models import CSMModel, CSMModelError, PlaceholderCSMModel, Segment, SpeechRequest
from worker.models.csm_model import _to_24k_mono, undecodable_codes
from worker.models.engine import Sampling

TEXTS = ["The lighthouse keeper counted the waves.", "Hi.", "A much longer sentence, with several clauses, to read."]
GREEDY = Sampling(temperature=1.0, top_k=1)
REFERENCE = (0.1 * np.sin(np.linspace(0, 2000, 16_000))).astype(np.float32)  # 1 s at 16 kHz
ANCHOR = [Segment(1, "Hello there.", REFERENCE, 16_000)]


@pytest.fixture(scope="module")
def model(tiny_checkpoint: Path) -> CSMModel:
    return CSMModel(str(tiny_checkpoint), device="cpu", dtype="float32")


def _codes(model: CSMModel, texts: list[str], caps: list[int], sampling: list[Sampling],
           context: list[Segment] | None = None) -> list[torch.Tensor]:
    assert model.engine is not None
    prefix, _ = model._prefix(context or [])
    prompts = [model.engine.embed_prompt(model._turn_ids(text, 0)) for text in texts]
    return model.engine.generate(prefix, prompts, caps, sampling)


@pytest.mark.parametrize("context", [None, ANCHOR], ids=["no-context", "anchor"])
def test_batched_and_unbatched_greedy_codes_are_identical(model: CSMModel, context: list[Segment] | None) -> None:
    caps = [10, 4, 7]  # rows leave the batch at different frames
    alone = [_codes(model, [text], [cap], [GREEDY], context)[0] for text, cap in zip(TEXTS, caps, strict=True)]
    together = _codes(model, TEXTS, caps, [GREEDY] * 3, context)
    assert [len(c) for c in together] == caps
    for one, batched in zip(alone, together, strict=True):
        assert torch.equal(one, batched)


@pytest.mark.parametrize("context", [None, ANCHOR], ids=["no-context", "anchor"])
def test_greedy_codes_match_transformers_generate(model: CSMModel, context: list[Segment] | None) -> None:
    marker = model.processor.audio_token + model.processor.audio_eos_token
    prompt = "".join(model._turn(s.speaker, s.text) + marker for s in context or []) + model._turn(0, TEXTS[0])
    audio = [_to_24k_mono(s) for s in context] if context else None
    inputs = model.processor(text=prompt, audio=audio, return_tensors="pt")
    inputs.pop("token_type_ids", None)
    suppress = undecodable_codes(model.model.config)
    with torch.inference_mode():
        expected = model.model.generate(**inputs, max_new_tokens=12, do_sample=False, suppress_tokens=suppress,
                                        depth_decoder_do_sample=False, depth_decoder_suppress_tokens=suppress)
    ours = _codes(model, TEXTS[:1], [12], [GREEDY], context)[0]
    assert len(ours) >= 1 and torch.equal(expected[0, : len(ours)], ours)


def test_a_seeded_row_draws_the_same_codes_alone_or_in_a_batch(model: CSMModel) -> None:
    seeded = [Sampling(0.9, 20, seed) for seed in (7, 8, 9)]
    alone = _codes(model, TEXTS[:1], [10], seeded[:1], ANCHOR)[0]
    together = _codes(model, TEXTS, [10, 10, 10], seeded, ANCHOR)
    assert torch.equal(alone, together[0])
    assert not torch.equal(together[0], _codes(model, TEXTS[:1], [10], [Sampling(0.9, 20, 10)], ANCHOR)[0])


def test_rows_after_different_prefixes_decode_as_they_would_alone(model: CSMModel) -> None:
    """Several jobs in one batch: each row after its own voice anchor (or none), with anchors of different lengths."""
    assert model.engine is not None
    other = [Segment(2, "A second, longer voice prompt for another job.", REFERENCE[:12_000], 16_000)]
    contexts = [ANCHOR, None, other, ANCHOR]
    texts, caps = [*TEXTS, "Hi."], [9, 4, 7, 6]
    prefixes = [model._prefix(c or [])[0] for c in contexts]
    prompts = [model.engine.embed_prompt(model._turn_ids(t, 0)) for t in texts]
    seeded = [Sampling(0.9, 20, seed) for seed in (3, 4, 5, 6)]
    together = model.engine.generate_rows(prefixes, prompts, caps, [GREEDY, GREEDY, *seeded[2:]])
    for i, (text, cap, context) in enumerate(zip(texts, caps, contexts, strict=True)):
        alone = _codes(model, [text], [cap], [[GREEDY, GREEDY, *seeded[2:]][i]], context)[0]
        assert torch.equal(alone, together[i]), f"row {i}"


def test_requests_of_several_jobs_generate_what_each_would_alone(model: CSMModel) -> None:
    first = SpeechRequest(TEXTS[:2], speaker_id=0, context=ANCHOR, seeds=[1, 2], max_audio_length_ms=640)
    second = SpeechRequest(TEXTS[2:], speaker_id=3, temperature=0.7, top_k=5, seeds=[9], max_audio_length_ms=640)
    together = model.generate_requests([first, second])
    assert [len(group) for group in together] == [2, 1]
    for request, group in zip([first, second], together, strict=True):
        alone = model.generate_requests([request])[0]
        for a, b in zip(alone, group, strict=True):
            assert np.allclose(a.audio, b.audio, atol=1e-5) and a.stats == b.stats


def test_concurrent_jobs_share_batches_and_a_bad_request_fails_alone(
        model: CSMModel, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(model, "batch_size", 8)
    shared = BatchingModel(model, wait_s=30.0)
    jobs = ExitStack()
    for _ in range(3):  # three running jobs: a batch goes once all three wait
        jobs.enter_context(shared.serving_job())
    requests = [SpeechRequest([text], speaker_id=0, context=ANCHOR, seeds=[i], max_audio_length_ms=480)
                for i, text in enumerate(TEXTS)]
    too_long = SpeechRequest(["word " * 2000], speaker_id=0, seeds=[1])  # more than the model's positions
    with caplog.at_level(logging.INFO, logger="worker.batcher"), ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(shared.generate_requests, [r]) for r in requests]
        results = [f.result(timeout=120) for f in futures]
        doomed = [pool.submit(shared.generate_requests, [r]) for r in (requests[0], too_long, requests[1])]
        with pytest.raises(CSMModelError, match="positions"):
            doomed[1].result(timeout=120)
        survivors = [doomed[0].result(timeout=120), doomed[2].result(timeout=120)]
    jobs.close()
    assert "generated 3 texts of 3 jobs together" in caplog.text, "three waiting jobs share one batch"
    assert "running each job's requests alone" in caplog.text
    for request, [[got]] in zip(requests, results, strict=True):
        [[expected]] = model.generate_requests([request])
        assert np.allclose(expected.audio, got.audio, atol=1e-5)
    for survivor, earlier in zip(survivors, results, strict=False):
        assert np.allclose(survivor[0][0].audio, earlier[0][0].audio, atol=1e-5)


def test_generate_batch_returns_audio_and_stats_per_text(model: CSMModel) -> None:
    results = model.generate_batch(TEXTS, speaker_id=0, context=ANCHOR, seeds=[1, 2, 3], max_audio_length_ms=800)
    assert len(results) == 3
    for result in results:
        assert result.sample_rate == 24_000 and result.audio.dtype == np.float32
        assert result.stats.context_audio_frames == 13 and 1 <= result.stats.frames <= result.stats.frame_cap == 10
    repeat = model.generate_speech(TEXTS[0], speaker_id=0, context=ANCHOR, seed=1, max_audio_length_ms=800)[0]
    assert np.allclose(repeat, results[0].audio, atol=1e-5), "a seed means the same speech alone or batched"


def test_the_placeholder_generates_a_batch_one_by_one() -> None:
    results = PlaceholderCSMModel().generate_batch(TEXTS, seeds=[1, 2, 3])
    assert [len(r.audio) for r in results] == [PlaceholderCSMModel().generate_speech(t)[0].size for t in TEXTS]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_graphs_replay_the_eager_codes(tmp_path_factory: pytest.TempPathFactory) -> None:
    checkpoint = build_tiny_checkpoint(tmp_path_factory.mktemp("tiny-csm-cuda"))
    model = CSMModel(str(checkpoint), device="cuda", dtype="float32")
    assert model.engine is not None and model.engine.use_cuda_graphs
    seeded = [Sampling(0.9, 20, seed) for seed in (7, 8, 9)]
    graphed = _codes(model, TEXTS, [10, 4, 7], seeded, ANCHOR)
    assert model.engine._graphs and all(g is not None for g in model.engine._graphs.entries.values()), "capture failed"
    model.engine.use_cuda_graphs = False
    eager = _codes(model, TEXTS, [10, 4, 7], seeded, ANCHOR)
    assert all(torch.equal(a, b) for a, b in zip(graphed, eager, strict=True))


def test_a_failed_graph_capture_runs_eagerly_and_is_recorded_in_the_model_info(tiny_checkpoint: Path) -> None:
    model = CSMModel(str(tiny_checkpoint), device="cpu", dtype="float32")
    assert model.engine is not None and "graph_capture_failures" not in model.describe()
    eager = _codes(model, TEXTS[:2], [4, 4], [GREEDY] * 2)
    model.engine.use_cuda_graphs = True  # capture cannot work on the CPU: it must fail loudly, not the job
    assert all(torch.equal(a, b) for a, b in zip(_codes(model, TEXTS[:2], [4, 4], [GREEDY] * 2), eager, strict=True))
    [failure] = model.describe()["graph_capture_failures"]
    assert failure.startswith("batch 2: ")


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_a_model_on_the_second_gpu_captures_its_graphs_there(tmp_path_factory: pytest.TempPathFactory) -> None:
    checkpoint = build_tiny_checkpoint(tmp_path_factory.mktemp("tiny-csm-cuda1"))
    model = CSMModel(str(checkpoint), device="cuda:1", dtype="float32")
    seeded = [Sampling(0.9, 20, seed) for seed in (7, 8, 9)]
    graphed = _codes(model, TEXTS, [10, 4, 7], seeded, ANCHOR)
    assert model.engine is not None and not model.engine.graph_failures
    assert all(c.device == torch.device("cuda:1") for c in graphed)
    model.engine.use_cuda_graphs = False
    assert all(torch.equal(a, b) for a, b in zip(graphed, _codes(model, TEXTS, [10, 4, 7], seeded, ANCHOR),
                                                  strict=True))


def test_the_fused_layers_compute_what_transformers_layers_compute(model: CSMModel) -> None:
    """The engine's stacks run fused q/k/v and gate/up weights (views of the model's own: nothing held twice)."""
    engine = model.engine
    assert engine is not None
    embeds = engine.embed_prompt(model._turn_ids(TEXTS[2], 0))[None]
    positions = torch.arange(embeds.shape[1])[None]
    with torch.inference_mode():
        expected = model.model.backbone_model(inputs_embeds=embeds).last_hidden_state
        engine.backbone.allocate(1, embeds.shape[1])
        ours = engine.backbone.forward(embeds, engine.backbone.rotary(positions), 0, None)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)
    attention = model.model.backbone_model.layers[0].self_attn
    assert attention.q_proj.weight.data_ptr() == engine.backbone.layers[0].qkv.data_ptr()
    assert attention.v_proj.weight.untyped_storage().data_ptr() == engine.backbone.layers[0].qkv.data_ptr()
