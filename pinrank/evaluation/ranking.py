"""Ranking metrics, baselines and plots of the evaluation protocol (``docs/evaluation.md``).

All metrics take flat arrays over events: ``labels`` (1 = engaged), ``scores`` (probabilities
where a metric needs them, any monotone score for AUC) and ``users`` (for per-user metrics).

- :func:`auc`: global ROC AUC (Mann-Whitney, ties count one half).
- :func:`log_loss`, :func:`ece` (15 equal-width bins, weighted by bin size).
- :func:`user_auc`: mean AUC over users who have both labels.
- :func:`precision_at_k`: per user with at least one engaged event, the engaged share of the
  user's ``min(k, n_user)`` best-scored events; the mean over those users.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa

ECE_BINS = 15


def _check(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels, np.float64).ravel()
    s = np.asarray(scores, np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels {y.shape} and scores {s.shape} differ in shape")
    if not np.isfinite(s).all():
        raise ValueError(f"{int((~np.isfinite(s)).sum())} non-finite scores")
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("labels must be 0 or 1")
    return y, s


def _ranks(s: np.ndarray) -> np.ndarray:
    """1-based ranks with ties given their average rank."""
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    first = np.r_[True, sorted_s[1:] != sorted_s[:-1]]
    group = np.cumsum(first) - 1
    starts = np.flatnonzero(first)
    ends = np.r_[starts[1:], len(s)]
    avg = (starts + ends + 1) / 2.0  # mean of ranks starts+1 .. ends
    ranks = np.empty(len(s))
    ranks[order] = avg[group]
    return ranks


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC: the probability that a random positive outscores a random negative (ties 1/2).
    NaN when one label is absent.

    Example::

        >>> auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8]))
        0.75
    """
    y, s = _check(labels, scores)
    pos = y.sum()
    neg = len(y) - pos
    if pos == 0 or neg == 0:
        return float("nan")
    r = _ranks(s)
    return float((r[y == 1].sum() - pos * (pos + 1) / 2) / (pos * neg))


def log_loss(labels: np.ndarray, probs: np.ndarray, eps: float = 1e-7) -> float:
    """Mean negative log-likelihood of the labels (probabilities clipped to ``[eps, 1-eps]``)."""
    y, p = _check(labels, probs)
    p = np.clip(p, eps, 1 - eps)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def reliability(
    labels: np.ndarray, probs: np.ndarray, bins: int = ECE_BINS
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per equal-width bin of the predicted probability: mean prediction, engaged share, count
    (empty bins give NaN means)."""
    y, p = _check(labels, probs)
    if ((p < 0) | (p > 1)).any():
        raise ValueError("probabilities must lie in [0, 1]")
    b = np.minimum((p * bins).astype(np.int64), bins - 1)
    n = np.bincount(b, minlength=bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = np.bincount(b, weights=p, minlength=bins) / n
        frac = np.bincount(b, weights=y, minlength=bins) / n
    return mean_p, frac, n


def ece(labels: np.ndarray, probs: np.ndarray, bins: int = ECE_BINS) -> float:
    """Expected calibration error: ``sum_b n_b / N * |mean(y)_b - mean(p)_b|``.

    Example::

        >>> ece(np.array([0, 1, 1, 1]), np.array([0.1, 0.9, 0.9, 0.7]), bins=10)
        0.15
    """
    mean_p, frac, n = reliability(labels, probs, bins)
    full = n > 0
    return float(round((n[full] * np.abs(frac[full] - mean_p[full])).sum() / n.sum(), 12))


def _groups(users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Order of events grouped by user, and the group boundaries."""
    order = np.argsort(np.asarray(users), kind="stable")
    u = np.asarray(users)[order]
    starts = np.flatnonzero(np.r_[True, u[1:] != u[:-1]]) if len(u) else np.zeros(0, np.int64)
    return order, np.r_[starts, len(u)]


def user_auc(users: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> tuple[float, int]:
    """Mean per-user AUC over users with both labels, and the number of such users.

    Example::

        >>> user_auc(np.array([1, 1, 2, 2, 3]), np.array([0, 1, 1, 0, 1]),
        ...          np.array([0.1, 0.9, 0.2, 0.8, 0.5]))
        (0.5, 2)
    """
    y, s = _check(labels, scores)
    order, bounds = _groups(users)
    values = []
    for a, b in itertools.pairwise(bounds):
        yy = y[order[a:b]]
        if 0 < yy.sum() < len(yy):
            values.append(auc(yy, s[order[a:b]]))
    return (float(np.mean(values)) if values else float("nan")), len(values)


def precision_at_k(users: np.ndarray, labels: np.ndarray, scores: np.ndarray, k: int = 10) -> float:
    """Mean over users with an engaged event of the engaged share among their ``min(k, n)``
    best-scored events (ties broken by event order).

    Example::

        >>> precision_at_k(np.array([1, 1, 1, 2, 2]), np.array([1, 0, 1, 0, 0]),
        ...                np.array([0.9, 0.8, 0.1, 0.5, 0.4]), k=2)
        0.5
    """
    y, s = _check(labels, scores)
    order, bounds = _groups(users)
    values = []
    for a, b in itertools.pairwise(bounds):
        idx = order[a:b]
        if y[idx].sum() == 0:
            continue
        top = idx[np.argsort(-s[idx], kind="stable")[:k]]
        values.append(y[top].mean())
    return float(np.mean(values)) if values else float("nan")


def ranking_metrics(
    users: np.ndarray, labels: np.ndarray, probs: np.ndarray, k: int = 10
) -> dict[str, float]:
    """Every ranking metric of one set of events: ``auc``, ``logloss``, ``ece``, ``user_auc``,
    ``precision@k``, and the event count, engaged share and mean prediction."""
    y, p = _check(labels, probs)
    mean_user_auc, n_users = user_auc(users, y, p)
    return {
        "auc": auc(y, p),
        "logloss": log_loss(y, p),
        "ece": ece(y, p),
        "user_auc": mean_user_auc,
        f"precision@{k}": precision_at_k(users, y, p, k),
        "events": float(len(y)),
        "users_with_both_labels": float(n_users),
        "engaged_rate": float(y.mean()) if len(y) else float("nan"),
        "mean_prediction": float(p.mean()) if len(p) else float("nan"),
    }


def roc_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False and true positive rates at every distinct threshold, from (0, 0) to (1, 1)."""
    y, s = _check(labels, scores)
    order = np.argsort(-s, kind="mergesort")
    y, s = y[order], s[order]
    last = np.r_[s[1:] != s[:-1], True]  # last event of each distinct score
    tp = np.cumsum(y)[last]
    fp = np.cumsum(1 - y)[last]
    return np.r_[0.0, fp / max(fp[-1], 1)], np.r_[0.0, tp / max(tp[-1], 1)]


# ------------------------------------------------------------------------------------ baselines


def rate_table(
    train: pa.Table, key: str, prior_strength: float = 1.0
) -> tuple[np.ndarray, np.ndarray, float]:
    """Smoothed engagement rate per ``key`` (``item_id`` or ``user_id``) in train events.

    Returns the sorted ids, their rates ``(engaged + m * global) / (events + m)`` with
    ``m = prior_strength``, and the global rate (for ids without train events).
    """
    ids = train.column(key).to_numpy()
    y = train.column("engaged").to_numpy(zero_copy_only=False).astype(np.float64)
    uniq, inv = np.unique(ids, return_inverse=True)
    events = np.bincount(inv, minlength=len(uniq))
    engaged = np.bincount(inv, weights=y, minlength=len(uniq))
    glob = float(y.mean()) if len(y) else 0.5
    return uniq, (engaged + prior_strength * glob) / (events + prior_strength), glob


def lookup_rate(table: tuple[np.ndarray, np.ndarray, float], ids: np.ndarray) -> np.ndarray:
    """Rates of ``ids`` from :func:`rate_table` (the global rate for unknown ids)."""
    uniq, rates, glob = table
    ids = np.asarray(ids)
    pos = np.clip(np.searchsorted(uniq, ids), 0, max(len(uniq) - 1, 0))
    found = (uniq[pos] == ids) if len(uniq) else np.zeros(len(ids), bool)
    return np.where(found, rates[pos] if len(uniq) else glob, glob)


# ---------------------------------------------------------------------------------------- plots


def save_plots(
    out_dir: str | Path,
    curves: dict[str, tuple[np.ndarray, np.ndarray]],
    title: str,
    bins: int = ECE_BINS,
) -> list[Path]:
    """``reliability.png`` and ``roc.png`` for named ``(labels, probs)`` pairs (e.g. the model
    before and after calibration, and a baseline). Returns the written paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1, label="perfect")
    for name, (y, p) in curves.items():
        mean_p, frac, n = reliability(y, p, bins)
        full = n > 0
        ax.plot(
            mean_p[full], frac[full], marker="o", ms=3, label=f"{name} (ECE {ece(y, p, bins):.4f})"
        )
    ax.set(
        xlabel="mean predicted probability", ylabel="engaged share", title=f"Reliability: {title}"
    )
    ax.set(xlim=(0, 1), ylim=(0, 1))
    ax.legend(fontsize=8, loc="upper left")
    rel = out_dir / "reliability.png"
    fig.tight_layout()
    fig.savefig(rel, dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1, label="random")
    for name, (y, p) in curves.items():
        fpr, tpr = roc_curve(y, p)
        ax.plot(fpr, tpr, lw=1.2, label=f"{name} (AUC {auc(y, p):.4f})")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=f"ROC: {title}")
    ax.legend(fontsize=8, loc="lower right")
    roc = out_dir / "roc.png"
    fig.tight_layout()
    fig.savefig(roc, dpi=110)
    plt.close(fig)
    return [rel, roc]


def metric_keys(prefix: str, values: dict[str, float]) -> dict[str, float]:
    """``{prefix}/{name}`` for every value."""
    return {f"{prefix}/{k}": float(v) for k, v in values.items()}


__all__: Sequence[str] = (
    "auc",
    "ece",
    "log_loss",
    "lookup_rate",
    "metric_keys",
    "precision_at_k",
    "ranking_metrics",
    "rate_table",
    "reliability",
    "roc_curve",
    "save_plots",
    "user_auc",
)
