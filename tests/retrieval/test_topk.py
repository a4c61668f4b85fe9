"""Top-K retrieval against a NumPy reference (a full sort of ``q @ E.T``) and hand-worked values."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

import pinrank.retrieval.topk as topk_module
from pinrank.retrieval import BruteForce, FaissTopK, TopK, build_topk, recall_vs_exact

BIG = 10**12  # ids far from row numbers, so a row index leaking out as an id is caught


def reference(
    queries: np.ndarray,
    items: np.ndarray,
    ids: np.ndarray,
    k: int,
    exclude: list[np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Full stable sort of float64 scores (ties to the lower row), excluded ids dropped, padded."""
    scores = queries.astype(np.float64) @ items.astype(np.float64).T  # (Q, N)
    out_s = np.full((len(queries), k), -np.inf)
    out_i = np.full((len(queries), k), -1, dtype=np.int64)
    for q, row in enumerate(scores):
        order = np.argsort(-row, kind="stable")
        if exclude is not None:
            order = order[~np.isin(ids[order], exclude[q])]
        order = order[:k]
        out_s[q, : order.size], out_i[q, : order.size] = row[order], ids[order]
    return out_s, out_i


def gaussian(n: int, d: int, seed: int, normalise: bool = False) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True) if normalise else x


def exclusions(exact_ids: np.ndarray, seed: int) -> list[np.ndarray]:
    """Per query: some of its own top results (so exclusion bites), random ids, unknown ids."""
    rng = np.random.default_rng(seed)
    return [
        np.concatenate([row[rng.random(row.size) < 0.5], rng.choice(row, 3), [7, BIG - 5]])
        for row in exact_ids
    ]


IMPLEMENTATIONS = {
    "bruteforce": lambda: BruteForce(),
    "flat": lambda: FaissTopK("Flat"),
    "ivf_all_lists": lambda: FaissTopK("IVF16,Flat", nprobe=16),
    "hnsw": lambda: FaissTopK("HNSW32", ef_search=256),
}
EXACT = ("bruteforce", "flat", "ivf_all_lists")


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """300 items [300, 16] with ids BIG + 3*row, and 25 queries [25, 16]."""
    return gaussian(300, 16, seed=0), BIG + 3 * np.arange(300), gaussian(25, 16, seed=1)


def test_hand_worked_example() -> None:
    items = np.array([[1, 0], [0, 1], [1, 1], [2, 0], [1, 0]], dtype=np.float32)
    ids = np.array([100, 200, 300, 400, 500])
    topk = BruteForce().index(items, ids)
    queries = np.array([[1, 0], [0, 2]], dtype=np.float32)
    scores, got = topk.search(queries, k=3)
    # q0 scores 1, 0, 1, 2, 1: 400 first, then the tie at 1 in row order 100, 300 (500 is cut)
    # q1 scores 0, 2, 2, 0, 0: 200 and 300 tie (row order), then rows 0, 3, 4 tie at 0: 100
    assert got.tolist() == [[400, 100, 300], [200, 300, 100]]
    assert scores.tolist() == [[2, 1, 1], [2, 2, 0]]
    scores, got = topk.search(queries, k=7, exclude=[np.array([400, 100]), np.array([], int)])
    assert got.tolist() == [[300, 500, 200, -1, -1, -1, -1], [200, 300, 100, 400, 500, -1, -1]]
    assert scores[0].tolist() == [1, 1, 0, -np.inf, -np.inf, -np.inf, -np.inf]


@pytest.mark.parametrize("k", [1, 10, 299, 320])
def test_bruteforce_matches_reference(data: tuple, k: int) -> None:
    items, ids, queries = data
    exp_s, exp_i = reference(queries, items, ids, k)
    scores, got = BruteForce().index(items, ids).search(queries, k)
    assert scores.dtype == np.float32 and got.dtype == np.int64 and got.shape == (25, k)
    np.testing.assert_array_equal(got, exp_i)
    np.testing.assert_allclose(scores, exp_s, rtol=1e-5, atol=1e-5)


def test_bruteforce_ties_and_chunks_match_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    """Small integer embeddings tie a lot; a tiny chunk budget forces one query per chunk."""
    rng = np.random.default_rng(2)
    items = rng.integers(-1, 2, size=(200, 3)).astype(np.float32)
    queries = rng.integers(-1, 2, size=(9, 3)).astype(np.float32)
    ids = rng.permutation(200) + BIG
    monkeypatch.setattr(topk_module, "_CHUNK_BYTES", 1)
    excl = exclusions(reference(queries, items, ids, 5)[1], seed=3)
    for k, exclude in [(4, None), (30, None), (30, excl), (250, excl)]:
        exp_s, exp_i = reference(queries, items, ids, k, exclude)
        scores, got = BruteForce().index(items, ids).search(queries, k, exclude)
        np.testing.assert_array_equal(got, exp_i)
        np.testing.assert_array_equal(scores, exp_s.astype(np.float32))


@pytest.mark.parametrize("factory,nprobe", [("Flat", None), ("IVF16,Flat", 16)])
def test_exact_faiss_equals_bruteforce(data: tuple, factory: str, nprobe: int | None) -> None:
    items, ids, queries = data
    exp_s, exp_i = BruteForce().index(items, ids).search(queries, 20)
    scores, got = FaissTopK(factory, nprobe=nprobe).index(items, ids).search(queries, 20)
    np.testing.assert_array_equal(got, exp_i)
    np.testing.assert_allclose(scores, exp_s, rtol=1e-5, atol=1e-5)


def test_hnsw_recall() -> None:
    items, queries = gaussian(5000, 32, seed=4, normalise=True), gaussian(100, 32, 5, True)
    ids = np.arange(5000) + BIG
    exact = BruteForce().index(items, ids).search(queries, 50)[1]
    approx = FaissTopK("HNSW32", ef_search=256).index(items, ids).search(queries, 50)[1]
    assert recall_vs_exact(approx, exact) >= 0.98
    assert recall_vs_exact(approx[:, :10], exact) < 0.25  # the metric does count misses


@pytest.mark.parametrize("name", IMPLEMENTATIONS)
@pytest.mark.parametrize("k", [10, 290])
def test_exclusion_is_exact(data: tuple, name: str, k: int) -> None:
    items, ids, queries = data
    exclude = exclusions(reference(queries, items, ids, 30)[1], seed=6)
    scores, got = IMPLEMENTATIONS[name]().index(items, ids).search(queries, k, exclude)
    for row, excl in zip(got, exclude, strict=True):
        assert not np.isin(row, excl).any()
    exp_s, exp_i = reference(queries, items, ids, k, exclude)
    if name in EXACT:
        np.testing.assert_array_equal(got, exp_i)
        np.testing.assert_allclose(scores, exp_s, rtol=1e-5, atol=1e-5)
    else:  # the -1 / -inf padding is where the exact answer has it
        np.testing.assert_array_equal(got == -1, exp_i == -1)
        np.testing.assert_array_equal(np.isneginf(scores), exp_i == -1)


@pytest.mark.parametrize("name", EXACT)
def test_exclusion_searches_deeper_when_ids_repeat(name: str) -> None:
    """Ten rows share each id, so excluding one id removes ten candidates, not one."""
    items, queries = gaussian(400, 8, seed=7), gaussian(6, 8, seed=8)
    ids = BIG + np.arange(400) // 10
    exclude = [reference(queries[q : q + 1], items, ids, 3)[1][0] for q in range(6)]
    got = IMPLEMENTATIONS[name]().index(items, ids).search(queries, 15, exclude)[1]
    np.testing.assert_array_equal(got, reference(queries, items, ids, 15, exclude)[1])
    assert (got != -1).all()


@pytest.mark.parametrize("name", IMPLEMENTATIONS)
def test_arbitrary_int64_ids_round_trip(name: str) -> None:
    items, queries = gaussian(400, 8, seed=9, normalise=True), gaussian(5, 8, seed=10)
    ids = np.random.default_rng(11).choice(2**40, 400, replace=False) * 4096 + BIG  # up to ~2**52
    got = IMPLEMENTATIONS[name]().index(items, ids).search(queries, 400)[1]
    assert np.isin(got[got != -1], ids).all()
    assert recall_vs_exact(got, reference(queries, items, ids, 400)[1]) >= 0.95


def test_empty_query_batch(data: tuple) -> None:
    items, ids, _ = data
    scores, got = BruteForce().index(items, ids).search(np.empty((0, 16), np.float32), 5, [])
    assert scores.shape == got.shape == (0, 5)


def test_ivf_training_sample_is_deterministic(data: tuple) -> None:
    items, ids, queries = data
    runs = [
        FaissTopK("IVF8,Flat", nprobe=1, train_size=100, seed=1)
        .index(items, ids)
        .search(queries, 9)
        for _ in range(2)
    ]
    np.testing.assert_array_equal(runs[0][1], runs[1][1])


def test_build_topk_and_description() -> None:
    assert isinstance(build_topk("BruteForce"), BruteForce)
    ivf = build_topk("IVF16,Flat", nprobe=4, use_gpu=False)
    assert isinstance(ivf, FaissTopK) and isinstance(ivf, TopK)
    assert ivf.description == "IVF16,Flat nprobe=4 cpu"


def test_recall_vs_exact_hand_worked() -> None:
    exact = np.array([[1, 2, 3, 4], [5, 6, -1, -1], [-1, -1, -1, -1]])
    approx = np.array([[4, 3, 9, 8], [6, 5, 7, -1], [1, 2, 3, 4]])
    assert recall_vs_exact(approx, exact) == pytest.approx((0.5 + 1 + 1) / 3)


@pytest.mark.parametrize("make", [BruteForce, lambda: FaissTopK("Flat")])
def test_validation_errors(data: tuple, make: object) -> None:
    items, ids, queries = data
    topk: TopK = make()  # type: ignore[operator]
    with pytest.raises(ValueError, match="before index"):
        topk.search(queries, 5)
    bad = items.copy()
    bad[3, 2] = np.nan
    for emb, item_ids, match in [
        (bad, ids, "NaN"),
        (items[0], ids, r"\[N, D\]"),
        (items, ids[:-1], "ids must be"),
        (items, ids.astype(float), "ids must be"),
        (items, np.where(ids == ids[5], -1, ids), "-1"),
    ]:
        with pytest.raises(ValueError, match=match):
            topk.index(emb, item_ids)
    topk.index(items, ids)
    for q, k, exclude, match in [
        (queries[:, :8], 5, None, r"\[Q, 16\]"),
        (queries[0], 5, None, r"\[Q, 16\]"),
        (queries, 0, None, "k must be"),
        (queries, 2.5, None, "k must be"),
        (queries, 5, [np.array([1])], "one array per query"),
    ]:
        with pytest.raises(ValueError, match=match):
            topk.search(q, k, exclude)  # type: ignore[arg-type]


def test_faiss_config_errors(data: tuple) -> None:
    items, ids, _ = data
    with pytest.raises(ValueError, match="nprobe does not apply"):
        FaissTopK("Flat", nprobe=4).index(items, ids)
    with pytest.raises(ValueError, match="ef_search must be"):
        FaissTopK("HNSW32", ef_search=0)
    if faiss.get_num_gpus() == 0:
        with pytest.raises(ValueError, match="no GPU"):
            FaissTopK("Flat", use_gpu=True).index(items, ids)


@pytest.mark.skipif(faiss.get_num_gpus() == 0, reason="needs faiss-gpu and a GPU")
def test_gpu_ivf_equals_exact_and_hnsw_falls_back(data: tuple) -> None:
    items, ids, queries = data
    ivf = FaissTopK("IVF16,Flat", nprobe=16).index(items, ids)
    assert ivf.on_gpu
    excl = exclusions(reference(queries, items, ids, 30)[1], seed=12)
    got = ivf.search(queries, 20, excl)[1]
    np.testing.assert_array_equal(got, reference(queries, items, ids, 20, excl)[1])
    assert not FaissTopK("HNSW32").index(items, ids).on_gpu


def test_set_search_params_retunes_without_rebuilding(data: tuple) -> None:
    items, ids, queries = data
    exact = BruteForce().index(items, ids).search(queries, 20)[1]
    ivf = FaissTopK("IVF16,Flat", nprobe=1).index(items, ids)
    assert recall_vs_exact(ivf.search(queries, 20)[1], exact) < 0.5  # one list of sixteen
    np.testing.assert_array_equal(ivf.set_search_params(nprobe=16).search(queries, 20)[1], exact)
    assert ivf.description == "IVF16,Flat nprobe=16 cpu"
    with pytest.raises(ValueError, match="efSearch does not apply"):
        ivf.set_search_params(ef_search=64)
    assert ivf.description == "IVF16,Flat nprobe=16 cpu"
    with pytest.raises(ValueError, match="before index"):
        FaissTopK("HNSW32").set_search_params(ef_search=64)
