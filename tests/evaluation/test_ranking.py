"""Ranking metrics against brute-force NumPy references and hand-worked values."""

from __future__ import annotations

import itertools

import numpy as np
import pyarrow as pa
import pytest

from pinrank.evaluation.ranking import (
    auc,
    ece,
    log_loss,
    lookup_rate,
    precision_at_k,
    ranking_metrics,
    rate_table,
    roc_curve,
    save_plots,
    user_auc,
)


def _pairwise_auc(y: np.ndarray, s: np.ndarray) -> float:
    pos, neg = s[y == 1], s[y == 0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


@pytest.mark.parametrize("seed", range(5))
def test_auc_matches_pairwise_count_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = (rng.random(120) < 0.4).astype(float)
    s = np.round(rng.random(120) + 0.3 * y, 1)  # rounding makes many ties
    assert auc(y, s) == pytest.approx(_pairwise_auc(y, s), abs=1e-12)


def test_auc_edge_cases() -> None:
    assert auc(np.array([0, 1]), np.array([0.2, 0.9])) == 1.0
    assert auc(np.array([0, 1]), np.array([0.9, 0.2])) == 0.0
    assert auc(np.array([0, 1, 0, 1]), np.full(4, 0.5)) == 0.5
    assert np.isnan(auc(np.array([1, 1]), np.array([0.1, 0.2])))
    with pytest.raises(ValueError, match="differ in shape"):
        auc(np.array([0, 1]), np.array([0.1]))
    with pytest.raises(ValueError, match="1 non-finite scores"):
        auc(np.array([0, 1]), np.array([0.1, np.nan]))
    with pytest.raises(ValueError, match="labels must be 0 or 1"):
        auc(np.array([0, 2]), np.array([0.1, 0.2]))


def test_log_loss_by_hand() -> None:
    y, p = np.array([1, 0, 1]), np.array([0.8, 0.4, 0.5])
    expected = -(np.log(0.8) + np.log(0.6) + np.log(0.5)) / 3
    assert log_loss(y, p) == pytest.approx(expected)
    assert np.isfinite(log_loss(np.array([1]), np.array([0.0])))  # clipped, not inf


def test_ece_matches_a_loop_over_bins() -> None:
    rng = np.random.default_rng(3)
    p = rng.random(1000)
    y = (rng.random(1000) < p**2).astype(float)
    total = 0.0
    for b in range(15):
        lo, hi = b / 15, (b + 1) / 15
        inside = (p >= lo) & ((p < hi) if b < 14 else (p <= hi))
        if inside.any():
            total += inside.sum() / len(p) * abs(y[inside].mean() - p[inside].mean())
    assert ece(y, p) == pytest.approx(total, abs=1e-9)
    assert ece(np.array([1.0]), np.array([1.0])) == 0.0  # p = 1 falls in the last bin


def test_user_auc_and_precision_against_references() -> None:
    rng = np.random.default_rng(5)
    users = rng.integers(0, 30, 600)
    y = (rng.random(600) < 0.45).astype(float)
    s = rng.random(600) + 0.2 * y
    aucs, precisions = [], []
    for u in np.unique(users):
        m = users == u
        if 0 < y[m].sum() < m.sum():
            aucs.append(_pairwise_auc(y[m], s[m]))
        if y[m].sum() > 0:
            top = np.argsort(-s[m], kind="stable")[:10]
            precisions.append(y[m][top].sum() / min(10, m.sum()))
    mean, n = user_auc(users, y, s)
    assert n == len(aucs) and mean == pytest.approx(np.mean(aucs))
    assert precision_at_k(users, y, s, 10) == pytest.approx(np.mean(precisions))


def test_roc_curve_area_is_the_auc() -> None:
    rng = np.random.default_rng(7)
    y = (rng.random(300) < 0.3).astype(float)
    s = np.round(rng.random(300) + 0.4 * y, 2)
    fpr, tpr = roc_curve(y, s)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    area = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
    assert area == pytest.approx(auc(y, s), abs=1e-12)


def test_rate_table_smooths_and_falls_back_to_the_global_rate() -> None:
    train = pa.table({"item_id": [1, 1, 2], "engaged": [True, False, True]})
    table = rate_table(train, "item_id", prior_strength=1.0)
    glob = 2 / 3
    got = lookup_rate(table, np.array([1, 2, 99]))
    np.testing.assert_allclose(got, [(1 + glob) / 3, (1 + glob) / 2, glob])


def test_ranking_metrics_keys_and_plots(tmp_path) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(0)
    y = (rng.random(200) < 0.5).astype(float)
    p = np.clip(0.5 + 0.3 * (y - 0.5) + rng.normal(0, 0.2, 200), 0, 1)
    m = ranking_metrics(rng.integers(0, 10, 200), y, p)
    assert set(m) >= {"auc", "logloss", "ece", "user_auc", "precision@10", "events"}
    paths = save_plots(tmp_path, {"model": (y, p)}, "test")
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
