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
import pyarrow.dataset as ds
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from pinrank.data.examples import EntityIndex, join_examples
from pinrank.data.io import open_dataset
from pinrank.data.prepare import Prepared
from pinrank.features.featurizer import FeatureBatch, Featurizer


@dataclass(frozen=True)
class StreamConfig:
    """How a split is streamed.

    Attributes:
        batch_size: examples per batch (the last batch of a row group may be smaller).
        shuffle: shuffle row groups and rows within each row group, anew every epoch.
        seed: base seed of the shuffling; epoch ``e`` uses ``(seed, e)``.
    """

    batch_size: int = 1024
    shuffle: bool = False
    seed: int = 0


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
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[FeatureBatch]:
        info = get_worker_info()
        wid, workers = (info.id, info.num_workers) if info else (0, 1)
        order = np.arange(len(self.fragments))
        rng = np.random.default_rng([self.cfg.seed, self.epoch])
        if self.cfg.shuffle:
            rng.shuffle(order)
        for i in order[wid::workers]:
            table = self.fragments[i].to_table(schema=self.dataset.schema)
            if self.cfg.shuffle:
                table = table.take(pa.array(rng.permutation(table.num_rows)))
            for start in range(0, table.num_rows, self.cfg.batch_size):
                yield self.featurize(table.slice(start, self.cfg.batch_size))

    def featurize(self, events: pa.Table) -> FeatureBatch:
        """One batch: join events with their users and pins, then featurize."""
        batch = self.featurizer(
            join_examples(events, self.users, self.items), events["engaged"].to_numpy()
        )
        return batch

    def __len__(self) -> int:
        bs = self.cfg.batch_size
        return int(sum(-(-f.count_rows() // bs) for f in self.fragments))


def _identity(batch: Any) -> Any:
    return batch


class PinrankDataModule(pl.LightningDataModule):
    """Train / val / test / cold dataloaders over a prepared data set.

    Args:
        data_dir: a prepared data set (``pinrank prepare``).
        batch_size: examples per batch.
        num_workers: DataLoader worker processes (0 = featurize in the main process).
        seed: shuffling seed for the training split.

    Example::

        >>> dm = PinrankDataModule("data/demo/prepared", num_workers=2)  # doctest: +SKIP
        >>> dm.setup(); batch = next(iter(dm.train_dataloader()))  # doctest: +SKIP
    """

    def __init__(
        self, data_dir: str, batch_size: int = 1024, num_workers: int = 0, seed: int = 0
    ) -> None:
        super().__init__()
        self.prepared = Prepared.load(data_dir)
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        self.featurizer: Featurizer | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.featurizer is None:
            self.featurizer = Featurizer(self.prepared.spec(), self.prepared.state())
            self.users, self.items = self.prepared.indexes()

    def stream(self, split: str, shuffle: bool = False) -> EventStream:
        """The :class:`EventStream` of one split (``train``, ``val``, ``test`` or ``cold``)."""
        self.setup()
        assert self.featurizer is not None
        cfg = StreamConfig(self.batch_size, shuffle, self.seed)
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


def dataset_rows(path: str) -> int:
    """Rows of a Parquet folder, from footers only."""
    return int(ds.dataset(path, format="parquet").count_rows())
