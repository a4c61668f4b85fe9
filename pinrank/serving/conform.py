"""Stored user rows typed for the graphs' input columns, never raising on bad data.

A missing or null value stays null, and a value of the wrong type (``age="abc"``, a string in an
id list) becomes null, so the graph applies the feature spec's default exactly as it does for
any missing value; a list over its column's limit becomes null too. Each replacement is
reported per row and column (``missing``, ``malformed``, ``too_long``). :func:`conform` types one
schemaless record (Redis, JSON); :func:`conform_batch` a typed Arrow table (Parquet), vectorised,
with the same outcome row by row (tested).

Example::

    >>> cols = [ColumnSpec("user", "age", "int"), ColumnSpec("user", "interests", "int_list")]
    >>> table, problems = conform({"age": "abc", "interests": [4, "x"]}, cols)
    >>> table.to_pylist(), problems
    ([{'age': None, 'interests': [4, None]}], {'age': 'malformed', 'interests': 'malformed'})
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pinrank.features.columns import ColumnSpec

MISSING, MALFORMED, TOO_LONG = "missing", "malformed", "too_long"
ARROW_TYPES = {
    "int": pa.int64(),
    "float": pa.float64(),
    "string": pa.string(),
    "int_list": pa.list_(pa.int64()),
    "vector": pa.list_(pa.float64()),
}
_INT64 = (-(2**63), 2**63 - 1)


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
