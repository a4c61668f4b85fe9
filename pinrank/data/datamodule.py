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

from pinrank.data.examples import (
    INTEREST_BAGS,
    EntityIndex,
    interest_bags,
    join_examples,
)
from pinrank.data.io import open_dataset, read_table
from pinrank.data.prepare import Prepared
from pinrank.data.rows import (
    as_cold_start,
    interest_profiles,
    item_sequences,
    leave_event_out,
    leave_target_out,
    sampled_users,
)
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
        sampled_negatives: per impression, this many catalogue items drawn uniformly at random
            are added as "no event" negatives (label 0, the impression's user and context);
            for training streams. A drawn item may by chance be one the user engaged with.
        cold_start_rate: share of rows whose user is shown as a new user would be (see
            :func:`as_cold_start`), so that the model learns to score users it knows only by
            their sign-up attributes; for training streams (``1.0``: every row, for evaluation).
        leave_stats_out: remove each row from its pin's train counts (:func:`leave_event_out`);
            for training streams.
        shard_ranks: under torch.distributed, each rank streams its own equal share of rows
            (the Trainer's loaders); otherwise every row is streamed (reports, predictions).
        user_fraction: stream only the events of this share of users, the same users in every
            split and run (:func:`sampled_users`); 1.0 = every event.
    """

    batch_size: int = 1024
    shuffle: bool = False
    seed: int = 0
    engaged_only: bool = False
    leave_target_out: bool = False
    sampled_negatives: int = 0
    cold_start_rate: float = 0.0
    leave_stats_out: bool = False
    shard_ranks: bool = False
    user_fraction: float = 1.0


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
        # training rows leave their own pin out of these pin columns, and rebuild the interest
        # profiles read from them
        self._bags = interest_profiles(featurizer.spec) if cfg.leave_target_out else []
        self._sequences = sorted(
            {*item_sequences(featurizer.spec), *(INTEREST_BAGS[b] for b in self._bags)}
            if cfg.leave_target_out
            else []
        )
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[FeatureBatch]:
        info = get_worker_info()
        wid, workers = (info.id, info.num_workers) if info else (0, 1)
        rank, world = self._rank_world()
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
                yield self.featurize(table.slice(start, self.cfg.batch_size), rng)

    def _read(self, i: int) -> pa.Table:
        table = self.fragments[i].to_table(schema=self.dataset.schema)
        keep = self._keep(table)
        return table if keep is None else table.filter(pa.array(keep))

    def _keep(self, events: pa.Table) -> np.ndarray | None:
        """The rows of ``events`` this stream keeps (engaged only, the sampled users' only);
        None: every row."""
        keep = None
        if self.cfg.engaged_only:
            keep = events["engaged"].to_numpy(zero_copy_only=False).astype(bool)
        if self.cfg.user_fraction < 1.0:
            users = sampled_users(events["user_id"].to_numpy(), self.cfg.user_fraction)
            keep = users if keep is None else keep & users
        return keep

    def featurize(self, events: pa.Table, rng: np.random.Generator | None = None) -> FeatureBatch:
        """One batch: join events with their users and pins, then featurize.

        With ``cfg.sampled_negatives`` and an ``rng``, the batch grows by that many sampled
        "no event" rows per impression (after the real ones).
        """
        real = events.num_rows
        if self.cfg.sampled_negatives and rng is not None:
            events = self._with_sampled_negatives(events, rng)
        tables = join_examples(events, self.users, self.items)
        if self.cfg.leave_target_out:
            users = leave_target_out(tables["user"], events["item_id"].to_numpy(), self._sequences)
            tables["user"] = interest_bags(users, self.items, self._bags)
        if self.cfg.leave_stats_out:
            tables["item"] = leave_event_out(
                tables["item"], events["engaged"].to_numpy(zero_copy_only=False), real
            )
        if self.cfg.cold_start_rate and rng is not None:
            cold = rng.random(events.num_rows) < self.cfg.cold_start_rate
            tables["user"] = as_cold_start(tables["user"], cold)
        return self.featurizer(tables, events["engaged"].to_numpy())

    def _with_sampled_negatives(self, events: pa.Table, rng: np.random.Generator) -> pa.Table:
        n, catalogue = self.cfg.sampled_negatives, self.items.sorted
        copies = events.take(pa.array(np.tile(np.arange(events.num_rows), n)))
        items = catalogue[rng.integers(0, len(catalogue), size=copies.num_rows)]
        for name, value in (("item_id", items), ("engaged", np.zeros(copies.num_rows, bool))):
            i = copies.schema.get_field_index(name)
            copies = copies.set_column(
                i, copies.schema.field(i), pa.array(value, copies.schema.field(i).type)
            )
        return pa.concat_tables([events, copies])

    def __len__(self) -> int:
        bs, (_, world) = self.cfg.batch_size, self._rank_world()
        rows = [self._count(f) // world for f in self.fragments]
        return int(sum(-(-n // bs) for n in rows))

    def _rank_world(self) -> tuple[int, int]:
        return _rank_world() if self.cfg.shard_ranks else (0, 1)

    def _count(self, fragment: ds.Fragment) -> int:
        key = id(fragment)
        if key not in self._counts:
            # a row-group fragment's count_rows() counts the whole file: read columns instead
            table = fragment.to_table(columns=["engaged", "user_id"], schema=self.dataset.schema)
            keep = self._keep(table)
            self._counts[key] = table.num_rows if keep is None else int(keep.sum())
        return self._counts[key]


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
        sampled_negatives: in training batches, add this many uniformly sampled "no event"
            items per impression as negatives (see :class:`StreamConfig`); 0 = off.
        cold_start_rate: in training batches, the share of rows shown with their user as a new
            user (:func:`as_cold_start`); 0 = off.
        leave_stats_out: in training batches, remove each impression from its pin's train
            counts (:func:`leave_event_out`).
        eval_users: evaluate (val, test and cold streams, :meth:`eval_events`) on this share
            of users (:func:`sampled_users`), to bound evaluation on large data; 1.0 = all.

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
        sampled_negatives: int = 0,
        cold_start_rate: float = 0.0,
        leave_stats_out: bool = False,
        eval_users: float = 1.0,
    ) -> None:
        super().__init__()
        sampled_users(np.zeros(0, np.int64), eval_users)  # checks the fraction
        self.eval_users = eval_users
        if not 0.0 <= cold_start_rate < 1.0:
            raise ValueError(f"cold_start_rate must be in [0, 1), got {cold_start_rate}")
        self.cold_start_rate, self.leave_stats_out = cold_start_rate, leave_stats_out
        if sampled_negatives < 0:
            raise ValueError(f"sampled_negatives must be >= 0, got {sampled_negatives}")
        self.sampled_negatives = sampled_negatives
        self.prepared = Prepared.load(data_dir)
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        self.engaged_only, self.crosses = engaged_only, crosses
        self.leave_target_out = leave_target_out
        self.eval_batch_size = eval_batch_size or batch_size
        self.featurizer: Featurizer | None = None
        self._catalogue_features: FeatureBatch | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.featurizer is None:
            self.featurizer = Featurizer(self.prepared.spec(), self.prepared.state(), self.crosses)
            self.users, self.items = self.prepared.indexes()

    @staticmethod
    def of(trainer: Any) -> PinrankDataModule:
        """The PinrankDataModule a Lightning trainer is fitting on (a clear error otherwise)."""
        dm = getattr(trainer, "datamodule", None)
        if not isinstance(dm, PinrankDataModule):
            raise TypeError(f"pinrank tasks train on a PinrankDataModule, not {type(dm).__name__}")
        return dm

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

    def catalogue_features(self, ids: np.ndarray) -> FeatureBatch:
        """The item features of catalogue ids (every id must be in the items table), taken from
        the whole catalogue featurized once and kept: what :meth:`featurize_entities` returns
        for them (the featurizer works row by row), without featurizing them again at every
        training step (the two-tower model's sampled negatives)."""
        self.setup()
        if self._catalogue_features is None:  # in the items table's row order
            ids_in_table = self.items.table.column(self.items.id_column).to_numpy()
            self._catalogue_features = self.featurize_entities("item", ids_in_table)
        rows = self.items.rows(np.asarray(ids, np.int64))
        if (rows < 0).any():
            raise KeyError(
                f"item ids {np.asarray(ids)[rows < 0][:5].tolist()} are not in the catalogue"
            )
        return self._catalogue_features.select(torch.from_numpy(rows))

    def catalogue(self) -> np.ndarray:
        """[N] int64 ids of every item in the items table, sorted."""
        self.setup()
        return self.items.sorted

    def stream(
        self,
        split: str,
        shuffle: bool = False,
        as_new_users: bool = False,
        shard_ranks: bool = False,
        user_fraction: float | None = None,
    ) -> EventStream:
        """The :class:`EventStream` of one split (``train``, ``val``, ``test`` or ``cold``).

        ``as_new_users``: every user is shown as a new user would be (:func:`as_cold_start`),
        e.g. to measure cold-start quality on validation events. ``shard_ranks``: under
        torch.distributed, stream this rank's share only (the Trainer's loaders do).
        ``user_fraction``: the share of users whose events it streams (:func:`sampled_users`);
        by default every user's in train, ``eval_users`` in the others.
        """
        self.setup()
        assert self.featurizer is not None
        size = self.batch_size if shuffle else self.eval_batch_size
        engaged = self.engaged_only and shuffle  # evaluation streams keep every impression
        train = split == "train"
        cfg = StreamConfig(
            size,
            shuffle,
            self.seed,
            engaged,
            self.leave_target_out and train,
            self.sampled_negatives if train and shuffle else 0,
            1.0 if as_new_users else self.cold_start_rate if train and shuffle else 0.0,
            self.leave_stats_out and train,
            shard_ranks,
            user_fraction if user_fraction is not None else 1.0 if train else self.eval_users,
        )
        return EventStream(
            str(self.prepared.split(split)), self.featurizer, self.users, self.items, cfg
        )

    def eval_events(self, split: str, columns: list[str] | None = None) -> pa.Table:
        """A split's events as its streams give them: for val, test and cold, only the
        ``eval_users`` sample's; the train split whole."""
        events = read_table(self.prepared.split(split), "events", columns)
        if split == "train" or self.eval_users == 1.0:
            return events
        keep = sampled_users(events["user_id"].to_numpy(), self.eval_users)
        return events.filter(pa.array(keep))

    def loader(self, split: str, shuffle: bool = False) -> DataLoader:
        stream = self.stream(split, shuffle, shard_ranks=True)
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
