"""One's own interaction logs, described in config: files, formats and how columns map.

A data config (``conf/data/*.yaml``, :class:`pinrank.data.sources.TableSource`) names up to
three tables, of which only ``events`` is required, and for each: where its files are, how to
parse them, and which pinrank column each source column becomes. This module holds that
description (:class:`TableConfig`, :class:`ColumnRule`, :class:`LabelRule`) and the per-batch
conversions; :mod:`pinrank.data.ingest` streams the files through them.

A column rule is the name of a source column, or a mapping with ``column`` (or ``flags``) and at
most one conversion::

    user_id: user                        # a source column as it is
    ts: {column: timestamp, time: ms}    # s | ms | us | ns | iso | date | a strptime format
    interests: {column: genres, split: "|", ids: genre}   # a delimited string -> a list
    location: {column: zip, prefix: 3}   # the first characters of a string
    interests: {flags: [action, comedy]} # 0/1 columns -> the list of the positions set
    age: {column: age, type: int}        # int | float | string

``ids``: the values are ids of a namespace (``user_id``, ``item_id`` or any name, e.g.
``interest``) converted to int64 as the source's ``ids`` setting says: ``int`` (the values are
integers), ``map`` (strings, mapped by a saved deterministic mapping: the sorted distinct values
get 1, 2, ...) or ``hash`` (the first 63 bits of a BLAKE2b digest of the UTF-8 string). The
``user_id`` and ``item_id`` columns are ids of their namespaces without saying so.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.dataset as ds

FORMATS = ("parquet", "csv", "tsv")
TIMES = ("s", "ms", "us", "ns", "iso", "date")
ID_KINDS = ("int", "map", "hash")
TYPES = {"int": pa.int64(), "float": pa.float64(), "string": pa.string()}
_PER_SECOND = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}
OPS = (">=", "<=", "==", "!=", ">", "<", "not in", "in")


class DataConfigError(ValueError):
    """A data config or the files it names cannot be read as described; the message names the
    file, the column and, where there is one, an example row."""


@dataclass(frozen=True)
class FileFormat:
    """How a table's files are parsed: ``parquet``, or ``csv`` / ``tsv`` with their options."""

    kind: str = "parquet"
    delimiter: str | None = None  # csv: ",", tsv: "\t"
    header: bool = True  # csv: the first row names the columns
    column_names: tuple[str, ...] = ()  # csv without a header: the columns' names
    encoding: str = "utf8"
    quote_char: str | None = '"'  # None: no quoting
    null_values: tuple[str, ...] = ("", "NULL", "null", "NA", "N/A")

    def __post_init__(self) -> None:
        if self.kind not in FORMATS:
            raise DataConfigError(f"format {self.kind!r}: expected one of {FORMATS}")
        if self.kind != "parquet" and not self.header and not self.column_names:
            raise DataConfigError("a csv without a header needs column_names")

    def dataset_format(self, types: Mapping[str, pa.DataType]) -> ds.FileFormat:
        """The ``pyarrow.dataset`` format; ``types``: columns read with a fixed type."""
        if self.kind == "parquet":
            return ds.ParquetFileFormat()
        delimiter = self.delimiter or ("\t" if self.kind == "tsv" else ",")
        quote = self.quote_char if self.quote_char else False
        return ds.CsvFileFormat(
            parse_options=pacsv.ParseOptions(delimiter=delimiter, quote_char=quote),
            read_options=pacsv.ReadOptions(
                column_names=list(self.column_names) or None,
                skip_rows=1 if self.header and self.column_names else 0,
                encoding=self.encoding,
                block_size=1 << 22,
            ),
            convert_options=pacsv.ConvertOptions(
                column_types=dict(types),
                null_values=list(self.null_values),
                strings_can_be_null=True,
            ),
        )


@dataclass(frozen=True)
class ColumnRule:
    """How one pinrank column is made from the source columns (module docstring)."""

    name: str
    column: str | None = None
    time: str | None = None
    split: str | None = None
    prefix: int | None = None
    flags: tuple[str, ...] = ()
    type: str | None = None
    ids: str | None = None

    @classmethod
    def parse(cls, name: str, rule: Any, where: str) -> ColumnRule:
        if isinstance(rule, str):
            rule = {"column": rule}
        if not isinstance(rule, Mapping):
            raise DataConfigError(f"{where}.{name}: a column name or a mapping, got {rule!r}")
        known = {"column", "time", "split", "prefix", "flags", "type", "ids"}
        unknown = sorted(set(rule) - known)
        if unknown:
            raise DataConfigError(
                f"{where}.{name}: unknown keys {unknown} (known: {sorted(known)})"
            )
        out = cls(name, **{**rule, "flags": tuple(rule.get("flags") or ())})
        if (out.column is None) == (not out.flags):
            raise DataConfigError(f"{where}.{name}: give either column or flags")
        conversions = [k for k in ("time", "split", "prefix", "flags", "type") if rule.get(k)]
        if len(conversions) > 1 and conversions != ["split", "type"]:
            raise DataConfigError(f"{where}.{name}: one conversion at most, got {conversions}")
        if out.time is not None and out.time not in TIMES and "%" not in out.time:
            raise DataConfigError(
                f"{where}.{name}: time {out.time!r}: expected one of {TIMES} or a strptime format"
            )
        if out.type is not None and out.type not in TYPES:
            raise DataConfigError(
                f"{where}.{name}: type {out.type!r}: expected one of {list(TYPES)}"
            )
        if name in ("user_id", "item_id") and out.ids not in (None, name):
            raise DataConfigError(f"{where}.{name}: ids of {name} are ids of {name}")
        return out

    @property
    def namespace(self) -> str | None:
        """The id namespace of the values, if they are ids."""
        return self.name if self.name in ("user_id", "item_id") else self.ids

    @property
    def sources(self) -> tuple[str, ...]:
        return (self.column,) if self.column is not None else self.flags


@dataclass(frozen=True)
class TableConfig:
    """One table: its files (a file, a folder of shards or a glob), format and columns."""

    name: str
    path: str
    format: FileFormat
    columns: dict[str, ColumnRule]

    @classmethod
    def parse(cls, name: str, cfg: Any) -> TableConfig:
        if not isinstance(cfg, Mapping) or "path" not in cfg:
            raise DataConfigError(f"tables.{name}: a mapping with path, format and columns")
        unknown = sorted(set(cfg) - {"path", "format", "columns"})
        if unknown:
            raise DataConfigError(f"tables.{name}: unknown keys {unknown}")
        fmt = cfg.get("format") or {}
        fmt = {"kind": fmt} if isinstance(fmt, str) else dict(fmt)
        for key in ("column_names", "null_values"):
            if key in fmt:
                fmt[key] = tuple(fmt[key])
        try:
            file_format = FileFormat(**fmt)
        except TypeError as err:
            raise DataConfigError(f"tables.{name}.format: {err}") from None
        rules = {
            k: ColumnRule.parse(k, v, f"tables.{name}.columns")
            for k, v in (cfg.get("columns") or {}).items()
        }
        return cls(name, str(cfg["path"]), file_format, rules)

    def fixed_types(self, id_kinds: Mapping[str, str]) -> dict[str, pa.DataType]:
        """Source columns read with a fixed type: ids to map or hash as strings (``007`` stays
        ``007``), delimited lists as strings."""
        out: dict[str, pa.DataType] = {}
        for rule in self.columns.values():
            if rule.column is None:
                continue
            kind = id_kinds.get(rule.namespace or "", "int")
            if (
                rule.split is not None
                or rule.prefix is not None
                or (rule.namespace and kind != "int")
            ):
                out[rule.column] = pa.string()
            elif rule.type is not None:
                out[rule.column] = TYPES[rule.type]
        return out


@dataclass(frozen=True)
class LabelRule:
    """The label: a boolean (or 0/1) column, or ``column op value`` with ``op`` one of
    :data:`OPS`, e.g. ``rating >= 4``, ``action in [save, click]``, ``dwell_ms > 3000``.

    Example::

        >>> r = LabelRule.parse("action in [save, click]")
        >>> r.column, r.op, r.value
        ('action', 'in', ['save', 'click'])
        >>> r.apply(pa.table({"action": ["save", "view", None]})).to_pylist()
        [True, False, False]
    """

    column: str
    op: str | None = None
    value: Any = None

    @classmethod
    def parse(cls, text: str) -> LabelRule:
        text = str(text).strip()
        if re.fullmatch(r"\w+", text):
            return cls(text)
        ops = "|".join(re.escape(o) if o[0] in "<>=!" else rf"\b{o}\b" for o in OPS)
        m = re.fullmatch(rf"(\w+)\s*({ops})\s*([^<>=!\s].*)", text)
        if not m:
            raise DataConfigError(
                f"label {text!r}: expected a column, or 'column op value' with op one of {OPS}"
            )
        column, op, raw = m.group(1), m.group(2), m.group(3).strip()
        if op in ("in", "not in"):
            if not (raw.startswith("[") and raw.endswith("]")):
                raise DataConfigError(f"label {text!r}: {op} takes a list: [a, b]")
            return cls(column, op, [_literal(v) for v in raw[1:-1].split(",") if v.strip()])
        return cls(column, op, _literal(raw))

    def apply(self, data: pa.Table) -> pa.Array:
        """bool per row (a null value is not engaged)."""
        col = data.column(self.column).combine_chunks()
        if self.op is None:
            if pa.types.is_boolean(col.type):
                out = col
            elif pa.types.is_integer(col.type) and pc.all(pc.is_in(col, pa.array([0, 1]))).as_py():
                out = pc.equal(col, 1)
            else:
                raise DataConfigError(
                    f"label column {self.column!r} has type {col.type}: a boolean or 0/1 column, "
                    "or a rule such as 'rating >= 4'"
                )
        else:
            value = self.value
            if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
                value = [str(v) for v in value] if isinstance(value, list) else str(value)
            elif isinstance(value, str) or (
                isinstance(value, list) and any(isinstance(v, str) for v in value)
            ):
                raise DataConfigError(
                    f"label rule on {self.column!r} ({col.type}) compares with a string {value!r}"
                )
            out = _compare(col, self.op, value)
        return pc.fill_null(out, False)


def _literal(raw: str) -> Any:
    raw = raw.strip().strip("'\"")
    for cast in (int, float):
        try:
            return cast(raw)
        except ValueError:
            pass
    return raw


def _compare(col: pa.Array, op: str, value: Any) -> pa.Array:
    if op in ("in", "not in"):
        hit = pc.is_in(col, pa.array(value, col.type))
        return pc.and_(pc.invert(hit), pc.is_valid(col)) if op == "not in" else hit
    fn = {">=": pc.greater_equal, "<=": pc.less_equal, "==": pc.equal, "!=": pc.not_equal,
          ">": pc.greater, "<": pc.less}[op]  # fmt: skip
    return fn(col, value)


# ----------------------------------------------------------------------------- conversions


def to_seconds(col: pa.Array, unit: str) -> pa.Array:
    """int64 seconds since the epoch from integers in ``unit``, ISO-8601 strings, dates,
    timestamps or strings in a strptime format; a value that does not parse becomes null (the
    caller names it)."""
    if pa.types.is_timestamp(col.type):
        return pc.cast(pc.cast(col, pa.timestamp("s", tz=col.type.tz), safe=False), pa.int64())
    if pa.types.is_date(col.type):
        return pc.cast(pc.cast(pc.cast(col, pa.date32()), pa.timestamp("s")), pa.int64())
    if unit in _PER_SECOND:
        if pa.types.is_string(col.type):
            col = pc.cast(col, pa.int64())
        if not pa.types.is_integer(col.type) and not pa.types.is_floating(col.type):
            raise TypeError(f"expected integers in {unit}, got {col.type}")
        return pc.cast(
            pc.floor(pc.divide(pc.cast(col, pa.float64()), _PER_SECOND[unit])), pa.int64()
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


def hash_ids(values: pa.Array) -> pa.Array:
    """int64 ids of strings: the first 63 bits of their BLAKE2b digest (never 0 or negative).

    Example::

        >>> hash_ids(pa.array(["a", None, "a"])).to_pylist()[1:]
        [None, 3141936117307011166]
    """
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if values.null_count == len(values):
        return pa.nulls(len(values), pa.int64())
    encoded = pc.dictionary_encode(values)
    words = [
        max(1, int.from_bytes(hashlib.blake2b(s.encode(), digest_size=8).digest(), "big") >> 1)
        for s in encoded.dictionary.to_pylist()
    ]
    return pc.take(pa.array(words, pa.int64()), encoded.indices)


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
            return hash_ids(strings)
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


def _check(before: pa.Array, after: pa.Array, rows: np.ndarray | None, what: str) -> None:
    """Raise :class:`BadValue` at the first value present ``before`` but null ``after``
    (``rows``: each value's row, for flattened lists)."""
    bad = np.asarray(pc.and_(pc.is_valid(before), pc.is_null(after)))
    if bad.any():
        i = int(np.argmax(bad))
        raise BadValue(int(rows[i]) if rows is not None else i, f"{before[i].as_py()!r} {what}")


def convert_column(rule: ColumnRule, data: pa.Table, ids: IdMaps) -> pa.Array:
    """The pinrank column ``rule.name`` of a batch of source rows ``data``.

    Raises:
        BadValue: the first value that does not convert, with its row.
    """
    if rule.flags:
        return _flags(data, rule.flags)
    assert rule.column is not None
    col = data.column(rule.column).combine_chunks()
    if rule.time is not None:
        try:
            out = to_seconds(col, rule.time)
        except (pa.ArrowInvalid, TypeError) as err:
            raise BadValue(0, f"is not a time in {rule.time} ({err})") from None
        _check(col, out, None, f"is not a time in {rule.time}")
        return out
    if rule.prefix is not None:
        return pc.utf8_slice_codeunits(pc.cast(col, pa.string()), 0, rule.prefix)
    is_list = pa.types.is_list(col.type) or pa.types.is_large_list(col.type)
    if rule.split is None and not is_list:
        out = col
        if rule.namespace is not None:
            out = ids.convert(rule.namespace, col)
            _check(col, out, None, f"is not an id of {rule.namespace} ({ids.kind(rule.namespace)})")
        elif rule.type is not None:
            out = _cast(col, TYPES[rule.type])
            _check(col, out, None, f"is not of type {rule.type}")
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
        _check(values, out, parents, f"is not an id of {rule.namespace}")
    elif rule.type is not None:
        out = _cast(values, TYPES[rule.type])
        _check(values, out, parents, f"is not of type {rule.type}")
    return _relist(lists, out, parents)


def _cast(col: pa.Array, to: pa.DataType) -> pa.Array:
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


def _flags(data: pa.Table, columns: Sequence[str]) -> pa.Array:
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
        raise BadValue(int(np.argmax(bad)), f"flags {list(columns)} must be 0 or 1")
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
