"""The popularity prior: augmented inner products equal the biased score, and exact search on
them ranks by it (NumPy reference)."""

from __future__ import annotations

import numpy as np

from pinrank.retrieval import BruteForce, FaissTopK
from pinrank.retrieval.bias import impression_counts, item_vectors, query_vectors


def test_counts_ignore_ids_outside_the_catalogue() -> None:
    counts = impression_counts(np.array([3, 3, 8, 1, 3, 42]), np.array([8, 1, 3, 5]))
    assert counts.tolist() == [1, 1, 3, 0]
    assert impression_counts(np.array([1]), np.zeros(0, np.int64)).tolist() == []


def test_augmented_search_ranks_by_the_biased_score() -> None:
    rng = np.random.default_rng(0)
    items = rng.normal(size=(300, 8))
    items /= np.linalg.norm(items, axis=1, keepdims=True)
    users = rng.normal(size=(20, 8))
    users /= np.linalg.norm(users, axis=1, keepdims=True)
    counts = rng.zipf(1.5, 300).clip(max=10_000)
    ids = np.arange(300) + 1000
    temperature, beta, k = 0.05, 0.7, 15
    reference = users @ items.T / temperature + beta * np.log1p(counts)[None, :]  # [Q, N]
    exclude = [rng.choice(ids, 10, replace=False) for _ in range(20)]
    for q, ex in enumerate(exclude):
        reference[q, ex - 1000] = -np.inf
    expected = ids[np.argsort(-reference, axis=1, kind="stable")[:, :k]]
    aug_items, aug_users = item_vectors(items, counts), query_vectors(users, temperature, beta)
    assert aug_items.shape == (300, 10) and aug_users.shape == (20, 10)
    norms = np.linalg.norm(aug_items, axis=1)
    assert np.allclose(norms, norms[0], rtol=1e-5)  # one norm: graph indexes work
    for topk in (BruteForce(), FaissTopK("Flat", use_gpu=False)):
        _, found = topk.index(aug_items, ids).search(aug_users, k, exclude=exclude)
        assert (found == expected).mean() > 0.99  # float32 ties aside
    hnsw = FaissTopK("HNSW16", ef_search=64, use_gpu=False).index(aug_items, ids)
    _, found = hnsw.search(aug_users, k, exclude=exclude)
    recall = np.mean([np.isin(f, e).mean() for f, e in zip(found, expected, strict=True)])
    assert recall >= 0.95  # equal norms: a graph index finds the biased top-k
    unbiased = ids[np.argsort(-(users @ items.T), axis=1)[:, :k]]
    assert (expected != unbiased).any()  # the prior changes the ranking here
