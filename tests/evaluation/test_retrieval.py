"""Tests of the protocol's retrieval metrics (docs/evaluation.md), task building and baselines.

Hand-worked values, a slow pure-Python reference on random data, and the protocol's reference
numbers on MovieLens-100K (skipped when the data set is absent; it is never copied).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from data_fixtures import movielens_raw

from pinrank.data.io import read_table
from pinrank.data.splits import split_events
from pinrank.evaluation import (
    RetrievalTask,
    baseline_metrics,
    popularity_scores,
    random_ranking,
    rank_by_scores,
    retrieval_metrics,
    retrieval_task,
)

# --- retrieval_metrics: hand-worked values -------------------------------------------------------

L3 = 1 / math.log2(3)  # discount of rank 2; rank 1 is 1, rank 3 is 1 / log2(4) = 0.5


def test_metrics_hand_worked() -> None:
    topk = np.array([[7, 1, 5], [4, 2, 3], [9, -1, -1]])
    truth = [np.array([5, 7]), np.array([3]), np.array([1, 2, 8, 9])]
    m = retrieval_metrics(topk, truth, ks=(1, 2, 3))
    # q0: truth {5, 7}, hits at ranks 1 and 3.  q1: truth {3}, hit at rank 3.
    # q2: truth of 4, one hit at rank 1 then padding; ideal DCG@K over min(4, K) hits.
    expected = {
        "recall@1": (1 / 2 + 0 + 1 / 4) / 3,
        "recall@2": (1 / 2 + 0 + 1 / 4) / 3,
        "recall@3": (1 + 1 + 1 / 4) / 3,
        "ndcg@1": (1 + 0 + 1) / 3,
        "ndcg@2": (1 / (1 + L3) + 0 + 1 / (1 + L3)) / 3,
        "ndcg@3": ((1 + 0.5) / (1 + L3) + 0.5 / 1 + 1 / (1 + L3 + 0.5)) / 3,
        "hit_rate@1": 2 / 3,
        "hit_rate@2": 2 / 3,
        "hit_rate@3": 1.0,
    }
    assert m.keys() == expected.keys()
    for key, value in expected.items():
        assert m[key] == pytest.approx(value, abs=1e-12), key


def test_metrics_brief_example() -> None:
    # truth {5, 7}, ranking [7, 1, 5]: recall@2 = 1/2, ndcg@3 = (1 + 1/log2 4) / (1 + 1/log2 3)
    m = retrieval_metrics(np.array([[7, 1, 5]]), [np.array([5, 7])], ks=(2, 3))
    assert m["recall@2"] == 0.5
    assert m["ndcg@3"] == pytest.approx((1 + 1 / math.log2(4)) / (1 + 1 / math.log2(3)))


def test_metrics_padding_never_hits() -> None:
    m = retrieval_metrics(np.array([[5, -1]]), [np.array([-1, 5])], ks=(2,))
    assert m["recall@2"] == 0.5


def test_metrics_duplicate_truth_counts_once() -> None:
    m = retrieval_metrics(np.array([[5, 1]]), [np.array([5, 5, 8])], ks=(2,))
    assert m["recall@2"] == 0.5


@pytest.mark.parametrize(
    ("topk", "truth", "ks", "match"),
    [
        (np.array([[1, 2]]), [np.array([], np.int64)], (2,), "empty truth"),
        (np.array([[1, 2]]), [np.array([1])], (3,), "outside"),
        (np.array([[1, 2]]), [np.array([1])], (0,), "outside"),
        (np.array([[1, 1]]), [np.array([1])], (2,), "repeats"),
        (np.array([[1, 2]]), [np.array([1]), np.array([2])], (2,), "shape"),
        (np.array([1, 2]), [np.array([1])], (2,), "shape"),
    ],
)
def test_metrics_errors(topk: np.ndarray, truth: list[np.ndarray], ks: tuple, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        retrieval_metrics(topk, truth, ks)


# --- retrieval_metrics: pure-Python reference ----------------------------------------------------


def reference_metrics(
    topk: list[list[int]], truth: list[set[int]], ks: tuple[int, ...]
) -> dict[str, float]:
    """The protocol's definitions, one query and one rank at a time."""
    sums: dict[str, float] = {}
    for row, relevant in zip(topk, truth, strict=True):
        for k in ks:
            hit_ranks = [r for r, item in enumerate(row[:k], 1) if item != -1 and item in relevant]
            dcg = sum(1 / math.log2(r + 1) for r in hit_ranks)
            ideal = sum(1 / math.log2(r + 1) for r in range(1, min(len(relevant), k) + 1))
            for name, value in [
                (f"recall@{k}", len(hit_ranks) / len(relevant)),
                (f"ndcg@{k}", dcg / ideal),
                (f"hit_rate@{k}", float(bool(hit_ranks))),
            ]:
                sums[name] = sums.get(name, 0.0) + value
    return {name: total / len(topk) for name, total in sums.items()}


def test_metrics_match_reference() -> None:
    rng = np.random.default_rng(7)
    q, n_items, kmax, ks = 500, 60, 30, (1, 5, 10, 30)
    topk = np.full((q, kmax), -1, dtype=np.int64)
    truth = []
    for row in range(q):
        length = rng.integers(0, kmax + 1)  # rows shorter than kmax are padded with -1
        topk[row, :length] = rng.permutation(n_items)[:length] * 3 + 1000  # sparse, large ids
        size = rng.integers(1, 16)
        truth.append(rng.choice(n_items, size=size, replace=False) * 3 + 1000)
    got = retrieval_metrics(topk, truth, ks)
    want = reference_metrics(topk.tolist(), [set(t.tolist()) for t in truth], ks)
    assert got.keys() == want.keys()
    for key in want:
        assert got[key] == pytest.approx(want[key], abs=1e-12), key
    assert 0 < got["recall@10"] < got["recall@30"] < 1  # the random data exercises real hits


# --- retrieval_task ------------------------------------------------------------------------------


def events(rows: list[tuple[int, int, bool]]) -> pa.Table:
    """An events table of ``(user, item, engaged)`` rows."""
    users, items, engaged = zip(*rows, strict=True)
    return pa.table(
        {
            "user_id": pa.array(users, pa.int64()),
            "item_id": pa.array(items, pa.int64()),
            "ts": pa.array(range(len(rows)), pa.int64()),
            "engaged": pa.array(engaged, pa.bool_()),
        }
    )


def test_retrieval_task_hand_made() -> None:
    train = events(
        [(4, 30, True), (1, 11, False), (1, 10, True), (1, 10, True), (2, 12, True), (1, 13, True)]
    )
    evaluation = events(
        [
            (3, 21, True),  # cold-start user: no train events, nothing excluded
            (1, 15, True),
            (2, 14, False),  # user 2 has no engaged eval event: dropped
            (1, 14, True),
            (1, 16, False),  # not engaged: not truth
            (1, 15, True),  # repeated: once in truth
            (5, 11, True),
        ]
    )
    task = retrieval_task(train, evaluation, np.arange(10, 31))
    assert task.users.tolist() == [1, 3, 5]  # user 4 has train events only
    assert task.users.dtype == np.int64
    assert [t.tolist() for t in task.truth] == [[14, 15], [21], [11]]
    assert [e.tolist() for e in task.exclude] == [[10, 11, 13], [], []]  # any label excludes
    assert task.catalogue.tolist() == list(range(10, 31))


def test_retrieval_task_checks_lengths() -> None:
    with pytest.raises(ValueError, match="2 users"):
        RetrievalTask(np.array([1, 2]), [np.array([1])], [np.array([1])], np.array([1]))
    with pytest.raises(ValueError, match="duplicate"):
        RetrievalTask(np.array([1]), [np.array([1])], [np.array([1])], np.array([1, 1]))


# --- popularity, rank_by_scores, random_ranking --------------------------------------------------


def test_popularity_scores() -> None:
    train = events([(1, 5, True), (2, 5, True), (3, 5, False), (1, 8, True), (1, 99, True)])
    assert popularity_scores(train, np.array([8, 7, 5])).tolist() == [1.0, 0.0, 2.0]


def test_rank_by_scores_ties_follow_catalogue_order() -> None:
    catalogue = np.array([40, 10, 30, 20])
    scores = np.array([1.0, 2.0, 1.0, 1.0])
    none = np.array([], np.int64)
    got = rank_by_scores(scores, catalogue, [none, np.array([40]), np.array([10, 40, 30, 20])], 4)
    assert got.tolist() == [[10, 40, 30, 20], [10, 30, 20, -1], [-1, -1, -1, -1]]


def reference_rank(
    scores: np.ndarray, catalogue: np.ndarray, exclude: list[np.ndarray], k: int
) -> list[list[int]]:
    """Sort by (-score, catalogue position) and drop excluded items, one query at a time."""
    order = sorted(range(len(catalogue)), key=lambda i: (-scores[i], i))
    rows = []
    for ids in exclude:
        banned = set(ids.tolist())
        row = [int(catalogue[i]) for i in order if catalogue[i] not in banned][:k]
        rows.append(row + [-1] * (k - len(row)))
    return rows


@pytest.mark.parametrize("k", [1, 7, 40])
def test_rank_by_scores_matches_reference(k: int) -> None:
    rng = np.random.default_rng(k)
    n = 30
    catalogue = rng.permutation(1000)[:n].astype(np.int64)  # unsorted, sparse ids
    scores = rng.integers(0, 5, size=n).astype(np.float64)  # many ties
    exclude = [
        np.unique(np.r_[rng.choice(catalogue, rng.integers(0, n + 1)), [5000, -3]])  # + unknown
        for _ in range(200)
    ]
    got = rank_by_scores(scores, catalogue, exclude, k)
    assert got.shape == (200, k) and got.dtype == np.int64
    assert got.tolist() == reference_rank(scores, catalogue, exclude, k)
    assert np.array_equal(got, rank_by_scores(scores, catalogue, exclude, k))


def random_task(n: int = 40, q: int = 300, seed: int = 0) -> RetrievalTask:
    rng = np.random.default_rng(seed)
    catalogue = rng.permutation(500)[:n].astype(np.int64)
    exclude = [
        np.sort(rng.choice(catalogue, rng.integers(0, n + 1), replace=False)) for _ in range(q)
    ]
    truth = [catalogue[:1] for _ in range(q)]
    return RetrievalTask(np.arange(q), truth, exclude, catalogue)


def test_random_ranking_valid_and_deterministic() -> None:
    task = random_task()
    k = 15
    got = random_ranking(task, k, seed=3)
    assert got.shape == (task.num_queries, k)
    for row, ids in zip(got, task.exclude, strict=True):
        kept = row[row != -1]
        allowed = np.setdiff1d(task.catalogue, ids)
        assert len(kept) == min(k, len(allowed)) and len(np.unique(kept)) == len(kept)
        assert np.isin(kept, allowed).all()
        assert (row[len(kept) :] == -1).all()  # padding only at the end
    assert np.array_equal(got, random_ranking(task, k, seed=3))
    assert not np.array_equal(got, random_ranking(task, k, seed=4))


def test_random_ranking_is_uniform() -> None:
    # 4 allowed items, 4000 queries: each should come first about 1000 times (sd ~27)
    q = 4000
    task = RetrievalTask(
        np.arange(q), [np.array([1])] * q, [np.array([3])] * q, np.array([1, 2, 3, 4, 5])
    )
    firsts = random_ranking(task, k=2, seed=0)[:, 0]
    counts = [int(np.sum(firsts == item)) for item in (1, 2, 4, 5)]
    assert not np.isin(3, firsts)
    assert all(abs(c - 1000) < 150 for c in counts), counts


# --- MovieLens-100K reference values of the protocol ---------------------------------------------


@pytest.fixture(scope="module")
def ml_task(
    ml100k: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[RetrievalTask, pa.Table]:
    """The protocol's test-retrieval task and train split of MovieLens-100K."""
    raw = movielens_raw(ml100k, tmp_path_factory.mktemp("ml100k") / "raw")
    events = read_table(raw / "events", "events")
    parts = split_events(events)
    catalogue = np.unique(events.column("item_id").to_numpy())
    assert catalogue.tolist() == list(range(1, 1683))  # all 1682 MovieLens item ids
    return retrieval_task(parts["train"], parts["test"], catalogue), parts["train"]


def test_movielens_task(ml_task: tuple[RetrievalTask, pa.Table]) -> None:
    task, _ = ml_task
    assert task.num_queries == 815
    assert sum(len(t) for t in task.truth) == 8_426  # every engaged test event is one truth item
    assert not np.any(task.users % 10 == 0)  # no cold-start user


def test_movielens_baselines(ml_task: tuple[RetrievalTask, pa.Table]) -> None:
    task, train = ml_task
    m = baseline_metrics(task, train)
    assert m["popularity/recall@20"] == pytest.approx(0.118, abs=0.002)
    assert m["popularity/ndcg@20"] == pytest.approx(0.101, abs=0.002)
    assert m["random/recall@20"] == pytest.approx(0.012, abs=0.004)
    assert len(m) == 2 * 3 * 4
