"""Examples = impressions joined with their user's and pin's rows, and users' engaged history.

A featurizer consumes one table per side: ``{"user": ..., "item": ..., "context": ...}``, all
row-aligned with the impressions. Joins are lookups in a sorted id index (O(rows log n)), so a
batch of impressions costs the same whatever the size of the users and items tables.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pinrank.features.columns import (
    EVENT_DERIVED_USER_COLUMNS,
    HISTORY,
    HISTORY_INTERESTS,
    LAST_TS,
    SEEN,
    SEEN_INTERESTS,
)
from pinrank.features.ids import IdIndex
from pinrank.features.transforms import Counts

__all__ = [
    "EVENT_DERIVED_USER_COLUMNS",
    "HISTORY",
    "HISTORY_INTERESTS",
    "LAST_TS",
    "SEEN",
    "SEEN_INTERESTS",
]  # fmt: skip (re-exported: the data layer's names)

# interest-profile columns: bag column -> the user column of the pins whose interests it holds
INTEREST_BAGS = {SEEN_INTERESTS: SEEN, HISTORY_INTERESTS: HISTORY}
ITEM_INTERESTS = "interests"  # the items' column the bags read
TRAIN_EVENTS = "train_events"  # impressions of a pin in train
TRAIN_ENGAGED = "train_engaged"  # engaged impressions of a pin in train


class EntityIndex:
    """Row lookup by id for an in-memory users or items table.

    Example::

        >>> idx = EntityIndex(pa.table({"user_id": [7, 3, 9], "age": [20, 30, 40]}), "user_id")
        >>> idx.rows(np.array([3, 9, 5])).tolist()
        [1, 2, -1]
    """

    def __init__(self, table: pa.Table, id_column: str) -> None:
        ids = table.column(id_column).to_numpy()
        # one chunk per column: taking rows of a table in 154 chunks (10M users read from
        # Parquet) costs 58x more than of one (benchmarks/README.md, training throughput); a
        # list column past 2**31 values cannot be one chunk and stays as it is
        with contextlib.suppress(pa.ArrowInvalid, pa.ArrowCapacityError):
            table = table.combine_chunks()
        self.table, self.id_column = table, id_column
        self.index = IdIndex(ids)
        self.sorted = self.index.sorted
        if self.sorted.size > 1 and (np.diff(self.sorted) == 0).any():
            dup = self.sorted[1:][np.diff(self.sorted) == 0][0]
            raise ValueError(f"{id_column} {dup} appears twice in the table")

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """Row of each id, -1 where the id is not in the table."""
        return self.index(ids)

    def take(self, ids: np.ndarray, counts: Counts | None = None) -> pa.Table:
        """Rows for ``ids`` in order; unknown ids give all-null rows (id kept), counted."""
        rows = self.rows(ids)
        unknown = rows < 0
        if counts is not None and unknown.any():
            counts[(self.id_column, "unknown_id")] += int(unknown.sum())
        taken = self.table.take(pa.array(np.where(unknown, 0, rows), mask=unknown))
        return taken.set_column(
            taken.schema.get_field_index(self.id_column), self.id_column, pa.array(ids, pa.int64())
        )


def join_examples(
    events: pa.Table | pa.RecordBatch,
    users: EntityIndex,
    items: EntityIndex,
    counts: Counts | None = None,
) -> dict[str, pa.Table]:
    """Per-side tables row-aligned with ``events`` (context = the events themselves)."""
    ctx = events if isinstance(events, pa.Table) else pa.Table.from_batches([events])
    return {
        "user": users.take(ctx.column("user_id").to_numpy(), counts),
        "item": items.take(ctx.column("item_id").to_numpy(), counts),
        "context": ctx,
    }


def _last_items(
    u: np.ndarray, i: np.ndarray, t: np.ndarray, max_len: int
) -> tuple[np.ndarray, pa.Array]:
    """Per user (sorted), the last ``max_len`` items by (ts, item), oldest first."""
    order = np.lexsort((i, t, u))
    u, i = u[order], i[order]
    starts = np.r_[0, np.flatnonzero(np.diff(u)) + 1] if len(u) else np.zeros(0, np.int64)
    lengths = np.diff(np.r_[starts, len(u)])
    rank_from_end = np.repeat(starts + lengths, lengths) - np.arange(len(u))  # 1 = newest
    offsets = np.r_[0, np.cumsum(np.minimum(lengths, max_len))].astype(np.int32)
    items = pa.array(i[rank_from_end <= max_len], pa.int64())
    return u[starts], pa.ListArray.from_arrays(pa.array(offsets), items)


def user_history(events: Iterable[pa.RecordBatch | pa.Table], max_len: int) -> pa.Table:
    """Per user with an event: the last ``max_len`` engaged pins (``history``) and impressed pins
    of any label (``seen``), oldest first, and the time of the last event (``last_ts``).

    Only pass training events: features used to score val and test come from train only.

    Example::

        >>> ev = pa.table({"user_id": [1, 1, 1, 2], "item_id": [10, 11, 12, 20],
        ...                "ts": [3, 1, 2, 5], "engaged": [True, True, False, False]})
        >>> user_history([ev], max_len=5).to_pylist()  # doctest: +NORMALIZE_WHITESPACE
        [{'user_id': 1, 'seen': [11, 12, 10], 'last_ts': 3, 'history': [11, 10]},
         {'user_id': 2, 'seen': [20], 'last_ts': 5, 'history': []}]
    """
    ev = _concat(events, ["user_id", "item_id", "ts", "engaged"])
    u, i, t = (ev[c].to_numpy() for c in ("user_id", "item_id", "ts"))
    engaged = ev["engaged"].to_numpy(zero_copy_only=False)
    users, seen = _last_items(u, i, t, max_len)
    last_ts = np.full(len(users), 0, np.int64)
    if len(u):
        np.maximum.at(last_ts, np.searchsorted(users, u), t)
    eng_users, eng = _last_items(u[engaged], i[engaged], t[engaged], max_len)
    table = pa.table({"user_id": pa.array(users, pa.int64()), SEEN: seen, "last_ts": last_ts})
    return join_columns(table, pa.table({"user_id": pa.array(eng_users, pa.int64()), HISTORY: eng}))


def interest_bags(
    users: pa.Table, items: EntityIndex, bags: Iterable[str] = tuple(INTEREST_BAGS)
) -> pa.Table:
    """``users`` plus their interest profiles ``bags``: for each (see :data:`INTEREST_BAGS`)
    whose pins' column ``users`` has, the ``interests`` of those pins (rows of ``items``)
    concatenated in order (a pin of two interests adds both; a pin not in ``items`` adds none).

    Example::

        >>> users = pa.table({"user_id": [1, 2], "seen": [[10, 11, 10], []], "history": [[11], []]})
        >>> items = EntityIndex(pa.table({"item_id": [10, 11], "interests": [[3], [4, 5]]}),
        ...                     "item_id")
        >>> interest_bags(users, items).select(["seen_interests", "history_interests"]).to_pylist()
        [{'seen_interests': [3, 4, 5, 3], 'history_interests': [4, 5]}, \
{'seen_interests': [], 'history_interests': []}]
    """
    bags = list(bags)
    if not bags:
        return users
    if ITEM_INTERESTS not in items.table.column_names:
        raise ValueError(
            f"interest profiles {bags} read the items' {ITEM_INTERESTS!r} column, which the "
            "items table does not have"
        )
    interests = items.table.column(ITEM_INTERESTS).combine_chunks()
    for bag in bags:
        pins = INTEREST_BAGS[bag]
        if pins not in users.column_names:
            continue
        col = users.column(pins).combine_chunks()
        lengths = pc.fill_null(pc.list_value_length(col), 0).to_numpy()
        owner = np.repeat(np.arange(len(col)), lengths)
        rows = items.rows(pc.list_flatten(col).to_numpy(zero_copy_only=False))
        known = rows >= 0
        per_pin = interests.take(pa.array(rows[known]))
        per_pin_len = pc.fill_null(pc.list_value_length(per_pin), 0).to_numpy()
        counts = np.bincount(owner[known], weights=per_pin_len, minlength=len(col))
        offsets = np.r_[0, np.cumsum(counts)].astype(np.int32)
        values = pc.list_flatten(per_pin).cast(pa.int64())
        new = pa.ListArray.from_arrays(pa.array(offsets), values, mask=col.is_null())
        if bag in users.column_names:
            users = users.drop_columns([bag])
        users = users.append_column(bag, new)
    return users


def item_stats(events: Iterable[pa.RecordBatch | pa.Table]) -> pa.Table:
    """Per item with a training event: ``train_events``, ``train_engaged`` and ``mean_ts`` (the
    mean time of its impressions: when the item was in fashion).

    Example::

        >>> ev = pa.table({"user_id": [1, 2, 3], "item_id": [10, 10, 11], "ts": [2, 4, 9],
        ...                "engaged": [True, False, True]})
        >>> item_stats([ev]).to_pylist()  # doctest: +NORMALIZE_WHITESPACE
        [{'item_id': 10, 'train_events': 2, 'train_engaged': 1, 'mean_ts': 3.0},
         {'item_id': 11, 'train_events': 1, 'train_engaged': 1, 'mean_ts': 9.0}]
    """
    ev = _concat(events, ["user_id", "item_id", "ts", "engaged"])
    items, inverse, counts = np.unique(
        ev["item_id"].to_numpy(), return_inverse=True, return_counts=True
    )
    engaged = np.bincount(
        inverse, weights=ev["engaged"].to_numpy(zero_copy_only=False), minlength=len(items)
    )
    ts_sum = np.bincount(
        inverse, weights=ev["ts"].to_numpy().astype(np.float64), minlength=len(items)
    )
    return pa.table(
        {
            "item_id": pa.array(items, pa.int64()),
            TRAIN_EVENTS: pa.array(counts, pa.int64()),
            TRAIN_ENGAGED: pa.array(engaged.astype(np.int64)),
            "mean_ts": pa.array(ts_sum / np.maximum(counts, 1)),
        }
    )


def _concat(events: Iterable[pa.RecordBatch | pa.Table], cols: list[str]) -> pa.Table:
    parts = [pa.Table.from_batches([b]) if isinstance(b, pa.RecordBatch) else b for b in events]
    if parts:
        return pa.concat_tables([p.select(cols) for p in parts])
    types = [pa.int64()] * 3 + [pa.bool_()]
    return pa.table({c: pa.array([], t) for c, t in zip(cols, types, strict=True)})


def join_columns(table: pa.Table, extra: pa.Table) -> pa.Table:
    """``table`` plus every other column of ``extra``, matched on ``extra``'s first (id) column.

    Rows of ``table`` without a match get empty lists (list columns) or nulls (the feature spec's
    missing-value policy then applies). Columns already in ``table`` are replaced.
    """
    id_col = extra.column_names[0]
    rows = EntityIndex(extra, id_col).rows(table.column(id_col).to_numpy())
    take = pa.array(np.where(rows < 0, 0, rows), mask=rows < 0)
    for name in extra.column_names[1:]:
        col = extra.column(name).combine_chunks().take(take)
        if len(col) and pa.types.is_list(col.type):
            col = pc.if_else(pc.is_null(col), pa.scalar([], col.type), col)
        if name in table.column_names:
            table = table.drop_columns([name])
        table = table.append_column(name, col)
    return table
