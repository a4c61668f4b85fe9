"""Rows for serving: the user store interface and its embedded default, the check that turns a
stored user row into typed graph inputs, and the item catalogue of a package.

A :class:`UserStore` answers ``get(user_ids)`` with one row per id asked, in the order asked; an
unknown id gives a row that is null in every column, its id column included, so one call says
both what the user looks like and whether the user exists (:func:`found`). :class:`TableStore`
is the embedded default (a Parquet file or folder, or an Arrow table, looked up with NumPy; no
server); other stores (e.g. Redis) implement the same two methods.

Stores hold whatever the upstream systems wrote, so :func:`conform` types one row for a graph's
input columns and never raises on bad data: a missing or null value stays null and a value of the
wrong type (``age="abc"``, a string inside an id list) becomes null, so the graph applies the
feature spec's default exactly as it does for any missing value; each replacement is reported.

:class:`Catalogue` holds a package's items in memory: their graph inputs packed once (a feed
slices them by row), boards, interests and popularity, for candidates and fallback feeds.

Example::

    >>> store = TableStore(pa.table({"user_id": [7, 3], "age": [20, 30]}))
    >>> rows = store.get(np.array([3, 5, 7]))
    >>> rows.to_pylist(), found(rows).tolist()
    ([{'user_id': 3, 'age': 30}, {'user_id': None, 'age': None}, {'user_id': 7, 'age': 20}], \
[True, False, True])
    >>> cols = [ColumnSpec("user", "age", "int"), ColumnSpec("user", "interests", "int_list")]
    >>> table, problems = conform({"age": "abc", "interests": [4, "x"]}, cols)
    >>> table.to_pylist(), problems
    ([{'age': None, 'interests': [4, None]}], {'age': 'malformed', 'interests': 'malformed'})
"""

from __future__ import annotations

import abc
import itertools
import math
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any, overload

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pinrank.features.columns import ColumnSpec, pack
from pinrank.serving.package import Package, PackageError

ID_COLUMN, ITEM_ID, BOARD, INTEREST_COLUMN = "user_id", "item_id", "board_id", "interests"
MISSING, MALFORMED, TOO_LONG = "missing", "malformed", "too_long"
ARROW_TYPES = {
    "int": pa.int64(),
    "float": pa.float64(),
    "string": pa.string(),
    "int_list": pa.list_(pa.int64()),
    "vector": pa.list_(pa.float64()),
}
_INT64 = (-(2**63), 2**63 - 1)
_EMPTY = np.empty(0, np.int64)


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
        self._order = np.argsort(ids, kind="stable")
        self._sorted = ids[self._order]
        dup = self._sorted[1:][self._sorted[1:] == self._sorted[:-1]]
        if dup.size:
            raise ValueError(f"duplicate {id_column} values in the user table: {dup[:5].tolist()}")
        self.source: Path | None = None  # the file it was read from (from_path)

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
        return _lookup(self._sorted, self._order, as_ids(user_ids))

    def get(self, user_ids: np.ndarray) -> pa.Table:
        rows = self.rows(user_ids)
        return self.table.take(pa.array(rows, mask=rows < 0))  # null index -> null row

    def known(self, user_ids: np.ndarray) -> np.ndarray:
        return self.rows(user_ids) >= 0


class Catalogue:
    """Every item a package can serve: graph inputs packed once (sliced per feed), boards,
    interests and popularity (engaged train events).

    Args:
        items: the catalogue rows (``item_id``; ``board_id`` and ``interests`` where present).
        popular: ``item_id``, ``engaged`` (a pin it lacks counts 0).
        columns: the item graphs' input columns.
    """

    def __init__(self, items: pa.Table, popular: pa.Table, columns: list[ColumnSpec]) -> None:
        self.ids = items.column(ITEM_ID).to_numpy().astype(np.int64)  # [M]
        self.arrays = pack(items, columns)
        self._order = np.argsort(self.ids, kind="stable")
        self._sorted = self.ids[self._order]
        self.boards = _ints(items, BOARD)  # [M], -1 where none
        col = items.column(INTEREST_COLUMN) if INTEREST_COLUMN in items.column_names else None
        col = (
            col.combine_chunks()
            if col is not None
            else pa.array([[]] * len(self.ids), pa.list_(pa.int64()))
        )
        lengths = pc.fill_null(pc.list_value_length(col), 0).to_numpy().astype(np.int64)
        values = pc.fill_null(pc.list_flatten(col), -1).to_numpy().astype(np.int64)
        rows = np.repeat(np.arange(len(self.ids)), lengths)
        # each pin's distinct valid interests, sorted: a CSR of (offsets, interest_values)
        keep = values >= 0
        pairs = np.unique(np.stack([rows[keep], values[keep]], axis=1), axis=0).reshape(-1, 2)
        self.interest_rows, self.interest_values = pairs[:, 0], pairs[:, 1]
        counts = np.bincount(self.interest_rows, minlength=len(self.ids))
        self.offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)  # [M + 1]
        self.engaged = np.zeros(len(self.ids), np.int64)  # [M]
        rows = self.rows(_ints(popular, ITEM_ID))
        self.engaged[rows[rows >= 0]] = np.maximum(_ints(popular, "engaged"), 0)[rows >= 0]
        self.by_popularity = np.lexsort((self.ids, -self.engaged))  # [M] rows, most engaged first
        self.rank = np.empty(len(self.ids), np.int64)  # [M] position of each row in that order
        self.rank[self.by_popularity] = np.arange(len(self.ids))
        # per interest, its pins most popular first: a CSR over the interest ids
        by_tag = np.lexsort((self.rank[self.interest_rows], self.interest_values))
        self._tag_rows = self.interest_rows[by_tag]
        tags = self.interest_values[by_tag]
        self._tags, starts = np.unique(tags, return_index=True)
        self._tag_offsets = np.append(starts, len(tags)).astype(np.int64)
        self._tuples: list[tuple[int, ...]] | None = None

    @classmethod
    def from_package(cls, package: Package) -> Catalogue:
        items = _parquet(package, package.manifest["catalogue"]["path"])
        popular = _parquet(package, package.manifest["fallback"]["path"])
        return cls(items, popular, package.columns("item"))

    def rows(self, item_ids: np.ndarray) -> np.ndarray:
        """``[N]`` catalogue row of each id, ``-1`` where the catalogue lacks it."""
        return _lookup(self._sorted, self._order, np.asarray(item_ids, np.int64))

    def interests(self, row: int) -> np.ndarray:
        """The distinct interests of a catalogue row, sorted (a view)."""
        return self.interest_values[self.offsets[row] : self.offsets[row + 1]]

    def interest_tuples(self) -> list[tuple[int, ...]]:
        """Every row's interests as a tuple of ints, built on first use."""
        if self._tuples is None:
            values = self.interest_values.tolist()
            bounds = self.offsets.tolist()
            self._tuples = [tuple(values[a:b]) for a, b in itertools.pairwise(bounds)]
        return self._tuples

    def row_interests(self, rows: np.ndarray) -> RowInterests:
        """The interests of each of ``rows``, looked up when read."""
        return RowInterests(self, rows)

    def inputs(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        return {name: a[rows] for name, a in self.arrays.items()}

    def popular(
        self, limit: int, exclude: np.ndarray, interests: np.ndarray | None = None
    ) -> np.ndarray:
        """``[<= limit]`` rows by engaged train events (ties: lower id), not in ``exclude`` (ids),
        restricted to pins with any of ``interests`` when given.

        Only the first ``limit + len(exclude)`` pins of each list (the catalogue's, or each
        interest's) can be in the answer, so the cost does not grow with the catalogue.
        """
        limit = max(limit, 0)
        depth = limit + len(exclude)
        if interests is None:
            head = self.by_popularity[:depth]
        else:
            at = np.searchsorted(self._tags, interests)
            at = at[
                (at < len(self._tags))
                & (self._tags[np.minimum(at, len(self._tags) - 1)] == interests)
            ]
            starts = self._tag_offsets[at]
            ends = np.minimum(self._tag_offsets[at + 1], starts + depth)
            head = np.unique(
                np.concatenate([_EMPTY, *map(self._tag_rows.__getitem__, map(slice, starts, ends))])
            )
            head = head[np.argsort(self.rank[head], kind="stable")]
        return head[~np.isin(self.ids[head], exclude)][:limit]


class RowInterests(Sequence[np.ndarray]):
    """``[N]`` interest arrays of catalogue rows, as a sequence read on access (no copy)."""

    def __init__(self, catalogue: Catalogue, rows: np.ndarray) -> None:
        self.catalogue, self.rows = catalogue, np.asarray(rows, np.int64)

    def __len__(self) -> int:
        return len(self.rows)

    def tags(self, i: int) -> tuple[int, ...]:
        """The interests of candidate ``i`` as a tuple of ints (the blending loop's fast path)."""
        return self.catalogue.interest_tuples()[self.rows[i]]

    @overload
    def __getitem__(self, i: int) -> np.ndarray: ...

    @overload
    def __getitem__(self, i: slice) -> list[np.ndarray]: ...

    def __getitem__(self, i: int | slice) -> np.ndarray | list[np.ndarray]:
        if isinstance(i, slice):
            return [self.catalogue.interests(int(r)) for r in self.rows[i]]
        return self.catalogue.interests(int(self.rows[i]))


def _parquet(package: Package, relative: str) -> pa.Table:
    """A Parquet file of the package, from its digest-checked bytes."""
    try:
        return pq.read_table(pa.BufferReader(package.read(relative)))
    except (pa.ArrowInvalid, OSError) as err:
        raise PackageError(f"{package.root}: {relative} is not readable Parquet ({err})") from None


def _lookup(sorted_ids: np.ndarray, order: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """``[N]`` row of each of ``ids`` given ``sorted_ids = all_ids[order]``; ``-1`` if absent."""
    if not len(sorted_ids):
        return np.full(len(ids), -1, np.int64)
    pos = np.minimum(np.searchsorted(sorted_ids, ids), len(sorted_ids) - 1)
    return np.where(sorted_ids[pos] == ids, order[pos], -1).astype(np.int64)


def _ints(table: pa.Table, column: str) -> np.ndarray:
    """``[R]`` int64 values of a column, ``-1`` where null or where the column is absent."""
    if column not in table.column_names:
        return np.full(table.num_rows, -1, np.int64)
    return pc.fill_null(table.column(column).cast(pa.int64()), -1).to_numpy().astype(np.int64)


def as_ids(user_ids: np.ndarray) -> np.ndarray:
    """``user_ids`` as a 1-D int64 array; ValueError for anything else."""
    ids = np.asarray(user_ids)
    if ids.ndim != 1 or not (np.issubdtype(ids.dtype, np.integer) or ids.size == 0):
        raise ValueError(f"user_ids must be a 1-D integer array, got {ids.dtype} {ids.shape}")
    return ids.astype(np.int64)


def conform(
    row: Mapping[str, Any], columns: Sequence[ColumnSpec], optional: Collection[str] = ()
) -> tuple[pa.Table, dict[str, str]]:
    """One raw row as a one-row table typed for ``columns`` (by :data:`ARROW_TYPES`), and the
    problems found, ``{column: "missing" | "malformed" | "too_long"}``.

    A column absent from ``row`` or null is ``missing`` (not reported for ``optional`` columns,
    whose null is a normal state); a value of the wrong type is ``malformed`` and becomes null. In
    an ``int_list`` only the bad elements become null (the graphs read a null element as
    missing); a NaN is missing, an infinite float malformed. Columns are keyed by
    :attr:`ColumnSpec.column`; repeated columns are typed once.
    """
    values: dict[str, pa.Array] = {}
    problems: dict[str, str] = {}
    for c in columns:
        if c.column in values:
            continue
        value, problem = _typed(row.get(c.column), c)
        if c.limit is not None and value is not None and len(value) > c.limit:
            value, problem = None, TOO_LONG
        if problem is not None and not (problem == MISSING and c.column in optional):
            problems[c.column] = problem
        values[c.column] = pa.array([value], ARROW_TYPES[c.kind])
    return pa.table(values), problems


def conform_batch(
    table: pa.Table, columns: Sequence[ColumnSpec], optional: Collection[str] = ()
) -> tuple[pa.Table, list[dict[str, str]]]:
    """:func:`conform` for many rows at once, vectorised: the typed table and each row's problems.

    For typed sources (Parquet): a column's Arrow type must be readable as its kind without loss
    (any integer type as ``int``; integers or floats as ``float``; strings as ``string``; lists
    of integers as ``int_list``; lists of numbers as ``vector``), else TypeError names the column;
    a column the rows lack is a KeyError. Values are then checked as :func:`conform` checks them,
    row by row the same outcome: null or NaN is ``missing``; an infinite float, a wrong-length
    or non-finite vector, or the int64 minimum (the missing marker) is ``malformed`` and becomes
    null (in an ``int_list``, only that element); a list longer than its column's ``limit`` is
    ``too_long`` and becomes null.
    """
    n = table.num_rows
    problems: list[dict[str, str]] = [{} for _ in range(n)]
    out: dict[str, pa.Array] = {}
    for c in columns:
        if c.column in out:
            continue
        if c.column not in table.column_names:
            raise KeyError(f"user rows have no column {c.column!r} (have {table.column_names})")
        col = table.column(c.column).combine_chunks()
        if not _readable(col.type, c):
            raise TypeError(
                f"column {c.column!r} is {col.type}, which cannot be read as {c.kind} "
                f"({ARROW_TYPES[c.kind]})"
            )
        col = col.cast(ARROW_TYPES[c.kind])
        missing = np.asarray(col.is_null().to_numpy(zero_copy_only=False), bool)
        malformed = np.zeros(n, bool)
        if c.kind == "float":
            values = pc.fill_null(col, 0.0).to_numpy()
            missing |= np.isnan(values)
            malformed = np.isinf(values)
            col = pa.array(values, pa.float64(), mask=missing | malformed)
        elif c.kind == "int":
            malformed = pc.fill_null(pc.equal(col, _INT64[0]), False).to_numpy(zero_copy_only=False)
            col = pa.array(pc.fill_null(col, 0).to_numpy(), pa.int64(), mask=missing | malformed)
        elif c.kind == "int_list":
            if c.limit is not None:
                too_long = pc.fill_null(pc.greater(pc.list_value_length(col), c.limit), False)
                too_long_rows = np.asarray(too_long.to_numpy(zero_copy_only=False), bool)
                if too_long_rows.any():  # before anything reads the values
                    col = pc.if_else(too_long, pa.nulls(n, col.type), col)
                    for row in np.flatnonzero(too_long_rows):
                        problems[row][c.column] = TOO_LONG
            flat = pc.list_flatten(col)
            bad = pc.fill_null(pc.equal(flat, _INT64[0]), False).to_numpy(zero_copy_only=False)
            if bad.any():
                parents = pc.list_parent_indices(col).to_numpy()
                malformed[np.unique(parents[bad])] = True
                clean = pa.array(
                    pc.fill_null(flat, 0).to_numpy(),
                    pa.int64(),
                    mask=bad | np.asarray(flat.is_null().to_numpy(zero_copy_only=False), bool),
                )
                offsets = pc.list_value_length(col).fill_null(0).to_numpy().cumsum()
                col = pa.ListArray.from_arrays(
                    pa.array(np.r_[0, offsets].astype(np.int32)), clean, mask=col.is_null()
                )
        elif c.kind == "vector":
            lengths = pc.fill_null(pc.list_value_length(col), c.dim).to_numpy()
            parents = pc.list_parent_indices(col).to_numpy()
            flat = pc.fill_null(pc.list_flatten(col), np.nan).to_numpy()
            finite = np.ones(n, bool)
            finite[np.unique(parents[~np.isfinite(flat)])] = False
            malformed = ~missing & ((lengths != c.dim) | ~finite)
            if malformed.any():
                col = pc.if_else(pa.array(malformed), pa.nulls(n, col.type), col)
        for kind, mask in ((MISSING, missing & (c.column not in optional)), (MALFORMED, malformed)):
            for row in np.flatnonzero(mask):
                problems[row][c.column] = kind
        out[c.column] = col
    return pa.table(out), problems


def _readable(arrow_type: pa.DataType, column: ColumnSpec) -> bool:
    """Whether a column of ``arrow_type`` holds ``column.kind`` values (casts without loss)."""
    t = pa.types
    if column.kind in ("int_list", "vector"):
        if not (t.is_list(arrow_type) or t.is_large_list(arrow_type)):
            return t.is_null(arrow_type)
        inner = arrow_type.value_type
        return t.is_integer(inner) or (column.kind == "vector" and t.is_floating(inner))
    if t.is_null(arrow_type):
        return True
    if column.kind == "int":
        return t.is_integer(arrow_type)
    if column.kind == "float":
        return t.is_integer(arrow_type) or t.is_floating(arrow_type)
    return t.is_string(arrow_type) or t.is_large_string(arrow_type)


def _typed(value: Any, column: ColumnSpec) -> tuple[Any, str | None]:
    """``(value as the column's Python type or None, problem or None)``."""
    if value is None or (isinstance(value, float | np.floating) and math.isnan(value)):
        return None, MISSING
    try:
        if column.kind == "int_list":
            return _int_list(value)
        if column.kind == "vector":
            floats = [_float(v) for v in _sequence(value)]
            if len(floats) != column.dim or any(math.isnan(v) for v in floats):
                raise ValueError(f"{column.name}: need {column.dim} finite floats")
            return floats, None
        if column.kind == "float":
            return _float(value), None
        return (_int(value) if column.kind == "int" else _string(value)), None
    except (TypeError, ValueError, OverflowError):
        return None, MALFORMED


def _int_list(value: Any) -> tuple[list[int | None], str | None]:
    out: list[int | None] = []
    bad = False
    for v in _sequence(value):
        try:
            out.append(None if v is None else _int(v))
        except (TypeError, ValueError, OverflowError):
            out.append(None)
            bad = True
    return out, MALFORMED if bad else None


def _sequence(value: Any) -> Sequence[Any]:
    if isinstance(value, str | bytes) or not isinstance(value, Sequence | np.ndarray):
        raise TypeError(f"expected a list, got {type(value).__name__}")
    return list(value)


def _int(value: Any) -> int:
    if isinstance(value, bool | np.bool_):
        raise TypeError("a bool is not an id or a count")
    if isinstance(value, float | np.floating) and float(value).is_integer():
        value = int(value)
    if not isinstance(value, int | np.integer):
        raise TypeError(f"expected an integer, got {type(value).__name__}")
    if not _INT64[0] < int(value) <= _INT64[1]:  # INT_NULL itself is the missing marker
        raise OverflowError(f"{value} is outside int64")
    return int(value)


def _float(value: Any) -> float:
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | float | np.number):
        raise TypeError(f"expected a number, got {type(value).__name__}")
    number = float(value)
    if math.isinf(number):
        raise ValueError("infinite")
    return number


def _string(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value
