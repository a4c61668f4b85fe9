"""Top-K retrieval: one small interface with exact and FAISS implementations.

A :class:`TopK` is built once over the item tower's outputs with ``index(embeddings, ids)`` (which
returns itself, as in TensorFlow Recommenders) and answers ``search(queries, k, exclude)`` with the
``k`` items of largest inner product per query, best first. :class:`BruteForce` is exact NumPy;
:class:`FaissTopK` wraps any ``faiss.index_factory`` string ("Flat", "IVF4096,Flat", "HNSW32").
Both share the exclusion logic, so "never return what the user already has" is exact for every
implementation: search deeper than ``k + len(exclude[q])``, drop the excluded ids, and search deeper
again where that still leaves fewer than ``k``.

Example::

    >>> import numpy as np
    >>> items = np.array([[1.0, 0.0], [0.0, 1.0], [0.7, 0.7]], dtype=np.float32)
    >>> topk = BruteForce().index(items, np.array([10, 20, 30]))
    >>> scores, ids = topk.search(np.array([[1.0, 0.5]], dtype=np.float32), k=2)
    >>> ids.tolist(), scores.astype(float).round(2).tolist()
    ([[30, 10]], [[1.05, 1.0]])
    >>> topk.search(np.array([[1.0, 0.5]], dtype=np.float32), k=3, exclude=[np.array([30])])[1]
    array([[10, 20, -1]])
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any, Self

import faiss
import numpy as np

GPU_MAX_K = 2048  # faiss GPU k-selection limit: deeper searches cannot run on the GPU
_CHUNK_BYTES = 256 * 2**20
_BYTES_PER_SCORE = 13  # float32 score + int64 argpartition index + bool tie mask, per (query, item)
_EXACT_NAMES = ("exact", "bruteforce")


class TopK(abc.ABC):
    """Maximum-inner-product top-K over a fixed set of item embeddings.

    Subclasses implement ``_build`` and ``_search`` (a raw top-``depth`` search); validation,
    padding and exact exclusion live here, once.
    """

    def __init__(self) -> None:
        self._dim: int | None = None
        self._n = 0

    @property
    @abc.abstractmethod
    def description(self) -> str:
        """A short human-readable name with the settings, e.g. ``"IVF1024,Flat nprobe=32 cpu"``."""

    def index(self, embeddings: np.ndarray, ids: np.ndarray) -> Self:
        """Index the items; returns ``self`` so ``BruteForce().index(e, i)`` chains.

        Args:
            embeddings: ``[N, D]`` float32 item embeddings (other float dtypes are cast), finite.
            ids: ``[N]`` int64 item ids, any values except ``-1`` (which marks padding).
        """
        emb, item_ids = _check_items(embeddings, ids)
        self._build(emb, item_ids)
        self._n, self._dim = emb.shape
        return self

    def search(
        self, queries: np.ndarray, k: int, exclude: Sequence[np.ndarray] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` items of largest inner product with each query, best first.

        Args:
            queries: ``[Q, D]`` float32 query embeddings.
            k: results per query, ``>= 1``; may exceed the number of items.
            exclude: ``Q`` int64 arrays; ``exclude[q]`` holds item ids never returned for query
                ``q`` (e.g. the user's training-period items).

        Returns:
            ``(scores, ids)``, each ``[Q, k]``: float32 inner products and int64 item ids. Where
            fewer than ``k`` items remain, the tail has id ``-1`` and score ``-inf``.
        """
        q = self._check_queries(queries, k)
        excluded = None if exclude is None else _check_exclude(exclude, len(q))
        if len(q) == 0:
            return np.empty((0, k), dtype=np.float32), np.empty((0, k), dtype=np.int64)
        if excluded is None:
            return _pad(*self._search(q, min(k, self._n)), k)
        return self._search_excluding(q, k, excluded)

    @abc.abstractmethod
    def _build(self, embeddings: np.ndarray, ids: np.ndarray) -> None:
        """Index validated ``[N, D]`` float32 embeddings under ``[N]`` int64 ids."""

    @abc.abstractmethod
    def _search(self, queries: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray]:
        """Raw top-``depth`` (``1 <= depth <= N``) as ``[Q, depth]`` scores and ids, best first.

        Slots the index cannot fill (approximate indexes may return fewer) hold ``-1`` / ``-inf``.
        """

    def _search_excluding(
        self, queries: np.ndarray, k: int, exclude: list[np.ndarray]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Search ``k + len(exclude[q])`` deep, filter, and double the depth where still short.

        A query is finished once it has ``k`` kept items, or the index returned fewer than
        ``depth`` candidates (nothing deeper to find), or ``depth`` covers every item.
        """
        scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        ids = np.full((len(queries), k), -1, dtype=np.int64)
        pending = np.arange(len(queries))
        depth = min(k + max(len(e) for e in exclude), self._n)
        while pending.size:
            raw_s, raw_i = self._search(queries[pending], depth)  # (P, depth)
            done = np.zeros(pending.size, dtype=bool)
            for row, q in enumerate(pending):
                found = raw_i[row] != -1
                keep = np.flatnonzero(found & ~np.isin(raw_i[row], exclude[q]))[:k]
                scores[q, : keep.size] = raw_s[row, keep]
                ids[q, : keep.size] = raw_i[row, keep]
                done[row] = keep.size == k or found.sum() < depth or depth == self._n
            pending = pending[~done]
            depth = min(2 * depth, self._n)
        return scores, ids

    def _check_queries(self, queries: np.ndarray, k: int) -> np.ndarray:
        if self._dim is None:
            raise ValueError(f"{type(self).__name__}.search called before index()")
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise ValueError(f"k must be an integer >= 1, got {k!r}")
        q = np.ascontiguousarray(queries, dtype=np.float32)
        if q.ndim != 2 or q.shape[1] != self._dim:
            raise ValueError(f"queries must be [Q, {self._dim}], got shape {np.shape(queries)}")
        if not np.isfinite(q).all():
            raise ValueError("queries contain NaN or inf")
        return q


class BruteForce(TopK):
    """Exact top-K: NumPy matmul over query chunks, ``argpartition``, then sort.

    Query chunks are sized so one chunk's ``[Q_chunk, N]`` scores (with argpartition's indices)
    stay under ~256 MB. Equal scores are ordered by lower row (insertion) index, so results are
    deterministic, including at the k-th place.
    """

    def __init__(self) -> None:
        super().__init__()
        self._emb = np.empty((0, 0), dtype=np.float32)
        self._ids = np.empty(0, dtype=np.int64)

    @property
    def description(self) -> str:
        return "exact numpy"

    def _build(self, embeddings: np.ndarray, ids: np.ndarray) -> None:
        self._emb, self._ids = embeddings, ids

    def _search(self, queries: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray]:
        rows = max(1, _CHUNK_BYTES // (_BYTES_PER_SCORE * self._n))
        parts = [
            _top_rows(queries[i : i + rows] @ self._emb.T, depth)  # (Q_chunk, N)
            for i in range(0, len(queries), rows)
        ]
        scores = np.concatenate([s for s, _ in parts])
        item_rows = np.concatenate([r for _, r in parts])
        return scores, self._ids[item_rows]


class FaissTopK(TopK):
    """Top-K with a FAISS index built from a factory string, inner-product metric.

    Args:
        factory: ``faiss.index_factory`` description, e.g. ``"Flat"``, ``"IVF1024,Flat"``,
            ``"HNSW32"``. Indexes without native ids (Flat, HNSW) are wrapped in an
            ``IndexIDMap``, so any int64 ids work.
        nprobe: IVF lists visited per query (recall / speed knob of IVF indexes).
        ef_search: HNSW candidate-list size per query (recall / speed knob of HNSW).
        use_gpu: ``None`` uses all GPUs when ``faiss.get_num_gpus() > 0`` and the index type has a
            GPU version (otherwise CPU); ``True`` requires the GPU; ``False`` forces CPU. On GPU,
            ``k + len(exclude[q])`` may not pass faiss's k-selection limit of ``GPU_MAX_K``.
        train_size: train (IVF, PQ) on at most this many vectors sampled without replacement;
            ``None`` passes all of them (faiss then subsamples by itself).
        seed: seed of that sample.

    Example::

        >>> import numpy as np
        >>> e = np.random.default_rng(0).normal(size=(500, 8)).astype(np.float32)
        >>> ids = np.arange(500) + 10**12
        >>> flat = FaissTopK("Flat").index(e, ids)
        >>> bool((flat.search(e[:3], 5)[1] == BruteForce().index(e, ids).search(e[:3], 5)[1]).all())
        True
        >>> FaissTopK("IVF8,Flat", nprobe=2, use_gpu=False).index(e, ids).description
        'IVF8,Flat nprobe=2 cpu'
    """

    def __init__(
        self,
        factory: str = "Flat",
        nprobe: int | None = None,
        ef_search: int | None = None,
        use_gpu: bool | None = None,
        train_size: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        _check_positive(nprobe=nprobe, ef_search=ef_search, train_size=train_size)
        self.factory, self.nprobe, self.ef_search = factory, nprobe, ef_search
        self.use_gpu, self.train_size, self.seed = use_gpu, train_size, seed
        self.on_gpu = False
        self._index: Any = None

    @property
    def description(self) -> str:
        knobs = [f"nprobe={self.nprobe}"] * (self.nprobe is not None)
        knobs += [f"efSearch={self.ef_search}"] * (self.ef_search is not None)
        return " ".join([self.factory, *knobs, "gpu" if self.on_gpu else "cpu"])

    def _build(self, embeddings: np.ndarray, ids: np.ndarray) -> None:
        base = faiss.index_factory(embeddings.shape[1], self.factory, faiss.METRIC_INNER_PRODUCT)
        base, self.on_gpu = self._maybe_to_gpu(base)
        index = base if _takes_ids(base) else faiss.IndexIDMap(base)
        # set the knobs before training, so a knob the index lacks fails fast
        self._set_search_params(index, self.nprobe, self.ef_search)
        if not index.is_trained:
            index.train(self._training_sample(embeddings))
        index.add_with_ids(embeddings, ids)
        self._index = index

    def set_search_params(self, nprobe: int | None = None, ef_search: int | None = None) -> Self:
        """Change ``nprobe`` / ``ef_search`` of a built index without rebuilding (for tuning).

        ``None`` keeps the current value. Returns ``self``.
        """
        if self._index is None:
            raise ValueError("set_search_params called before index()")
        _check_positive(nprobe=nprobe, ef_search=ef_search)
        self._set_search_params(self._index, nprobe, ef_search)
        self.nprobe = self.nprobe if nprobe is None else nprobe
        self.ef_search = self.ef_search if ef_search is None else ef_search
        return self

    def save(self, path: str) -> None:
        """Write the built index (ids included) with ``faiss.write_index``: FAISS's own binary
        format, no pickle. A GPU index is written as its CPU copy."""
        if self._index is None:
            raise ValueError("save called before index()")
        index = faiss.index_gpu_to_cpu(self._index) if self.on_gpu else self._index
        faiss.write_index(index, path)

    @classmethod
    def load(
        cls,
        path: str,
        factory: str,
        nprobe: int | None = None,
        ef_search: int | None = None,
        use_gpu: bool | None = None,
    ) -> FaissTopK:
        """An index written by :meth:`save`, with its search knobs (on GPU as in ``__init__``).
        Only for trusted files: a package's index is read with
        :func:`pinrank.retrieval.index_io.read_index_checked` and given to :meth:`wrap`."""
        return cls.wrap(faiss.read_index(path), factory, nprobe, ef_search, use_gpu)

    @classmethod
    def wrap(
        cls,
        index: Any,
        factory: str,
        nprobe: int | None = None,
        ef_search: int | None = None,
        use_gpu: bool | None = None,
    ) -> FaissTopK:
        """A built (CPU) FAISS index with its search knobs (on GPU as in ``__init__``)."""
        self = cls(factory, nprobe, ef_search, use_gpu)
        if self.use_gpu is not False and faiss.get_num_gpus() > 0:
            index, self.on_gpu = self._maybe_to_gpu(index)
        self._set_search_params(index, nprobe, ef_search)
        self._index, self._n, self._dim = index, index.ntotal, index.d
        return self

    def _search(self, queries: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray]:
        if self.on_gpu and depth > GPU_MAX_K:
            raise ValueError(
                f"k + len(exclude) needs a depth of {depth}, above the GPU limit of {GPU_MAX_K}; "
                "use use_gpu=False"
            )
        scores, ids = self._index.search(queries, depth)
        scores[ids == -1] = -np.inf  # faiss pads inner-product results with -FLT_MAX
        return scores, ids

    def _maybe_to_gpu(self, base: Any) -> tuple[Any, bool]:
        """Move the (untrained) index to all GPUs, so training also runs there."""
        want = faiss.get_num_gpus() > 0 if self.use_gpu is None else self.use_gpu
        if not want:
            return base, False
        if faiss.get_num_gpus() == 0:
            raise ValueError("use_gpu=True but faiss sees no GPU (is faiss-gpu installed?)")
        try:
            return faiss.index_cpu_to_all_gpus(base), True
        except RuntimeError as err:  # e.g. HNSW has no GPU version
            if self.use_gpu:
                raise ValueError(f"{self.factory!r} cannot run on GPU: {err}") from err
            return base, False

    def _set_search_params(self, index: Any, nprobe: int | None, ef_search: int | None) -> None:
        space = faiss.GpuParameterSpace() if self.on_gpu else faiss.ParameterSpace()
        for name, value in (("nprobe", nprobe), ("efSearch", ef_search)):
            if value is None:
                continue
            try:
                space.set_index_parameter(index, name, value)
            except RuntimeError as err:
                raise ValueError(f"{name} does not apply to {self.factory!r}") from err

    def _training_sample(self, embeddings: np.ndarray) -> np.ndarray:
        if self.train_size is None or len(embeddings) <= self.train_size:
            return embeddings
        rng = np.random.default_rng(self.seed)
        return embeddings[np.sort(rng.choice(len(embeddings), self.train_size, replace=False))]


def build_topk(factory: str = "exact", **kwargs: Any) -> TopK:
    """A :class:`BruteForce` for ``"exact"`` / ``"bruteforce"``, else ``FaissTopK(factory, ...)``.

    Exact search has no knobs: the approximate indexes' (``nprobe``, ``ef_search``,
    ``train_size``, ``use_gpu``, ``seed``) are ignored for it, so switching a config's index to
    ``exact`` leaves its ``index_params`` valid; any other keyword is a TypeError.

    Example::

        >>> build_topk().description, build_topk("HNSW32", ef_search=64, use_gpu=False).description
        ('exact numpy', 'HNSW32 efSearch=64 cpu')
        >>> build_topk("exact", ef_search=128).description
        'exact numpy'
    """
    if factory.lower() in _EXACT_NAMES:
        unknown = set(kwargs) - {"nprobe", "ef_search", "train_size", "use_gpu", "seed"}
        if unknown:
            raise TypeError(f"exact search takes no {sorted(unknown)}")
        return BruteForce()
    return FaissTopK(factory, **kwargs)


def recall_vs_exact(approx_ids: np.ndarray, exact_ids: np.ndarray) -> float:
    """Mean over queries of ``|approx ∩ exact| / |exact|``, ``-1`` padding left out.

    Args:
        approx_ids: ``[Q, k1]`` ids from an approximate search.
        exact_ids: ``[Q, k2]`` ids from an exact search (usually ``k1 == k2``). A query whose exact
            row is all padding counts as recall 1.

    Example::

        >>> approx = np.array([[1, 2, 9], [4, -1, -1]])
        >>> round(recall_vs_exact(approx, np.array([[1, 2, 3], [4, -1, -1]])), 4)  # (2/3 + 1) / 2
        0.8333
    """
    approx, exact = np.asarray(approx_ids), np.asarray(exact_ids)
    if approx.ndim != 2 or exact.ndim != 2 or len(approx) != len(exact):
        raise ValueError(f"need [Q, k] ids with equal Q, got {approx.shape} and {exact.shape}")
    recalls = []
    for a, e in zip(approx, exact, strict=True):
        truth = np.unique(e[e != -1])
        hits = np.intersect1d(truth, a[a != -1]).size
        recalls.append(hits / truth.size if truth.size else 1.0)
    return float(np.mean(recalls)) if recalls else 1.0


def _top_rows(scores: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``depth`` of each row of ``[C, N]`` scores, ties to the lower column; ``[C, depth]``."""
    n = scores.shape[1]
    cols = np.argpartition(scores, n - depth, axis=1)[:, n - depth :]  # (C, depth), unordered
    top = np.take_along_axis(scores, cols, axis=1)
    kth = top.min(axis=1)
    # rows where the k-th score is tied with an item left out: pick the tied items by lowest index
    for r in np.flatnonzero((scores >= kth[:, None]).sum(axis=1) > depth):
        above = np.flatnonzero(scores[r] > kth[r])
        tied = np.flatnonzero(scores[r] == kth[r])[: depth - above.size]
        cols[r] = np.concatenate([above, tied])
        top[r] = scores[r, cols[r]]
    order = np.lexsort((cols, -top), axis=1)  # score descending, then column ascending
    return np.take_along_axis(top, order, axis=1), np.take_along_axis(cols, order, axis=1)


def _pad(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Pad ``[Q, depth]`` results to ``[Q, k]`` with score ``-inf`` and id ``-1``."""
    extra = k - scores.shape[1]
    if extra <= 0:
        return scores, ids
    q = len(scores)
    return (
        np.hstack([scores, np.full((q, extra), -np.inf, dtype=np.float32)]),
        np.hstack([ids, np.full((q, extra), -1, dtype=np.int64)]),
    )


def _takes_ids(index: Any) -> bool:
    """Whether ``index.add_with_ids`` works natively (IVF family, IDMap); else wrap in IDMap."""
    if isinstance(index, faiss.IndexPreTransform):
        index = faiss.downcast_index(index.index)
    gpu_ivf = (faiss.GpuIndexIVF,) if hasattr(faiss, "GpuIndexIVF") else ()
    return isinstance(index, (faiss.IndexIVF, faiss.IndexIDMap, *gpu_ivf))


def _check_items(embeddings: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    emb = np.ascontiguousarray(embeddings, dtype=np.float32)
    if emb.ndim != 2 or emb.shape[0] < 1 or emb.shape[1] < 1:
        raise ValueError(f"embeddings must be [N, D] with N, D >= 1, got {np.shape(embeddings)}")
    if not np.isfinite(emb).all():
        raise ValueError("embeddings contain NaN or inf")
    item_ids = np.asarray(ids)
    if item_ids.shape != (len(emb),) or not np.issubdtype(item_ids.dtype, np.integer):
        raise ValueError(
            f"ids must be [{len(emb)}] integers, got {item_ids.dtype} {item_ids.shape}"
        )
    if (item_ids == -1).any():
        raise ValueError("ids must not contain -1, which marks padding in results")
    return emb, np.ascontiguousarray(item_ids, dtype=np.int64)


def _check_positive(**values: int | None) -> None:
    for name, value in values.items():
        if value is not None and value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")


def _check_exclude(exclude: Sequence[np.ndarray], n_queries: int) -> list[np.ndarray]:
    if len(exclude) != n_queries:
        raise ValueError(f"exclude needs one array per query: {len(exclude)} != {n_queries}")
    return [np.asarray(e, dtype=np.int64).ravel() for e in exclude]
