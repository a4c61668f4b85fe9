"""The hidden ground-truth engagement model of the synthetic data, and the oracle built on it.

An impression of pin ``i`` to user ``u`` at feed position ``p`` is engaged with probability

    P(engaged) = exam(p) * E_eps[ sigmoid(base + user_bias[u] + w_aff * aff(u, i)
                                          + w_q * quality[i] + eps) ],   eps ~ N(0, noise^2)

where ``aff(u, i)`` is the sum of the user's hidden interest weights over the pin's interests
(weights of a user sum to 1) and ``exam(p) = (1 + p) ** -position_decay`` is the position bias.
The oracle evaluates exactly this expectation (Gauss-Hermite quadrature over ``eps``), so a trained
model can be compared with the best achievable score. It needs only numpy and pyarrow.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


@dataclass(frozen=True)
class TruthParams:
    """Strengths of the hidden engagement model (see module docstring)."""

    base_logit: float = -1.2
    affinity_weight: float = 4.0
    quality_weight: float = 0.8
    user_bias_std: float = 0.6
    noise: float = 0.5
    position_decay: float = 0.3


def examination(position: np.ndarray, decay: float) -> np.ndarray:
    """Position bias: probability that an impression at ``position`` (0 = top) is examined."""
    return (1.0 + np.maximum(position, 0).astype(np.float64)) ** -decay


def expected_sigmoid(logit: np.ndarray, noise: float, nodes: int = 24) -> np.ndarray:
    """``E[sigmoid(logit + eps)]`` for ``eps ~ N(0, noise^2)`` by Gauss-Hermite quadrature.

    Example::

        >>> round(float(expected_sigmoid(np.array([0.0]), 1.0)[0]), 9)
        0.5
    """
    if noise <= 0:
        return 1.0 / (1.0 + np.exp(-logit))
    x, w = np.polynomial.hermite_e.hermegauss(nodes)  # probabilists' Hermite: weight exp(-x^2/2)
    w = w / w.sum()
    z = logit[..., None] + noise * x  # (..., nodes)
    return (1.0 / (1.0 + np.exp(-z))) @ w


def affinity(
    user_interests: np.ndarray, user_weights: np.ndarray, item_interests: np.ndarray
) -> np.ndarray:
    """Sum of each user's interest weights over the paired pin's interests.

    Args:
        user_interests: [N, M] int64 hidden interests of each pair's user, -1 padded.
        user_weights: [N, M] float weights of those interests (0 where padded).
        item_interests: [N, J] int64 interests of each pair's pin, -1 padded.

    Returns:
        [N] float64 affinity in [0, 1].
    """
    match = (user_interests[:, None, :] == item_interests[:, :, None]) & (
        item_interests[:, :, None] >= 0
    )  # (N, J, M)
    return (match * user_weights[:, None, :]).sum(axis=(1, 2))


def write_truth(
    folder: Path, params: TruthParams, items: pa.Table, personal_share: float, shares: np.ndarray
) -> None:
    """Save the hidden model's parameters and per-pin truth (the generator streams users).

    ``exposure.json`` says how impressions were drawn: with ``personal_share`` from the user's
    hidden interests, else from the interest ``shares``; then a pin of that interest with its
    ``exposure`` probability (a column of ``items.parquet``).
    """
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "params.json").write_text(json.dumps(asdict(params), indent=2))
    exposure = {"personal_share": personal_share, "shares": shares.tolist()}
    (folder / "exposure.json").write_text(json.dumps(exposure))
    pq.write_table(items, folder / "items.parquet", compression="zstd")


class Oracle:
    """Best possible engagement probability for any (user, pin), from the saved ground truth.

    Ids must be those of the generated data (dense ``0..n-1``). Memory: one padded row of hidden
    interests per user and per pin.

    Example::

        >>> oracle = Oracle.load("data/demo/truth")  # doctest: +SKIP
        >>> oracle.score(np.array([3, 3]), np.array([10, 11]), np.array([0, 5]))  # doctest: +SKIP
    """

    def __init__(
        self,
        params: TruthParams,
        user_interests: np.ndarray,
        user_weights: np.ndarray,
        user_bias: np.ndarray,
        item_interests: np.ndarray,
        item_quality: np.ndarray,
        item_exposure: np.ndarray | None = None,
        exposure: dict | None = None,
    ) -> None:
        self.params = params
        self.item_exposure, self.exposure = item_exposure, exposure
        self.user_interests = user_interests  # [U, M]
        self.user_weights = user_weights  # [U, M]
        self.user_bias = user_bias  # [U]
        self.item_interests = item_interests  # [I, J]
        self.item_quality = item_quality  # [I]

    @classmethod
    def load(cls, folder: str | Path) -> Oracle:
        """Load the truth written by the generator into ``folder``."""
        folder = Path(folder)
        params = TruthParams(**json.loads((folder / "params.json").read_text()))
        users = pq.read_table(folder / "users.parquet")
        items = pq.read_table(folder / "items.parquet")
        u_order = np.argsort(users["user_id"].to_numpy())
        i_order = np.argsort(items["item_id"].to_numpy())
        return cls(
            params,
            _padded(users["interests"], -1)[u_order],
            _padded(users["weights"], 0.0)[u_order],
            users["bias"].to_numpy()[u_order],
            _padded(items["interests"], -1)[i_order],
            items["quality"].to_numpy()[i_order],
            items["exposure"].to_numpy()[i_order] if "exposure" in items.column_names else None,
            json.loads((folder / "exposure.json").read_text())
            if (folder / "exposure.json").exists()
            else None,
        )

    def logit(self, user_ids: np.ndarray, item_ids: np.ndarray) -> np.ndarray:
        """[N] relevance logit of each (user, pin) pair before noise and position bias."""
        p = self.params
        aff = affinity(
            self.user_interests[user_ids],
            self.user_weights[user_ids],
            self.item_interests[item_ids],
        )
        return (
            p.base_logit
            + self.user_bias[user_ids]
            + p.affinity_weight * aff
            + p.quality_weight * self.item_quality[item_ids]
        )

    def score(
        self, user_ids: np.ndarray, item_ids: np.ndarray, positions: np.ndarray | None = None
    ) -> np.ndarray:
        """[N] P(engaged) of each pair; without ``positions``, given that the pin was examined."""
        prob = expected_sigmoid(self.logit(user_ids, item_ids), self.params.noise)
        if positions is not None:
            prob = prob * examination(positions, self.params.position_decay)
        return prob

    def retrieval_scores(self, user_ids: np.ndarray, item_ids: np.ndarray) -> np.ndarray:
        """[U, N] expected engaged impressions of each pin for each user, up to a constant:
        P(pin shown | user) * P(engaged | shown). The Bayes-optimal retrieval ranking."""
        if self.item_exposure is None or self.exposure is None:
            raise ValueError("this truth has no exposure model (generated by an older version)")
        share = float(self.exposure["personal_share"])
        shares = np.asarray(self.exposure["shares"])
        primary = self.item_interests[item_ids, 0]  # (N,)
        weights = np.zeros((len(user_ids), len(shares)))  # (U, K) hidden interest weights
        ui, uw = self.user_interests[user_ids], self.user_weights[user_ids]
        rows = np.repeat(np.arange(len(user_ids)), ui.shape[1])
        valid = ui.ravel() >= 0
        np.add.at(weights, (rows[valid], ui.ravel()[valid]), uw.ravel()[valid])
        personal = share * weights[:, primary] + (1 - share) * shares[primary]  # (U, N)
        shown = self.item_exposure[item_ids] * personal
        pairs_u = np.repeat(user_ids, len(item_ids))
        pairs_i = np.tile(item_ids, len(user_ids))
        engaged = self.score(pairs_u, pairs_i).reshape(len(user_ids), len(item_ids))
        return shown * engaged


def _padded(column: pa.ChunkedArray, fill: float) -> np.ndarray:
    """A list column as a [rows, max_len] numpy array padded with ``fill``."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    lengths = arr.value_lengths().fill_null(0).to_numpy()
    values = arr.flatten().to_numpy()
    width = max(int(lengths.max(initial=0)), 1)
    out = np.full((len(lengths), width), fill, dtype=values.dtype if values.size else np.float64)
    rows = np.repeat(np.arange(len(lengths)), lengths)
    cols = np.arange(values.size) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    out[rows, cols] = values
    return out
