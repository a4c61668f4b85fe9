"""Tests of the protocol's train / val / test / cold splits (docs/evaluation.md).

Hand-worked small cases, a pure-Python reference on random tables, the streamed writer, and the
published MovieLens-100K counts (skipped when the data set is absent; it is never copied).
"""

from __future__ import annotations

import os
from collections import defaultdict
from fractions import Fraction
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from data_fixtures import movielens_raw

from pinrank.data.io import conform, read_table, write_parquet
from pinrank.data.schemas import EVENTS
from pinrank.data.splits import (
    SPLITS,
    SplitConfig,
    assign_splits,
    check_disjoint_users,
    split_events,
    write_splits,
)

WARM = SplitConfig(cold_user_mod=0)


def events(
    users: list[int] | np.ndarray, items: list[int] | np.ndarray, ts: list[int] | np.ndarray
) -> pa.Table:
    """A full EVENTS table; engaged is set on even item ids so that rows are distinguishable."""
    items = np.asarray(items, dtype=np.int64)
    n = len(items)
    data = pa.table(
        {
            "user_id": np.asarray(users, dtype=np.int64),
            "item_id": items,
            "ts": np.asarray(ts, dtype=np.int64),
            "surface": pa.array(["home"] * n),
            "position": pa.array(np.arange(n) % 7, pa.int32()),
            "engaged": items % 2 == 0,
            "engagement": pa.array(["click" if i % 2 == 0 else "none" for i in items.tolist()]),
        }
    )
    return conform(data, "events")


def names(codes: np.ndarray) -> list[str]:
    return [SPLITS[c] for c in codes]


# --- hand-worked cases -------------------------------------------------------------------------


def test_ten_events_give_7_1_2_exact_rows() -> None:
    ts = [50, 10, 100, 30, 90, 20, 80, 40, 70, 60]  # rows in shuffled time order
    table = events([1] * 10, list(range(101, 111)), ts)
    codes = assign_splits(table, WARM)
    # by time: 10 20 30 40 50 60 70 | 80 | 90 100
    expected = {10: "train", 20: "train", 30: "train", 40: "train", 50: "train", 60: "train"}
    expected |= {70: "train", 80: "val", 90: "test", 100: "test"}
    assert names(codes) == [expected[t] for t in ts]
    assert codes.dtype == np.int8
    parts = split_events(table, WARM)
    assert parts["test"].column("item_id").to_pylist() == [105, 103]  # ts 90, 100
    assert parts["val"].column("item_id").to_pylist() == [107]  # ts 80
    assert parts["train"].column("ts").to_pylist() == [10, 20, 30, 40, 50, 60, 70]
    assert parts["cold"].num_rows == 0
    assert parts["train"].schema == EVENTS


def test_ts_ties_broken_by_item_id() -> None:
    # All four events at the same time: order is by item id, so 9 is test, 7 val.
    table = events([3, 3, 3, 3], [9, 2, 7, 5], [100, 100, 100, 100])
    assert names(assign_splits(table, WARM)) == ["test", "train", "val", "train"]
    # ts still dominates item id.
    table = events([3, 3, 3], [1, 2, 3], [300, 200, 100])
    assert names(assign_splits(table, WARM)) == ["test", "val", "train"]


@pytest.mark.parametrize(
    ("n", "expected"),
    [
        (1, ["test"]),
        (2, ["val", "test"]),
        (3, ["train", "val", "test"]),
        (5, ["train"] * 3 + ["val", "test"]),
        (10, ["train"] * 7 + ["val"] + ["test"] * 2),
        (15, ["train"] * 11 + ["val"] + ["test"] * 3),
        (20, ["train"] * 14 + ["val"] * 2 + ["test"] * 4),
    ],
)
def test_small_users(n: int, expected: list[str]) -> None:
    table = events([7] * n, list(range(n)), list(range(n)))
    assert names(assign_splits(table, WARM)) == expected


def test_floors_are_exact() -> None:
    # 0.29 * 100 == 28.999999999999996 and 0.57 * 100 == 56.99999999999999 in floats.
    table = events([1] * 100, list(range(100)), list(range(100)))
    codes = assign_splits(
        table, SplitConfig(test_fraction=0.29, val_fraction=0.57, cold_user_mod=0)
    )
    assert np.bincount(codes, minlength=4).tolist() == [14, 57, 29, 0]


def test_cold_users_wholly_cold() -> None:
    users = [10, 10, 10, 4, 4, 20, 30]
    table = events(users, [1, 2, 3, 1, 2, 1, 5], [1, 2, 3, 1, 2, 1, 5])
    assert names(assign_splits(table)) == ["cold"] * 3 + ["val", "test"] + ["cold"] * 2
    assert names(assign_splits(table, SplitConfig(cold_user_mod=4))) == [
        "train", "val", "test", "cold", "cold", "cold", "test"
    ]  # fmt: skip
    assert names(assign_splits(table, WARM)) == [
        "train", "val", "test", "val", "test", "test", "test"
    ]  # fmt: skip
    parts = split_events(table)
    assert parts["cold"].column("user_id").to_pylist() == [10, 10, 10, 20, 30]


def test_user_zero_is_cold() -> None:
    assert names(assign_splits(events([0, 1], [1, 1], [1, 1]))) == ["cold", "test"]


def test_empty_table() -> None:
    table = EVENTS.empty_table()
    assert assign_splits(table).shape == (0,)
    assert all(t.num_rows == 0 for t in split_events(table).values())


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="test_fraction"):
        SplitConfig(test_fraction=1.5)
    with pytest.raises(ValueError, match="cold_user_mod"):
        SplitConfig(cold_user_mod=-1)


def test_key_columns_only_and_nulls() -> None:
    table = pa.table({"user_id": pa.array([1, 1], pa.int32()), "item_id": [1, 2], "ts": [5, 6]})
    assert names(assign_splits(table)) == ["val", "test"]
    with pytest.raises(ValueError, match="'ts' has 1 nulls"):
        assign_splits(pa.table({"user_id": [1, 1], "item_id": [1, 2], "ts": [5, None]}))


# --- reference implementation --------------------------------------------------------------------


def reference_splits(table: pa.Table, cfg: SplitConfig) -> list[int]:
    """The protocol's split in plain Python, one user at a time."""
    users = table.column("user_id").to_pylist()
    items = table.column("item_id").to_pylist()
    ts = table.column("ts").to_pylist()
    by_user: dict[int, list[int]] = defaultdict(list)
    for row, user in enumerate(users):
        by_user[user].append(row)
    test_frac = Fraction(cfg.test_fraction).limit_denominator(1000)
    val_frac = Fraction(cfg.val_fraction).limit_denominator(1000)
    out = [0] * len(users)
    for user, rows in by_user.items():
        if cfg.cold_user_mod and user % cfg.cold_user_mod == 0:
            for r in rows:
                out[r] = 3
            continue
        rows.sort(key=lambda r: (ts[r], items[r], r))
        n = len(rows)
        n_test = min(n, max(1, int(test_frac * n)))
        n_val = min(n - n_test, max(1, int(val_frac * n)))
        for k, r in enumerate(rows):
            out[r] = 2 if k >= n - n_test else 1 if k >= n - n_test - n_val else 0
    return out


@pytest.mark.parametrize(
    "cfg",
    [
        SplitConfig(),
        WARM,
        SplitConfig(0.3, 0.15, 7),
        SplitConfig(0.0, 0.0, 3),
        SplitConfig(1, 1, 0),
    ],
)
def test_matches_reference_on_random_table(cfg: SplitConfig) -> None:
    rng = np.random.default_rng(42)
    n = 4000
    users = rng.integers(0, 300, n) ** 2 % 997  # skewed user sizes, ids up to 996
    table = events(users, rng.integers(0, 50, n), rng.integers(0, 40, n))  # many ties
    codes = assign_splits(table, cfg)
    assert codes.tolist() == reference_splits(table, cfg)
    parts = split_events(table, cfg)
    assert sum(t.num_rows for t in parts.values()) == n
    for part in parts.values():
        keys = list(
            zip(*(part.column(c).to_pylist() for c in ("user_id", "ts", "item_id")), strict=True)
        )
        assert keys == sorted(keys)


# --- streamed writer ------------------------------------------------------------------------------


def random_shards(folder: Path, n_shards: int = 3) -> pa.Table:
    """Write ``n_shards`` event shards with disjoint users (ids 0..499) and return them joined."""
    rng = np.random.default_rng(7)
    owner = rng.integers(0, n_shards, 500)
    tables = []
    for shard in range(n_shards):
        ids = np.flatnonzero(owner == shard)
        n = 1000 + 300 * shard
        table = events(rng.choice(ids, n), rng.integers(0, 80, n), rng.integers(0, 10_000, n))
        write_parquet(table, folder / f"part-{shard:05d}.parquet")
        tables.append(table)
    return pa.concat_tables(tables)


def test_write_splits_round_trip(tmp_path: Path) -> None:
    whole = random_shards(tmp_path / "events")
    counts = write_splits(tmp_path / "events", tmp_path / "splits", rows_per_shard=400)
    expected = split_events(whole)
    assert counts == {name: t.num_rows for name, t in expected.items()}
    assert sum(counts.values()) == whole.num_rows
    for name, table in expected.items():
        got = read_table(tmp_path / "splits" / name, "events").sort_by(
            [("user_id", "ascending"), ("ts", "ascending"), ("item_id", "ascending")]
        )
        assert got.equals(table)
        assert got.schema == EVENTS
    shards = sorted(p.name for p in (tmp_path / "splits" / "train").iterdir())
    assert len(shards) == -(-counts["train"] // 400)


def test_write_splits_empty_split_gets_empty_shard(tmp_path: Path) -> None:
    random_shards(tmp_path / "events")
    counts = write_splits(tmp_path / "events", tmp_path / "splits", WARM)
    assert counts["cold"] == 0
    assert read_table(tmp_path / "splits" / "cold", "events").num_rows == 0


def test_write_splits_rejects_user_in_two_shards(tmp_path: Path) -> None:
    folder = tmp_path / "events"
    write_parquet(events([1, 2, 5], [1, 1, 1], [1, 1, 1]), folder / "part-00000.parquet")
    write_parquet(events([3, 4], [1, 1], [1, 1]), folder / "part-00001.parquet")
    write_parquet(events([6, 2, 7], [1, 1, 1], [1, 1, 1]), folder / "part-00002.parquet")
    with pytest.raises(ValueError, match="user 2 has events in both") as err:
        write_splits(folder, tmp_path / "splits")
    message = str(err.value)
    assert str(folder / "part-00000.parquet") in message
    assert str(folder / "part-00002.parquet") in message
    assert not (tmp_path / "splits").exists()  # checked before anything is written


def test_negative_user_id_names_file(tmp_path: Path) -> None:
    path = tmp_path / "part-00000.parquet"
    write_parquet(events([3, -4], [1, 1], [1, 1]), path)
    with pytest.raises(ValueError, match="negative user id -4") as err:
        check_disjoint_users([path])
    assert str(path) in str(err.value)


def test_bitmap_grows_for_large_ids(tmp_path: Path) -> None:
    files = [tmp_path / "a.parquet", tmp_path / "b.parquet"]
    write_parquet(events([5], [1], [1]), files[0])
    write_parquet(events([10_000_000, 9_999_999], [1, 1], [1, 1]), files[1])
    check_disjoint_users(files)
    write_parquet(events([10_000_000, 5], [1, 1], [1, 1]), files[1])
    with pytest.raises(ValueError, match="user 5 has events in both"):
        check_disjoint_users(files)


# --- MovieLens-100K counts of the protocol -------------------------------------------------------


def ml100k_dir() -> Path:
    """The MovieLens-100K folder, or skip the test when it is not there."""
    default = Path(__file__).resolve().parents[2].parent / "shared/data/ml-100k"
    root = Path(os.environ.get("PINRANK_ML100K", default))
    missing = [f for f in ("u.user", "u.item", "u.data") if not (root / f).is_file()]
    if missing:
        pytest.skip(
            f"MovieLens-100K not found at {root}: missing {', '.join(missing)} "
            "(set PINRANK_ML100K to the ml-100k folder)"
        )
    return root


def test_movielens_protocol_counts(tmp_path: Path) -> None:
    raw = movielens_raw(ml100k_dir(), tmp_path / "ml")
    parts = split_events(read_table(raw / "events", "events"))
    counts = {name: t.num_rows for name, t in parts.items()}
    assert counts == {"train": 64_437, "val": 8_740, "test": 17_879, "cold": 8_944}
    assert sum(parts["test"].column("engaged").to_pylist()) == 8_426
    cold_users = set(parts["cold"].column("user_id").to_pylist())
    assert len(cold_users) == 94 and all(u % 10 == 0 for u in cold_users)
    for name in ("train", "val", "test"):
        assert cold_users.isdisjoint(parts[name].column("user_id").to_pylist())
    assert write_splits(raw / "events", tmp_path / "splits") == counts


def test_random_order_splits_each_user_in_a_fixed_pseudo_random_order() -> None:
    rng = np.random.default_rng(0)
    n = 3000
    events = pa.table({
        "user_id": rng.integers(1, 60, n), "item_id": rng.integers(0, 500, n),
        "ts": rng.integers(0, 10**6, n),
    })  # fmt: skip
    by_time = assign_splits(events, SplitConfig())
    shuffled = assign_splits(events, SplitConfig(order="random"))
    assert np.array_equal(shuffled, assign_splits(events, SplitConfig(order="random")))
    assert not np.array_equal(by_time, shuffled)
    users = events["user_id"].to_numpy()
    for u in np.unique(users):  # the same number of events per split for every user
        mine = users == u
        assert np.array_equal(np.bincount(by_time[mine], minlength=4),
                              np.bincount(shuffled[mine], minlength=4))  # fmt: skip
    # by time, test holds each user's latest events; at random, not
    ts = events["ts"].to_numpy()
    assert ts[by_time == 2].mean() > ts[shuffled == 2].mean()
    with pytest.raises(ValueError, match="order must be one of"):
        SplitConfig(order="size")
