"""The depth-decoder graph cache's bookkeeping (CPU-checkable): batch-size and top-k buckets, LRU eviction."""

from __future__ import annotations

from worker.models.depth_graph import GraphCache, batch_bucket, k_bucket


def test_a_batch_runs_in_the_smallest_captured_size_that_holds_it() -> None:
    assert [batch_bucket(b) for b in (1, 2, 3, 4, 5, 8, 9, 31, 33, 64)] == [1, 2, 4, 4, 8, 8, 16, 32, 64, 64]
    assert [batch_bucket(b) for b in (65, 128, 129)] == [128, 128, 192]


def test_top_k_widths_round_up_to_powers_of_two_within_the_vocabulary() -> None:
    assert [k_bucket(k, 2051) for k in (1, 2, 3, 20, 50, 64, 65, 2048, 2051)] == [1, 2, 4, 32, 64, 64, 128, 2048,
                                                                                   2051]


def test_the_least_recently_used_graph_is_evicted_and_a_hit_builds_nothing() -> None:
    built: list[str] = []
    cache = GraphCache(capacity=2)

    def get(key: str) -> str:
        return str(cache.get(key, lambda: built.append(key) or f"graph {key}"))

    assert [get("a"), get("b"), get("a")] == ["graph a", "graph b", "graph a"]
    get("c")  # full: "b" was used least recently
    assert list(cache.entries) == ["a", "c"] and len(cache) == 2
    get("b")
    assert list(cache.entries) == ["c", "b"] and built == ["a", "b", "c", "b"]


def test_a_failed_capture_is_remembered_and_not_retried() -> None:
    attempts: list[int] = []
    cache = GraphCache(capacity=4)
    for _ in range(3):
        assert cache.get((2, 1), lambda: attempts.append(1)) is None
    assert attempts == [1]
