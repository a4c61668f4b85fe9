"""The conversions of column rules (:mod:`pinrank.data.tables`) on batches of source rows:
times to epoch seconds, ids to int64 (parsed, mapped or hashed), delimited strings and 0/1 flags
to lists, casts; a value present before a conversion and null after it is a :class:`BadValue`
naming its row."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pinrank.features.ids import hash_strings

if TYPE_CHECKING:
    from pinrank.data.tables import ColumnRule

TYPES = {"int": pa.int64(), "float": pa.float64(), "string": pa.string()}
PER_SECOND = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}


def to_seconds(col: pa.Array, unit: str) -> pa.Array:
    """int64 seconds since the epoch from integers in ``unit``, ISO-8601 strings, dates,
    timestamps or strings in a strptime format; a value that does not parse becomes null (the
    caller names it)."""
    if pa.types.is_timestamp(col.type):
        return pc.cast(pc.cast(col, pa.timestamp("s", tz=col.type.tz), safe=False), pa.int64())
    if pa.types.is_date(col.type):
        return pc.cast(pc.cast(pc.cast(col, pa.date32()), pa.timestamp("s")), pa.int64())
    if unit in PER_SECOND:
        if pa.types.is_string(col.type):
            col = pc.cast(col, pa.int64())
        if not pa.types.is_integer(col.type) and not pa.types.is_floating(col.type):
            raise TypeError(f"expected integers in {unit}, got {col.type}")
        return pc.cast(
            pc.floor(pc.divide(pc.cast(col, pa.float64()), PER_SECOND[unit])), pa.int64()
        )
    if not pa.types.is_string(col.type) and not pa.types.is_large_string(col.type):
        raise TypeError(f"expected {unit} strings, got {col.type}")
    if "%" in unit:
        parsed = pc.strptime(col, format=unit, unit="s", error_is_null=True)
    elif unit == "date":
        parsed = pc.strptime(col, format="%Y-%m-%d", unit="s", error_is_null=True)
    else:
        parsed = _iso(col)
    return pc.cast(pc.cast(parsed, pa.timestamp("s")), pa.int64())


def _iso(col: pa.Array) -> pa.Array:
    """ISO-8601 strings with or without a zone offset (none: UTC); unparsable -> null."""
    for target in (pa.timestamp("ms", tz="UTC"), pa.timestamp("ms")):
        try:
            return pc.cast(pc.cast(col, target), pa.timestamp("ms"))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            continue
    out = []  # mixed: value by value
    for v in col.to_pylist():
        try:
            out.append(_iso(pa.array([v], pa.string()))[0].as_py() if v is not None else None)
        except (pa.ArrowInvalid, RecursionError):
            out.append(None)
    return pa.array(out, pa.timestamp("ms"))


@dataclass
class IdMaps:
    """Per id namespace: how its values become int64, and for ``map`` the saved mapping."""

    kinds: dict[str, str]
    maps: dict[str, Any] = field(default_factory=dict)  # namespace -> pandas Index of strings

    def kind(self, namespace: str) -> str:
        return self.kinds.get(namespace, "int")

    def convert(self, namespace: str, values: pa.Array) -> pa.Array:
        """int64 ids of ``values``; a value that is no id (not an integer, not mapped) -> null."""
        kind = self.kind(namespace)
        if kind == "int":
            if pa.types.is_integer(values.type):
                return pc.cast(values, pa.int64())
            return _parse_ints(values)
        strings = pc.cast(values, pa.string())
        if kind == "hash":
            return hash_strings(strings)
        index = self.maps[namespace]
        pos = index.get_indexer(np.asarray(strings.to_numpy(zero_copy_only=False), dtype=object))
        return pa.array(np.where(pos >= 0, pos + 1, 0), pa.int64(), mask=pos < 0)


def _parse_ints(values: pa.Array) -> pa.Array:
    """Integers from strings (or floats holding integers); anything else -> null."""
    if pa.types.is_floating(values.type):
        ok = pc.equal(values, pc.floor(values))
        return pc.if_else(ok, pc.cast(values, pa.int64(), safe=False), None)
    strings = pc.utf8_trim_whitespace(pc.cast(values, pa.string()))
    digits = pc.match_substring_regex(strings, r"^-?\d{1,18}$")
    return pc.cast(pc.if_else(digits, strings, None), pa.int64())


class BadValue(ValueError):
    """A source value that does not convert: the row (within its batch) and what was wrong."""

    def __init__(self, row: int, what: str) -> None:
        super().__init__(what)
        self.row, self.what = row, what


@dataclass
class Tally:
    """Values that do not convert, counted instead of raised (``pinrank inspect``)."""

    count: int = 0
    example: Any = None

    def add(self, n: int, example: Any) -> None:
        if n and self.count == 0:
            self.example = example
        self.count += n


def check_converted(
    before: pa.Array,
    after: pa.Array,
    rows: np.ndarray | None,
    what: str,
    tally: Tally | None = None,
) -> None:
    """Raise :class:`BadValue` at the first value present ``before`` but null ``after``
    (``rows``: each value's row, for flattened lists), or with a ``tally``, count them."""
    bad = np.asarray(pc.and_(pc.is_valid(before), pc.is_null(after)))
    if bad.any():
        i = int(np.argmax(bad))
        if tally is not None:
            tally.add(int(bad.sum()), before[i].as_py())
            return
        raise BadValue(int(rows[i]) if rows is not None else i, f"{before[i].as_py()!r} {what}")


def convert_column(
    rule: ColumnRule, data: pa.Table, ids: IdMaps, tally: Tally | None = None
) -> pa.Array:
    """The pinrank column ``rule.name`` of a batch of source rows ``data``; with a ``tally``,
    a value that does not convert is counted there and becomes null.

    Raises:
        BadValue: without a tally, the first value that does not convert, with its row.
    """
    if rule.flags:
        return _flags(data, rule.flags, tally)
    assert rule.column is not None
    col = data.column(rule.column).combine_chunks()
    if rule.time is not None:
        try:
            out = to_seconds(col, rule.time)
        except (pa.ArrowInvalid, TypeError) as err:
            if tally is None:
                raise BadValue(0, f"is not a time in {rule.time} ({err})") from None
            out = pa.nulls(len(col), pa.int64())
        check_converted(col, out, None, f"is not a time in {rule.time}", tally)
        return out
    if rule.prefix is not None:
        return pc.utf8_slice_codeunits(pc.cast(col, pa.string()), 0, rule.prefix)
    is_list = pa.types.is_list(col.type) or pa.types.is_large_list(col.type)
    if rule.split is None and not is_list:
        out = col
        if rule.namespace is not None:
            out = ids.convert(rule.namespace, col)
            what = f"is not an id of {rule.namespace} ({ids.kind(rule.namespace)})"
            check_converted(col, out, None, what, tally)
        elif rule.type is not None:
            out = cast_or_null(col, TYPES[rule.type])
            check_converted(col, out, None, f"is not of type {rule.type}", tally)
        return out
    lists = pc.split_pattern(pc.cast(col, pa.string()), rule.split) if rule.split else col
    values = pc.list_flatten(lists)
    if rule.split:  # "a||b", "a|": empty parts are no values
        values = pc.utf8_trim_whitespace(values)
        values = pc.if_else(pc.equal(values, ""), pa.scalar(None, pa.string()), values)
    parents = np.asarray(pc.list_parent_indices(lists))
    out = values
    if rule.namespace is not None:
        out = ids.convert(rule.namespace, values)
        check_converted(values, out, parents, f"is not an id of {rule.namespace}", tally)
    elif rule.type is not None:
        out = cast_or_null(values, TYPES[rule.type])
        check_converted(values, out, parents, f"is not of type {rule.type}", tally)
    return _relist(lists, out, parents)


def cast_or_null(col: pa.Array, to: pa.DataType) -> pa.Array:
    """``col`` as ``to``; a value that does not cast -> null."""
    if pa.types.is_integer(to) and not pa.types.is_integer(col.type):
        return _parse_ints(col)
    if pa.types.is_floating(to) and pa.types.is_string(col.type):
        ok = pc.match_substring_regex(
            pc.utf8_trim_whitespace(col),
            r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$|^(?i:nan|inf|-inf)$",
        )
        return pc.cast(pc.if_else(ok, pc.utf8_trim_whitespace(col), None), to)
    return pc.cast(col, to)


def _flags(data: pa.Table, columns: Sequence[str], tally: Tally | None = None) -> pa.Array:
    """0/1 columns -> per row the list of the positions (0-based) of the columns set."""
    flags = np.stack(
        [
            np.asarray(pc.fill_null(_parse_ints(data.column(f).combine_chunks()), -1))
            for f in columns
        ],
        axis=1,
    )
    bad = ((flags != 0) & (flags != 1)).any(axis=1)
    if bad.any():
        first = int(np.argmax(bad))
        if tally is None:
            raise BadValue(first, f"flags {list(columns)} must be 0 or 1")
        tally.add(int(bad.sum()), {c: data.column(c)[first].as_py() for c in columns})
        flags = np.where(bad[:, None], 0, flags)
    rows, positions = np.nonzero(flags)
    offsets = np.r_[0, np.cumsum(np.bincount(rows, minlength=len(flags)))].astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(positions.astype(np.int64)))


def _relist(lists: pa.Array, values: pa.Array, parents: np.ndarray) -> pa.Array:
    """``lists`` with their flattened values replaced by ``values`` (null values dropped); a
    null list stays null."""
    valid = np.asarray(pc.is_valid(values))
    counts = np.bincount(parents[valid], minlength=len(lists))
    offsets = np.r_[0, np.cumsum(counts)].astype(np.int32)
    kept = values.filter(pa.array(valid))
    return pa.ListArray.from_arrays(pa.array(offsets), kept, mask=pc.is_null(lists))


def example_row(data: pa.Table, row: int, columns: Sequence[str]) -> str:
    """Row ``row`` of a batch, shown by its source ``columns``."""
    return str({c: data.column(c)[row].as_py() for c in columns if c in data.column_names})
