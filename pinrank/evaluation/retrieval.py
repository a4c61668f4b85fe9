"""Offline retrieval evaluation as ``docs/evaluation.md`` describes it, plus the two baselines.

A :class:`RetrievalTask` holds, per query user, the engaged evaluation items (the ground truth)
and the train items that must not be ranked (every item the user has a train event for, any
label). A model turns it into ``topk_ids`` of shape ``[Q, K]``; :func:`retrieval_metrics` scores
those. Popularity (:func:`popularity_scores` + :func:`rank_by_scores`) and :func:`random_ranking`
are the protocol's baselines. NumPy only, so the serving side can reuse it without torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

DEFAULT_KS = (10, 20, 50, 100)
PAD = -1  # fills rows of topk_ids that have fewer than K rankable items


@dataclass(frozen=True)
class RetrievalTask:
    """The queries of one retrieval evaluation.

    Attributes:
        users: ``[Q]`` int64 query user ids, sorted.
        truth: ``Q`` int64 arrays, the user's engaged evaluation item ids (unique, sorted).
        exclude: ``Q`` int64 arrays, the user's train item ids (unique, sorted; may be empty).
        catalogue: ``[N]`` int64 ids of every item that can be ranked (unique).

    Example::

        >>> task = RetrievalTask(np.array([3]), [np.array([7])], [np.array([5])],
        ...                      np.array([5, 6, 7]))
        >>> task.num_queries
        1
    """

    users: np.ndarray
    truth: list[np.ndarray]
    exclude: list[np.ndarray]
    catalogue: np.ndarray

    def __post_init__(self) -> None:
        q = len(self.users)
        if len(self.truth) != q or len(self.exclude) != q:
            raise ValueError(
                f"{q} users but {len(self.truth)} truth and {len(self.exclude)} exclude arrays"
            )
        if len(np.unique(self.catalogue)) != len(self.catalogue):
            raise ValueError("catalogue holds duplicate item ids")

    @property
    def num_queries(self) -> int:
        """``Q``, the number of query users."""
        return len(self.users)


def _column(table: pa.Table, name: str) -> np.ndarray:
    """Column ``name`` of ``table`` as a NumPy int64 array."""
    return np.asarray(table.column(name).to_numpy(), dtype=np.int64)


def _engaged(table: pa.Table) -> pa.Table:
    """The rows of ``table`` with ``engaged`` true."""
    return table.filter(pc.equal(table.column("engaged"), True))


def _items_per_user(users: np.ndarray, items: np.ndarray, keys: np.ndarray) -> list[np.ndarray]:
    """For each of the sorted ``keys``, the unique sorted items of its ``(user, item)`` rows.

    Args:
        users: ``[M]`` user id of each row.
        items: ``[M]`` item id of each row.
        keys: ``[Q]`` sorted user ids to group for.

    Returns:
        ``Q`` arrays (views into one sorted array; empty for a key without rows).
    """
    order = np.lexsort((items, users))
    u, i = users[order], items[order]
    first = np.r_[True, (u[1:] != u[:-1]) | (i[1:] != i[:-1])]  # drop repeated (user, item)
    u, i = u[first], i[first]
    lo, hi = np.searchsorted(u, keys, "left"), np.searchsorted(u, keys, "right")
    return [i[a:b] for a, b in zip(lo.tolist(), hi.tolist(), strict=True)]


def retrieval_task(train: pa.Table, evaluation: pa.Table, catalogue: np.ndarray) -> RetrievalTask:
    """Build the protocol's retrieval queries from a train and an evaluation (val or test) split.

    The queries are the users with at least one engaged event in ``evaluation``; their truth is
    those engaged items. Every item a user has a train event for (engaged or not) is excluded
    from their ranking. Truth is not filtered by ``catalogue`` or ``exclude``: a truth item that
    cannot be ranked simply counts as a miss.

    Args:
        train: events with ``user_id``, ``item_id`` (any label counts for exclusion).
        evaluation: events with ``user_id``, ``item_id``, ``engaged``.
        catalogue: ``[N]`` int64 ids of every rankable item.

    Returns:
        A task with ``Q`` queries, users sorted by id.

    Example::

        >>> train = pa.table({"user_id": [1, 1, 2], "item_id": [10, 11, 10]})
        >>> ev = pa.table({"user_id": [1, 1, 2, 3], "item_id": [12, 13, 11, 14],
        ...                "engaged": [True, False, False, True]})
        >>> task = retrieval_task(train, ev, np.arange(10, 15))
        >>> task.users.tolist(), [t.tolist() for t in task.truth]
        ([1, 3], [[12], [14]])
        >>> [e.tolist() for e in task.exclude]
        [[10, 11], []]
    """
    engaged = _engaged(evaluation)
    eval_users, eval_items = _column(engaged, "user_id"), _column(engaged, "item_id")
    users = np.unique(eval_users)
    train_users, train_items = _column(train, "user_id"), _column(train, "item_id")
    wanted = np.isin(train_users, users)
    return RetrievalTask(
        users=users,
        truth=_items_per_user(eval_users, eval_items, users),
        exclude=_items_per_user(train_users[wanted], train_items[wanted], users),
        catalogue=np.asarray(catalogue, dtype=np.int64),
    )


def _sorted_unique(values: np.ndarray) -> np.ndarray:
    """The distinct ``values``, sorted (a sort and a mask: faster than ``np.unique`` on keys)."""
    ordered = np.sort(values)
    return ordered[np.r_[True, ordered[1:] != ordered[:-1]]] if len(ordered) else ordered


def _lookup(sorted_ids: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``[M]`` index of each of ``ids`` in ``sorted_ids``, and ``[M]`` whether it is there."""
    pos = np.searchsorted(sorted_ids, ids)
    found = pos < len(sorted_ids)
    found[found] = sorted_ids[pos[found]] == ids[found]
    return pos, found


def _flatten(groups: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """``[M]`` group index and ``[M]`` int64 value of every element of ``groups``."""
    lens = np.array([len(g) for g in groups], dtype=np.int64)
    values = np.concatenate(
        [np.asarray(g, dtype=np.int64) for g in groups] + [np.zeros(0, np.int64)]
    )
    return np.repeat(np.arange(len(groups)), lens), values


def hit_matrix(topk_ids: np.ndarray, truth: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """``[Q, K]`` bool, whether each ranked id is in its query's truth, and ``[Q]`` truth sizes.

    Truth ids are mapped to dense codes so that ``(query, item)`` fits one int64 key; one sorted
    search over all keys then replaces a loop over queries. Duplicate truth ids count once.
    """
    q = len(truth)
    queries, flat = _flatten(truth)
    ids = _sorted_unique(flat)  # [M] distinct truth ids; their index is the code
    m = max(len(ids), 1)
    truth_keys = _sorted_unique(queries * m + np.searchsorted(ids, flat))  # (query, code)
    code, known = _lookup(ids, topk_ids.ravel())  # [Q * K]
    topk_keys = np.repeat(np.arange(q), topk_ids.shape[1]) * m + code
    hits = known & _lookup(truth_keys, topk_keys)[1] & (topk_ids.ravel() != PAD)
    return hits.reshape(topk_ids.shape), np.bincount(truth_keys // m, minlength=q)


def _check_topk(topk_ids: np.ndarray, truth: list[np.ndarray], ks: Sequence[int]) -> None:
    """Raise ValueError on shapes, ``ks`` or rows that repeat an id, which would count twice."""
    if topk_ids.ndim != 2 or len(topk_ids) != len(truth) or len(truth) == 0:
        raise ValueError(f"topk_ids {topk_ids.shape} needs shape [Q, K] with Q = {len(truth)} > 0")
    if bad := [k for k in ks if not 1 <= k <= topk_ids.shape[1]]:
        raise ValueError(f"ks {bad} outside [1, {topk_ids.shape[1]}] (the columns of topk_ids)")
    ordered = np.sort(topk_ids, axis=1)
    if np.any((ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] != PAD)):
        raise ValueError("a row of topk_ids repeats an item id")


def retrieval_metrics(
    topk_ids: np.ndarray, truth: list[np.ndarray], ks: Sequence[int] = DEFAULT_KS
) -> dict[str, float]:
    """Recall@K, NDCG@K and HitRate@K of ranked ids, averaged over queries (``docs/evaluation.md``).

    Recall@K = hits in the top K / |truth|. NDCG@K uses binary gains: DCG sums
    ``1 / log2(r + 1)`` over the 1-based ranks ``r`` of hits, divided by the DCG of
    ``min(|truth|, K)`` hits at the top. HitRate@K = 1 when the top K hold any hit.

    Args:
        topk_ids: ``[Q, Kmax]`` int item ids, best first; ``-1`` pads short rows.
        truth: ``Q`` arrays of relevant item ids, none empty.
        ks: cut-offs, each in ``[1, Kmax]``.

    Returns:
        ``{"recall@K": ..., "ndcg@K": ..., "hit_rate@K": ...}`` for each K.

    Raises:
        ValueError: bad shapes or ``ks``, a repeated id in a row, or an empty truth.

    Example::

        >>> m = retrieval_metrics(np.array([[7, 1, 5]]), [np.array([5, 7])], ks=(2, 3))
        >>> m["recall@2"], m["hit_rate@2"], round(m["ndcg@3"], 4)
        (0.5, 1.0, 0.9197)
    """
    topk_ids = np.asarray(topk_ids, dtype=np.int64)
    _check_topk(topk_ids, truth, ks)
    hits, sizes = hit_matrix(topk_ids, truth)
    if np.any(sizes == 0):
        raise ValueError(f"{int(np.sum(sizes == 0))} queries have an empty truth")
    discounts = 1.0 / np.log2(np.arange(2, topk_ids.shape[1] + 2))  # [Kmax], rank r -> log2(r+1)
    ideal = np.cumsum(discounts)  # ideal[n - 1] = DCG of n hits at the top
    out: dict[str, float] = {}
    for k in ks:
        top = hits[:, :k]  # [Q, k]
        n_hits = top.sum(axis=1)
        out[f"recall@{k}"] = float(np.mean(n_hits / sizes))
        out[f"ndcg@{k}"] = float(np.mean(top @ discounts[:k] / ideal[np.minimum(sizes, k) - 1]))
        out[f"hit_rate@{k}"] = float(np.mean(n_hits > 0))
    return out


def popularity_scores(train: pa.Table, catalogue: np.ndarray) -> np.ndarray:
    """The number of engaged train events of each catalogue item (0 for items never engaged).

    Args:
        train: events with ``item_id`` and ``engaged``.
        catalogue: ``[N]`` int64 item ids.

    Returns:
        ``[N]`` float64 counts, aligned with ``catalogue``.

    Example::

        >>> t = pa.table({"item_id": [4, 4, 4, 2, 9], "engaged": [True, True, False, True, True]})
        >>> popularity_scores(t, np.array([2, 3, 4])).tolist()
        [1.0, 0.0, 2.0]
    """
    ids, counts = np.unique(_column(_engaged(train), "item_id"), return_counts=True)
    pos, found = _lookup(ids, np.asarray(catalogue, dtype=np.int64))
    scores = np.zeros(len(found), dtype=np.float64)
    scores[found] = counts[pos[found]]
    return scores


def _first_allowed(
    ranked: np.ndarray, queries: np.ndarray, ranks: np.ndarray, q: int, k: int
) -> np.ndarray:
    """``[q, k]`` the first ``k`` entries of ``ranked`` at positions each query does not exclude.

    Query ``queries[m]`` excludes position ``ranks[m]``. With a query's excluded positions sorted,
    ``e_0 < e_1 < ...``, its ``j``-th allowed position is ``j + #{i : e_i - i <= j}``, so one
    ``np.searchsorted`` over ``(query, e_i - i)`` keys answers every query without a loop.
    Positions past the end of ``ranked`` become ``-1``.
    """
    n = len(ranked)
    keys = _sorted_unique(queries * (n + 1) + ranks)  # sorted by (query, position), deduplicated
    owner = keys // (n + 1)
    starts = np.searchsorted(owner, np.arange(q))  # [q] first key of each query
    shifted = keys - (np.arange(len(keys)) - starts[owner])  # (query, e_i - i), still sorted
    j = np.minimum(np.arange(k), n)  # [k]; j >= n lies past the catalogue anyway
    below = np.searchsorted(shifted, np.arange(q)[:, None] * (n + 1) + j, "right")  # [q, k]
    pos = np.arange(k) + below - starts[:, None]
    return np.where(pos < n, np.r_[ranked, PAD][np.minimum(pos, n)], PAD)


def rank_by_scores(
    scores: np.ndarray, catalogue: np.ndarray, exclude: list[np.ndarray], k: int
) -> np.ndarray:
    """The ``k`` best-scored catalogue items per query, skipping that query's excluded items.

    Every query shares ``scores``; the catalogue is sorted once (stable, so ties keep catalogue
    order; NaN scores sort last) and each query takes the first ``k`` items it does not exclude.
    Excluded ids outside the catalogue are ignored.

    Args:
        scores: ``[N]`` float score per catalogue item, higher is better.
        catalogue: ``[N]`` unique int64 item ids.
        exclude: ``Q`` arrays of item ids not to return for that query.
        k: items per query.

    Returns:
        ``[Q, k]`` int64 item ids, best first, ``-1`` where fewer than ``k`` items remain.

    Example::

        >>> rank_by_scores(np.array([1.0, 3.0, 3.0, 2.0]), np.array([10, 11, 12, 13]),
        ...                [np.array([], np.int64), np.array([11, 99])], k=3).tolist()
        [[11, 12, 13], [12, 13, 10]]
    """
    catalogue = np.asarray(catalogue, dtype=np.int64)
    if len(scores) != len(catalogue) or k < 0:
        raise ValueError(f"{len(scores)} scores for {len(catalogue)} items (k = {k})")
    ranked = catalogue[np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")]  # [N]
    sorter = np.argsort(ranked)
    queries, ids = _flatten(exclude)
    pos, found = _lookup(ranked[sorter], ids)
    return _first_allowed(ranked, queries[found], sorter[pos[found]], len(exclude), k)


def random_ranking(task: RetrievalTask, k: int, seed: int = 0) -> np.ndarray:
    """A uniformly random order of each query's non-excluded catalogue items, top ``k`` kept.

    Each query draws ``k + |exclude|`` catalogue items without replacement (a prefix of a uniform
    permutation, so enough survive the exclusion) from one generator seeded by ``seed``.
    The draw depends on ``k`` too: a larger ``k`` gives another ranking, not a longer one. One
    Python step per query (about 0.1 ms each), which is fine for evaluation, not for serving.

    Args:
        task: the queries.
        k: items per query.
        seed: seed of the generator; the same seed and task give the same ranking.

    Returns:
        ``[Q, k]`` int64 item ids, ``-1`` where fewer than ``k`` items remain.

    Example::

        >>> task = RetrievalTask(np.array([1]), [np.array([3])], [np.array([2])],
        ...                      np.array([1, 2, 3]))
        >>> sorted(random_ranking(task, k=3, seed=0)[0].tolist())
        [-1, 1, 3]
    """
    rng = np.random.default_rng(seed)
    n = len(task.catalogue)
    out = np.full((task.num_queries, k), PAD, dtype=np.int64)
    for row, ids in enumerate(task.exclude):
        drawn = task.catalogue[rng.choice(n, size=min(n, k + len(ids)), replace=False)]
        kept = drawn[~np.isin(drawn, ids)][:k]
        out[row, : len(kept)] = kept
    return out


def baseline_metrics(
    task: RetrievalTask, train: pa.Table, ks: Sequence[int] = DEFAULT_KS, seed: int = 0
) -> dict[str, float]:
    """The protocol's metrics of the popularity and the random baseline.

    Args:
        task: the queries.
        train: the train events (popularity counts their engaged events per item).
        ks: cut-offs.
        seed: seed of the random ranking.

    Returns:
        ``{"popularity/recall@20": ..., "random/ndcg@10": ...}``: each metric of each baseline.

    Example::

        >>> train = pa.table({"user_id": [1, 2, 2], "item_id": [5, 5, 6],
        ...                   "engaged": [True, True, True]})
        >>> ev = pa.table({"user_id": [1], "item_id": [6], "engaged": [True]})
        >>> task = retrieval_task(train, ev, np.array([5, 6, 7]))
        >>> baseline_metrics(task, train, ks=(1,))["popularity/recall@1"]
        1.0
    """
    k = max(ks)
    rankings = {
        "popularity": rank_by_scores(
            popularity_scores(train, task.catalogue), task.catalogue, task.exclude, k
        ),
        "random": random_ranking(task, k, seed),
    }
    return {
        f"{name}/{metric}": value
        for name, ids in rankings.items()
        for metric, value in retrieval_metrics(ids, task.truth, ks).items()
    }


__all__ = [
    "RetrievalTask",
    "baseline_metrics",
    "popularity_scores",
    "random_ranking",
    "rank_by_scores",
    "retrieval_metrics",
    "retrieval_task",
]
