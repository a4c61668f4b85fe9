"""One's own logs through config alone: the same small interaction log written in three foreign
shapes is read by :class:`TableSource` into the same events, prepared and trained on; bad
input is refused before anything is written, naming the file, the column and a row."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import torch

from pinrank.data.convert import hash_ids, to_seconds
from pinrank.data.datamodule import PinrankDataModule
from pinrank.data.io import read_table
from pinrank.data.sources import TableSource
from pinrank.data.tables import DataConfigError, LabelRule
from pinrank.models.towers import TowerConfig, TwoTower
from pinrank.models.wide_deep import WideDeep, WideDeepConfig

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


@pytest.fixture(scope="module")
def log(synthetic_raw: Path) -> dict[str, pa.Table]:
    """A small interaction log (the first events of the synthetic data, their users and pins)."""
    events = read_table(synthetic_raw / "events", "events").slice(0, N_EVENTS)
    users = read_table(synthetic_raw / "users", "users")
    items = read_table(synthetic_raw / "items", "items")
    users = users.filter(pc.is_in(users["user_id"], pc.unique(events["user_id"])))
    items = items.filter(pc.is_in(items["item_id"], pc.unique(events["item_id"])))
    return {"events": events, "users": users, "items": items}


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


def source(folder: Path, shape: str, cfg: dict[str, Any]) -> TableSource:
    spec = folder / "spec.yaml"
    spec.write_text(SPEC % FEATURES[shape])
    return TableSource(root=str(folder / "data"), spec=str(spec), **cfg)


@pytest.fixture(scope="module", params=list(SHAPES))
def shape(request: pytest.FixtureRequest, log: dict[str, pa.Table], tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    cfg = SHAPES[request.param](log, folder / "files")
    src = source(folder, request.param, cfg)
    return request.param, src, src.ensure()


def test_each_shape_reads_the_same_events(shape, log: dict[str, pa.Table]) -> None:
    name, _, prepared = shape
    events = read_table(prepared.raw / "events", "events")
    assert events.num_rows == N_EVENTS
    assert events["engaged"].to_pylist() == log["events"]["engaged"].to_pylist()
    assert events["ts"].to_pylist() == log["events"]["ts"].to_pylist()  # ms floored to s
    counts = json.loads((prepared.raw / "source.json").read_text())
    assert counts["rows"]["events"] == N_EVENTS and counts["engaged"] == sum(
        events["engaged"].to_pylist()
    )
    users, items = (
        read_table(prepared.raw / "users", "users"),
        read_table(prepared.raw / "items", "items"),
    )
    assert users.num_rows == len(pc.unique(log["events"]["user_id"]))
    assert items.num_rows == len(pc.unique(log["events"]["item_id"]))
    if name == "csv":  # string ids: the saved mapping gives the originals back
        ids = pq.read_table(prepared.raw / "ids" / "user_id.parquet")
        original = dict(zip(ids["id"].to_pylist(), ids["original"].to_pylist(), strict=True))
        got = [original[u] for u in events["user_id"].to_pylist()[:50]]
        assert got == [f"m-{u}" for u in log["events"]["user_id"].to_pylist()[:50]]
        assert sorted(original.values()) == list(original.values())  # map: sorted order
        hashed = pq.read_table(prepared.raw / "ids" / "item_id.parquet")
        assert hashed["id"].to_pylist() == hash_ids(hashed["original"]).to_pylist()
    else:  # integer ids stay as they are
        assert events["user_id"].to_pylist() == log["events"]["user_id"].to_pylist()
    if name == "parquet":  # the derived users carry their latest event's country
        assert "country" in users.column_names and users["country"].null_count < users.num_rows
    if name == "tsv":
        assert set(events["engagement"].to_pylist()) == {"save", "click", "none"}
        assert items["interests"].to_pylist()[:20] == _interests(log["items"], items)[:20]


def _interests(original: pa.Table, got: pa.Table) -> list[list[int]]:
    by_id = dict(
        zip(original["item_id"].to_pylist(), original["interests"].to_pylist(), strict=True)
    )
    return [by_id[i] or [] for i in got["item_id"].to_pylist()]


def test_each_shape_trains_both_models(shape) -> None:
    _, _, prepared = shape
    dm = PinrankDataModule(str(prepared.root), batch_size=256)
    dm.setup()
    torch.manual_seed(0)
    tower = TowerConfig(hidden=(16,), output_dim=8)
    nets = [
        WideDeep.from_spec(dm.spec, dm.state, dm.dense_dims(), WideDeepConfig(hidden=(16,))),
        TwoTower.from_spec(dm.spec, dm.state, dm.dense_dims(), tower, tower),
    ]
    for net in nets:
        opt = torch.optim.Adam(net.parameters(), lr=0.01)
        losses = []
        for _, batch in zip(range(4), dm.train_dataloader(), strict=False):
            assert batch.labels is not None
            logits = net(batch)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, batch.labels)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        assert all(np.isfinite(losses)) and len(losses) == 4


def test_reading_again_is_deterministic(shape, tmp_path: Path) -> None:
    _, src, prepared = shape
    again = TableSource(root=str(tmp_path), spec=src.spec, tables=src.tables, label=src.label,
                        ids=src.ids, engagement=src.engagement)  # fmt: skip
    again.make_raw(tmp_path / "raw")
    for table in ("users", "items", "events"):
        assert read_table(tmp_path / "raw" / table, table).equals(
            read_table(prepared.raw / table, table)
        )


# ------------------------------------------------------------------------------ bad input


def _tiny(folder: Path) -> dict[str, Any]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "events.csv").write_text(
        "user,item,ts,rating\na,x,1700000000,5\nb,y,1700000100,2\na,y,1700000200,4\n"
    )
    (folder / "users.csv").write_text("user,age\na,30\nb,41\n")
    return {
        "label": "rating >= 4",
        "ids": {"user_id": "map", "item_id": "map"},
        "tables": {
            "events": {"path": str(folder / "events.csv"), "format": "csv",
                       "columns": {"user_id": "user", "item_id": "item",
                                   "ts": {"column": "ts", "time": "s"}}},
            "users": {"path": str(folder / "users.csv"), "format": "csv",
                      "columns": {"user_id": "user", "age": "age"}},
        },
    }  # fmt: skip


def _events_text(folder: Path, text: str) -> None:
    (folder / "events.csv").write_text(text)


BAD: list[tuple[str, Any, str]] = [
    ("missing file", lambda f, c: (f / "events.csv").unlink(),
     r"tables\.events\.path: no file at '.*events\.csv'"),
    ("missing column", lambda f, c: _events_text(f, "user,item,when,rating\na,x,1,5\n"),
     r"events\.csv: no column 'ts' \(tables\.events\); it has \['user', 'item', 'when', "
     r"'rating'\]"),
    ("unparsable time", lambda f, c: c["tables"]["events"]["columns"].update(
        ts={"column": "ts", "time": "iso"}),
     r"events\.csv: column 'ts' \(-> ts\): .*not a time in iso.*row \{'user': 'a'"),
    ("a value that is no int id", lambda f, c: c["ids"].update(item_id="int"),
     r"events\.csv: column 'item' \(-> item_id\): 'x' is not an id of item_id \(int\); "
     r"row \{'user': 'a', 'item': 'x'"),
    ("label matches no row", lambda f, c: c.update(label="rating >= 9"),
     r"events\.csv: label 'rating >= 9' matches no row of 3 events"),
    ("label matches every row", lambda f, c: c.update(label="rating > 0"),
     r"label 'rating > 0' matches every row of 3 events"),
    ("label compares a number with a string", lambda f, c: c.update(label="rating == high"),
     r"label rule on 'rating' \(int64\) compares with a string 'high'"),
    ("bad label rule", lambda f, c: c.update(label="rating >>= 4"),
     r"label 'rating >>= 4': expected a column, or 'column op value'"),
    ("duplicate ids", lambda f, c: (f / "users.csv").write_text("user,age\na,30\nb,41\na,50\n"),
     r"users\.csv: duplicate user_id 1 in the users table .*one row per id"),
    ("all ids unknown", lambda f, c: (f / "users.csv").write_text("user,age\nq,30\nr,41\n"),
     r"no event's user id is in the users table"),
    ("csv without header or names", lambda f, c: c["tables"]["users"].update(
        format={"kind": "csv", "header": False}),
     r"a csv without a header needs column_names"),
    ("unknown key", lambda f, c: c["tables"]["events"]["columns"].update(
        ts={"column": "ts", "unit": "s"}),
     r"tables\.events\.columns\.ts: unknown keys \['unit'\]"),
    ("no events table", lambda f, c: c["tables"].pop("events"),
     r"tables: events is required"),
    ("malformed csv row", lambda f, c: _events_text(f, "user,item,ts,rating\na,x,1,5\nb,y\n"),
     r"tables\.events: .*events\.csv: CSV parse error: Row #3: Expected 4 columns, got 2: b,y"),
    ("bad flags", lambda f, c: c["tables"]["users"]["columns"].update(
        interests={"flags": ["age"]}),
     r"users\.csv: column \['age'\] \(-> interests\): flags \['age'\] must be 0 or 1"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "change", "message"), BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_refused_naming_file_column_and_row(
    tmp_path: Path, case: str, change: Any, message: str
) -> None:
    cfg = _tiny(tmp_path / "files")
    change(tmp_path / "files", cfg)
    out = tmp_path / "raw"
    with pytest.raises(DataConfigError, match=message):
        TableSource(root=str(tmp_path), spec="unused", **cfg).make_raw(out)
    assert not out.exists() and not list(tmp_path.glob(".raw*"))  # nothing written


def test_rows_with_null_ids_are_skipped_and_counted(tmp_path: Path) -> None:
    cfg = _tiny(tmp_path / "files")
    _events_text(
        tmp_path / "files",
        "user,item,ts,rating\na,x,1700000000,5\n,y,1700000100,2\nb,y,,2\na,y,1700000200,3\n",
    )
    TableSource(root=str(tmp_path), spec="unused", **cfg).make_raw(tmp_path / "raw")
    counts = json.loads((tmp_path / "raw" / "source.json").read_text())
    assert counts["rows"]["events"] == 2
    assert counts["skipped"]["events"] == {"null user_id": 1, "null ts": 1}


def test_label_rules() -> None:
    data = pa.table({"rating": [1, 4, None, 5], "action": ["view", "save", "click", None],
                     "dwell_ms": [10.0, 3500.0, 3000.0, None]})  # fmt: skip
    assert LabelRule.parse("rating >= 4").apply(data).to_pylist() == [False, True, False, True]
    assert LabelRule.parse("action in [save, click]").apply(data).to_pylist() == [
        False, True, True, False]  # fmt: skip
    assert LabelRule.parse("action not in ['view']").apply(data).to_pylist() == [
        False, True, True, False]  # fmt: skip
    assert LabelRule.parse("dwell_ms > 3000").apply(data).to_pylist() == [
        False, True, False, False]  # fmt: skip


@pytest.mark.parametrize(
    ("values", "unit", "expected"),
    [
        (pa.array([T0 * 1000 + 999, None]), "ms", [T0, None]),
        (pa.array([T0 * 1_000_000]), "us", [T0]),
        (pa.array(["2023-11-14T22:13:20Z", "2023-11-14T23:13:20+01:00"]), "iso", [T0, T0]),
        (pa.array(["2023-11-14T22:13:20"]), "iso", [T0]),  # no offset: UTC
        (pa.array(["2023-11-14"]), "date", [T0 - 80_000]),
        (pa.array(["14-Nov-2023"]), "%d-%b-%Y", [T0 - 80_000]),
        (pa.array([19675], pa.date32()), "date", [19675 * 86_400]),
    ],
)
def test_times_become_epoch_seconds(values: pa.Array, unit: str, expected: list) -> None:
    assert to_seconds(values, unit).to_pylist() == expected
