"""From a raw data set (users, items, events) to a prepared one that training reads.

Layout of a prepared folder::

    <out>/splits/{train,val,test,cold}/part-*.parquet  events, the protocol's splits
    <out>/history/part-00000.parquet                  per user: history, seen, last_ts
    <out>/item_stats/part-00000.parquet               per item: train_events, train_engaged, mean_ts
    <out>/features/spec.yaml, state.json              the spec and its state fitted on train
    <out>/prepared.json                               paths, split sizes, value counts

Raw users and items stay where they are (``raw`` in ``prepared.json``): they are read, never
rewritten. Everything fitted or derived (history, item statistics, vocabularies, feature
statistics) sees training events only; the derived columns are joined to users and items and the
feature spec can use them like any other column.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from pinrank.data.examples import (
    ITEM_INTERESTS,
    EntityIndex,
    interest_bags,
    item_stats,
    join_columns,
    user_history,
)
from pinrank.data.io import iter_batches, open_dataset, read_table, write_parquet
from pinrank.data.splits import SplitConfig, write_splits
from pinrank.features.spec import FeatureSpec
from pinrank.features.state import FeatureState, fit


@dataclass(frozen=True)
class Prepared:
    """Paths of a prepared data set (see module docstring) and how to load its parts."""

    root: Path
    raw: Path

    @property
    def state_path(self) -> Path:
        return self.root / "features" / "state.json"

    @property
    def spec_path(self) -> Path:
        return self.root / "features" / "spec.yaml"

    def split(self, name: str) -> Path:
        return self.root / "splits" / name

    def spec(self) -> FeatureSpec:
        return FeatureSpec.from_yaml(self.spec_path)

    def fingerprint(self) -> str:
        """sha256 over the training split's files and the fitted state: what a model saw."""
        from pinrank.runs import data_fingerprint

        return data_fingerprint([*sorted(self.split("train").rglob("*.parquet")), self.state_path])

    def state(self) -> FeatureState:
        return FeatureState.load(self.state_path)

    def users(self) -> pa.Table:
        """All users with their train-derived columns (``history``, ``seen``, ``last_ts``)."""
        hist = read_table_plain(self.root / "history")
        return join_columns(read_table(self.raw / "users", "users"), hist)

    def items(self) -> pa.Table:
        """All items with their train-derived columns (``train_events``, ``mean_ts``, ...)."""
        stats = read_table_plain(self.root / "item_stats")
        return join_columns(read_table(self.raw / "items", "items"), stats)

    def indexes(self) -> tuple[EntityIndex, EntityIndex]:
        """Id lookups over users (with history) and items, for joining events."""
        return EntityIndex(self.users(), "user_id"), EntityIndex(self.items(), "item_id")

    @classmethod
    def load(cls, root: str | Path) -> Prepared:
        root = Path(root)
        meta = root / "prepared.json"
        if not meta.exists():
            raise FileNotFoundError(
                f"{root} is not a prepared data set (no prepared.json); run `pinrank prepare`"
            )
        return cls(root, Path(json.loads(meta.read_text())["raw"]))


def read_table_plain(path: Path) -> pa.Table:
    """A Parquet folder that is not one of the three schema tables (history)."""
    return ds.dataset(str(path), format="parquet").to_table()


def _train_rows(
    raw: Path, table: str, id_col: str, ids: np.ndarray, extra: pa.Table | None
) -> Iterator[pa.RecordBatch]:
    """Stream the rows of ``table`` whose id is in ``ids`` (the training entities)."""
    value_set = pa.array(ids, pa.int64())
    for batch in iter_batches(raw / table, table, filter=pc.is_in(ds.field(id_col), value_set)):
        if extra is not None:
            batch = (
                join_columns(pa.Table.from_batches([batch]), extra).combine_chunks().to_batches()[0]
            )
        yield batch


def prepare(
    raw: str | Path,
    out: str | Path,
    spec_path: str | Path,
    split: SplitConfig | None = None,
    history_len: int = 100,
) -> Prepared:
    """Split events, derive users' train history and fit the feature spec on training rows.

    Args:
        raw: folder with ``users/``, ``items/``, ``events/`` (synthetic or imported).
        out: folder for the prepared data set (replaced if it exists).
        spec_path: the feature spec YAML (``conf/features/*.yaml``).
        split: the split protocol.
        history_len: engaged train pins kept per user for the ``history`` column.

    Returns:
        The :class:`Prepared` data set.
    """
    raw, out = Path(raw).resolve(), Path(out)
    spec = FeatureSpec.from_yaml(spec_path)  # fail on a bad spec before any work
    for table in ("users", "items", "events"):
        open_dataset(raw / table, table)  # fail on a bad file before any work
    if out.exists():
        shutil.rmtree(out)
    split = split or SplitConfig()
    sizes = write_splits(raw / "events", out / "splits", split)
    train = Prepared(out, raw).split("train")
    hist = user_history(
        iter_batches(train, "events", ["user_id", "item_id", "ts", "engaged"]), history_len
    )
    if ITEM_INTERESTS in open_dataset(raw / "items", "items").schema.names:
        items = read_table(raw / "items", "items", ["item_id", ITEM_INTERESTS])
        hist = interest_bags(hist, EntityIndex(items, "item_id"))  # else no interest profiles
    write_parquet(hist, out / "history" / "part-00000.parquet")
    stats = item_stats(iter_batches(train, "events", ["user_id", "item_id", "ts", "engaged"]))
    write_parquet(stats, out / "item_stats" / "part-00000.parquet")
    train_users = np.unique(read_table(train, "events", ["user_id"])["user_id"].to_numpy())
    train_items = np.unique(read_table(train, "events", ["item_id"])["item_id"].to_numpy())
    state = fit(
        spec,
        {
            "user": _train_rows(raw, "users", "user_id", train_users, hist),
            "item": _train_rows(raw, "items", "item_id", train_items, stats),
            "context": iter_batches(train, "events"),
        },
    )
    state.save(out / "features" / "state.json")
    shutil.copyfile(spec_path, out / "features" / "spec.yaml")
    meta = {
        "raw": str(raw),
        "splits": sizes,
        "split_config": asdict(split),
        "history_len": history_len,
    }
    (out / "prepared.json").write_text(json.dumps(meta, indent=2))
    return Prepared(out, raw)
