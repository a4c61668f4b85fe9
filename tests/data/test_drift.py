"""Drift in synthetic logs: new pins appear only after they are created, rising interests gain
share in the drift period, and without drift nothing changes."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest

from pinrank.data.drift import drift_plan
from pinrank.data.io import read_table
from pinrank.data.synthetic import SyntheticConfig, generate

BASE = SyntheticConfig(n_users=400, n_items=300, n_events=20_000, n_boards=60, n_creators=30,
                       days=20, seed=3)  # fmt: skip
DRIFT = replace(BASE, drift_days=5, new_pin_share=0.2, rising_interests=4, rise=0.6)


def _tables(cfg: SyntheticConfig, out: Path) -> dict[str, object]:
    generate(cfg, out)
    return {n: read_table(out / n, n) for n in ("events", "items", "users")}


def test_new_pins_appear_after_creation_and_rising_interests_rise(tmp_path: Path) -> None:
    base, drift = _tables(BASE, tmp_path / "base"), _tables(DRIFT, tmp_path / "drift")
    created, rising = drift_plan(DRIFT)
    events, items = drift["events"], drift["items"]
    item = events.column("item_id").to_numpy()
    ts = events.column("ts").to_numpy()
    born = created[item]
    assert (born >= 0).any() and (ts[born >= 0] >= born[born >= 0]).all()
    assert np.array_equal(
        items.column("created_ts").to_numpy()[created >= 0], created[created >= 0]
    )
    period = DRIFT.start_ts + (DRIFT.days - DRIFT.drift_days) * 86400
    primary = np.array([v[0] for v in items.column("interests").to_pylist()])

    def rising_share(table: object, late: bool) -> float:
        t = table.column("ts").to_numpy()  # type: ignore[attr-defined]
        i = primary[table.column("item_id").to_numpy()]  # type: ignore[attr-defined]
        mask = t >= period if late else t < period
        return float(np.isin(i[mask], rising).mean())

    assert rising_share(events, True) > 1.5 * rising_share(events, False)
    assert rising_share(base["events"], True) == pytest.approx(rising_share(base["events"], False),
                                                               rel=0.2)  # fmt: skip
    # the same impressions, users and labels: only times (and the new pins' creation) moved
    assert events.num_rows == base["events"].num_rows
    assert drift["users"].equals(base["users"])
    for column in ("user_id", "item_id", "engaged"):
        a = pc.sort_indices(events, [("user_id", "ascending"), ("item_id", "ascending"),
                                     ("engaged", "ascending")])  # fmt: skip
        b = pc.sort_indices(base["events"], [("user_id", "ascending"), ("item_id", "ascending"),
                                             ("engaged", "ascending")])  # fmt: skip
        assert events.take(a).column(column).equals(base["events"].take(b).column(column))


def test_drift_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="drift_days"):
        replace(BASE, drift_days=30)
    with pytest.raises(ValueError, match="new_pin_share"):
        replace(BASE, drift_days=2, new_pin_share=1.0)
