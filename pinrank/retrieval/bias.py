"""A popularity prior added back at retrieval time, searched exactly by any inner-product index.

Training with the logQ correction (Yi et al., RecSys 2019) takes item popularity out of the learnt
scores: the towers model affinity beyond popularity. What a user will engage with next also
depends on popularity, so retrieval scores

    s(u, i) = <u, v_i> / temperature + beta * log(1 + n_i)

with ``n_i`` the item's train impressions and ``beta`` chosen on validation (``beta = 0`` is the
towers alone). An inner-product index finds the top of ``s`` on augmented vectors: items
``[v_i, log(1 + n_i), sqrt(M^2 - |v_i|^2 - log(1 + n_i)^2)]`` and queries
``[u / temperature, beta, 0]``. The last column gives every item the same norm ``M`` without
changing any inner product: graph and cluster indexes (HNSW, IVF) are built for vectors of one
norm, and on the unequal norms of ``[v_i, log(1 + n_i)]`` HNSW's recall of the exact top-100
fell to 0.54 on MovieLens (the MIPS-to-nearest-neighbour reduction of Bachrach et al., 2014).
NumPy only (serving uses it).

Example::

    >>> items = item_vectors(np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([0, 99]))
    >>> np.linalg.norm(items, axis=1).astype(float).round(4).tolist()  # one norm for all
    [4.7125, 4.7125]
    >>> query = query_vectors(np.array([[0.6, 0.8]]), temperature=0.5, beta=0.5)
    >>> (query @ items.T).astype(float).round(3).tolist()  # [1.2 + 0, 1.6 + 0.5 * log(100)]
    [[1.2, 3.903]]
"""

from __future__ import annotations

import numpy as np


def impression_counts(item_ids: np.ndarray, catalogue: np.ndarray) -> np.ndarray:
    """``[N]`` int64: how often each catalogue item occurs in ``item_ids`` (train impressions).

    Example::

        >>> impression_counts(np.array([5, 7, 5, 9]), np.array([7, 5, 3])).tolist()
        [1, 2, 0]
    """
    order = np.argsort(catalogue, kind="stable")
    ids = np.asarray(item_ids, np.int64)
    pos = np.minimum(np.searchsorted(catalogue[order], ids), max(len(catalogue) - 1, 0))
    known = catalogue[order][pos] == ids if len(catalogue) else np.zeros(len(ids), bool)
    counts = np.bincount(order[pos[known]], minlength=len(catalogue))
    return counts.astype(np.int64)


def item_vectors(embeddings: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """``[N, D + 2]`` float32: item embeddings ``[N, D]``, ``log(1 + count)``, and the column
    that brings every row to the largest norm."""
    prior = np.log1p(np.asarray(counts, np.float64))[:, None]
    x = np.concatenate([np.asarray(embeddings, np.float64), prior], 1)  # (N, D + 1)
    sq = (x**2).sum(axis=1, keepdims=True)
    pad = np.sqrt(np.maximum(sq.max(initial=0.0) - sq, 0.0))
    return np.concatenate([x, pad], 1).astype(np.float32)


def query_vectors(embeddings: np.ndarray, temperature: float, beta: float) -> np.ndarray:
    """``[Q, D + 2]`` float32: user embeddings ``[Q, D]`` over the temperature, ``beta``, 0."""
    u = np.asarray(embeddings, np.float64) / temperature
    tail = np.tile([beta, 0.0], (len(u), 1))
    return np.concatenate([u, tail], 1).astype(np.float32)
