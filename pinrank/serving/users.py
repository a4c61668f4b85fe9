"""Users conformed for the graphs: stored rows (schemaless records, or a typed Arrow table) as a
:class:`~pinrank.serving.feed.UserBatch` of packed graph inputs, the columns replaced, and the
``seen`` pins and followed interests that candidate generation reads."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pinrank.features.columns import (
    EVENT_DERIVED_USER_COLUMNS,
    INTEREST_COLUMN,
    SEEN,
    ColumnSpec,
    pack,
)
from pinrank.serving.conform import conform, conform_batch
from pinrank.serving.feed import UserBatch


class UserRows:
    """Conforms user rows to ``columns`` (the user graphs' inputs) plus ``seen`` and
    ``interests``; a null in an event-derived column is a user without train events, not a
    replaced value."""

    def __init__(self, columns: Sequence[ColumnSpec], id_column: str) -> None:
        self.columns, self.id_column = list(columns), id_column
        extra = [ColumnSpec("user", c, "int_list") for c in (SEEN, INTEREST_COLUMN)]
        self.read = [*self.columns, *extra]
        # followed interests feed candidates; unless a graph reads them, a user without them
        # (or data without the column) is not a replaced value
        graphs = {c.column for c in self.columns}
        self.optional = (*EVENT_DERIVED_USER_COLUMNS, *{INTEREST_COLUMN} - graphs)

    def records(self, uids: Sequence[int], rows: Sequence[dict[str, Any]]) -> UserBatch:
        """Schemaless stored records, each typed by :func:`conform` as one user's would be."""
        typed = [conform(row, self.read, self.optional) for row in rows]
        table = pa.concat_tables([t for t, _ in typed])
        return self._batch(np.array(uids, np.int64), table, [r for _, r in typed])

    def new_user(self, uid: int) -> UserBatch:
        """A user of whom only the id is known: every feature takes its spec default."""
        return self.records([uid], [{self.id_column: uid}])

    def table(self, rows: pa.Table) -> UserBatch:
        """Typed stored rows (e.g. Parquet), vectorised (:func:`conform_batch`); rows with a
        null id are refused."""
        if self.id_column not in rows.column_names:
            raise KeyError(f"user rows have no {self.id_column!r} column")
        ids = rows.column(self.id_column)
        if ids.null_count:
            raise ValueError(f"{ids.null_count} user rows have a null {self.id_column}")
        if INTEREST_COLUMN in self.optional and INTEREST_COLUMN not in rows.column_names:
            rows = rows.append_column(INTEREST_COLUMN, pa.nulls(len(rows), pa.list_(pa.int64())))
        table, replaced = conform_batch(rows, self.read, self.optional)
        return self._batch(ids.to_numpy().astype(np.int64), table, replaced)

    def _batch(self, ids: np.ndarray, table: pa.Table, replaced: list[dict[str, str]]) -> UserBatch:
        return UserBatch(
            ids,
            pack(table, self.columns),
            replaced,
            valid_id_lists(table.column(SEEN)),
            valid_id_lists(table.column(INTEREST_COLUMN)),
        )


def valid_id_lists(column: pa.ChunkedArray | pa.Array) -> list[np.ndarray]:
    """Per row of a list column, its distinct non-negative ids, sorted."""
    col = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    lengths = pc.fill_null(pc.list_value_length(col), 0).to_numpy().astype(np.int64)
    values = pc.fill_null(pc.list_flatten(col).cast(pa.int64()), -1).to_numpy()
    if not lengths.size:
        return []
    return [np.unique(v[v >= 0]) for v in np.split(values, np.cumsum(lengths)[:-1])]
