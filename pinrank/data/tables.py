"""One's own interaction logs, described in config: files, formats and how columns map.

A data config (``conf/data/*.yaml``, :class:`pinrank.data.sources.TableSource`) names up to
three tables, of which only ``events`` is required, and for each: where its files are, how to
parse them, and which pinrank column each source column becomes. This module holds that
description (:class:`TableConfig`, :class:`ColumnRule`, :class:`LabelRule`);
:mod:`pinrank.data.convert` converts a batch by it and :mod:`pinrank.data.ingest` streams the
files through that.

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

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.dataset as ds

from pinrank.data.convert import TYPES, cast_or_null, check_converted

FORMATS = ("parquet", "csv", "tsv")
TIMES = ("s", "ms", "us", "ns", "iso", "date")
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
            values = value if isinstance(value, list) else [value]
            numeric = all(isinstance(v, int | float) for v in values)
            text = pa.types.is_string(col.type) or pa.types.is_large_string(col.type)
            if text and numeric:  # a number column read as text: every value must parse
                parsed = cast_or_null(col, pa.float64())
                check_converted(
                    col, parsed, None, f"is not a number (label {self.column} {self.op} ...)"
                )
                col, text = parsed, False
            if text:
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
