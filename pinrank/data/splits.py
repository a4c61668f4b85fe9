"""Train / val / test / cold-start splits of an EVENTS table, as ``docs/evaluation.md`` describes.

Users with ``user_id % cold_user_mod == 0`` are the cold-start hold-out: all their events go to
``cold``. Every other (warm) user's events are sorted by ``(ts, item_id)``; the last 20% are
``test``, the 10% before them ``val``, the rest ``train`` (each at least one event, see
:func:`assign_splits`). The same code splits MovieLens and synthetic data sets, in memory
(:func:`split_events`) or streamed shard by shard (:func:`write_splits`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import pyarrow as pa

from pinrank.data.io import ShardWriter, parquet_files, read_table, write_parquet
from pinrank.data.schemas import EVENTS, check_schema

SPLITS = ("train", "val", "test", "cold")
ORDERS = ("time", "random")
TRAIN, VAL, TEST, COLD = range(4)
SORT_KEYS = [("user_id", "ascending"), ("ts", "ascending"), ("item_id", "ascending")]
_KEY_COLUMNS = ["user_id", "item_id", "ts"]


@dataclass(frozen=True)
class SplitConfig:
    """How to split events.

    Attributes:
        test_fraction: share of each warm user's events (the latest) that is test.
        val_fraction: share of each warm user's events, just before test, that is val.
        cold_user_mod: users with ``user_id % cold_user_mod == 0`` are the cold-start hold-out;
            ``0`` disables the hold-out.
        order: how a warm user's events are ordered before the last ones go to test: ``time``
            (by ``(ts, item_id)``: the protocol's) or ``random`` (a fixed pseudo-random order,
            a hash of ``(user_id, item_id, ts)``: for examples without a meaningful order,
            such as the interests of a user's first window, whose later-seen ones are rarer
            and would give val and test another share of positives than train).
    """

    test_fraction: float = 0.2
    val_fraction: float = 0.1
    cold_user_mod: int = 10
    order: str = "time"

    def __post_init__(self) -> None:
        for name in ("test_fraction", "val_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {value}")
        if self.cold_user_mod < 0:
            raise ValueError(f"cold_user_mod must be >= 0, got {self.cold_user_mod}")
        if self.order not in ORDERS:
            raise ValueError(f"order must be one of {ORDERS}, got {self.order!r}")


def _floor_share(n: np.ndarray, fraction: float) -> np.ndarray:
    """``floor(fraction * n)`` in exact integer arithmetic.

    ``fraction`` is taken as the nearest fraction with a denominator of at most 10**6, so ``0.2``
    is exactly 1/5 and ``floor(0.29 * 100)`` is 29, not the 28 that float arithmetic gives.
    """
    exact = Fraction(fraction).limit_denominator(1_000_000)
    return (n * exact.numerator) // exact.denominator


def _key_arrays(events: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``user_id``, ``item_id`` and ``ts`` of ``events`` as int64 NumPy arrays."""
    target = check_schema(events.schema, "events", "<events table>", _KEY_COLUMNS)
    for name in _KEY_COLUMNS:
        if nulls := events.column(name).null_count:
            raise ValueError(f"events column {name!r} has {nulls} nulls")
    columns = events.select(_KEY_COLUMNS).cast(target)
    users, items, ts = (columns.column(name).to_numpy() for name in _KEY_COLUMNS)
    return users, items, ts


def _warm_codes(users: np.ndarray, cfg: SplitConfig) -> np.ndarray:
    """Split codes of rows already sorted by (user, ts, item), users in contiguous runs."""
    m = len(users)
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]]) if m else np.zeros(0, np.int64)
    counts = np.diff(np.r_[starts, m])
    n_test = np.minimum(counts, np.maximum(1, _floor_share(counts, cfg.test_fraction)))
    n_val = np.minimum(counts - n_test, np.maximum(1, _floor_share(counts, cfg.val_fraction)))
    from_end = np.repeat(starts + counts, counts) - np.arange(m) - 1  # 0 for a user's last event
    n_test, n_val = np.repeat(n_test, counts), np.repeat(n_val, counts)
    codes = np.full(m, TRAIN, dtype=np.int8)
    codes[from_end < n_test + n_val] = VAL
    codes[from_end < n_test] = TEST
    return codes


def assign_splits(events: pa.Table, cfg: SplitConfig = SplitConfig()) -> np.ndarray:
    """The split of every event: 0 train, 1 val, 2 test, 3 cold (an index into :data:`SPLITS`).

    Cold users (``user_id % cfg.cold_user_mod == 0``) are wholly ``cold``. A warm user's ``n``
    events are sorted by ``(ts, item_id)`` (exact duplicates keep their row order); the last
    ``n_test = min(n, max(1, floor(test_fraction * n)))`` are test, the
    ``n_val = min(n - n_test, max(1, floor(val_fraction * n)))`` before them val, the rest train.
    Small users therefore favour test, then val: ``n = 1`` gives 1 test; ``n = 2`` gives 1 val and
    1 test; ``n = 3`` gives 1 train, 1 val, 1 test; ``n = 10`` gives 7 / 1 / 2. The floors are
    exact (see :func:`_floor_share`). Fully vectorised: one ``np.lexsort``, no loop over users.

    Args:
        events: a table with (at least) ``user_id``, ``item_id`` and ``ts`` columns, any order.
        cfg: fractions and cold-start hold-out.

    Returns:
        An int8 array of one code per row of ``events``, in the table's row order.

    Raises:
        SchemaError: a key column is missing or has a type that is not an integer.
        ValueError: a key column holds nulls.

    Example::

        >>> t = pa.table({"user_id": [1, 1, 1, 1, 20], "item_id": [5, 4, 3, 2, 1],
        ...               "ts": [10, 40, 30, 20, 0]})
        >>> assign_splits(t).tolist()
        [0, 2, 1, 0, 3]
        >>> [SPLITS[c] for c in assign_splits(t, SplitConfig(cold_user_mod=0))]
        ['train', 'test', 'val', 'train', 'test']
    """
    users, items, ts = _key_arrays(events)
    key = ts if cfg.order == "time" else _mix(users, items, ts)
    order = np.lexsort((items, key, users))
    codes = np.empty(len(users), dtype=np.int8)
    codes[order] = _warm_codes(users[order], cfg)
    if cfg.cold_user_mod:
        codes[users % cfg.cold_user_mod == 0] = COLD
    return codes


def _mix(users: np.ndarray, items: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """A fixed pseudo-random uint64 per ``(user, item, ts)`` (splitmix64 finalizer rounds)."""
    with np.errstate(over="ignore"):
        h = users.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        for part in (items, ts):
            h ^= part.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15) + (h << np.uint64(6))
            h ^= h >> np.uint64(30)
            h *= np.uint64(0xBF58476D1CE4E5B9)
            h ^= h >> np.uint64(27)
            h *= np.uint64(0x94D049BB133111EB)
            h ^= h >> np.uint64(31)
    return h


def split_events(events: pa.Table, cfg: SplitConfig = SplitConfig()) -> dict[str, pa.Table]:
    """Split ``events`` into its four parts.

    Args:
        events: an events table (all its columns are kept).
        cfg: fractions and cold-start hold-out.

    Returns:
        A table per name of :data:`SPLITS` (possibly empty), sorted by ``user_id, ts, item_id``.
    """
    codes = assign_splits(events, cfg)
    return {
        name: events.filter(pa.array(codes == code)).sort_by(SORT_KEYS)
        for code, name in enumerate(SPLITS)
    }


def _file_users(path: Path) -> np.ndarray:
    """The distinct user ids of one events file; negative ids raise ValueError naming it."""
    users = np.unique(read_table(path, "events", ["user_id"]).column("user_id").to_numpy())
    if users.size and users[0] < 0:
        raise ValueError(f"{path}: negative user id {users[0]}; ids must be >= 0")
    return users


def check_disjoint_users(files: list[Path]) -> None:
    """Check that no user has events in two of ``files``, reading only their ``user_id`` column.

    Each file's distinct ids are kept (8 bytes a user: 80 MB for 10M users, whatever the ids'
    range: hashed string ids span all of int64) and checked against the others' at the end.

    Args:
        files: events Parquet files.

    Raises:
        ValueError: a user is in two files (naming the user and both files), or a file holds a
            negative user id.
    """
    per_file = [_file_users(path) for path in files]
    if len(per_file) < 2:
        return
    users = np.concatenate(per_file)
    owner = np.repeat(np.arange(len(files)), [len(u) for u in per_file])
    order = np.argsort(users, kind="stable")
    twice = np.flatnonzero(users[order][1:] == users[order][:-1])
    if twice.size:
        first, second = order[twice[0]], order[twice[0] + 1]
        raise ValueError(
            f"user {int(users[first])} has events in both {files[owner[first]]} and "
            f"{files[owner[second]]}; per-user splitting needs all of a user's events in one shard"
        )


def write_splits(
    events_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    cfg: SplitConfig = SplitConfig(),
    rows_per_shard: int = 1_000_000,
) -> dict[str, int]:
    """Split an events data set into ``out_dir/train/``, ``val/``, ``test/`` and ``cold/``.

    Input shards are streamed one file at a time, so memory is bounded by one input shard plus
    one output shard per split. Per-user splitting needs all of a user's events in one input
    file; this is checked first (reading only ``user_id``), before anything is written. Within
    each input shard a split's rows are sorted by ``user_id, ts, item_id``. A split without rows
    gets one empty shard, so every split folder reads as a data set.

    Args:
        events_path: an events Parquet file or folder of shards.
        out_dir: folder to write the four split folders into (their old shards are replaced).
        cfg: fractions and cold-start hold-out.
        rows_per_shard: rows per output shard.

    Returns:
        The number of rows written per split, keyed by :data:`SPLITS`.

    Raises:
        ValueError: a user has events in two input files (naming the user and both files), or a
            file holds a negative user id (naming the file).
    """
    files = parquet_files(events_path)
    check_disjoint_users(files)
    out = Path(out_dir)
    writers = {name: ShardWriter(out / name, "events", rows_per_shard) for name in SPLITS}
    for path in files:
        for name, part in split_events(read_table(path, "events"), cfg).items():
            writers[name].write(part)
    counts = {}
    for name, writer in writers.items():
        counts[name] = sum(writer.close())
        if counts[name] == 0:
            write_parquet(EVENTS.empty_table(), out / name / "part-00000.parquet")
    return counts


__all__ = [
    "SPLITS",
    "SplitConfig",
    "assign_splits",
    "check_disjoint_users",
    "split_events",
    "write_splits",
]
