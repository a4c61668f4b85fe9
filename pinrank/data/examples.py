"""Examples = impressions joined with their user's and pin's rows, and users' engaged history.

A featurizer consumes one table per side: ``{"user": ..., "item": ..., "context": ...}``, all
row-aligned with the impressions. Joins are lookups in a sorted id index (O(rows log n)), so a
batch of impressions costs the same whatever the size of the users and items tables.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pinrank.features.transforms import Counts

HISTORY = "history"  # engaged train pins of a user
SEEN = "seen"  # impressed train pins of a user, any label


class EntityIndex:
    """Row lookup by id for an in-memory users or items table.

    Example::

        >>> idx = EntityIndex(pa.table({"user_id": [7, 3, 9], "age": [20, 30, 40]}), "user_id")
        >>> idx.rows(np.array([3, 9, 5])).tolist()
        [1, 2, -1]
    """

    def __init__(self, table: pa.Table, id_column: str) -> None:
        ids = table.column(id_column).to_numpy()
        self.table, self.id_column = table, id_column
        self.order = np.argsort(ids, kind="stable")
        self.sorted = ids[self.order]
        if self.sorted.size > 1 and (np.diff(self.sorted) == 0).any():
            dup = self.sorted[1:][np.diff(self.sorted) == 0][0]
            raise ValueError(f"{id_column} {dup} appears twice in the table")

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """Row of each id, -1 where the id is not in the table."""
        if self.sorted.size == 0:
            return np.full(len(ids), -1)
        pos = np.minimum(np.searchsorted(self.sorted, ids), self.sorted.size - 1)
        return np.where(self.sorted[pos] == ids, self.order[pos], -1)

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
    """Each user's last ``max_len`` engaged pins (``history``) and last ``max_len`` impressed pins
    of any label (``seen``), oldest first, for every user with an event.

    Only pass training events: features used to score val and test come from train only.

    Example::

        >>> ev = pa.table({"user_id": [1, 1, 1, 2], "item_id": [10, 11, 12, 20],
        ...                "ts": [3, 1, 2, 5], "engaged": [True, True, False, False]})
        >>> user_history([ev], max_len=5).to_pylist()  # doctest: +NORMALIZE_WHITESPACE
        [{'user_id': 1, 'seen': [11, 12, 10], 'history': [11, 10]},
         {'user_id': 2, 'seen': [20], 'history': []}]
    """
    parts = [pa.Table.from_batches([b]) if isinstance(b, pa.RecordBatch) else b for b in events]
    cols = ["user_id", "item_id", "ts", "engaged"]
    ev = (
        pa.concat_tables([p.select(cols) for p in parts])
        if parts
        else pa.table(
            {c: pa.array([], t) for c, t in zip(cols, [pa.int64()] * 3 + [pa.bool_()], strict=True)}
        )
    )
    u, i, t = (ev[c].to_numpy() for c in ("user_id", "item_id", "ts"))
    engaged = ev["engaged"].to_numpy(zero_copy_only=False)
    users, seen = _last_items(u, i, t, max_len)
    eng_users, eng = _last_items(u[engaged], i[engaged], t[engaged], max_len)
    table = pa.table({"user_id": pa.array(users, pa.int64()), SEEN: seen})
    return with_history(table, pa.table({"user_id": pa.array(eng_users, pa.int64()), HISTORY: eng}))


def with_history(users: pa.Table, history: pa.Table) -> pa.Table:
    """``users`` plus every list column of ``history`` (empty lists for users not in it)."""
    rows = EntityIndex(history, "user_id").rows(users.column("user_id").to_numpy())
    for name in history.column_names:
        if name == "user_id":
            continue
        col = (
            history.column(name)
            .combine_chunks()
            .take(pa.array(np.where(rows < 0, 0, rows), mask=rows < 0))
        )
        if len(col):
            col = pc.if_else(pc.is_null(col), pa.scalar([], pa.list_(pa.int64())), col)
        if name in users.column_names:
            users = users.drop_columns([name])
        users = users.append_column(name, col)
    return users
