"""Interest-level examples from impressions: what a user who has just signed up goes on to engage
with, per interest.

The new-user interest model predicts, from what a user gives at sign-up, which interests they will
engage with. Its examples come from each user's **earliest window** of impressions (the first
``events`` impressions and / or those within ``days`` of the user's first impression: logs start
at a user's first activity, which stands for the sign-up). Every interest of every pin impressed
in the window gives one example for the (user, interest) pair:

- **positive** when the user engaged with at least one pin of that interest in the window;
- **negative** when the user saw pins of it in the window and engaged with none.

Interests the user was never shown give no example. What the user *follows* is not the label:
it is a sign-up feature (``users.interests``). A pin with two interests counts for both.

Worked example (pins 10 and 11 are "cooking" = 1, pin 12 is "travel" = 2 and "cooking" = 1,
pin 13 is "cars" = 3; user 7 sees 10, 12, 13 and engages with 12; the window is 3 events)::

    >>> import pyarrow as pa
    >>> events = pa.table({"user_id": [7, 7, 7, 7], "item_id": [10, 12, 13, 11],
    ...                    "ts": [100, 200, 300, 400], "engaged": [False, True, False, True]})
    >>> items = pa.table({"item_id": [10, 11, 12, 13], "interests": [[1], [1], [2, 1], [3]]})
    >>> ex = interest_examples(events, items, Window(events=3))
    >>> ex.select(["user_id", "item_id", "ts", "engaged", "impressions"]).to_pylist()[0]
    {'user_id': 7, 'item_id': 1, 'ts': 100, 'engaged': True, 'impressions': 2}
    >>> [(r["item_id"], r["engaged"]) for r in ex.to_pylist()]
    [(1, True), (2, True), (3, False)]

(The fourth impression, an engagement with pin 11, lies outside the window of 3 events.)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pinrank.data.examples import ITEM_INTERESTS, EntityIndex

ENGAGEMENT_POSITIVE, ENGAGEMENT_NEGATIVE = "interest", "none"
_DAY = 86_400


@dataclass(frozen=True)
class Window:
    """A user's earliest window of impressions.

    Attributes:
        events: at most this many first impressions (by ``(ts, item_id)``); ``None``: no limit.
        days: only impressions within this many days of the user's first one; ``None``: no limit.
    """

    events: int | None = 50
    days: float | None = None

    def __post_init__(self) -> None:
        if self.events is not None and (isinstance(self.events, bool) or self.events < 1):
            raise ValueError(f"window.events must be an integer >= 1 or null, got {self.events!r}")
        if self.days is not None and not self.days > 0:
            raise ValueError(f"window.days must be > 0 or null, got {self.days!r}")


def in_window(users: np.ndarray, ts: np.ndarray, window: Window) -> np.ndarray:
    """[E] bool: which impressions lie in their user's window. Rows must be sorted by
    ``(user, ts, item)`` (users in contiguous runs)."""
    n = len(users)
    keep = np.ones(n, dtype=bool)
    if n == 0:
        return keep
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    run = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, n]))
    if window.events is not None:
        keep &= np.arange(n) - starts[run] < window.events
    if window.days is not None:
        keep &= ts - ts[starts][run] < window.days * _DAY
    return keep


def interest_examples(events: pa.Table, items: pa.Table, window: Window) -> pa.Table:
    """One row per (user, interest) seen in the user's earliest window (module docstring).

    Args:
        events: impressions with ``user_id``, ``item_id``, ``ts`` (int64 seconds) and
            ``engaged`` (bool), in any order; every user's impressions together in this table.
        items: the pins with ``item_id`` and ``interests`` (list<int64>; null or empty: a pin of
            no interest, which gives no example).
        window: the window.

    Returns:
        ``user_id``, ``item_id`` (the **interest** id), ``ts`` (the first impression of that
        interest in the window), ``engaged``, ``engagement`` (``interest`` / ``none``) and
        ``impressions`` (int32: the window's impressions of pins of that interest), sorted by
        ``(user_id, ts, item_id)``.

    Raises:
        ValueError: naming a missing column, or an impressed pin missing from ``items``.
    """
    for name in ("user_id", "item_id", "ts", "engaged"):
        if name not in events.column_names:
            raise ValueError(f"interest examples: the events have no {name!r} column")
    if ITEM_INTERESTS not in items.column_names:
        raise ValueError(f"interest examples: the items have no {ITEM_INTERESTS!r} column")
    users, pins, ts = (
        np.asarray(events.column(c).to_numpy(zero_copy_only=False), np.int64)
        for c in ("user_id", "item_id", "ts")
    )
    engaged = np.asarray(events.column("engaged").to_numpy(zero_copy_only=False), bool)
    order = np.lexsort((pins, ts, users))
    users, pins, ts, engaged = users[order], pins[order], ts[order], engaged[order]
    keep = in_window(users, ts, window)
    users, pins, ts, engaged = users[keep], pins[keep], ts[keep], engaged[keep]
    index = EntityIndex(items.select(["item_id", ITEM_INTERESTS]), "item_id")
    rows = index.rows(pins)
    if (rows < 0).any():
        missing = np.unique(pins[rows < 0])
        raise ValueError(
            f"interest examples: {len(missing)} impressed pins are not in the items table "
            f"(e.g. {missing[:5].tolist()})"
        )
    lists = index.table.column(ITEM_INTERESTS).take(pa.array(rows))
    lists = lists.combine_chunks() if isinstance(lists, pa.ChunkedArray) else lists
    parent = pc.list_parent_indices(lists).to_numpy()
    interest = pc.list_flatten(lists).to_numpy(zero_copy_only=False)
    valid = ~np.isnan(interest) if interest.dtype.kind == "f" else np.ones(len(interest), bool)
    parent, interest = parent[valid], interest[valid].astype(np.int64)
    pairs = pa.table(
        {
            "user_id": users[parent],
            "item_id": interest,
            "ts": ts[parent],
            "engaged": engaged[parent],
        }
    )
    grouped = pairs.group_by(["user_id", "item_id"], use_threads=False).aggregate(
        [("ts", "min"), ("engaged", "max"), ("ts", "count")]
    )
    out = pa.table(
        {
            "user_id": grouped["user_id"],
            "item_id": grouped["item_id"],
            "ts": grouped["ts_min"],
            "engaged": grouped["engaged_max"],
            "engagement": pc.if_else(
                grouped["engaged_max"], ENGAGEMENT_POSITIVE, ENGAGEMENT_NEGATIVE
            ),
            "impressions": grouped["ts_count"].cast(pa.int32()),
        }
    )
    return out.sort_by([("user_id", "ascending"), ("ts", "ascending"), ("item_id", "ascending")])
