"""Helpers shared by data tests: MovieLens-100K read through its data config, and one small
interaction log written in three foreign shapes (each with the data config that reads it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from pinrank.data.sources import load_source

ROOT = Path(__file__).resolve().parents[1]


def movielens_raw(src: Path, out: Path) -> Path:
    """MovieLens-100K from ``src`` read by ``conf/data/ml100k.yaml`` into ``out`` (raw tables)."""
    source = load_source(ROOT / "conf" / "data" / "ml100k.yaml", ROOT, {"base": str(src)})
    source.make_raw(out)
    return out


N_EVENTS = 3000
T0 = 1_700_000_000

SPEC = """
features:
  user_id:   {side: user, source: user_id, kind: categorical, vocab: {}, embedding_dim: 8}
  history:   {side: user, source: history, kind: sequence, shares: item_id, max_len: 20}
  item_id:   {side: item, source: item_id, kind: categorical, vocab: {}, embedding_dim: 8}
  %s
crosses:
  %s
"""
FEATURES = {
    "csv": (
        "gender: {side: user, source: gender, kind: categorical, vocab: {}, embedding_dim: 4}\n"
        "  age: {side: user, source: age, kind: numeric, valid: [13, 100], "
        "transforms: [standardize]}",
        "gender_x_item: {features: [gender, item_id], buckets: 101}",
    ),
    "parquet": (
        "country: {side: user, source: country, kind: categorical, vocab: {}, embedding_dim: 4}\n"
        "  item_interests: {side: item, source: interests, kind: multi_categorical, vocab: {}}\n"
        "  quality: {side: item, source: quality, kind: numeric, transforms: [standardize]}",
        "country_x_interest: {features: [country, item_interests], buckets: 101}",
    ),
    "tsv": (
        "follows: {side: user, source: interests, kind: multi_categorical, vocab: {}}\n"
        "  item_interests: {side: item, source: interests, kind: multi_categorical, vocab: {}}\n"
        "  seen_interests: {side: user, source: seen_interests, kind: multi_categorical, "
        "shares: item_interests, pooling: mean}\n"
        "  position: {side: context, source: position, kind: numeric, "
        "transforms: [log1p, standardize]}",
        "interest_x_interest: {features: [follows, item_interests], buckets: 101}",
    ),
}


def _ratings(engaged: pa.ChunkedArray) -> np.ndarray:
    e = engaged.to_numpy(zero_copy_only=False)
    return np.where(e, 4 + np.arange(len(e)) % 2, 1 + np.arange(len(e)) % 3)


def write_csv_shape(log: dict[str, pa.Table], folder: Path) -> dict[str, Any]:
    """CSV, string ids, millisecond timestamps, a rating instead of a label; no items table."""
    ev, us = log["events"], log["users"]
    folder.mkdir(parents=True)
    events = pa.table(
        {
            "member": pc.binary_join_element_wise("m-", pc.cast(ev["user_id"], pa.string()), ""),
            "pin": pc.binary_join_element_wise("p-", pc.cast(ev["item_id"], pa.string()), ""),
            "when_ms": pc.add(pc.multiply(ev["ts"], 1000), 123),
            "rating": _ratings(ev["engaged"]),
        }
    )
    users = pa.table(
        {
            "member": pc.binary_join_element_wise("m-", pc.cast(us["user_id"], pa.string()), ""),
            "gender": us["gender"],
            "age": us["age"],
        }
    )
    pacsv.write_csv(events, folder / "events.csv")
    pacsv.write_csv(users, folder / "members.csv")
    return {
        "label": "rating >= 4",
        "ids": {"user_id": "map", "item_id": "hash"},
        "tables": {
            "events": {
                "path": str(folder / "events.csv"),
                "format": "csv",
                "columns": {
                    "user_id": "member",
                    "item_id": "pin",
                    "ts": {"column": "when_ms", "time": "ms"},
                },
            },
            "users": {
                "path": str(folder / "members.csv"),
                "format": {"kind": "csv"},
                "columns": {"user_id": "member", "gender": "gender", "age": "age"},
            },
        },
    }


def write_parquet_shape(log: dict[str, pa.Table], folder: Path) -> dict[str, Any]:
    """Parquet shards with extra columns, ISO-8601 times, no users table: the user's country
    comes with each event."""
    ev, us, it = log["events"], log["users"], log["items"]
    country = dict(zip(us["user_id"].to_pylist(), us["country"].to_pylist(), strict=True))
    when = pc.strftime(pc.cast(ev["ts"], pa.timestamp("s")), format="%Y-%m-%dT%H:%M:%SZ")
    events = pa.table(
        {
            "uid": ev["user_id"],
            "pid": ev["item_id"],
            "at": when,
            "clicked": ev["engaged"],
            "country": [country.get(u) for u in ev["user_id"].to_pylist()],
            "session": pa.array(np.arange(len(ev)) // 7),
            "device": ["ios"] * len(ev),
        }
    )
    (folder / "events").mkdir(parents=True)
    for i, start in enumerate(range(0, len(ev), 1100)):
        pq.write_table(events.slice(start, 1100), folder / "events" / f"part-{i}.parquet")
    items = pa.table({"pid": it["item_id"], "topics": it["interests"], "q": it["quality"],
                      "title": ["x"] * len(it)})  # fmt: skip
    pq.write_table(items, folder / "pins.parquet")
    return {
        "label": "clicked",
        "tables": {
            "events": {
                "path": str(folder / "events"),
                "columns": {
                    "user_id": "uid",
                    "item_id": "pid",
                    "ts": {"column": "at", "time": "iso"},
                    "users.country": "country",
                },
            },
            "items": {
                "path": str(folder / "*.parquet"),
                "columns": {"item_id": "pid", "interests": "topics", "quality": "q"},
            },
        },
    }


def write_tsv_shape(log: dict[str, pa.Table], folder: Path) -> dict[str, Any]:
    """TSV without a header, delimited list columns, a label rule on an action column."""
    ev, us, it = log["events"], log["users"], log["items"]
    folder.mkdir(parents=True)
    engaged = ev["engaged"].to_numpy(zero_copy_only=False)
    actions = np.where(engaged, np.where(np.arange(len(ev)) % 2, "save", "click"), "view")
    lines = [
        f"{u}\t{i}\t{t}\t{a}\t{p if p is not None else ''}"
        for u, i, t, a, p in zip(ev["user_id"].to_pylist(), ev["item_id"].to_pylist(),
                                 ev["ts"].to_pylist(), actions, ev["position"].to_pylist(),
                                 strict=True)
    ]  # fmt: skip
    (folder / "log.tsv").write_text("\n".join(lines) + "\n")

    def joined(lists: list[list[int] | None]) -> list[str]:
        return ["|".join(map(str, v or [])) for v in lists]

    users = [
        f"{u}\t{f}"
        for u, f in zip(us["user_id"].to_pylist(), joined(us["interests"].to_pylist()), strict=True)
    ]
    items = [
        f"{i}\t{f}"
        for i, f in zip(it["item_id"].to_pylist(), joined(it["interests"].to_pylist()), strict=True)
    ]
    (folder / "users.tsv").write_text("user\tfollows\n" + "\n".join(users) + "\n")
    (folder / "items.tsv").write_text("item\ttags\n" + "\n".join(items) + "\n")
    return {
        "label": "action in [save, click]",
        "engagement": "action",
        "tables": {
            "events": {
                "path": str(folder / "log.tsv"),
                "format": {
                    "kind": "tsv",
                    "header": False,
                    "column_names": ["user", "item", "epoch", "action", "pos"],
                },
                "columns": {
                    "user_id": "user",
                    "item_id": "item",
                    "ts": {"column": "epoch", "time": "s"},
                    "position": "pos",
                },
            },
            "users": {
                "path": str(folder / "users.tsv"),
                "format": "tsv",
                "columns": {
                    "user_id": "user",
                    "interests": {"column": "follows", "split": "|", "ids": "interest"},
                },
            },
            "items": {
                "path": str(folder / "items.tsv"),
                "format": "tsv",
                "columns": {
                    "item_id": "item",
                    "interests": {"column": "tags", "split": "|", "ids": "interest"},
                },
            },
        },
    }


SHAPES = {"csv": write_csv_shape, "parquet": write_parquet_shape, "tsv": write_tsv_shape}
