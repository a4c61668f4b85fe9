"""The paired bootstrap of ``pinrank compare`` against a plain NumPy bootstrap on a small fixed
case (users resampled with replacement, their rows repeated), and the verdict's rules."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from pinrank.evaluation.ranking import auc
from pinrank.lifecycle.bootstrap import Interval, WeightedAUC, interval, user_counts
from pinrank.lifecycle.compare import (
    CompareConfig,
    Holdout,
    Metric,
    Scores,
    compare_scores,
    verdict,
)

SAMPLES, SEED, K = 400, 7, 3


def test_weighted_auc_is_the_auc_of_the_repeated_rows() -> None:
    rng = np.random.default_rng(0)
    y = rng.random(300) < 0.4
    s = np.round(rng.random(300) + 0.3 * y, 1)  # many ties
    w = rng.integers(0, 4, size=(6, 300)).astype(float)
    got = WeightedAUC(y, s)(w)
    expected = [auc(np.repeat(y, r.astype(int)), np.repeat(s, r.astype(int))) for r in w]
    np.testing.assert_allclose(got, expected, atol=1e-12)
    assert np.isnan(WeightedAUC(np.ones(3), np.arange(3.0))(np.ones((1, 3))))[0]


def test_user_counts_are_the_documented_draws() -> None:
    draws = np.random.default_rng(SEED).integers(0, 5, size=(250, 5))
    counts = np.concatenate(list(user_counts(5, 250, SEED)))
    assert np.array_equal(counts, np.stack([np.bincount(d, minlength=5) for d in draws]))


def _fixed_case() -> tuple[Holdout, Scores, Scores]:
    """6 users (user 5 new), 26 impressions, feeds of 3, pins 100.. (100 and 101 popular)."""
    user = np.array([0] * 5 + [1] * 4 + [2] * 6 + [3] * 3 + [4] * 4 + [5] * 4)
    item = np.array([100, 101, 102, 103, 104, 100, 105, 106, 107, 101, 102, 108, 109, 110, 111,
                     100, 103, 112, 104, 101, 113, 114, 100, 115, 116, 117])  # fmt: skip
    label = np.array([1, 0, 1, 0, 0, 1, 1, 0, 0, 0, 1, 0, 1, 0, 0, 1, 0, 0, 1, 0, 0, 1,
                      0, 1, 0, 0], bool)  # fmt: skip
    rng = np.random.default_rng(1)
    prob_a = np.round(rng.random(len(user)) * 0.5 + 0.3 * label, 2)
    prob_b = np.round(rng.random(len(user)) * 0.5 + 0.2 * label, 2)
    events = pa.table({"user_id": user, "item_id": item, "engaged": label})
    users = np.arange(6)
    holdout = Holdout("fixed", events, pa.table({"user_id": users}), users,
                      users == 5, np.array([100, 101]))  # fmt: skip

    def scores(prob: np.ndarray, feeds: list[list[int]]) -> Scores:
        hits = np.zeros((6, K), bool)
        hit_popular = np.zeros((6, K), bool)
        engaged, engaged_popular = np.zeros(6), np.zeros(6)
        for u in range(6):
            truth = np.unique(item[(user == u) & label])
            engaged[u], engaged_popular[u] = truth.size, np.isin(truth, [100, 101]).sum()
            hits[u] = np.isin(feeds[u], truth)
            hit_popular[u] = hits[u] & np.isin(feeds[u], [100, 101])
        return Scores("v", prob, hits, hit_popular, engaged, engaged_popular)

    feeds_a = [[100, 103, 50], [105, 60, 61], [62, 63, 109], [100, 64, 65], [66, 104, 67],
               [114, 68, 69]]  # fmt: skip
    feeds_b = [[102, 100, 50], [60, 61, 62], [109, 63, 64], [65, 100, 66], [67, 68, 69],
               [70, 71, 114]]  # fmt: skip
    return holdout, scores(prob_a, feeds_a), scores(prob_b, feeds_b)


def _numpy_bootstrap(holdout: Holdout, stat: callable) -> tuple[float, float, float]:  # type: ignore[valid-type]
    """B - A and its 95% percentile interval by the plain recipe: for each draw of users, the
    statistic of the drawn users' rows (a user drawn twice counted twice)."""
    draws = np.random.default_rng(SEED).integers(0, 6, size=(SAMPLES, 6))
    sampled = [stat(d) for d in draws]
    kept = np.array([v for v in sampled if np.isfinite(v)])
    low, high = np.quantile(kept, [0.025, 0.975])
    return stat(np.arange(6)), low, high


def test_intervals_match_a_numpy_bootstrap_on_a_fixed_case() -> None:
    holdout, a, b = _fixed_case()
    config = CompareConfig(k=K, samples=SAMPLES, seed=SEED, guard={}, improve=[])
    metrics = {(m.name, m.slice): m for m in compare_scores(holdout, a, b, config)}
    user = holdout.events.column("user_id").to_numpy()
    label = holdout.events.column("engaged").to_numpy(zero_copy_only=False)

    def rows_of(drawn: np.ndarray) -> np.ndarray:
        return np.concatenate([np.flatnonzero(user == u) for u in drawn])

    def auc_diff(drawn: np.ndarray) -> float:
        r = rows_of(drawn)
        return auc(label[r], b.probability[r]) - auc(label[r], a.probability[r])

    def recall_diff(drawn: np.ndarray) -> float:
        counted = [u for u in drawn if a.engaged[u] > 0]
        ra = [a.hits[u].sum() / a.engaged[u] for u in counted]
        rb = [b.hits[u].sum() / b.engaged[u] for u in counted]
        return float(np.mean(rb) - np.mean(ra)) if counted else float("nan")

    def popular_recall_diff(drawn: np.ndarray) -> float:
        counted = [u for u in drawn if a.engaged_popular[u] > 0]
        ra = [a.hit_popular[u].sum() / a.engaged_popular[u] for u in counted]
        rb = [b.hit_popular[u].sum() / b.engaged_popular[u] for u in counted]
        return float(np.mean(rb) - np.mean(ra)) if counted else float("nan")

    recall = f"retrieval/recall@{K}"
    cases = [(("ranking/auc", "all"), auc_diff), ((recall, "all"), recall_diff),
             ((recall, "popular_pins"), popular_recall_diff)]  # fmt: skip
    for key, stat in cases:
        value, low, high = _numpy_bootstrap(holdout, stat)
        got = metrics[key].diff
        assert got.value == pytest.approx(value, abs=1e-12), key
        assert (got.low, got.high) == pytest.approx((low, high), abs=1e-12), key
    # the slices: the new user's rows only, and every metric for both packages
    assert metrics[("ranking/auc", "new_users")].units == 4
    assert {s for _, s in metrics} == {"all", "new_users", "warm_users", "popular_pins",
                                       "niche_pins"}  # fmt: skip


def _metric(name: str, value: float, low: float, high: float) -> Metric:
    return Metric(name, "all", 0.5, 0.5 + value, Interval(value, low, high), 100)


def test_verdict_guards_then_asks_for_a_gain() -> None:
    config = CompareConfig(guard={"ranking/auc": 0.005, "ranking/log_loss": 0.01},
                           improve=["ranking/auc"])  # fmt: skip
    better = [_metric("ranking/auc", 0.02, 0.01, 0.03),
              _metric("ranking/log_loss", -0.01, -0.02, 0.0)]  # fmt: skip
    assert verdict(better, config).better
    worse = [_metric("ranking/auc", -0.2, -0.25, -0.15), _metric("ranking/log_loss", 0.3, 0.2, 0.4)]
    decision = verdict(worse, config)
    assert not decision.better
    assert any("ranking/auc" in r and "worse by more than the tolerance 0.005" in r
               for r in decision.reasons)  # fmt: skip
    assert any("ranking/log_loss" in r and "tolerance 0.01" in r for r in decision.reasons)
    # within the tolerance, but surely worse: the whole interval below zero
    slightly = [_metric("ranking/auc", -0.002, -0.003, -0.001),
                _metric("ranking/log_loss", -0.01, -0.02, 0.0)]  # fmt: skip
    decision = verdict(slightly, config)
    assert not decision.better and "surely worse" in decision.reasons[0]
    # a tie passes the guards but gains nothing
    tie = [_metric("ranking/auc", 0.0, 0.0, 0.0), _metric("ranking/log_loss", 0.0, 0.0, 0.0)]
    decision = verdict(tie, config)
    assert not decision.better and "no gain above 0.0" in decision.reasons[-1]
    # significant: the interval's worse end must gain
    noisy = [_metric("ranking/auc", 0.004, -0.001, 0.009), _metric("ranking/log_loss", 0, 0, 0)]
    assert verdict(noisy, config).better
    assert not verdict(noisy, CompareConfig(**{**config.__dict__, "significant": True})).better
    with pytest.raises(ValueError, match="not a metric"):
        verdict(better, CompareConfig(guard={"ranking/gauc": 0.1}, improve=[]))
    with pytest.raises(ValueError, match="unknown compare settings"):
        CompareConfig.from_dict({"samples": 10, "sample": 3})


def test_interval_ignores_nan_samples() -> None:
    got = interval(0.1, np.array([np.nan, 0.0, 0.2, 0.1]), 0.5)
    assert got.value == 0.1 and 0.0 < got.low < got.high < 0.2
