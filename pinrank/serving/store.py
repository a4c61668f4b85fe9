"""Where serving reads user rows: the user store interface and its embedded default.

A :class:`UserStore` answers ``get(user_ids)`` with one row per id asked, in the order asked; an
unknown id gives a row that is null in every column, its id column included, so one call says
both what the user looks like and whether the user exists (:func:`found`). :class:`TableStore`
is the embedded default (a Parquet file or folder, or an Arrow table, looked up with NumPy; no
server); other stores (e.g. Redis) implement the same two methods.

Stores hold whatever the upstream systems wrote: :mod:`pinrank.serving.conform` types their
rows for the graphs without ever raising on bad data, and reports each replacement.

Example::

    >>> store = TableStore(pa.table({"user_id": [7, 3], "age": [20, 30]}))
    >>> rows = store.get(np.array([3, 5, 7]))
    >>> rows.to_pylist(), found(rows).tolist()
    ([{'user_id': 3, 'age': 30}, {'user_id': None, 'age': None}, {'user_id': 7, 'age': 20}], \
[True, False, True])
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pinrank.features.ids import IdIndex

ID_COLUMN = "user_id"


class StoreError(RuntimeError):
    """The store could not answer: ``reason`` is ``timeout`` (no answer within the store's
    deadline), ``unavailable`` (cannot connect), ``corrupt`` (a record that cannot be read) or
    ``error`` (anything else). A feed then degrades to its fallback (``store_{reason}``)."""

    REASONS = ("timeout", "unavailable", "corrupt", "error")

    def __init__(self, reason: str, message: str) -> None:
        if reason not in self.REASONS:
            raise ValueError(f"reason must be one of {self.REASONS}, got {reason!r}")
        super().__init__(message)
        self.reason = reason


class UserStore(abc.ABC):
    """Where serving reads user rows from. Implementations must be safe to call concurrently and
    raise :class:`StoreError` when they cannot answer."""

    id_column: str = ID_COLUMN

    @abc.abstractmethod
    def get(self, user_ids: np.ndarray) -> pa.Table:
        """One row per id of ``user_ids`` ``[N]`` int64, in that order; the row of an unknown id
        is null in every column, :attr:`id_column` included (see :func:`found`)."""

    def known(self, user_ids: np.ndarray) -> np.ndarray:
        """``[N]`` bool: which ids the store has (stores may answer this more cheaply)."""
        return found(self.get(user_ids), self.id_column)

    def records(self, user_ids: Sequence[int]) -> list[dict[str, Any] | None]:
        """Users' rows as stored (values untyped: :func:`conform` types them), ``None`` where
        unknown, from one lookup. Stores of schemaless records override it to hand over the raw
        values, so a malformed value is reported as ``malformed``, not lost in typing."""
        table = self.get(np.array(user_ids, np.int64))
        known = found(table, self.id_column)
        return [r if k else None for r, k in zip(table.to_pylist(), known, strict=True)]

    def row(self, user_id: int) -> dict[str, Any] | None:
        """One user's row, as :meth:`records` gives it."""
        return self.records([user_id])[0]

    def ping(self) -> None:  # noqa: B027 (an in-memory store is always up)
        """Raise :class:`StoreError` when the store cannot answer now (readiness reports)."""


def found(rows: pa.Table, id_column: str = ID_COLUMN) -> np.ndarray:
    """``[N]`` bool: which rows of a :meth:`UserStore.get` answer are known users."""
    return np.asarray(pc.is_valid(rows.column(id_column)).to_numpy(zero_copy_only=False), bool)


class TableStore(UserStore):
    """Users held in memory as one Arrow table, found by a sorted id array (O(log n) per id).

    Args:
        table: one row per user; rows whose id is null are dropped; duplicate ids are refused.
        id_column: the integer id column.
    """

    def __init__(self, table: pa.Table, id_column: str = ID_COLUMN) -> None:
        if id_column not in table.column_names:
            raise ValueError(f"user table has no {id_column!r} column (has {table.column_names})")
        if not pa.types.is_integer(table.schema.field(id_column).type):
            raise ValueError(f"{id_column!r} must be integers, got {table.schema.field(id_column)}")
        if table.column(id_column).null_count:
            table = table.filter(pc.is_valid(table.column(id_column)))
        # unknown ids come back as null rows, so every field must admit nulls (a schema change
        # only: the columns' buffers, e.g. memory-mapped ones, are not copied)
        nullable = pa.schema([f.with_nullable(True) for f in table.schema])
        self.table = pa.Table.from_arrays(table.columns, schema=nullable)
        self.id_column = id_column
        ids = self.table.column(id_column).to_numpy().astype(np.int64)
        self._index = IdIndex(ids, dense=False)  # 16 bytes a user (from_arrow's promise)
        known = self._index.sorted
        dup = known[1:][known[1:] == known[:-1]]
        if dup.size:
            raise ValueError(f"duplicate {id_column} values in the user table: {dup[:5].tolist()}")
        self.source: Path | None = None  # the file it was read from (from_path)
        # rows are taken batch by batch: a take over a table of many chunks (10M users read
        # from Parquet) costs O(rows) per call, 48 ms for one user at 10M, not O(asked)
        self._batches = self.table.to_batches()
        self._starts = np.cumsum([0] + [b.num_rows for b in self._batches])[:-1]

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled as a recipe: the path it was read from (another process, e.g. a scoring
        process, maps or reads the file itself), else the table."""
        if type(self) is not TableStore:
            raise TypeError(f"{type(self).__name__} does not say how to open it in another process")
        if self.source is not None:
            return (TableStore.from_path, (self.source, self.id_column))
        return (TableStore, (self.table, self.id_column))

    @classmethod
    def from_parquet(
        cls, path: str | Path, id_column: str = ID_COLUMN, columns: Sequence[str] | None = None
    ) -> TableStore:
        """Users from a Parquet file or a folder of Parquet files (``columns``: only these)."""
        return cls(pq.read_table(path, columns=list(columns) if columns else None), id_column)

    @classmethod
    def from_arrow(cls, path: str | Path, id_column: str = ID_COLUMN) -> TableStore:
        """Users from an Arrow IPC file, memory-mapped: the rows stay in the page cache, shared
        by every process serving them, and only the id index (16 bytes per user) is in RAM."""
        with pa.memory_map(str(path), "r") as source:
            table = pa.ipc.open_file(source).read_all()
        return cls(table, id_column)

    @classmethod
    def from_path(cls, path: str | Path, id_column: str = ID_COLUMN) -> TableStore:
        """An Arrow IPC file (``.arrow``, memory-mapped), else Parquet (a file or a folder)."""
        if Path(path).suffix in (".arrow", ".feather", ".ipc"):
            store = cls.from_arrow(path, id_column)
        else:
            store = cls.from_parquet(path, id_column)
        store.source = Path(path).resolve()
        return store

    def __len__(self) -> int:
        return self.table.num_rows

    def rows(self, user_ids: np.ndarray) -> np.ndarray:
        """``[N]`` int64 row of each id in :attr:`table`, ``-1`` where unknown."""
        return self._index(as_ids(user_ids))

    def get(self, user_ids: np.ndarray) -> pa.Table:
        rows = self.rows(user_ids)
        if len(self._batches) <= 1:
            return self.table.take(pa.array(rows, mask=rows < 0))  # null index -> null row
        batch = np.searchsorted(self._starts, rows, side="right") - 1
        parts, where = [], []
        for b in np.unique(batch[rows >= 0]).tolist():
            picked = np.flatnonzero((batch == b) & (rows >= 0))
            parts.append(self._batches[b].take(pa.array(rows[picked] - self._starts[b])))
            where.append(picked)
        unknown = np.flatnonzero(rows < 0)
        if unknown.size or not parts:  # null rows, typed like the table
            parts.append(self._batches[0].take(pa.nulls(len(unknown), pa.int64())))
            where.append(unknown)
        taken = pa.Table.from_batches(parts, schema=self.table.schema).combine_chunks()
        order = np.empty(len(rows), np.int64)
        order[np.concatenate(where)] = np.arange(len(rows))
        return taken.take(pa.array(order))

    def known(self, user_ids: np.ndarray) -> np.ndarray:
        return self.rows(user_ids) >= 0


def as_ids(user_ids: np.ndarray) -> np.ndarray:
    """``user_ids`` as a 1-D int64 array; ValueError for anything else."""
    ids = np.asarray(user_ids)
    if ids.ndim != 1 or not (np.issubdtype(ids.dtype, np.integer) or ids.size == 0):
        raise ValueError(f"user_ids must be a 1-D integer array, got {ids.dtype} {ids.shape}")
    return ids.astype(np.int64)
