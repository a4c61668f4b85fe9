"""Schema checks name the file and the column; shards are written whole."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pinrank.data.io import ShardWriter, conform, iter_batches, open_dataset, read_table
from pinrank.data.schemas import EVENTS, SchemaError


def _events(n: int = 4) -> pa.Table:
    return pa.table(
        {
            "user_id": list(range(n)),
            "item_id": [10 + i for i in range(n)],
            "ts": [100 + i for i in range(n)],
            "surface": ["home"] * n,
            "position": pa.array(range(n), pa.int32()),
            "engaged": [i % 2 == 0 for i in range(n)],
            "engagement": ["click" if i % 2 == 0 else "none" for i in range(n)],
        }
    ).cast(EVENTS)


def test_missing_column_names_column_and_file(tmp_path: Path) -> None:
    good, bad = tmp_path / "a.parquet", tmp_path / "b.parquet"
    pq.write_table(_events(), good)
    pq.write_table(_events().drop_columns(["ts"]), bad)
    with pytest.raises(SchemaError, match=r"b\.parquet: missing column 'ts'"):
        open_dataset(tmp_path, "events")


def test_mistyped_column_names_column_type_and_file(tmp_path: Path) -> None:
    t = _events()
    t = t.set_column(t.schema.get_field_index("item_id"), "item_id", pa.array(["x"] * 4))
    pq.write_table(t, tmp_path / "bad.parquet")
    with pytest.raises(SchemaError) as err:
        read_table(tmp_path, "events")
    assert "bad.parquet" in str(err.value) and "'item_id'" in str(err.value)
    assert "has type string, expected int64" in str(err.value)


def test_lossless_widening_is_accepted_and_cast(tmp_path: Path) -> None:
    t = _events().cast(
        pa.schema([f.with_type(pa.int32()) if f.name == "user_id" else f for f in EVENTS])
    )
    pq.write_table(t, tmp_path / "narrow.parquet")
    out = read_table(tmp_path, "events")
    assert out.schema.field("user_id").type == pa.int64()
    assert out["user_id"].to_pylist() == [0, 1, 2, 3]


def test_uint64_ids_are_refused(tmp_path: Path) -> None:
    t = _events().set_column(0, "user_id", pa.array([0, 1, 2, 3], pa.uint64()))
    pq.write_table(t, tmp_path / "u.parquet")
    with pytest.raises(SchemaError, match="uint64"):
        open_dataset(tmp_path, "events")


def test_other_columns_keep_their_types_and_a_missing_one_is_named(tmp_path: Path) -> None:
    pq.write_table(_events().append_column("rating", pa.array([1, 2, 3, 4], pa.int8())),
                   tmp_path / "e.parquet")  # fmt: skip
    assert open_dataset(tmp_path, "events").schema.field("rating").type == pa.int8()
    with pytest.raises(SchemaError, match=r"e\.parquet: missing column 'dwell' of the events"):
        open_dataset(tmp_path, "events", ["dwell"])
    only_structural = _events().select(["user_id", "item_id", "ts", "engaged"])
    pq.write_table(only_structural, tmp_path / "e.parquet")
    assert open_dataset(tmp_path, "events").schema.names == ["user_id", "item_id", "ts", "engaged"]


def test_missing_path_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nothing-here"):
        open_dataset(tmp_path / "nothing-here", "events")


def test_shard_writer_streams_in_bounded_shards(tmp_path: Path) -> None:
    w = ShardWriter(tmp_path / "ev", "events", rows_per_shard=3)
    for i in range(4):
        w.write(_events(2).set_column(0, "user_id", pa.array([2 * i, 2 * i + 1], pa.int64())))
    assert w.close() == [3, 3, 2]
    got = read_table(tmp_path / "ev", "events")
    assert got["user_id"].to_pylist() == list(range(8))
    batches = list(iter_batches(tmp_path / "ev", "events", ["user_id"], batch_size=2))
    assert sum(b.num_rows for b in batches) == 8 and max(b.num_rows for b in batches) <= 3
    assert not list((tmp_path / "ev").glob(".*tmp*")), "temporary files left behind"


def test_shard_writer_can_keep_each_write_in_one_shard(tmp_path: Path) -> None:
    w = ShardWriter(tmp_path / "ev", "events", rows_per_shard=3, split_writes=False)
    for i in range(4):
        w.write(_events(2).set_column(0, "user_id", pa.array([2 * i, 2 * i + 1], pa.int64())))
    assert w.close() == [4, 4]  # a shard closes once it holds 3 rows or more, never mid-write
    assert read_table(tmp_path / "ev", "events")["user_id"].to_pylist() == list(range(8))


def test_conform_orders_and_casts_columns() -> None:
    t = _events()
    shuffled = t.select(list(reversed(t.column_names)))
    assert conform(shuffled, "events").schema == EVENTS
