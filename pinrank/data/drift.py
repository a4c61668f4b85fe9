"""Drift in synthetic logs (:class:`~pinrank.data.synthetic.SyntheticConfig`'s ``drift_days``,
``new_pin_share``, ``rising_interests``, ``rise``): over the last ``drift_days`` days new pins
appear and some interests rise, so that logs cut into days (``pinrank retrain``) change as real
ones do. Off by default: the data without drift is byte for byte what it was before.

Example::

    >>> from pinrank.data.synthetic import SyntheticConfig
    >>> cfg = SyntheticConfig(n_users=50, n_items=40, n_events=500, n_boards=40, days=10,
    ...                       drift_days=3, new_pin_share=0.25, rising_interests=2)
    >>> created, rising = drift_plan(cfg)
    >>> int((created >= 0).sum()) > 0, len(rising)
    (True, 2)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from pinrank.data.synthetic import SyntheticConfig


def drift_plan(cfg: SyntheticConfig) -> tuple[np.ndarray, np.ndarray]:
    """The drift of ``cfg``: ``[n_items]`` each pin's creation time in the drift period (-1:
    a pin from before it) and the rising interests' ids. Drawn from a stream of its own, so
    the rest of the data is what it would be without drift."""
    rng = np.random.default_rng([cfg.seed, 2])
    period = cfg.start_ts + (cfg.days - cfg.drift_days) * 86400
    new = rng.random(cfg.n_items) < cfg.new_pin_share
    created = np.where(new, period + rng.integers(0, cfg.drift_days * 86400, cfg.n_items), -1)
    rising = rng.choice(cfg.n_interests, min(cfg.rising_interests, cfg.n_interests),
                        replace=False)  # fmt: skip
    return created.astype(np.int64), np.sort(rising)


def drifted(cfg: SyntheticConfig, ts: np.ndarray, item: np.ndarray, interest: np.ndarray,
             rng: np.random.Generator) -> np.ndarray:  # fmt: skip
    """Impression times under the drift of ``cfg`` (:func:`drift_plan`): an impression of a new
    pin before the pin exists moves to a time after it; a share ``rise`` of the rising
    interests' impressions before the drift period move into it."""
    created, rising = drift_plan(cfg)
    end = cfg.start_ts + cfg.days * 86400
    period = end - cfg.drift_days * 86400
    ts = ts.copy()
    moving = np.isin(interest, rising) & (ts < period) & (rng.random(len(ts)) < cfg.rise)
    ts[moving] = period + rng.integers(0, cfg.drift_days * 86400, int(moving.sum()))
    born = created[item]
    early = (born >= 0) & (ts < born)
    ts[early] = born[early] + (rng.random(int(early.sum())) * (end - born[early])).astype(np.int64)
    return ts
