"""``pinrank inspect``: know your data before training on it.

Reads the files a data config names, batch by batch, and reports what is in them: rows per table
and file; per source column its type, nulls, distinct values and the most frequent ones (exact up
to :data:`DISTINCT_CAP` distinct values), numeric ranges; per mapped column the values that do
not convert (counted here, where ``pinrank ingest`` stops at the first); the label rate, the time
range and events per day; how many events users and items have; ids of the events missing from
the users or items table and the reverse. It suggests a feature spec from what it saw
(:func:`suggest_spec`), which trains as written, and plots events per day and per-user and
per-item activity.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pinrank.data.convert import BadValue, IdMaps, Tally, convert_column
from pinrank.data.ingest import SourceConfig, TableReader, collect_ids
from pinrank.data.tables import DataConfigError

DISTINCT_CAP = 100_000  # distinct values counted exactly per column; beyond, only "more than"
SAMPLE = 20_000  # numeric values kept per column for quantiles
TOP = 5
DAY = 86_400


@dataclass
class ColumnStats:
    """Streaming statistics of one column."""

    type: str = ""
    rows: int = 0
    nulls: int = 0
    counts: Counter[Any] | None = field(default_factory=Counter)  # None: over the cap
    low: float | None = None
    high: float | None = None
    sample: list[float] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)  # list columns: a sample of lengths
    malformed: int = 0  # mapped columns: values present that did not convert
    malformed_example: Any = None

    def add(self, col: pa.Array, rng: np.random.Generator) -> None:
        self.type = self.type or str(col.type)
        self.rows += len(col)
        self.nulls += col.null_count
        if pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
            lengths = pc.fill_null(pc.list_value_length(col), 0).to_numpy()
            self._sample(self.lengths, lengths, rng)
            col = pc.list_flatten(col)
        values = pc.drop_null(col)
        if self.counts is not None and len(values):
            vc = pc.value_counts(values)
            self.counts.update(
                dict(
                    zip(vc.field("values").to_pylist(), vc.field("counts").to_pylist(), strict=True)
                )
            )
            if len(self.counts) > DISTINCT_CAP:
                self.counts = None
        if len(values) and (pa.types.is_integer(values.type) or pa.types.is_floating(values.type)):
            x = values.to_numpy(zero_copy_only=False).astype(np.float64)
            x = x[np.isfinite(x)]
            if len(x):
                self.low = float(x.min()) if self.low is None else min(self.low, float(x.min()))
                self.high = float(x.max()) if self.high is None else max(self.high, float(x.max()))
                self._sample(self.sample, x, rng)

    @staticmethod
    def _sample(kept: list[Any], new: np.ndarray, rng: np.random.Generator) -> None:
        room = SAMPLE - len(kept)
        if room > 0:
            kept.extend(new[:room].tolist())
        elif len(new):  # a fresh random subset, a cheap stand-in for reservoir sampling
            swap = rng.integers(0, SAMPLE, min(len(new), SAMPLE // 10))
            for i, v in zip(swap, rng.choice(new, len(swap)).tolist(), strict=True):
                kept[i] = v

    @property
    def distinct(self) -> int | None:
        return None if self.counts is None else len(self.counts)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type, "rows": self.rows, "nulls": self.nulls}
        out["distinct"] = self.distinct if self.distinct is not None else f">{DISTINCT_CAP}"
        if self.counts and max(self.counts.values()) > 1:  # (no top when every value is unique)
            out["top"] = [[_plain(v), n] for v, n in self.counts.most_common(TOP)]
        if self.sample:
            q = np.quantile(self.sample, [0.5, 0.99])
            out |= {"min": self.low, "median": float(q[0]), "p99": float(q[1]), "max": self.high}
        if self.lengths:
            lengths, n = np.unique(self.lengths, return_counts=True)
            out["list_length"] = {
                "mean": float(np.mean(self.lengths)),
                "max": int(lengths[-1]),
                "mode": int(lengths[n.argmax()]),
                "mode_share": float(n.max() / n.sum()),
            }
        if self.malformed:
            out |= {
                "malformed": self.malformed,
                "malformed_example": _plain(self.malformed_example),
            }
        return out


def _plain(v: Any) -> Any:
    return v if isinstance(v, str | int | float | bool) or v is None else str(v)


@dataclass
class Inspection:
    """What :func:`inspect_source` found (``as_dict`` is the JSON report)."""

    files: dict[str, dict[str, int]]
    source_columns: dict[str, dict[str, ColumnStats]]
    columns: dict[str, dict[str, ColumnStats]]  # the mapped (pinrank) columns per table
    events: dict[str, Any]
    per_user: np.ndarray  # events per user id of the events
    per_item: np.ndarray
    days: dict[int, int]

    def as_dict(self) -> dict[str, Any]:
        def stats(tables: dict[str, dict[str, ColumnStats]]) -> dict[str, Any]:
            return {t: {c: s.as_dict() for c, s in cols.items()} for t, cols in tables.items()}

        return {
            "files": self.files,
            "source_columns": stats(self.source_columns),
            "columns": stats(self.columns),
            "events": self.events,
        }


def _quantiles(x: np.ndarray) -> dict[str, float]:
    if not len(x):
        return {}
    q = np.quantile(x, [0.5, 0.9, 0.99])
    return {"n": len(x), "mean": float(x.mean()), "median": float(q[0]), "p90": float(q[1]),
            "p99": float(q[2]), "max": int(x.max())}  # fmt: skip


class _Tally:
    """Counts per int64 id, merged in bounded chunks."""

    def __init__(self) -> None:
        self.ids: list[np.ndarray] = []
        self.n: list[np.ndarray] = []
        self.rows = 0

    def add(self, ids: np.ndarray) -> None:
        u, c = np.unique(ids, return_counts=True)
        self.ids.append(u)
        self.n.append(c)
        self.rows += len(u)
        if len(self.ids) > 32:
            self.ids, self.n = [*self.merged()], []
            self.ids, self.n = [self.ids[0]], [self.ids[1]]

    def merged(self) -> tuple[np.ndarray, np.ndarray]:
        if not self.ids:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        ids, n = np.concatenate(self.ids), np.concatenate(self.n)
        u, inv = np.unique(ids, return_inverse=True)
        return u, np.bincount(inv, weights=n).astype(np.int64)


def inspect_source(cfg: SourceConfig) -> Inspection:
    """Read every file ``cfg`` names once more than :func:`~pinrank.data.ingest.ingest` would,
    counting instead of stopping (module docstring)."""
    extra = (cfg.label.column, cfg.engagement or "")
    readers = {
        n: TableReader(t, cfg.ids, extra if n == "events" else ()) for n, t in cfg.tables.items()
    }
    ids = IdMaps(cfg.ids)
    values = collect_ids(readers, [ns for ns, k in cfg.ids.items() if k == "map"])
    import pandas as pd

    ids.maps = {ns: pd.Index(v.to_numpy(zero_copy_only=False)) for ns, v in values.items()}
    rng = np.random.default_rng(0)
    files: dict[str, dict[str, int]] = {}
    source_cols: dict[str, dict[str, ColumnStats]] = {}
    mapped: dict[str, dict[str, ColumnStats]] = {}
    entity_ids: dict[str, list[np.ndarray]] = {"users": [], "items": []}
    users, items, days = _Tally(), _Tally(), Counter[int]()
    events: dict[str, Any] = {"rows": 0, "engaged": 0, "label_malformed": 0}
    ts_low = ts_high = None
    for name, reader in readers.items():
        per_file = files.setdefault(name, {})
        src = source_cols.setdefault(name, {})
        out = mapped.setdefault(name, {})
        for path, data in reader.batches(reader.all_columns):
            per_file[path] = per_file.get(path, 0) + data.num_rows
            for col in data.column_names:
                src.setdefault(col, ColumnStats()).add(data.column(col).combine_chunks(), rng)
            cols = {}
            for pname, rule in reader.table.columns.items():
                stats = out.setdefault(pname, ColumnStats())
                cols[pname] = _lenient(rule, data, ids, stats)
                stats.add(cols[pname], rng)
            key = {"users": "user_id", "items": "item_id"}.get(name)
            if key and cols.get(key) is not None:
                entity_ids[name].append(pc.drop_null(cols[key]).to_numpy())
            if name != "events":
                continue
            events["rows"] += data.num_rows
            try:
                engaged = cfg.label.apply(data)
                events["engaged"] += int(pc.sum(engaged).as_py() or 0)
            except BadValue:
                events["label_malformed"] += data.num_rows
            ts, u, i = cols.get("ts"), cols.get("user_id"), cols.get("item_id")
            if ts is not None and ts.null_count < len(ts):
                t = pc.drop_null(ts).to_numpy()
                ts_low = int(t.min()) if ts_low is None else min(ts_low, int(t.min()))
                ts_high = int(t.max()) if ts_high is None else max(ts_high, int(t.max()))
                d, c = np.unique(t // DAY, return_counts=True)
                days.update(dict(zip(d.tolist(), c.tolist(), strict=True)))
            if u is not None:
                users.add(pc.drop_null(u).to_numpy())
            if i is not None:
                items.add(pc.drop_null(i).to_numpy())
    user_ids, per_user = users.merged()
    item_ids, per_item = items.merged()
    n = max(events["rows"], 1)
    events |= {
        "label_rate": events["engaged"] / n,
        "time": {"min": ts_low, "max": ts_high, "days": len(days)},
        "users": len(user_ids),
        "items": len(item_ids),
        "events_per_user": _quantiles(per_user),
        "events_per_item": _quantiles(per_item),
    }
    for table, seen in (("users", user_ids), ("items", item_ids)):
        if table in readers:
            listed = np.unique(np.concatenate(entity_ids[table] or [np.zeros(0, np.int64)]))
            events[f"{table}_not_in_table"] = int((~np.isin(seen, listed)).sum())
            events[f"{table}_without_events"] = int((~np.isin(listed, seen)).sum())
    return Inspection(files, source_cols, mapped, events, per_user, per_item, dict(days))


def _lenient(rule: Any, data: pa.Table, ids: IdMaps, stats: ColumnStats) -> pa.Array:
    """The column converted, the values that do not convert counted (and null)."""
    tally = Tally()
    out = convert_column(rule, data, ids, tally)
    if tally.count:
        stats.malformed += tally.count
        if stats.malformed_example is None:
            stats.malformed_example = tally.example
    return out


def report_text(ins: Inspection) -> str:
    """The printed report."""
    ev = ins.events
    lines = []
    for table, per_file in ins.files.items():
        total = sum(per_file.values())
        lines.append(f"{table}: {total:,} rows in {len(per_file)} file(s)")
        for col, s in ins.source_columns[table].items():
            d = s.as_dict()
            top = ", ".join(f"{_short(v)} {n:,}" for v, n in d.get("top", [])[:3])
            top = top or ("each once" if s.distinct else "no values")
            rng = f" range [{d['min']:.4g}, {d['max']:.4g}]" if "min" in d else ""
            lines.append(
                f"  {col:<20} {d['type']:<14} nulls {d['nulls']:>9,}  distinct {d['distinct']!s:>9}"
                f"{rng}  top: {top}"
            )
        for col, s in ins.columns[table].items():
            if s.malformed:
                example = s.malformed_example
                lines.append(f"  -> {col}: {s.malformed:,} values do not convert, e.g. {example!r}")
    t = ev["time"]
    lines.append(
        f"events: {ev['rows']:,}, label rate {ev['label_rate']:.3f}, "
        f"{ev['users']:,} users, {ev['items']:,} items"
    )
    if t["min"] is not None:
        span = f"{_date(t['min'])} .. {_date(t['max'])}"
        lines.append(f"  time {span}, {t['days']} days with events")
    for side in ("user", "item"):
        q = ev[f"events_per_{side}"]
        if q:
            lines.append(
                f"  events per {side}: median {q['median']:.0f}, p90 {q['p90']:.0f}, "
                f"p99 {q['p99']:.0f}, max {q['max']:,}"
            )
    for table in ("users", "items"):
        if f"{table}_not_in_table" in ev:
            lines.append(
                f"  {table}: {ev[f'{table}_not_in_table']:,} of the events' ids are not in the "
                f"{table} table; {ev[f'{table}_without_events']:,} of its ids have no event"
            )
    return "\n".join(lines)


def _short(value: Any, width: int = 24) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def _date(ts: int) -> str:
    return str(np.datetime64(int(ts), "s"))


def plot(ins: Inspection, out: Path) -> list[Path]:
    """events_per_day.png and activity.png (events per user and per item, log-log)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    if ins.days:
        d = np.array(sorted(ins.days))
        fig, ax = plt.subplots(figsize=(8, 3))
        ax.bar(d.astype("datetime64[D]"), [ins.days[x] for x in d], width=1.0)
        ax.set(title="events per day", ylabel="events")
        fig.tight_layout()
        paths.append(out / "events_per_day.png")
        fig.savefig(paths[-1], dpi=100)
        plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, x in (("users", ins.per_user), ("items", ins.per_item)):
        if len(x):  # the share of ids with at least k events
            k = np.sort(x)
            ax.loglog(k, 1.0 - np.arange(len(k)) / len(k), label=label, drawstyle="steps-post")
    ax.set(title="activity", xlabel="events k", ylabel="share with at least k events")
    ax.legend()
    fig.tight_layout()
    paths.append(out / "activity.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)
    return paths


def write(ins: Inspection, out: Path, spec: str) -> dict[str, Path]:
    """The report (JSON), the suggested spec and the plots in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    written = {"report": out / "inspect.json", "spec": out / "suggested_spec.yaml"}
    written["report"].write_text(json.dumps(ins.as_dict(), indent=2))
    written["spec"].write_text(spec)
    for p in plot(ins, out):
        written[p.stem] = p
    return written


__all__ = ["DataConfigError", "Inspection", "inspect_source", "plot", "report_text", "write"]
