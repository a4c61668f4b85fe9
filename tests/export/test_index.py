"""The package index: chosen by catalogue size, its recall against exact search measured."""

from __future__ import annotations

import numpy as np
import pytest

from pinrank.export.index import (
    DEFAULT_RULES,
    IndexConfig,
    IndexRecallError,
    check_recall,
    choose_index,
    distinct_first,
    measure_recall,
    nlist_for,
    pq_m_for,
)
from pinrank.retrieval.topk import FaissTopK


@pytest.mark.parametrize(
    ("items", "factory"),
    [
        (3_000, "HNSW32"),
        (200_000, "HNSW32"),
        (200_001, "IVF2048,Flat"),
        (1_000_000, "IVF4096,Flat"),
        (10_000_000, "IVF16384,PQ32"),
    ],
)
def test_the_index_is_chosen_by_catalogue_size(items: int, factory: str) -> None:
    got, params, why = choose_index(IndexConfig(), items, 64, "Flat", {})
    assert got == factory
    assert params == ({"ef_search": 128} if factory.startswith("HNSW") else {"nprobe": 32})
    assert f"{items:,} pins" in why


def test_the_run_s_own_index_on_request() -> None:
    config = IndexConfig(choose="run")
    assert choose_index(config, 10**7, 64, "HNSW32", {"ef_search": 64})[:2] == (
        "HNSW32",
        {"ef_search": 64},
    )


def test_nlist_and_pq_m() -> None:
    assert nlist_for(1_000_000) == 4096 and nlist_for(100) == 2  # >= 39 points per list
    assert nlist_for(10) == 1
    assert pq_m_for(64) == 32 and pq_m_for(66) == 33 and pq_m_for(7) == 1


def test_bad_index_configs_are_named() -> None:
    with pytest.raises(ValueError, match=r"index\.choose"):
        IndexConfig(choose="fastest")
    with pytest.raises(ValueError, match="must end with a rule for any size"):
        IndexConfig(by_size=DEFAULT_RULES[:2])
    with pytest.raises(ValueError, match="increasing"):
        IndexConfig(by_size=(DEFAULT_RULES[1], DEFAULT_RULES[0], DEFAULT_RULES[2]))
    with pytest.raises(ValueError, match="unknown keys"):
        IndexConfig.from_dict({"recall": 10})
    config = IndexConfig.from_dict(
        {"by_size": [{"up_to": None, "factory": "Flat"}], "min_recall": 0.5}
    )
    assert config.by_size[0].factory == "Flat" and config.min_recall == 0.5


def test_recall_against_exact_is_measured_and_checked() -> None:
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(5_000, 16)).astype(np.float32)
    ids = np.arange(5_000, dtype=np.int64) * 7 + 10**12
    queries = rng.normal(size=(200, 16)).astype(np.float32)
    flat = FaissTopK("Flat", use_gpu=False).index(emb, ids)
    exact = measure_recall(flat, emb, ids, queries, 100)
    assert exact == {
        "k": 100,
        "queries": 200,
        "recall_vs_exact": 1.0,
        "exact": "numpy inner product",
    }
    # an IVF index visiting 1 of 64 lists misses most of the exact top 100
    ivf = FaissTopK("IVF64,Flat", nprobe=1, use_gpu=False).index(emb, ids)
    low = measure_recall(ivf, emb, ids, queries, 100)["recall_vs_exact"]
    assert 0 < low < 0.6
    with pytest.raises(IndexRecallError, match=r"IVF64,Flat .* below index.min_recall=0.8"):
        check_recall(IndexConfig(), "IVF64,Flat", {"nprobe": 1}, low)
    check_recall(IndexConfig(), "Flat", {}, 1.0)
    # k larger than the catalogue: every item
    small = FaissTopK("Flat", use_gpu=False).index(emb[:50], ids[:50])
    assert measure_recall(small, emb[:50], ids[:50], queries, 100)["k"] == 50


def test_distinct_first_keeps_event_order() -> None:
    assert distinct_first([5, 5, 3, 9, 3, 1], 3).tolist() == [0, 2, 3]
