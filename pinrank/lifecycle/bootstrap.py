"""Paired bootstrap over users: how sure a difference between two models is.

Both models score the same held-out users; a bootstrap sample draws ``U`` of the ``U`` users
with replacement (the same draw for both models: *paired*), and every statistic is computed on
the sample as if its users' rows were repeated as often as they were drawn. The interval of a
difference is the ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of its ``samples``
sampled differences (percentile bootstrap). Users, not rows, are resampled: a user's rows are
not independent of each other.

Draws are ``numpy.random.default_rng(seed).integers(0, U, size=(samples, U))``, so a test can
redo them with plain NumPy (``tests/lifecycle/test_bootstrap.py``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Interval:
    """A point estimate (on the full data) and its bootstrap interval."""

    value: float
    low: float
    high: float

    def to_dict(self) -> dict[str, float]:
        return {"value": self.value, "low": self.low, "high": self.high}


def user_counts(users: int, samples: int, seed: int, chunk: int = 100) -> Iterator[np.ndarray]:
    """``[b, users]`` how often each user is drawn in each sample, ``chunk`` samples at a time
    (the draws of module docstring, in order)."""
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, users, size=(samples, users)) if users else np.zeros((samples, 0))
    for start in range(0, samples, chunk):
        block = draws[start : start + chunk]
        flat = (np.arange(len(block))[:, None] * users + block).ravel().astype(np.int64)
        yield np.bincount(flat, minlength=len(block) * users).reshape(len(block), users) * 1.0


def weighted_mean(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``[b]`` the mean of ``values`` ``[n]`` under each row of ``weights`` ``[b, n]`` (NaN where
    a row's weights sum to 0)."""
    total = weights.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (weights @ values) / total


class WeightedAUC:
    """ROC AUC of fixed ``labels`` and ``scores`` under many row weightings, sorted once.

    With row weights ``w``: the weighted share of (positive, negative) pairs in which the positive
    scores higher, ties counting 1/2; equal to :func:`pinrank.evaluation.ranking.auc` on the rows
    repeated ``w`` times.
    """

    def __init__(self, labels: np.ndarray, scores: np.ndarray) -> None:
        y = np.asarray(labels, np.float64).ravel()
        s = np.asarray(scores, np.float64).ravel()
        if y.shape != s.shape:
            raise ValueError(f"labels {y.shape} and scores {s.shape} differ in shape")
        order = np.argsort(s, kind="mergesort")
        self.order, self.y = order, y[order]
        sorted_s = s[order]
        first = np.r_[True, sorted_s[1:] != sorted_s[:-1]] if len(s) else np.zeros(0, bool)
        self.group = np.cumsum(first) - 1  # tie group of each sorted row
        self.groups = int(self.group[-1]) + 1 if len(s) else 0

    def __call__(self, weights: np.ndarray) -> np.ndarray:
        """``[b]`` the AUC under each row of ``weights`` ``[b, n]`` (rows in the original order);
        NaN where a weighting leaves no positive or no negative."""
        w = np.atleast_2d(weights)[:, self.order]
        b = len(w)
        cells = (np.arange(b)[:, None] * self.groups + self.group).ravel()
        size = b * self.groups
        pos = np.bincount(cells, (w * self.y).ravel(), size).reshape(b, self.groups)
        neg = np.bincount(cells, (w * (1 - self.y)).ravel(), size).reshape(b, self.groups)
        below = np.cumsum(neg, axis=1) - neg  # negatives in lower tie groups
        wins = (pos * (below + 0.5 * neg)).sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            out = wins / (pos.sum(axis=1) * neg.sum(axis=1))
        return np.where((pos.sum(axis=1) > 0) & (neg.sum(axis=1) > 0), out, np.nan)


def interval(point: float, sampled: np.ndarray, level: float) -> Interval:
    """``point`` with the percentile interval of its ``sampled`` values (NaNs left out)."""
    kept = sampled[np.isfinite(sampled)]
    if not kept.size:
        return Interval(point, float("nan"), float("nan"))
    lo, hi = np.quantile(kept, [(1 - level) / 2, (1 + level) / 2])
    return Interval(point, float(lo), float(hi))
