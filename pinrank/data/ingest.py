"""Stream one's own files, as a data config describes them, into pinrank's raw tables.

:func:`ingest` reads every file of ``events`` (and ``users`` and ``items`` where given) batch by
batch through ``pyarrow.dataset``, converts each batch by its column rules
(:mod:`pinrank.data.tables`) and writes Parquet shards of the three raw tables. Without a users or
items table, that table is derived from the events: every id seen, plus the event columns named
``users.<column>`` / ``items.<column>`` (the value of the id's latest event).

Events are written to shards by user (:class:`~pinrank.data.io.UserShards`): the split protocol
needs each user's events in one shard, and logs come in any order. Everything goes to a temporary
folder that replaces ``out`` only when all of it was read and checked, so bad input leaves nothing
behind. Rows with a null id or time are skipped and counted; every other value that does not
convert, a missing file or column, a label rule that matches no row or every row, duplicate ids in
a users or items table and events whose ids are all unknown are a
:class:`~pinrank.data.tables.DataConfigError` naming the file, the column and an example row. What
was read is counted in ``out/source.json``; the id mappings are saved in
``out/ids/<namespace>.parquet`` (``id`` int64, ``original`` string).
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from pinrank.data.convert import BadValue, IdMaps, convert_column, example_row
from pinrank.data.io import ShardWriter, UserShards, write_parquet
from pinrank.data.schemas import KNOWN
from pinrank.data.tables import DataConfigError, LabelRule, TableConfig
from pinrank.features.ids import ID_KINDS

TABLES = ("events", "users", "items")
ROWS_PER_SHARD = 1_000_000
BATCH_ROWS = 65_536


@dataclass(frozen=True)
class SourceConfig:
    """A whole data config: the tables, the id kinds, the label and the engagement kind."""

    tables: dict[str, TableConfig]
    ids: dict[str, str]
    label: LabelRule
    engagement: str | None = None  # a source column of events: the kind of engagement

    @classmethod
    def parse(
        cls,
        tables: Mapping[str, Any],
        label: str,
        ids: Mapping[str, str] | None = None,
        engagement: str | None = None,
    ) -> SourceConfig:
        unknown = sorted(set(tables) - set(TABLES))
        if unknown:
            raise DataConfigError(f"tables: unknown tables {unknown} (known: {list(TABLES)})")
        if "events" not in tables:
            raise DataConfigError("tables: events is required")
        parsed = {name: TableConfig.parse(name, cfg) for name, cfg in tables.items() if cfg}
        kinds = {"user_id": "int", "item_id": "int", **dict(ids or {})}
        bad = {k: v for k, v in kinds.items() if v not in ID_KINDS}
        if bad:
            raise DataConfigError(f"ids: {bad}: each kind must be one of {ID_KINDS}")
        needed = {"events": ("user_id", "item_id", "ts"), "users": ("user_id",),
                  "items": ("item_id",)}  # fmt: skip
        for name, table in parsed.items():
            missing = [c for c in needed[name] if c not in table.columns]
            if missing:
                raise DataConfigError(f"tables.{name}.columns: map {missing} to source columns")
        return cls(parsed, kinds, LabelRule.parse(label), engagement)


@dataclass
class Counts:
    """What was read: rows per table and file, rows skipped and why, the label's rate."""

    files: dict[str, dict[str, int]] = field(default_factory=dict)
    skipped: dict[str, dict[str, int]] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)
    engaged: int = 0

    def skip(self, table: str, why: str, n: int) -> None:
        if n:
            per = self.skipped.setdefault(table, {})
            per[why] = per.get(why, 0) + n


def source_files(table: TableConfig) -> list[str]:
    """The files of a table: the path itself, every non-hidden file below a folder, or the
    files a glob matches, sorted."""
    path = table.path
    if any(ch in path for ch in "*?["):
        found = sorted(p for p in glob.glob(path, recursive=True) if os.path.isfile(p))
    elif os.path.isdir(path):
        found = sorted(
            str(p)
            for p in Path(path).rglob("*")
            if p.is_file() and not any(part.startswith((".", "_")) for part in p.parts[-1:])
        )
    else:
        found = [path] if os.path.isfile(path) else []
    if not found:
        raise DataConfigError(f"tables.{table.name}.path: no file at {path!r}")
    return found


class TableReader:
    """One table's files as ``pyarrow.dataset`` fragments, each checked for the columns its
    rules read."""

    def __init__(self, table: TableConfig, ids: Mapping[str, str], extra: tuple[str, ...]):
        self.table = table
        self.files = source_files(table)
        fmt = table.format.dataset_format(table.fixed_types(ids))
        try:
            self.dataset = ds.dataset(self.files, format=fmt)
            fragments = list(self.dataset.get_fragments())
            schemas = [(f.path, f.physical_schema) for f in fragments]
        except (pa.ArrowInvalid, OSError, UnicodeDecodeError) as err:
            raise DataConfigError(f"tables.{table.name}: {_short(err)}") from None
        self.fragments = fragments
        rules = [src for r in table.columns.values() for src in r.sources]
        self.sources = list(dict.fromkeys([*rules, *(c for c in extra if c)]))
        # every column all the files have (what inspect reads)
        self.all_columns = [n for n in schemas[0][1].names if all(n in s.names for _, s in schemas)]
        for path, schema in schemas:
            for col in self.sources:
                if schema.get_field_index(col) < 0:
                    raise DataConfigError(
                        f"{path}: no column {col!r} (tables.{table.name}); it has {schema.names}"
                    )

    def estimated_rows(self) -> int:
        """The rows of the files: exact for Parquet (footers), from the size for text."""
        if self.table.format.kind == "parquet":
            return sum(f.count_rows() for f in self.fragments)
        return sum(os.path.getsize(f) for f in self.files) // 40  # about 40 bytes a row

    def batches(self, columns: list[str]) -> Iterator[tuple[str, pa.Table]]:
        """``(file, rows)`` of every file in order, only ``columns``."""
        for fragment in self.fragments:
            try:
                for batch in fragment.to_batches(columns=columns, batch_size=BATCH_ROWS):
                    if batch.num_rows:
                        yield fragment.path, pa.Table.from_batches([batch])
            except (pa.ArrowInvalid, UnicodeDecodeError) as err:
                raise DataConfigError(f"{fragment.path}: {_short(err)}") from None


def _short(err: BaseException) -> str:
    """The first line of an Arrow error, without its wrapping ("Could not open CSV input
    source '<file>': Invalid: ...")."""
    text = str(err).splitlines()[0]
    m = re.search(r"Could not open \w+ input source '([^']+)': \w+: (.*)", text)
    return f"{m.group(1)}: {m.group(2)}"[:500] if m else text[:500]


def collect_ids(readers: Mapping[str, TableReader], namespaces: list[str]) -> dict[str, pa.Array]:
    """Pass 1, for the namespaces of string ids (``map`` or ``hash``): every distinct value,
    sorted (what ``map`` numbers 1, 2, ... and both save with their int64 ids)."""
    seen: dict[str, list[pa.Array]] = {ns: [] for ns in namespaces}
    if not seen:
        return {}
    for reader in readers.values():
        rules = [r for r in reader.table.columns.values() if r.namespace in seen]
        if not rules:
            continue
        for _, data in reader.batches(list(dict.fromkeys(r.column for r in rules if r.column))):
            for r in rules:
                assert r.column is not None and r.namespace is not None
                col = data.column(r.column).combine_chunks()
                if r.split:
                    col = pc.utf8_trim_whitespace(
                        pc.list_flatten(pc.split_pattern(pc.cast(col, pa.string()), r.split))
                    )
                elif pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
                    col = pc.list_flatten(col)
                col = pc.unique(pc.cast(col, pa.string()))
                seen[r.namespace].append(col)
                if len(seen[r.namespace]) > 64:
                    seen[r.namespace] = [pc.unique(pa.chunked_array(seen[r.namespace]))]
    out = {}
    for ns, chunks in seen.items():
        values = (
            pc.unique(pa.chunked_array(chunks, pa.string()))
            if chunks
            else pa.array([], pa.string())
        )
        values = pc.drop_null(values)
        values = values.filter(pc.not_equal(values, ""))
        out[ns] = pc.take(values, pc.sort_indices(values))
    return out


def _convert(
    reader: TableReader, path: str, data: pa.Table, ids: IdMaps, skip: tuple[str, ...]
) -> dict[str, pa.Array]:
    out = {}
    for name, rule in reader.table.columns.items():
        if name in skip:
            continue
        source = rule.column or list(rule.flags)
        try:
            out[name] = convert_column(rule, data, ids)
        except BadValue as err:
            raise DataConfigError(
                f"{path}: column {source!r} (-> {name}): {err.what}; "
                f"row {example_row(data, err.row, reader.sources)}"
            ) from None
        known = KNOWN[reader.table.name]
        if known.get_field_index(name) >= 0 and out[name].type != known.field(name).type:
            try:  # a column of the Pinterest-shaped schemas keeps its type there
                out[name] = pc.cast(out[name], known.field(name).type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
                raise DataConfigError(
                    f"{path}: column {source!r} (-> {name}, {known.field(name).type}): "
                    f"{_short(err)}"
                ) from None
    return out


class _Latest:
    """Per id, the value of its latest event of some columns (the derived users or items)."""

    def __init__(self, key: str) -> None:
        self.key, self.rows = key, 0
        self.parts: list[pa.Table] = []

    def add(self, part: pa.Table) -> None:
        self.parts.append(part)
        self.rows += part.num_rows
        if self.rows > 4 * ROWS_PER_SHARD:
            self.parts = [self.reduce()]
            self.rows = self.parts[0].num_rows

    def reduce(self) -> pa.Table:
        data = pa.concat_tables(self.parts)
        data = data.sort_by([(self.key, "ascending"), ("ts", "ascending")])
        keys = np.asarray(data.column(self.key))
        last = np.r_[keys[1:] != keys[:-1], True] if len(keys) else np.zeros(0, bool)
        return data.filter(pa.array(last))


def _read_entities(
    reader: TableReader, table: str, ids: IdMaps, tmp: Path, counts: Counts
) -> np.ndarray:
    """Write a users or items table; its ids, sorted (duplicates refused)."""
    key = "user_id" if table == "users" else "item_id"
    writer = ShardWriter(tmp / table, table, ROWS_PER_SHARD)
    seen: list[np.ndarray] = []
    where: list[np.ndarray] = []
    for path, data in reader.batches(reader.sources):
        cols = _convert(reader, path, data, ids, ())
        keep = pc.is_valid(cols[key])
        counts.skip(table, f"null {key}", len(data) - pc.sum(keep).as_py() if len(data) else 0)
        rows = pa.table(cols).filter(keep)
        writer.write(rows)
        seen.append(np.asarray(rows.column(key)))
        where.append(np.full(rows.num_rows, reader.files.index(path)))
        per = counts.files.setdefault(table, {})
        per[path] = per.get(path, 0) + len(data)
    counts.rows[table] = sum(writer.close())
    all_ids, files = (
        np.concatenate(seen or [np.zeros(0, np.int64)]),
        np.concatenate(where or [np.zeros(0, int)]),
    )
    order = np.argsort(all_ids, kind="stable")
    dup = np.flatnonzero(all_ids[order][1:] == all_ids[order][:-1])
    if len(dup):
        first, second = order[dup[0]], order[dup[0] + 1]
        raise DataConfigError(
            f"{reader.files[files[second]]}: duplicate {key} {all_ids[second]} in the {table} "
            f"table (also in {reader.files[files[first]]}): one row per id"
        )
    return all_ids[order]


def _read_events(
    reader: TableReader,
    cfg: SourceConfig,
    ids: IdMaps,
    tmp: Path,
    counts: Counts,
    known: Mapping[str, np.ndarray],
) -> dict[str, _Latest]:
    """Write the events table; the users and items derived from it where not ``known``."""
    rules = reader.table.columns
    derived = {
        t: _Latest(k) for t, k in (("users", "user_id"), ("items", "item_id")) if t not in known
    }
    for name in rules:
        side = name.partition(".")[0]
        if "." in name and side not in derived:
            raise DataConfigError(
                f"tables.events.columns.{name}: {side} has a table of its own; "
                f"map {name.partition('.')[2]!r} there"
            )
    writer = UserShards(tmp / "events", -(-reader.estimated_rows() // ROWS_PER_SHARD))
    unknown = {t: 0 for t in known}
    for path, data in reader.batches(reader.sources):
        cols = _convert(reader, path, data, ids, ())
        keep = pc.and_(
            pc.and_(pc.is_valid(cols["user_id"]), pc.is_valid(cols["item_id"])),
            pc.is_valid(cols["ts"]),
        )
        for c in ("user_id", "item_id", "ts"):
            counts.skip("events", f"null {c}", cols[c].null_count)
        try:
            engaged = cfg.label.apply(data)
        except BadValue as err:
            raise DataConfigError(
                f"{path}: column {cfg.label.column!r}: {err.what}; "
                f"row {example_row(data, err.row, reader.sources)}"
            ) from None
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
            raise DataConfigError(f"{path}: label {cfg.label.column!r}: {_short(err)}") from None
        cols["engaged"] = engaged
        if cfg.engagement:
            kind = pc.cast(data.column(cfg.engagement).combine_chunks(), pa.string())
            cols["engagement"] = pc.if_else(engaged, pc.fill_null(kind, "none"), "none")
        rows = pa.table(cols).filter(keep)
        for t, k in (("users", "user_id"), ("items", "item_id")):
            if t in derived:
                extra = [n for n in rules if n.startswith(t + ".")]
                part = rows.select([k, "ts", *extra]).rename_columns(
                    [k, "ts", *[n.partition(".")[2] for n in extra]]
                )
                derived[t].add(part)
            else:
                ids_ = np.asarray(rows.column(k))
                pos = np.searchsorted(known[t], ids_)
                hit = (
                    (pos < len(known[t])) & (known[t][np.minimum(pos, len(known[t]) - 1)] == ids_)
                    if len(known[t])
                    else np.zeros(len(ids_), bool)
                )
                unknown[t] += int((~hit).sum())
        rows = rows.drop_columns([n for n in rules if "." in n])
        writer.write(rows, path)
        counts.engaged += pc.sum(rows.column("engaged")).as_py() or 0
        per = counts.files.setdefault("events", {})
        per[path] = per.get(path, 0) + len(data)
    n = counts.rows["events"] = sum(writer.close())
    first = reader.files[0]
    if n == 0:
        raise DataConfigError(f"{first}: no event with a user, an item and a time")
    if counts.engaged in (0, n):
        what = "no row" if counts.engaged == 0 else "every row"
        raise DataConfigError(
            f"{first}: label {_label_text(cfg.label)} matches {what} of {n} events: "
            "nothing to learn from"
        )
    for t, missing in unknown.items():
        counts.skip("events", f"{t[:-1]} not in the {t} table (kept)", missing)
        if missing == n:
            raise DataConfigError(
                f"{first}: no event's {t[:-1]} id is in the {t} table ({reader.table.path} vs "
                f"{cfg.tables[t].path}): are the ids mapped the same way in both?"
            )
    return derived


def _label_text(rule: LabelRule) -> str:
    return repr(rule.column if rule.op is None else f"{rule.column} {rule.op} {rule.value}")


def _as_dict(counts: Counts) -> dict[str, Any]:
    return {"rows": counts.rows, "files": counts.files, "skipped": counts.skipped,
            "engaged": counts.engaged}  # fmt: skip


def ingest(cfg: SourceConfig, out: str | Path) -> Counts:
    """Read the files ``cfg`` describes into ``out/{users,items,events}`` (module docstring)."""
    import pandas as pd

    out = Path(out)
    label_cols = (cfg.label.column, cfg.engagement or "")
    readers = {
        name: TableReader(t, cfg.ids, label_cols if name == "events" else ())
        for name, t in cfg.tables.items()
    }
    values = collect_ids(readers, [ns for ns, k in cfg.ids.items() if k != "int"])
    ids = IdMaps(cfg.ids)
    ids.maps = {
        ns: pd.Index(v.to_numpy(zero_copy_only=False))
        for ns, v in values.items()
        if cfg.ids[ns] == "map"
    }
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    counts = Counts()
    try:
        known: dict[str, np.ndarray] = {
            t: _read_entities(readers[t], t, ids, tmp, counts)
            for t in ("users", "items")
            if t in readers
        }
        for table, latest in _read_events(readers["events"], cfg, ids, tmp, counts, known).items():
            data = latest.reduce().drop_columns(["ts"])
            write_parquet(data, tmp / table / "part-00000.parquet")
            counts.rows[table] = data.num_rows
        for ns, originals in values.items():
            mapped = ids.convert(ns, originals)
            if len(pc.unique(mapped)) != len(mapped):
                raise DataConfigError(f"ids.{ns}: two distinct ids hash to one value; use map")
            table = pa.table({"id": mapped, "original": originals})
            write_parquet(table, tmp / "ids" / f"{ns}.parquet")
        kinds = {ns: k for ns, k in cfg.ids.items() if k != "int"}  # what raw/ids/ holds
        columns = {  # which columns hold ids of those namespaces (interests: a namespace)
            f"{t.name}.{name}": rule.namespace
            for t in cfg.tables.values()
            for name, rule in t.columns.items()
            if rule.namespace in kinds
        }
        meta = _as_dict(counts) | {"ids": kinds, "id_columns": columns}
        (tmp / "source.json").write_text(json.dumps(meta, indent=2))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return counts
