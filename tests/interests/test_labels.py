"""Interest examples: the worked example of docs/interests.md, the window, and bad input."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from pinrank.interests.labels import Window, in_window, interest_examples

ITEMS = pa.table({"item_id": [10, 11, 12, 13, 14], "interests": [[1], [1], [2, 1], [3], None]})


def _events(rows: list[tuple[int, int, int, bool]]) -> pa.Table:
    users, items, ts, engaged = zip(*rows, strict=True)
    return pa.table({"user_id": list(users), "item_id": list(items), "ts": list(ts),
                     "engaged": list(engaged)})  # fmt: skip


def test_worked_example() -> None:
    # user 7 sees cooking (10), travel+cooking (12) and cars (13) in the first three
    # impressions and engages with 12; the engagement with 11 comes after the window
    events = _events([(7, 11, 400, True), (7, 10, 100, False), (7, 13, 300, False),
                      (7, 12, 200, True)])  # fmt: skip
    ex = interest_examples(events, ITEMS, Window(events=3))
    got = {r["item_id"]: (r["engaged"], r["impressions"], r["ts"]) for r in ex.to_pylist()}
    # cooking: seen twice (pins 10 and 12), engaged through 12; travel: engaged; cars: seen only
    assert got == {1: (True, 2, 100), 2: (True, 1, 200), 3: (False, 1, 300)}
    assert ex["engagement"].to_pylist() == ["interest", "interest", "none"]
    # the whole history: the later engagement with 11 changes nothing (cooking already positive)
    assert interest_examples(events, ITEMS, Window(events=None))["impressions"].to_pylist()[0] == 3


def test_negative_needs_no_engagement_with_any_pin_of_the_interest() -> None:
    events = _events([(1, 10, 1, False), (1, 11, 2, False), (2, 10, 1, False), (2, 11, 2, True)])
    ex = interest_examples(events, ITEMS, Window(events=10))
    assert [(r["user_id"], r["engaged"]) for r in ex.to_pylist()] == [(1, False), (2, True)]


def test_days_window_and_pins_without_interest() -> None:
    day = 86_400
    events = _events([(5, 10, 0, False), (5, 14, 10, True), (5, 13, 2 * day, True)])
    ex = interest_examples(events, ITEMS, Window(events=None, days=1))
    # pin 14 has no interest: no example; pin 13 came two days after the first impression
    assert ex.to_pylist()[0]["item_id"] == 1 and ex.num_rows == 1
    both = interest_examples(events, ITEMS, Window(events=1, days=5))
    assert both["item_id"].to_pylist() == [1]


def test_in_window_counts_per_user() -> None:
    users = np.array([1, 1, 1, 2, 2, 3])
    ts = np.array([0, 5, 9, 3, 4, 8])
    assert in_window(users, ts, Window(events=2)).tolist() == [1, 1, 0, 1, 1, 1]
    assert in_window(users, ts, Window(events=None, days=5 / 86_400)).tolist() == [1, 0, 0, 1, 1, 1]


def test_bad_input_is_named() -> None:
    with pytest.raises(ValueError, match=r"window\.events"):
        Window(events=0)
    with pytest.raises(ValueError, match=r"window\.days"):
        Window(days=-1)
    with pytest.raises(ValueError, match="no 'engaged' column"):
        interest_examples(pa.table({"user_id": [1], "item_id": [10], "ts": [0]}), ITEMS, Window())
    with pytest.raises(
        ValueError, match=r"1 impressed pins are not in the items table \(e\.g\. \[99\]"
    ):
        interest_examples(_events([(1, 99, 0, True)]), ITEMS, Window())
