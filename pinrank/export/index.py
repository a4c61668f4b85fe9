"""The package's FAISS index: its type chosen by catalogue size, its recall measured at export.

The retrieval run's index (``model.module.index``) is what its evaluation searched; the package's
index is a deployment choice that depends on how many pins it holds, so the export config picks
it (``conf/export.yaml`` ``index``):

- ``choose: by_size`` (default): the first rule of ``by_size`` whose ``up_to`` covers the
  catalogue (``null``: any size) gives the FAISS factory string and its search parameters. The
  defaults: HNSW up to 200k pins (exact-like recall, no training), IVF-Flat up to 2M (trains in
  seconds, memory = the vectors), IVF-PQ above (a fraction of the memory). IVF visits 32 lists:
  on the 1M-pin package of ``benchmarks/catalogue_scale.py`` (4,096 lists, depth 400, 1 thread)
  recall@100 was 0.945 / 0.973 / 0.990 at 16 / 32 / 64 lists, at 0.14 / 0.20 / 0.33 ms a query.
  A factory may say ``{nlist}`` (about ``4 sqrt(N)`` lists, a power of two, at least 39
  training points each) and ``{m}`` (PQ sub-quantizers: the largest divisor of the dimension
  at most half of it).
- ``choose: run``: the retrieval run's own index and parameters.

Whatever is chosen, export measures its recall@k against exact inner-product search on the
query vectors of held-out users (the exported user tower on the test split's users, with the
popularity prior where the run chose one) and writes it into the manifest's ``index`` entry;
below ``min_recall`` the export fails, naming the index and the recall.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pinrank.retrieval.topk import BruteForce, FaissTopK, recall_vs_exact


class IndexRecallError(ValueError):
    """The chosen index finds too few of the exact top-k."""


@dataclass(frozen=True)
class IndexRule:
    """Catalogues of at most ``up_to`` pins (``None``: any) get ``factory`` with ``params``."""

    up_to: int | None
    factory: str
    params: Mapping[str, Any] = field(default_factory=dict)


DEFAULT_RULES = (
    IndexRule(200_000, "HNSW32", {"ef_search": 128}),
    IndexRule(2_000_000, "IVF{nlist},Flat", {"nprobe": 32}),
    IndexRule(None, "IVF{nlist},PQ{m}", {"nprobe": 32}),
)
CHOICES = ("by_size", "run")


@dataclass(frozen=True)
class IndexConfig:
    """How export picks and checks the package's index (module docstring)."""

    choose: str = "by_size"
    by_size: tuple[IndexRule, ...] = DEFAULT_RULES
    recall_k: int = 100
    recall_queries: int = 1000
    min_recall: float = 0.8

    def __post_init__(self) -> None:
        if self.choose not in CHOICES:
            raise ValueError(f"index.choose must be one of {CHOICES}, got {self.choose!r}")
        if not self.by_size or self.by_size[-1].up_to is not None:
            raise ValueError("index.by_size must end with a rule for any size (up_to: null)")
        bounds = [r.up_to for r in self.by_size[:-1]]
        counts = [b for b in bounds if b is not None and b >= 1]
        if counts != bounds or counts != sorted(counts):
            raise ValueError(f"index.by_size: up_to must be increasing positive counts: {bounds}")
        if self.recall_k < 1 or self.recall_queries < 1 or not 0 <= self.min_recall <= 1:
            raise ValueError(
                "index: recall_k and recall_queries must be >= 1 and min_recall in [0, 1], got "
                f"{self.recall_k}, {self.recall_queries}, {self.min_recall}"
            )

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> IndexConfig:
        """From the export config's ``index`` block (``None``: the defaults)."""
        d = dict(d or {})
        unknown = set(d) - {"choose", "by_size", "recall_k", "recall_queries", "min_recall"}
        if unknown:
            raise ValueError(f"index: unknown keys {sorted(unknown)}")
        if "by_size" in d:
            d["by_size"] = tuple(
                IndexRule(r.get("up_to"), str(r["factory"]), dict(r.get("params") or {}))
                for r in d["by_size"]
            )
        return cls(**d)


def nlist_for(items: int) -> int:
    """IVF lists for ``items`` vectors: about ``4 sqrt(items)``, a power of two, with at least
    39 training points per list (FAISS's minimum without a warning)."""
    target = 2 ** round(math.log2(max(4 * math.sqrt(max(items, 1)), 1)))
    return int(max(1, min(target, items // 39)))


def pq_m_for(dim: int) -> int:
    """PQ sub-quantizers for ``dim``: the largest divisor of ``dim`` at most ``dim / 2``."""
    return max((m for m in range(1, dim // 2 + 1) if dim % m == 0), default=1)


def choose_index(
    config: IndexConfig, items: int, dim: int, run_factory: str, run_params: Mapping[str, Any]
) -> tuple[str, dict[str, Any], str]:
    """``(factory, params, why)`` for a catalogue of ``items`` vectors of ``dim``."""
    if config.choose == "run":
        return run_factory, dict(run_params), "the retrieval run's index"
    rule = next(r for r in config.by_size if r.up_to is None or items <= r.up_to)
    factory = rule.factory.format(nlist=nlist_for(items), m=pq_m_for(dim))
    bound = "any size" if rule.up_to is None else f"<= {rule.up_to:,} pins"
    return factory, dict(rule.params), f"catalogue size: {items:,} pins ({bound})"


def measure_recall(
    topk: FaissTopK, embeddings: np.ndarray, ids: np.ndarray, queries: np.ndarray, k: int
) -> dict[str, Any]:
    """recall@k of ``topk`` (built on ``embeddings``/``ids``) against exact inner-product search
    of the same vectors, over ``queries``."""
    k = min(k, len(ids))
    exact = BruteForce().index(embeddings, ids).search(queries, k)[1]
    found = topk.search(queries, k)[1]
    return {
        "k": k,
        "queries": len(queries),
        "recall_vs_exact": round(float(recall_vs_exact(found, exact)), 4),
        "exact": "numpy inner product",
    }


def check_recall(
    config: IndexConfig, factory: str, params: Mapping[str, Any], recall: float
) -> None:
    if recall < config.min_recall:
        raise IndexRecallError(
            f"index {factory} {dict(params)} finds {recall:.3f} of the exact top-"
            f"{config.recall_k} on held-out users, below index.min_recall={config.min_recall}: "
            "raise its search parameter (nprobe, ef_search) or pick another index in "
            "index.by_size"
        )


def distinct_first(values: Sequence[int] | np.ndarray, n: int) -> np.ndarray:
    """Positions of the first occurrence of each of the first ``n`` distinct values."""
    _, first = np.unique(np.asarray(values), return_index=True)
    return np.sort(first)[:n]
