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
import pyarrow.parquet as pq
import pytest
import torch
from data_fixtures import FEATURES, N_EVENTS, SHAPES, SPEC, T0

from pinrank.data.convert import to_seconds
from pinrank.data.datamodule import PinrankDataModule
from pinrank.data.io import read_table
from pinrank.data.sources import TableSource
from pinrank.data.tables import DataConfigError, LabelRule
from pinrank.features.ids import hash_strings
from pinrank.models.towers import TowerConfig, TwoTower
from pinrank.models.wide_deep import WideDeep, WideDeepConfig


@pytest.fixture(scope="module")
def log(synthetic_raw: Path) -> dict[str, pa.Table]:
    """A small interaction log (the first events of the synthetic data, their users and pins)."""
    events = read_table(synthetic_raw / "events", "events").slice(0, N_EVENTS)
    users = read_table(synthetic_raw / "users", "users")
    items = read_table(synthetic_raw / "items", "items")
    users = users.filter(pc.is_in(users["user_id"], pc.unique(events["user_id"])))
    items = items.filter(pc.is_in(items["item_id"], pc.unique(events["item_id"])))
    return {"events": events, "users": users, "items": items}


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
        assert hashed["id"].to_pylist() == hash_strings(hashed["original"]).to_pylist()
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


def test_a_users_events_across_files_land_in_one_shard(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Logs come in any order (here: two days' files, every user in both, string ids hashed to
    all of int64): ingest writes each user's events to one shard, as the streamed split needs."""
    import pinrank.data.ingest as ingest_module
    from pinrank.data.splits import check_disjoint_users

    monkeypatch.setattr(ingest_module, "ROWS_PER_SHARD", 100)  # several shards of 600 rows
    files = tmp_path / "files"
    files.mkdir()
    rng = np.random.default_rng(0)
    for day in range(2):
        rows = ["user,item,ts,rating"] + [
            f"member-{u},{rng.integers(0, 30)},{T0 + day * 86_400 + i},{rng.integers(1, 6)}"
            for i, u in enumerate(rng.permutation(np.repeat(np.arange(50), 6)))
        ]
        (files / f"day{day}.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "spec.yaml").write_text(SPEC % ("", "{}"))
    cfg = {
        "label": "rating >= 4",
        "ids": {"user_id": "hash"},
        "tables": {"events": {"path": str(files / "day*.csv"), "format": "csv",
                              "columns": {"user_id": "user", "item_id": "item",
                                          "ts": {"column": "ts", "time": "s"}}}},
    }  # fmt: skip
    prepared = TableSource(root=str(tmp_path / "data"), spec=str(tmp_path / "spec.yaml"), **cfg)
    prepared = prepared.ensure()
    shards = sorted((prepared.raw / "events").glob("part-*.parquet"))
    assert len(shards) > 1  # about 100 a shard (a text file's rows are estimated from its size)
    check_disjoint_users(shards)
    users = read_table(prepared.raw / "events", "events")["user_id"].to_numpy()
    assert len(np.unique(users)) == 50 and users.max() > 2**40  # hashed ids, any size
    sizes = json.loads((prepared.root / "prepared.json").read_text())["splits"]
    assert sum(sizes.values()) == 600
