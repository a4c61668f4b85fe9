"""Lightning DataModule: featurized batches streamed from the Parquet splits.

Work is split by Parquet row group: each DataLoader worker reads its share of row groups, joins
them with users and items, and featurizes whole batches, so the main process only receives ready
:class:`~pinrank.features.featurizer.FeatureBatch` objects. A batch never spans two row groups,
which makes the set of batches independent of the number of workers (only their order changes).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from pinrank.data.examples import EntityIndex, join_examples
from pinrank.data.io import open_dataset
from pinrank.data.prepare import Prepared
from pinrank.features.featurizer import FeatureBatch, Featurizer
from pinrank.features.spec import SIDES, FeatureSpec
from pinrank.features.state import FeatureState


@dataclass(frozen=True)
class StreamConfig:
    """How a split is streamed.

    Attributes:
        batch_size: examples per batch (the last batch of a row group may be smaller).
        shuffle: shuffle row groups and rows within each row group, anew every epoch.
        seed: base seed of the shuffling; epoch ``e`` uses ``(seed, e)``.
        engaged_only: keep only engaged impressions (retrieval trains on positives).
        leave_target_out: remove each row's own item from its user's item sequences (see
            :func:`leave_target_out`); for training streams.
    """

    batch_size: int = 1024
    shuffle: bool = False
    seed: int = 0
    engaged_only: bool = False
    leave_target_out: bool = False


class EventStream(IterableDataset):
    """Featurized batches of one split's events.

    Args:
        path: the split's Parquet folder.
        featurizer: the fitted featurizer.
        users, items: id lookups over the users (with history) and items tables.
        cfg: batch size and shuffling.
    """

    def __init__(
        self,
        path: str,
        featurizer: Featurizer,
        users: EntityIndex,
        items: EntityIndex,
        cfg: StreamConfig,
    ) -> None:
        super().__init__()
        self.dataset = open_dataset(path, "events")
        self.fragments = [
            rg for frag in self.dataset.get_fragments() for rg in frag.split_by_row_group()
        ]
        self.featurizer, self.users, self.items, self.cfg = featurizer, users, items, cfg
        self._counts: dict[int, int] = {}
        self._sequences = item_sequences(featurizer.spec) if cfg.leave_target_out else []
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[FeatureBatch]:
        info = get_worker_info()
        wid, workers = (info.id, info.num_workers) if info else (0, 1)
        rank, world = _rank_world()
        order = np.arange(len(self.fragments))
        rng = np.random.default_rng([self.cfg.seed, self.epoch])
        if self.cfg.shuffle:
            rng.shuffle(order)
        for i in order[wid::workers]:
            table = self._read(i)
            perm = (
                rng.permutation(table.num_rows) if self.cfg.shuffle else np.arange(table.num_rows)
            )
            if world > 1:  # every rank takes the same number of rows, or DDP would hang
                perm = perm[rank::world][: table.num_rows // world]
            table = table.take(pa.array(perm))
            for start in range(0, table.num_rows, self.cfg.batch_size):
                yield self.featurize(table.slice(start, self.cfg.batch_size))

    def _read(self, i: int) -> pa.Table:
        table = self.fragments[i].to_table(schema=self.dataset.schema)
        if self.cfg.engaged_only:
            table = table.filter(table["engaged"])
        return table

    def featurize(self, events: pa.Table) -> FeatureBatch:
        """One batch: join events with their users and pins, then featurize."""
        tables = join_examples(events, self.users, self.items)
        if self.cfg.leave_target_out:
            tables["user"] = leave_target_out(
                tables["user"], events["item_id"].to_numpy(), self._sequences
            )
        return self.featurizer(tables, events["engaged"].to_numpy())

    def __len__(self) -> int:
        bs, (_, world) = self.cfg.batch_size, _rank_world()
        rows = [self._count(f) // world for f in self.fragments]
        return int(sum(-(-n // bs) for n in rows))

    def _count(self, fragment: ds.Fragment) -> int:
        key = id(fragment)
        if key not in self._counts:
            # a row-group fragment's count_rows() counts the whole file: read one column instead
            col = fragment.to_table(columns=["engaged"], schema=self.dataset.schema)["engaged"]
            self._counts[key] = int(pc.sum(col).as_py() or 0) if self.cfg.engaged_only else len(col)
        return self._counts[key]


def item_sequences(spec: FeatureSpec) -> list[str]:
    """User columns holding item ids: sources of user features that share the vocabulary of the
    item-side ``item_id`` feature (history, seen, ...)."""
    return sorted(
        {
            f.source
            for f in spec.side("user", sparse=True)
            if f.shares and spec[f.shares].side == "item" and spec[f.shares].source == "item_id"
        }
    )


def leave_target_out(users: pa.Table, targets: np.ndarray, columns: list[str]) -> pa.Table:
    """Remove row ``r``'s target item from its list ``columns``.

    The history columns hold the whole training period, so a training impression's own item is
    in its user's history: a model would learn to find the item in the history, a situation that
    never occurs when scoring later events (whose items are new to the user). Leaving the target
    out makes training rows look like scoring rows.

    Example::

        >>> users = pa.table({"history": [[1, 2, 3], [4], None]})
        >>> leave_target_out(users, np.array([2, 5, 1]), ["history"])["history"].to_pylist()
        [[1, 3], [4], None]
    """
    for name in columns:
        col = users.column(name).combine_chunks()
        lengths = pc.fill_null(pc.list_value_length(col), 0).to_numpy()
        row = np.repeat(np.arange(len(col)), lengths)
        values = pc.list_flatten(col).to_numpy(zero_copy_only=False)
        keep = values != targets[row]
        offsets = np.r_[0, np.cumsum(np.bincount(row[keep], minlength=len(col)))].astype(np.int32)
        new = pa.ListArray.from_arrays(
            pa.array(offsets), pa.array(values[keep], col.type.value_type), mask=col.is_null()
        )
        users = users.set_column(users.schema.get_field_index(name), name, new)
    return users


def _rank_world() -> tuple[int, int]:
    """This process's rank and the world size under torch.distributed (0, 1 without it)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _identity(batch: Any) -> Any:
    return batch


class PinrankDataModule(pl.LightningDataModule):
    """Train / val / test / cold dataloaders over a prepared data set.

    Args:
        data_dir: a prepared data set (``pinrank prepare``).
        batch_size: examples per batch.
        num_workers: DataLoader worker processes (0 = featurize in the main process).
        seed: shuffling seed for the training split.
        engaged_only: train on engaged impressions only (evaluation streams keep all).
        eval_batch_size: batch size of the val / test / cold streams.
        crosses: featurize the wide crosses (only models with a wide part need them).
        leave_target_out: in training batches, remove each impression's own item from its user's
            item sequences (they cover the whole training period; see :func:`leave_target_out`).

    Example::

        >>> dm = PinrankDataModule("data/demo/prepared", num_workers=2)  # doctest: +SKIP
        >>> dm.setup(); batch = next(iter(dm.train_dataloader()))  # doctest: +SKIP
    """

    def __init__(
        self,
        data_dir: str,
        batch_size: int = 1024,
        num_workers: int = 0,
        seed: int = 0,
        engaged_only: bool = False,
        eval_batch_size: int | None = None,
        crosses: bool = True,
        leave_target_out: bool = True,
    ) -> None:
        super().__init__()
        self.prepared = Prepared.load(data_dir)
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        self.engaged_only, self.crosses = engaged_only, crosses
        self.leave_target_out = leave_target_out
        self.eval_batch_size = eval_batch_size or batch_size
        self.featurizer: Featurizer | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.featurizer is None:
            self.featurizer = Featurizer(self.prepared.spec(), self.prepared.state(), self.crosses)
            self.users, self.items = self.prepared.indexes()
            self._catalogue = np.sort(self.items.table.column("item_id").to_numpy())

    @property
    def spec(self) -> FeatureSpec:
        self.setup()
        assert self.featurizer is not None
        return self.featurizer.spec

    @property
    def state(self) -> FeatureState:
        self.setup()
        assert self.featurizer is not None
        return self.featurizer.state

    def dense_dims(self) -> dict[str, int]:
        """Width of each side's dense tensor (what the networks are sized by)."""
        self.setup()
        assert self.featurizer is not None
        return {s: self.featurizer.dense_dim(s) for s in SIDES}

    def featurize_entities(self, side: str, ids: np.ndarray) -> FeatureBatch:
        """One side's features for entity ids (``user`` or ``item``), e.g. to embed a catalogue.

        Users carry their train-period history; unknown ids get all-missing features.
        """
        self.setup()
        assert self.featurizer is not None
        index = self.users if side == "user" else self.items
        return self.featurizer({side: index.take(np.asarray(ids, np.int64))})

    def catalogue(self) -> np.ndarray:
        """[N] int64 ids of every item in the items table, sorted."""
        self.setup()
        return self._catalogue

    def stream(self, split: str, shuffle: bool = False) -> EventStream:
        """The :class:`EventStream` of one split (``train``, ``val``, ``test`` or ``cold``)."""
        self.setup()
        assert self.featurizer is not None
        size = self.batch_size if shuffle else self.eval_batch_size
        engaged = self.engaged_only and shuffle  # evaluation streams keep every impression
        cfg = StreamConfig(
            size, shuffle, self.seed, engaged, self.leave_target_out and split == "train"
        )
        return EventStream(
            str(self.prepared.split(split)), self.featurizer, self.users, self.items, cfg
        )

    def loader(self, split: str, shuffle: bool = False) -> DataLoader:
        stream = self.stream(split, shuffle)
        if self.num_workers:
            # many small tensors per batch: file descriptors per tensor would run out
            torch.multiprocessing.set_sharing_strategy("file_system")
        if self.trainer is not None and shuffle:
            stream.set_epoch(self.trainer.current_epoch)
        return DataLoader(
            stream,
            batch_size=None,  # the stream yields whole batches
            num_workers=self.num_workers,
            collate_fn=_identity,
            persistent_workers=False,
            multiprocessing_context="fork" if self.num_workers else None,
        )

    def train_dataloader(self) -> DataLoader:
        return self.loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self.loader("val")

    def test_dataloader(self) -> DataLoader:
        return self.loader("test")
