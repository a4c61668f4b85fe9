"""Calibration: Platt recovers known parameters, isotonic is a monotone least-squares fit, both
lower the calibration error of a miscalibrated score, and they round-trip through JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pinrank.calibration import Calibration, fit_calibration, fit_isotonic, sigmoid
from pinrank.evaluation.ranking import ece, log_loss


def _miscalibrated(n: int = 20000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits three times too confident and shifted: the truth is sigmoid(z / 3 - 0.5)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 3, n)
    y = (rng.random(n) < sigmoid(z / 3 - 0.5)).astype(float)
    return z, y


def test_platt_recovers_the_true_transform() -> None:
    z, y = _miscalibrated(100_000)
    cal = fit_calibration(z, y, "platt")
    assert cal.params["a"] == pytest.approx(1 / 3, abs=0.02)
    assert cal.params["b"] == pytest.approx(-0.5, abs=0.03)


@pytest.mark.parametrize("method", ["platt", "isotonic"])
def test_calibration_lowers_ece_and_log_loss_on_fresh_data(method: str) -> None:
    z_fit, y_fit = _miscalibrated(seed=1)
    z, y = _miscalibrated(seed=2)
    cal = fit_calibration(z_fit, y_fit, method)
    raw, calibrated = sigmoid(z), cal(z)
    assert ece(y, calibrated) < 0.5 * ece(y, raw)
    assert log_loss(y, calibrated) < log_loss(y, raw)
    # monotone: calibration never reorders events
    order = np.argsort(z)
    assert np.all(np.diff(calibrated[order]) >= -1e-12)


def _brute_isotonic(y: np.ndarray) -> np.ndarray:
    """Least-squares non-decreasing fit by repeated pooling of the first violation."""
    blocks = [[v] for v in y]
    while True:
        for i in range(len(blocks) - 1):
            if np.mean(blocks[i]) > np.mean(blocks[i + 1]):
                blocks[i : i + 2] = [blocks[i] + blocks[i + 1]]
                break
        else:
            return np.concatenate([[np.mean(b)] * len(b) for b in blocks])


def test_isotonic_is_the_least_squares_monotone_fit() -> None:
    rng = np.random.default_rng(4)
    z = np.sort(rng.normal(size=60))
    y = (rng.random(60) < sigmoid(z)).astype(float)
    x, p = fit_isotonic(z, y)
    assert np.all(np.diff(x) > 0) and np.all(np.diff(p) > 0)
    fitted = Calibration("isotonic", {"x": x.tolist(), "y": p.tolist()})
    # at the block centres the fit takes the pooled means; the step function agrees with them
    expected = _brute_isotonic(y)
    centres = np.interp(x, z, expected)
    np.testing.assert_allclose(fitted(x), np.clip(centres, 1e-6, 1 - 1e-6), atol=1e-9)
    np.testing.assert_allclose(np.sort(np.unique(np.round(expected, 12))), np.round(p, 12))


def test_round_trip_through_json_and_errors() -> None:
    z, y = _miscalibrated(2000)
    for method in ("identity", "platt", "isotonic"):
        cal = fit_calibration(z, y, method)
        again = Calibration.from_dict(json.loads(json.dumps(cal.to_dict())))
        np.testing.assert_array_equal(again(z), cal(z))
    with pytest.raises(ValueError, match="calibration method 'beta'"):
        fit_calibration(z, y, "beta")
    with pytest.raises(ValueError, match="needs both labels"):
        fit_calibration(z, np.ones_like(y), "platt")
    with pytest.raises(ValueError, match="1 non-finite logits"):
        fit_calibration(np.r_[z[:-1], np.nan], y, "platt")
