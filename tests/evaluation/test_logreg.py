"""Logistic regression baseline: the design matrix from cross KJTs, and the fit against a
NumPy reference optimum."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from pinrank.evaluation.logreg import cross_rows, fit_logreg, fit_logreg_on_val


def test_cross_rows_places_each_key_in_its_column_block() -> None:
    # 2 rows, keys a (card 5) and b (card 3); a: [1], [2, 4]; b: [], [1]
    kjt = KeyedJaggedTensor(
        keys=["a", "b"], values=torch.tensor([1, 2, 4, 1]), lengths=torch.tensor([1, 2, 0, 1])
    )
    x = cross_rows([(kjt, np.array([1, 0]))], [5, 3])
    assert x.columns == 8
    assert x.indptr.tolist() == [0, 1, 4]
    assert x.indices.tolist() == [1, 2, 4, 6]
    np.testing.assert_array_equal(x.labels, [1, 0])
    w = torch.arange(8, dtype=torch.float32)
    assert x.matmul(w).tolist() == [1.0, 12.0]


def test_cross_rows_takes_the_weights_of_mean_crosses() -> None:
    # a mean cross's KeyedJaggedTensor carries per-value weights (1 for the other keys)
    kjt = KeyedJaggedTensor(
        keys=["a", "b"],
        values=torch.tensor([1, 2, 4, 1]),
        lengths=torch.tensor([1, 2, 0, 1]),
        weights=torch.tensor([1.0, 0.5, 0.5, 1.0]),
    )
    x = cross_rows([(kjt, np.array([1, 0]))], [5, 3])
    assert x.values is not None
    np.testing.assert_allclose(x.values, [1.0, 0.5, 0.5, 1.0])
    w = torch.arange(8, dtype=torch.float32)
    assert x.matmul(w).tolist() == [1.0, (2 + 4) / 2 + 6]


def test_cross_rows_merges_repeated_pairs_of_a_row() -> None:
    # a profile repeats interests: row 0 of key a has [3, 3, 1] (weights 1/3), row 1 of b [2, 2]
    kjt = KeyedJaggedTensor(
        keys=["a", "b"],
        values=torch.tensor([3, 3, 1, 2, 2]),
        lengths=torch.tensor([3, 0, 0, 2]),
        weights=torch.tensor([1 / 3, 1 / 3, 1 / 3, 1.0, 1.0]),
    )
    x = cross_rows([(kjt, np.array([1, 0]))], [5, 3])
    assert x.indptr.tolist() == [0, 2, 3]
    assert x.indices.tolist() == [1, 3, 7]
    assert x.values is not None
    np.testing.assert_allclose(x.values, [1 / 3, 2 / 3, 2.0])
    w = torch.randn(8)
    expected = [(w[3] * 2 + w[1]) / 3, 2 * w[7]]
    torch.testing.assert_close(x.matmul(w), torch.stack(expected))


def test_fit_reaches_the_penalised_optimum() -> None:
    rng = np.random.default_rng(0)
    n, cols = 3000, 12
    dense = (rng.random((n, cols)) < 0.3).astype(np.float64)
    true_w = rng.normal(0, 1.5, cols)
    y = (rng.random(n) < 1 / (1 + np.exp(-(dense @ true_w - 0.5)))).astype(np.float32)
    r, c = np.nonzero(dense)
    kjt_rows = []  # one key with all columns: build CSR directly through cross_rows
    lengths = np.bincount(r, minlength=n)
    kjt = KeyedJaggedTensor(
        keys=["x"], values=torch.from_numpy(c.astype(np.int64)), lengths=torch.from_numpy(lengths)
    )
    kjt_rows.append((kjt, y))
    x = cross_rows(kjt_rows, [cols])
    l2 = 1e-3
    model = fit_logreg(x, l2)
    # reference: Newton's method on the same objective in NumPy
    X = np.c_[dense, np.ones(n)]
    w = np.zeros(cols + 1)
    reg = np.r_[np.full(cols, l2), 0.0]
    for _ in range(50):
        p = 1 / (1 + np.exp(-X @ w))
        grad = X.T @ (p - y) / n + reg * w
        hess = (X * (p * (1 - p))[:, None]).T @ X / n + np.diag(reg)
        w -= np.linalg.solve(hess, grad)
    np.testing.assert_allclose(model.weights.numpy(), w[:cols], atol=2e-3)
    assert abs(model.intercept - w[-1]) < 2e-3
    np.testing.assert_allclose(model.logits(x), X @ w, atol=5e-3)
    # the val search returns a model from the grid and every strength's score
    best, scores = fit_logreg_on_val(x, x, grid=(1e-4, 1.0))
    assert set(scores) == {1e-4, 1.0} and best.l2 == 1e-4


def _problem(seed: int = 0, n: int = 2000, cols: int = 40) -> tuple[np.ndarray, object]:
    """Rows drawn with ``seed`` from one true model (the same weights for every seed)."""
    true_w = np.random.default_rng(99).normal(0, 1, cols)
    rng = np.random.default_rng(seed)
    dense = (rng.random((n, cols)) < 0.2).astype(np.float64)
    y = (rng.random(n) < 1 / (1 + np.exp(-(dense @ true_w)))).astype(np.float32)
    r, c = np.nonzero(dense)
    kjt = KeyedJaggedTensor(
        keys=["x"],
        values=torch.from_numpy(c.astype(np.int64)),
        lengths=torch.from_numpy(np.bincount(r, minlength=n)),
    )
    return dense, cross_rows([(kjt, y)], [cols])


def test_a_warm_start_reaches_the_same_optimum() -> None:
    _, x = _problem()
    warm = fit_logreg(x, 1e-3, init=fit_logreg(x, 1e-1))
    cold = fit_logreg(x, 1e-3)
    np.testing.assert_allclose(warm.weights.numpy(), cold.weights.numpy(), atol=1e-3)
    assert abs(warm.intercept - cold.intercept) < 1e-3


def test_the_path_runs_strong_to_weak_and_stops_past_the_best() -> None:
    """Train on one half, validate on the other: the val AUC rises then falls along the path;
    the search stops at the first strength below the best and returns the best."""
    _, train = _problem(seed=1, n=40)  # few rows: weak penalties overfit
    _, val = _problem(seed=2, n=3000)
    grid = (1e-6, 1e-4, 1e-2, 1.0, 100.0)
    best, scores = fit_logreg_on_val(train, val, grid)
    assert list(scores) == [100.0, 1.0, 1e-2]  # 1e-2 is below 1.0: 1e-4 and 1e-6 never fitted
    assert best.l2 == 1.0 and scores[1e-2] < scores[1.0] > scores[100.0]
    _, many = _problem(seed=1, n=3000)  # enough rows: the weakest penalty is as good as any
    assert len(fit_logreg_on_val(many, val, (1e-2, 1e-4))[1]) == 2
    with pytest.raises(ValueError, match="empty"):
        fit_logreg_on_val(train, val, ())
