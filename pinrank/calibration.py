"""Score transforms from a ranker's logit to a calibrated probability (NumPy only).

Fitted on validation events and stored with the model as plain JSON (:meth:`Calibration.to_dict`),
so the training report, the exported package and the serving side apply the same function.

- ``platt``: ``p = sigmoid(a * logit + b)`` (Platt 1999), fitted by Newton's method on log loss.
- ``isotonic``: a non-decreasing step function of the logit fitted by pool-adjacent-violators,
  linearly interpolated between the centres of its blocks and constant beyond them.
- ``identity``: ``p = sigmoid(logit)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

METHODS = ("identity", "platt", "isotonic")
EPS = 1e-6  # calibrated probabilities are clipped to [EPS, 1 - EPS]


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Numerically stable logistic function."""
    x = np.asarray(x, np.float64)
    out = np.empty_like(x)
    pos = x >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-x[pos]))
    ex = np.exp(x[~pos])
    out[~pos] = ex / (1.0 + ex)
    return out


@dataclass(frozen=True)
class Calibration:
    """A fitted score transform.

    Attributes:
        method: ``identity``, ``platt`` or ``isotonic``.
        params: ``{a, b}`` for Platt; ``{x, y}`` (block centres in logit space and their
            probabilities, both non-decreasing) for isotonic.

    Example::

        >>> cal = Calibration("platt", {"a": 2.0, "b": -1.0})
        >>> cal(np.array([0.0, 0.5])).round(4).tolist()
        [0.2689, 0.5]
        >>> Calibration.from_dict(cal.to_dict()) == cal
        True
    """

    method: str = "identity"
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"calibration method {self.method!r}: expected one of {METHODS}")

    def __call__(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated probabilities of raw logits."""
        z = np.asarray(logits, np.float64)
        if self.method == "platt":
            p = sigmoid(self.params["a"] * z + self.params["b"])
        elif self.method == "isotonic":
            p = np.interp(z, np.asarray(self.params["x"]), np.asarray(self.params["y"]))
        else:
            p = sigmoid(z)
        return np.clip(p, EPS, 1 - EPS)

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "params": self.params}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibration:
        return cls(str(data["method"]), dict(data.get("params", {})))


def fit_calibration(logits: np.ndarray, labels: np.ndarray, method: str) -> Calibration:
    """Fit ``method`` on (logit, 0/1 label) pairs, e.g. the validation events."""
    z = np.asarray(logits, np.float64).ravel()
    y = np.asarray(labels, np.float64).ravel()
    if z.shape != y.shape:
        raise ValueError(f"logits {z.shape} and labels {y.shape} differ in shape")
    if not np.isfinite(z).all():
        raise ValueError(f"calibration: {int((~np.isfinite(z)).sum())} non-finite logits")
    if method == "identity":
        return Calibration()
    if len(z) == 0 or y.min() == y.max():
        raise ValueError(
            f"calibration needs both labels; got {len(y)} rows, {y.sum():.0f} positive"
        )
    if method == "platt":
        a, b = fit_platt(z, y)
        return Calibration("platt", {"a": a, "b": b})
    if method == "isotonic":
        x, p = fit_isotonic(z, y)
        return Calibration("isotonic", {"x": x.tolist(), "y": p.tolist()})
    raise ValueError(f"calibration method {method!r}: expected one of {METHODS}")


def fit_platt(
    z: np.ndarray, y: np.ndarray, iters: int = 100, l2: float = 1e-6
) -> tuple[float, float]:
    """``(a, b)`` minimising the log loss of ``sigmoid(a z + b)`` (Newton, tiny ridge).

    Example::

        >>> rng = np.random.default_rng(0)
        >>> z = rng.normal(size=20000)
        >>> y = rng.random(20000) < sigmoid(0.5 * z - 1.0)
        >>> [round(v, 1) for v in fit_platt(z, y)]
        [0.5, -1.0]
    """
    X = np.stack([z, np.ones_like(z)], axis=1)
    w = np.zeros(2)
    for _ in range(iters):
        p = sigmoid(X @ w)
        grad = X.T @ (p - y) + l2 * w
        hess = (X * (p * (1 - p))[:, None]).T @ X + l2 * np.eye(2)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-10:
            break
    return float(w[0]), float(w[1])


def fit_isotonic(z: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pool-adjacent-violators: the non-decreasing step function of ``z`` closest to ``y`` in
    squared error. Returns the blocks' mean logits and their mean labels.

    Example::

        >>> x, p = fit_isotonic(np.array([0.0, 1.0, 2.0, 3.0]), np.array([0.0, 1.0, 0.0, 1.0]))
        >>> x.tolist(), p.tolist()
        ([0.0, 1.5, 3.0], [0.0, 0.5, 1.0])
    """
    order = np.argsort(z, kind="stable")
    z, y = z[order], y[order]
    # ties in z form one block from the start, so equal logits get one probability
    _, first = np.unique(z, return_index=True)
    counts = np.diff(np.r_[first, len(z)]).astype(np.float64)
    sums_y = np.add.reduceat(y, first)
    sums_z = np.add.reduceat(z, first)
    # stack of blocks: (count, sum_y, sum_z)
    n_blk: list[float] = []
    s_y: list[float] = []
    s_z: list[float] = []
    for c, sy, sz in zip(counts, sums_y, sums_z, strict=True):
        n_blk.append(c)
        s_y.append(sy)
        s_z.append(sz)
        while len(n_blk) > 1 and s_y[-2] / n_blk[-2] >= s_y[-1] / n_blk[-1]:
            c2, y2, z2 = n_blk.pop(), s_y.pop(), s_z.pop()
            n_blk[-1] += c2
            s_y[-1] += y2
            s_z[-1] += z2
    n = np.asarray(n_blk)
    return np.asarray(s_z) / n, np.asarray(s_y) / n
