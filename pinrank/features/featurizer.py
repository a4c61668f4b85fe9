"""The featurizer: raw rows in, model inputs out (torchrec KeyedJaggedTensor + dense tensors).

One featurizer serves every path that feeds a torch model: DataModule batches, one row at a time,
and (later) the per-feed path where one user meets many pins. The NumPy transforms it calls are the
reference that the exported ONNX graphs are tested against.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import torch

from pinrank.features.jagged import KeyedJaggedTensor
from pinrank.features.spec import SIDES, FeatureSpec
from pinrank.features.state import FeatureState, SideArrays, cross_features, transform_side
from pinrank.features.transforms import Counts, Jagged, take_jagged

# torchrec asks torch.fx whether it is tracing on every KeyedJaggedTensor; torch answers with a
# deprecation warning that says nothing about pinrank.
logging.getLogger("torch.fx._symbolic_trace").setLevel(logging.ERROR)


@dataclass
class FeatureBatch:
    """Model inputs for ``B`` examples.

    Attributes:
        sparse: per group (``user``, ``item``, ``context``, ``cross``) a KeyedJaggedTensor whose
            keys are that group's sparse features in spec order; lengths [keys * B].
        dense: per side, float32 [B, D_side]: the side's numeric features concatenated in spec
            order (``Featurizer.dense_slices`` says which columns are which).
        labels: float32 [B] (1 = engaged) when the rows carry labels, else None.
        user_ids, item_ids: raw int64 ids [B], for metrics and exclusion of seen items.
    """

    sparse: dict[str, KeyedJaggedTensor]
    dense: dict[str, torch.Tensor]
    labels: torch.Tensor | None = None
    user_ids: torch.Tensor | None = None
    item_ids: torch.Tensor | None = None
    counts: Counts = field(default_factory=Counter)

    def __len__(self) -> int:
        return len(next(iter(self.dense.values())))

    def select(self, rows: torch.Tensor) -> FeatureBatch:
        """The examples at ``rows`` (int64 [R]), as a new batch: any order, repeats allowed.

        Example::

            >>> kjt = KeyedJaggedTensor(keys=["a", "b"], values=torch.tensor([1, 2, 3, 4, 5]),
            ...                         lengths=torch.tensor([1, 2, 0, 2]))  # a: [1] [2 3]
            >>> batch = FeatureBatch({"user": kjt}, {"user": torch.tensor([[0.0], [1.0]])})
            >>> picked = batch.select(torch.tensor([1, 1, 0]))
            >>> picked.sparse["user"].values().tolist(), picked.sparse["user"].lengths().tolist()
            ([2, 3, 2, 3, 1, 4, 5, 4, 5], [2, 2, 1, 2, 2, 0])
            >>> picked.dense["user"][:, 0].tolist()
            [1.0, 1.0, 0.0]
        """
        n, rows = len(self), rows.long()
        sparse = {}
        for group, kjt in self.sparse.items():
            keys = len(kjt.keys())
            # (key, row) slots of the new batch, key-major as in the KeyedJaggedTensor
            key_starts = torch.arange(keys, device=rows.device)[:, None] * n
            slots = (key_starts + rows[None, :]).reshape(-1)
            new_lengths = kjt.lengths()[slots].long()
            # offsets() is computed once per KeyedJaggedTensor and kept (a catalogue's
            # features are selected from at every training step)
            # value j of slot s sits at offsets[s] + j in the old values, at new_start[s] + j in
            # the new ones
            new_starts = torch.cumsum(new_lengths, 0) - new_lengths
            shift = torch.repeat_interleave(kjt.offsets()[slots].long() - new_starts, new_lengths)
            index = shift + torch.arange(len(shift), device=rows.device)
            weights = kjt.weights_or_none()
            sparse[group] = KeyedJaggedTensor(
                keys=kjt.keys(),
                values=kjt.values()[index],
                lengths=new_lengths.to(kjt.lengths().dtype),
                weights=None if weights is None else weights[index],
                stride=len(rows),
            )

        def pick(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t[rows]

        return FeatureBatch(
            sparse,
            {k: v[rows] for k, v in self.dense.items()},
            pick(self.labels),
            pick(self.user_ids),
            pick(self.item_ids),
        )

    def to(self, device: torch.device | str, non_blocking: bool = False) -> FeatureBatch:
        """The same batch on ``device`` (Lightning calls this to move batches)."""

        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device, non_blocking=non_blocking)

        return FeatureBatch(
            {k: v.to(device, non_blocking=non_blocking) for k, v in self.sparse.items()},
            {k: v.to(device, non_blocking=non_blocking) for k, v in self.dense.items()},
            move(self.labels),
            move(self.user_ids),
            move(self.item_ids),
            self.counts,
        )


@dataclass
class FeedBatch:
    """Model inputs for feeds: each user's features once, and every candidate of every feed.

    Attributes:
        users: ``U`` rows with the ``user`` side only.
        candidates: ``N`` rows with the ``item`` and ``context`` sides and the crosses of each
            candidate with its user.
        user_index: int64 [N], the row in ``users`` of each candidate's user.
    """

    users: FeatureBatch
    candidates: FeatureBatch
    user_index: torch.Tensor

    def __len__(self) -> int:
        return len(self.user_index)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> FeedBatch:
        return FeedBatch(
            self.users.to(device, non_blocking),
            self.candidates.to(device, non_blocking),
            self.user_index.to(device, non_blocking=non_blocking),
        )


class Featurizer:
    """Turns per-side Arrow rows into a :class:`FeatureBatch` following a fitted spec.

    Args:
        spec: the feature spec.
        state: its state fitted on training rows.
        crosses: compute the wide crosses (models without a wide part can skip the work).

    Example::

        >>> spec = FeatureSpec.from_dict({"features": {
        ...     "g": {"side": "user", "source": "gender", "kind": "categorical", "vocab": {}},
        ...     "q": {"side": "item", "source": "quality", "kind": "numeric"}}})
        >>> state = FeatureState({"g": {"vocab": ["F", "M"], "cardinality": 4},
        ...                       "q": {"default": [0.5], "mean": [0.0], "std": [1.0]}}, {})
        >>> batch = Featurizer(spec, state)({"user": pa.table({"gender": ["M", None, "X"]}),
        ...                                  "item": pa.table({"quality": [0.1, None, 0.3]})})
        >>> batch.sparse["user"]["g"].values().tolist(), batch.dense["item"][:, 0].tolist()
        ([3, 0, 1], [0.10000000149011612, 0.5, 0.30000001192092896])
        >>> sorted(batch.counts.items())
        [(('g', 'null'), 1), (('g', 'oov'), 1), (('q', 'null'), 1)]
    """

    def __init__(self, spec: FeatureSpec, state: FeatureState, crosses: bool = True) -> None:
        self.spec, self.state, self.crosses = spec, state, crosses
        self.sparse_keys = {s: [f.name for f in spec.side(s, sparse=True)] for s in SIDES}
        self.sparse_keys["cross"] = [c.name for c in spec.crosses]
        self.dense_slices = {side: spec.dense_slices(side) for side in SIDES}

    def dense_dim(self, side: str) -> int:
        """Width of a side's dense tensor."""
        return sum(s.stop - s.start for s in self.dense_slices[side].values())

    def _cross_kjt(self, by_name: dict[str, Jagged], rows: int) -> KeyedJaggedTensor | None:
        """The spec's crosses of the row-aligned features ``by_name`` as one KeyedJaggedTensor,
        with per-value weights when the spec has ``mean`` crosses (1 for the others). None when
        this featurizer skips crosses or no cross has both features (e.g. one side alone); an
        error when only some have."""
        wanted = self.spec.crosses if self.crosses else ()
        ready = [c for c in wanted if all(f in by_name for f in c.features)]
        if not ready:
            return None
        if len(ready) < len(wanted):
            missing = sorted({f for c in wanted for f in c.features} - set(by_name))
            raise ValueError(f"crosses need features {missing}: featurize all their sides")
        crosses = cross_features(ready, self.state, by_name)
        keys = self.sparse_keys["cross"]
        weights = None
        if self.spec.weighted_crosses:
            weights = [
                w if w is not None else np.ones(len(v), np.float32)
                for v, _, w in (crosses[k] for k in keys)
            ]
        return self._kjt(keys, {k: (v, n) for k, (v, n, _) in crosses.items()}, rows, weights)

    def __call__(
        self, tables: dict[str, pa.Table], labels: np.ndarray | None = None
    ) -> FeatureBatch:
        """Featurize row-aligned per-side tables ``{"user": ..., "item": ..., "context": ...}``."""
        counts: Counts = Counter()
        sides = {s: transform_side(self.spec, self.state, s, t, counts) for s, t in tables.items()}
        counts = +counts  # drop reasons that did not occur
        rows = next(iter(sides.values())).rows
        sparse = {s: self._kjt(self.sparse_keys[s], a.sparse, rows) for s, a in sides.items()}
        cross = self._cross_kjt({k: v for a in sides.values() for k, v in a.sparse.items()}, rows)
        if cross is not None:
            sparse["cross"] = cross
        dense = {s: self._dense(s, a) for s, a in sides.items()}
        user_ids = self._ids(tables["user"], "user_id") if "user" in tables else None
        item_ids = self._ids(tables["item"], "item_id") if "item" in tables else None
        y = None if labels is None else torch.from_numpy(np.asarray(labels, np.float32))
        return FeatureBatch(sparse, dense, y, user_ids, item_ids, counts)

    def feed(
        self,
        users: pa.Table,
        items: pa.Table,
        user_index: np.ndarray,
        context: pa.Table | None = None,
    ) -> FeedBatch:
        """Featurize feeds: ``U`` user rows once, ``N`` candidate rows (items, and their context
        when the spec has context features), candidate ``n`` belonging to user
        ``user_index[n]``. The crosses are those :meth:`__call__` computes for the same pairs.
        """
        user_index = np.asarray(user_index, np.int64)
        if len(user_index) != items.num_rows:
            raise ValueError(f"user_index has {len(user_index)} rows, items {items.num_rows}")
        if len(user_index) and (user_index.min() < 0 or user_index.max() >= users.num_rows):
            raise ValueError(f"user_index out of range for {users.num_rows} users")
        if self.spec.side("context") and context is None:
            names = sorted({f.source for f in self.spec.side("context")})
            raise ValueError(f"this spec has context features: pass context columns {names}")
        counts: Counts = Counter()
        u = transform_side(self.spec, self.state, "user", users, counts)
        cand_tables = {"item": items} | ({"context": context} if context is not None else {})
        cand = {
            s: transform_side(self.spec, self.state, s, t, counts) for s, t in cand_tables.items()
        }
        by_name = {k: v for arr in cand.values() for k, v in arr.sparse.items()}
        if self.crosses:  # the user features of crosses, gathered to their candidates
            needed = {f for c in self.spec.crosses for f in c.features if f in u.sparse}
            by_name |= {k: take_jagged(u.sparse[k], user_index) for k in needed}
        rows = len(user_index)
        cross = self._cross_kjt(by_name, rows)
        user_batch = FeatureBatch(
            {"user": self._kjt(self.sparse_keys["user"], u.sparse, u.rows)},
            {"user": self._dense("user", u)},
            user_ids=self._ids(users, "user_id"),
        )
        sparse = {s: self._kjt(self.sparse_keys[s], a.sparse, rows) for s, a in cand.items()}
        if cross is not None:
            sparse["cross"] = cross
        cand_batch = FeatureBatch(
            sparse,
            {s: self._dense(s, a) for s, a in cand.items()},
            item_ids=self._ids(items, "item_id"),
            counts=+counts,
        )
        return FeedBatch(user_batch, cand_batch, torch.from_numpy(user_index))

    def _dense(self, side: str, arrays: SideArrays) -> torch.Tensor:
        if not self.dense_slices[side]:
            return torch.zeros(arrays.rows, 0)
        return torch.from_numpy(
            np.concatenate([arrays.dense[n] for n in self.dense_slices[side]], 1)
        )

    @staticmethod
    def _ids(table: pa.Table, column: str) -> torch.Tensor | None:
        if column not in table.column_names:
            return None
        return torch.from_numpy(
            table.column(column).to_numpy(zero_copy_only=False).astype(np.int64)
        )

    @staticmethod
    def _kjt(
        keys: list[str],
        arrays: dict[str, Jagged],
        rows: int,
        weights: list[np.ndarray] | None = None,
    ) -> KeyedJaggedTensor:
        """``weights``: per key, float32 per-value weights (a weighted table's input)."""
        values = [arrays[k][0] for k in keys]
        lengths = [arrays[k][1] for k in keys]
        return KeyedJaggedTensor(
            keys=keys,
            values=torch.from_numpy(np.concatenate(values) if values else np.zeros(0, np.int64)),
            lengths=torch.from_numpy(np.concatenate(lengths) if lengths else np.zeros(0, np.int32)),
            weights=None if weights is None else torch.from_numpy(np.concatenate(weights)),
            stride=rows,
        )
