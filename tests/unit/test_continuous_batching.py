"""Continuous batching on the tiny random CSM checkpoint: a row refilled into a freed slot decodes exactly as it
would alone, every text is generated once, and a short job is not held behind a long one."""

from __future__ import annotations

import logging
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from producer.request import NarrationRequest
from producer.storage import LocalStorage
from worker.batcher import BatchingModel
from worker.feeds import Feed, FeedQueue, Stream
from worker.models import CSMModel, CSMModelError, Generated, PlaceholderCSMModel, Segment, SpeechModel, SpeechRequest
from worker.models.engine import Row, Sampling
from worker.narration.audio import decode_wav
from worker.narration.manifest import Manifest
from worker.narration.synthesis import ChunkSynthesizer, chunk_seed
from worker.narration.text import Chunk, chunk_text

REFERENCE = (0.1 * np.sin(np.linspace(0, 2000, 16_000))).astype(np.float32)  # 1 s at 16 kHz
ANCHOR = [Segment(1, "Hello there.", REFERENCE, 16_000)]
OTHER = [Segment(2, "A second, longer voice prompt for another job.", REFERENCE[:12_000], 16_000)]
GREEDY = Sampling(temperature=1.0, top_k=1)


@pytest.fixture(scope="module")
def model(tiny_checkpoint: Path) -> CSMModel:
    return CSMModel(str(tiny_checkpoint), device="cpu", dtype="float32")


def _row(model: CSMModel, text: str, cap: int, sampling: Sampling, context: list[Segment] | None = None) -> Row:
    assert model.engine is not None
    prefix = model._prefix(context or [])[0]
    return Row(prefix, model.engine.embed_prompt(model._turn_ids(text, 0)), cap, sampling)


def _alone(model: CSMModel, row: Row) -> torch.Tensor:
    assert model.engine is not None
    return model.engine.generate_rows([row.prefix], [row.prompt], [row.cap], [row.sampling])[0]


def _run(model: CSMModel, first: list[Row], waiting: list[Row], size: int) -> tuple[dict[Row, torch.Tensor],
                                                                                    list[tuple[str, Row, int]]]:
    """Codes per row, and the events ("start"/"end", row, rows in flight at that moment) in order."""
    assert model.engine is not None
    codes: dict[Row, torch.Tensor] = {}
    events: list[tuple[str, Row, int]] = [("start", row, 0) for row in first]
    in_flight = set(first)

    def ended(row: Row, got: torch.Tensor) -> None:
        assert row not in codes, "a row handed on twice"
        codes[row] = got
        in_flight.discard(row)
        events.append(("end", row, len(in_flight)))

    def refill(free: int) -> list[Row]:
        assert len(in_flight) + free <= size
        taken = [waiting.pop(0) for _ in range(min(free, len(waiting)))]
        events.extend(("start", row, len(in_flight)) for row in taken)
        in_flight.update(taken)
        return taken

    model.engine.run(first, ended, refill, size)
    return codes, events


@pytest.mark.parametrize("sampling", [GREEDY, Sampling(0.9, 20, 11)], ids=["greedy", "sampled"])
def test_a_row_refilled_into_a_freed_slot_makes_the_codes_it_makes_alone(model: CSMModel,
                                                                         sampling: Sampling) -> None:
    first = [_row(model, "Hi.", 3, GREEDY, ANCHOR), _row(model, "The lighthouse keeper counted.", 14, GREEDY, ANCHOR)]
    late = _row(model, "A much longer sentence, with several clauses, to read.", 9, sampling, ANCHOR)
    codes, events = _run(model, first, [late], size=2)
    assert ("start", late, 1) in events, "the late row started while the long one was running"
    for row in [*first, late]:
        assert torch.equal(codes[row], _alone(model, row))


def test_rows_of_different_anchors_in_one_run_each_match_their_solo_run(model: CSMModel) -> None:
    texts = ["Hi.", "The lighthouse keeper counted.", "One more line to say.", "Rain.", "Boats knocked together."]
    contexts = [ANCHOR, None, OTHER, OTHER, ANCHOR]
    rows = [_row(model, text, cap, Sampling(0.9, 20, seed), context)
            for text, cap, seed, context in zip(texts, [2, 12, 5, 7, 4], range(5), contexts, strict=True)]
    codes, _ = _run(model, rows[:2], rows[2:], size=2)
    for i, row in enumerate(rows):
        assert torch.equal(codes[row], _alone(model, row)), f"row {i}"


def test_a_row_ending_early_frees_its_slot_for_a_waiting_row(model: CSMModel) -> None:
    long = _row(model, "The lighthouse keeper counted the waves.", 30, GREEDY)
    short = [_row(model, "Hi.", cap, GREEDY) for cap in (2, 3, 2, 4, 3)]
    codes, events = _run(model, [long, short[0]], list(short[1:]), size=2)
    assert len(codes) == 6 and [len(codes[r]) for r in short] == [2, 3, 2, 4, 3]
    started_beside_long = [row for kind, row, running in events if kind == "start" and row in short and running]
    assert started_beside_long == short[1:], "each waiting row took the freed slot while the long row ran"
    assert events[-1] == ("end", long, 0), "the long row never held the others back"


def test_every_text_of_every_job_is_generated_exactly_once(model: CSMModel, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(model, "batch_size", 3)
    shared = BatchingModel(model, wait_s=0.0, continuous=True)
    requests = [SpeechRequest([f"Line {j} of job {i}." for j in range(n)], speaker_id=i, seeds=list(range(n)),
                              context=[ANCHOR, None, OTHER][i % 3], max_audio_length_ms=80 * (3 + i))
                for i, n in enumerate([5, 1, 3, 2])]
    heard: list[tuple[int, int, int]] = []
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(shared.generate_requests, [r], lambda _r, i, _g, job=job: heard.append((job, i)))
                   for job, r in enumerate(requests)]
        results = [f.result(timeout=120) for f in futures]
    assert sorted(heard) == [(job, i) for job, r in enumerate(requests) for i in range(len(r.texts))]
    for request, [got] in zip(requests, results, strict=True):
        [expected] = model.generate_requests([request])
        for a, b in zip(expected, got, strict=True):
            assert np.allclose(a.audio, b.audio, atol=1e-5) and a.stats == b.stats


def test_a_short_job_ends_while_a_long_job_runs_and_a_bad_one_fails_alone(model: CSMModel,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(model, "batch_size", 4)
    shared = BatchingModel(model, wait_s=0.0, continuous=True)
    long = SpeechRequest(["The lighthouse keeper counted the waves."] * 8, seeds=list(range(8)),
                         max_audio_length_ms=80 * 200)  # two rounds of four slots
    short = SpeechRequest(["Hi."], seeds=[5], max_audio_length_ms=80 * 3)
    too_long = SpeechRequest(["word " * 2000], seeds=[1])  # more than the model's positions
    ended: dict[str, float] = {}
    with ThreadPoolExecutor(3) as pool:
        running = pool.submit(lambda: (shared.generate_requests([long]), ended.setdefault("long", time.monotonic())))
        time.sleep(0.3)
        doomed = pool.submit(shared.generate_requests, [too_long])
        quick = pool.submit(lambda: (shared.generate_requests([short]), ended.setdefault("short", time.monotonic())))
        with pytest.raises(CSMModelError, match="positions"):
            doomed.result(timeout=120)
        quick.result(timeout=120)
        running.result(timeout=120)
    assert ended["short"] < ended["long"], "the one-line job waited for the long one"


def _synthesizer(model: SpeechModel, tmp_path: Path, job_id: str, chunks: list[Chunk]) -> ChunkSynthesizer:
    request = NarrationRequest(text=" ".join(c.text for c in chunks))
    synthesizer = ChunkSynthesizer(model, request, job_id, tmp_path / "spool")
    synthesizer.manifest = Manifest.open(LocalStorage(tmp_path / "store"), job_id, request, {}, {}, len(chunks), None)
    return synthesizer


def _events(caplog: pytest.LogCaptureFixture, job_id: str) -> list[str]:
    """The flow's "chunk N started/ended (attempt k)" lines, in order."""
    return [m.removeprefix(f"job {job_id}: ") for r in caplog.records
            if re.fullmatch(r"job \S+: chunk \d+ (started|ended) \(attempt \d\)", m := r.getMessage())]


def test_a_chunk_that_fails_qa_is_tried_again_while_the_other_rows_run_on(model: CSMModel, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    """Random weights run every chunk to its frame cap (QA: runaway): the short chunk's second try starts at once,
    in the slot its first try freed, while the long chunk still runs; every chunk is stored once, after two tries."""
    monkeypatch.setattr(model, "batch_size", 4)
    shared = BatchingModel(model, wait_s=0.0, continuous=True)
    chunks = chunk_text("Hi. The keeper counted the waves.", 20)
    synthesizer = _synthesizer(shared, tmp_path, "job-qa-retry", chunks)
    with caplog.at_level(logging.DEBUG, logger="worker.narration"):
        entries = list(synthesizer.synthesize(chunks))
    assert [e["index"] for e in entries] == [c.index for c in chunks] == [0, 1]
    assert all(e["attempts"] == 2 and "runaway" in e["qa"]["problems"] for e in entries)
    events = _events(caplog, "job-qa-retry")
    assert events.index("chunk 0 started (attempt 2)") < events.index("chunk 1 ended (attempt 1)"), events


@pytest.mark.parametrize("pool", ["prefork", "threads"])
def test_a_jobs_next_chunk_takes_the_slot_its_short_row_freed_while_its_long_row_runs(
    model: CSMModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, pool: str,
) -> None:
    """Batch 2, chunk 1 capped far longer than chunks 0 and 2: chunk 0's slot takes its retry and then chunk 2, all
    before chunk 1's first row ends; each chunk is stored on its own seed, as it would be generated alone."""
    monkeypatch.setattr(model, "batch_size", 2)
    chunks = [Chunk(0, "Hi.", "Hi.", False), Chunk(1, "The keeper " * 9 + "counted.", "...", False),
              Chunk(2, "Go.", "Go.", True)]
    job_id = f"job-refill-{pool}"
    synthesizer = _synthesizer(model if pool == "prefork" else BatchingModel(model, 0.0, continuous=True), tmp_path,
                               job_id, chunks)
    synthesizer.anchor = ANCHOR[0]
    with caplog.at_level(logging.DEBUG, logger="worker.narration"):
        entries = list(synthesizer.synthesize(chunks))
    events = _events(caplog, job_id)
    long_ended = events.index("chunk 1 ended (attempt 1)")
    assert events[:2] == ["chunk 0 started (attempt 1)", "chunk 1 started (attempt 1)"], events
    assert events.index("chunk 2 started (attempt 1)") < long_ended, f"chunk 2 waited for the long row: {events}"
    assert [e["index"] for e in entries] == [0, 1, 2] and all(e["attempts"] == 2 for e in entries)
    stored, rate = decode_wav(synthesizer.manifest.read_chunk(2, tmp_path / "read"))
    [alone] = model.generate_batch(["Go."], context=ANCHOR, seeds=[chunk_seed(job_id, 2, 1)])
    assert entries[2]["seed"] == chunk_seed(job_id, 2, 1) and rate == alone.sample_rate
    assert np.allclose(stored, alone.audio, atol=1e-5), "chunk 2's audio depends on what shared its batch"


def test_a_job_that_just_arrived_gets_the_next_free_slot_ahead_of_a_long_jobs_backlog() -> None:
    feeds, start = FeedQueue(threading.Condition()), PlaceholderCSMModel().start_texts
    long = Feed([SpeechRequest([f"Chunk {i}." for i in range(6)], owner="long")])
    feeds.add(long)
    running = feeds.take(4, start)
    assert [h.index for h in running] == [0, 1, 2, 3]
    retry = Feed([SpeechRequest(["Chunk 0 again."], owner="long")])  # the long job's QA retry, waiting first
    short = Feed([SpeechRequest(["Hi."], owner="short")])
    feeds.add(retry)
    feeds.add(short)
    feeds.done(running[0], Generated(np.zeros(1, np.float32), 24_000))
    [next_text] = feeds.take(1, start)
    assert next_text.request is short.requests[0], "the job with no text running goes first"
    taken = [h.request.texts[h.index] for h in feeds.take(3, start)]
    assert taken == ["Chunk 4.", "Chunk 0 again.", "Chunk 5."], "the long job's two calls take turns"


def test_jobs_streams_take_turns_for_the_free_slots() -> None:
    """Three jobs' streams, two slots: a slot freed goes to the job served least recently among those with the fewest
    rows running, so none waits while the others alternate."""
    feeds = FeedQueue(threading.Condition())
    streams = {name: Stream(lambda free, name=name: [object() for _ in range(free)], lambda _h, _r: None, size=2)
               for name in "ABC"}
    for stream in streams.values():
        feeds.add(stream)
    owner = {}
    order = []
    running = []
    for _ in range(9):
        for handle in feeds.take(2 - len(running), PlaceholderCSMModel().start_texts):
            owner[handle] = next(name for name, s in streams.items() if s is feeds._owner[handle][0])
            order.append(owner[handle])
            running.append(handle)
        feeds.done(running.pop(0), Generated(np.zeros(1, np.float32), 24_000))
    assert order[:6] == ["A", "B", "C", "A", "B", "C"], order


def test_a_slot_freed_at_its_cap_is_decoded_on_harmlessly_when_the_batch_keeps_its_size(
        model: CSMModel, monkeypatch: pytest.MonkeyPatch) -> None:
    """As under CUDA graphs (the batch keeps its size): the slot of a row that stopped at its cap is still decoded
    while a row refilled later runs on, and must not write past the codes kept for any row."""
    assert model.engine is not None
    monkeypatch.setattr(model.engine, "use_cuda_graphs", True)  # capture fails on the CPU: eager, batch size kept
    monkeypatch.setattr(model.engine, "graph_failures", [])
    first = [_row(model, "The lighthouse keeper counted.", 6, GREEDY), _row(model, "Hi.", 2, GREEDY)]
    late = _row(model, "Boats knocked together.", 6, GREEDY)
    codes, events = _run(model, first, [late], size=2)
    assert ("end", first[0], 1) in events, "the late row ran on after the first row's cap"
    monkeypatch.setattr(model.engine, "use_cuda_graphs", False)
    for row in [*first, late]:
        assert torch.equal(codes[row], _alone(model, row))
