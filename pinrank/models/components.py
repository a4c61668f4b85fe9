"""Building blocks shared by the networks: the sparse arch and MLPs.

Networks are plain ``nn.Module``s built from the feature spec and its fitted state (which give
the embedding tables' sizes); losses, metrics and optimisers live in ``pinrank.tasks``.

The sparse arch pools embedding tables over a ``KeyedJaggedTensor`` with one of two backends
of the same interface, parameter names and checkpoint format (``ebc.embedding_bags.t_<feature>
.weight``), chosen by :func:`set_sparse_backend` (``train.py sparse_arch=...``):

- ``torchrec``: torchrec's ``EmbeddingBagCollection``, what its sharded model-parallel training
  (``DistributedModelParallel``) shards;
- ``torch``: plain ``nn.EmbeddingBag``s, for where torchrec does not import (macOS, a CUDA
  version it has no build for, the lent GPU machine's image). Same initialisation from the same
  seed, same pooling: the same losses (tests/models/test_sparse_arch.py).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from pinrank.features.jagged import TORCHREC, KeyedJaggedTensor
from pinrank.features.spec import FeatureSpec
from pinrank.features.state import FeatureState

BACKENDS = ("torchrec", "torch")
_backend = "torchrec" if TORCHREC else "torch"
_sparse_min_rows: int | None = None  # tables of at least this many rows get sparse gradients


def set_embedding_updates(mode: str, min_rows: int = 65_536) -> None:
    """How the tables of :class:`SparseArch` built from now on are updated: ``dense`` (every
    row at every step: the configured optimiser sees a dense gradient) or ``sparse`` (tables of
    at least ``min_rows`` rows return sparse gradients, for lazy updates of the looked-up rows
    only: :mod:`pinrank.tasks.optim`; the ``torch`` backend only)."""
    global _sparse_min_rows
    if mode not in ("dense", "sparse"):
        raise ValueError(f"embedding_updates {mode!r}: expected dense or sparse")
    if mode == "sparse" and _backend != "torch":
        raise ValueError("embedding_updates=sparse needs sparse_arch=torch")
    _sparse_min_rows = min_rows if mode == "sparse" else None


def embedding_updates() -> str:
    """How the tables built from now on are updated: ``dense`` or ``sparse``."""
    return "sparse" if _sparse_min_rows is not None else "dense"


def set_sparse_backend(name: str) -> str:
    """Which backend the :class:`SparseArch` built from now on use: ``torchrec``, ``torch``, or
    ``auto`` (torchrec where it imports). Returns the backend chosen."""
    global _backend
    if name == "auto":
        name = "torchrec" if TORCHREC else "torch"
    if name not in BACKENDS:
        raise ValueError(f"sparse_arch {name!r}: expected auto or one of {BACKENDS}")
    if name == "torchrec" and not TORCHREC:
        raise ImportError("sparse_arch=torchrec, but torchrec does not import here: use torch")
    _backend = name
    return name


def sparse_backend() -> str:
    """The backend new :class:`SparseArch` use."""
    return _backend


class _PooledBag(torch.autograd.Function):
    """``F.embedding_bag`` (sum or mean, offsets with the last one) with a dense backward that
    adds each value's gradient row into the table (``index_add_``) instead of sorting the
    values as ``aten::_embedding_bag_dense_backward`` does."""

    @staticmethod
    def forward(
        ctx: Any,
        weight: torch.Tensor,
        values: torch.Tensor,
        offsets: torch.Tensor,
        per_sample_weights: torch.Tensor | None,
        mean: bool,
    ) -> torch.Tensor:
        out = torch.nn.functional.embedding_bag(
            values, weight, offsets, mode="mean" if mean else "sum",
            per_sample_weights=per_sample_weights, include_last_offset=True,
        )  # fmt: skip
        ctx.save_for_backward(weight, values, offsets, per_sample_weights)
        ctx.mean = mean
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        weight, values, offsets, psw = ctx.saved_tensors
        lengths = offsets[1:] - offsets[:-1]
        scale = grad
        if ctx.mean:
            scale = grad / lengths.clamp(min=1).to(grad.dtype)[:, None]
        per_value = scale.repeat_interleave(lengths, dim=0, output_size=values.shape[0])
        grad_psw = None
        if psw is not None:
            if ctx.needs_input_grad[3]:
                grad_psw = (per_value * weight[values].to(per_value.dtype)).sum(dim=1)
            per_value = per_value * psw[:, None].to(per_value.dtype)
        table = grad.new_zeros(weight.shape)
        table.index_add_(0, values, per_value.to(table.dtype))
        return table, None, None, grad_psw, None


def pooled_bag(
    weight: torch.Tensor,
    values: torch.Tensor,
    offsets: torch.Tensor,
    per_sample_weights: torch.Tensor | None = None,
    mean: bool = False,
) -> torch.Tensor:
    """[bags, dim]: ``weight``'s rows at ``values`` summed (or averaged, ``mean``) per bag
    (``offsets`` with the last one), each times its ``per_sample_weights``; the backward adds
    the rows' gradients without sorting (:class:`_PooledBag`)."""
    out = _PooledBag.apply(weight, values, offsets, per_sample_weights, mean)
    assert isinstance(out, torch.Tensor)
    return out


class EmbeddingBags(nn.Module):
    """The ``torch`` backend: one ``nn.EmbeddingBag`` per table under ``embedding_bags``
    (torchrec's ``EmbeddingBagCollection`` layout and parameter names), pooled in table order.

    Initialised as torchrec initialises its collection (each bag's own init, then uniform in
    +-sqrt(1 / rows) table by table), so that the same seed gives the same weights.
    """

    def __init__(
        self, tables: Sequence[TableSpec], weighted: bool, sparse_min_rows: int | None = None
    ) -> None:
        super().__init__()
        self.weighted = weighted
        self.features = [t.feature for t in tables]
        self.embedding_bags = nn.ModuleDict(
            {
                f"t_{t.feature}": nn.EmbeddingBag(
                    t.num_embeddings,
                    t.embedding_dim,
                    mode="mean" if t.pooling == "mean" else "sum",
                    include_last_offset=True,
                    sparse=sparse_min_rows is not None and t.num_embeddings >= sparse_min_rows,
                )
                for t in tables
            }
        )
        for t, bag in zip(tables, self.bags(), strict=True):
            bound = math.sqrt(1.0 / t.num_embeddings)
            nn.init.uniform_(bag.weight, -bound, bound)

    def bags(self) -> list[nn.EmbeddingBag]:
        return [b for b in self.embedding_bags.values() if isinstance(b, nn.EmbeddingBag)]

    def forward(self, features: KeyedJaggedTensor) -> torch.Tensor:
        keys, rows = features.keys(), features.stride()
        if rows == 0:
            width = sum(b.embedding_dim for b in self.bags())
            return torch.zeros(0, width, device=features.values().device)
        offsets = features.offsets()  # key k's rows: offsets[k * rows : (k + 1) * rows + 1]
        bounds = offsets[::rows].tolist()  # where each key's values start, and the end
        position = {k: i for i, k in enumerate(keys)}
        values, weights = features.values(), features.weights_or_none()
        pooled = []
        for feature, bag in zip(self.features, self.bags(), strict=True):
            i = position[feature]
            start, end = bounds[i], bounds[i + 1]
            own = offsets[i * rows : (i + 1) * rows + 1] - start
            w = weights[start:end] if self.weighted and weights is not None else None
            if bag.sparse:
                pooled.append(bag(values[start:end], own, per_sample_weights=w).float())
            else:
                bagged = pooled_bag(bag.weight, values[start:end], own, w, bag.mode == "mean")
                pooled.append(bagged.float())
        return torch.cat(pooled, dim=1)


@dataclass(frozen=True)
class TableSpec:
    """One embedding table: a sparse feature's name, rows, width and pooling."""

    feature: str
    num_embeddings: int
    embedding_dim: int
    pooling: str = "mean"


def tables_for(
    spec: FeatureSpec,
    state: FeatureState,
    side: str,
    embedding_dim: int | None = None,
    exclude: Sequence[str] = (),
) -> list[TableSpec]:
    """Tables of one side's sparse features, sized by the fitted state.

    Args:
        spec / state: the feature spec and its fitted state.
        side: ``user``, ``item`` or ``context``.
        embedding_dim: one width for every table; ``None`` uses each feature's ``embedding_dim``.
        exclude: features to leave out (e.g. ``user_id`` for a cold-start-only tower).
    """
    return [
        TableSpec(
            f.name,
            state.cardinality(f.name),
            embedding_dim
            or (spec[f.shares] if f.shares else f).embedding_dim,  # shared: same width
            f.pooling,
        )
        for f in spec.side(side, sparse=True)
        if f.name not in exclude
    ]


class SparseArch(nn.Module):
    """Pooled embeddings of sparse features: KeyedJaggedTensor -> [B, sum of widths]
    (``weighted``: the sum of each bag's rows times the KeyedJaggedTensor's per-value weights).

    Example::

        >>> arch = SparseArch([TableSpec("g", 4, 3), TableSpec("tags", 10, 2, "sum")])
        >>> kjt = KeyedJaggedTensor(keys=["g", "tags"], values=torch.tensor([1, 2, 5, 6, 7]),
        ...                         lengths=torch.tensor([1, 1, 2, 1]))
        >>> arch(kjt).shape
        torch.Size([2, 5])
    """

    def __init__(
        self, tables: Sequence[TableSpec], init_std: float = 0.05, weighted: bool = False
    ) -> None:
        super().__init__()
        if weighted and any(t.pooling != "sum" for t in tables):
            raise ValueError("a weighted SparseArch pools by weighted sums: every table 'sum'")
        self.tables, self.weighted = list(tables), weighted
        self.output_dim = sum(t.embedding_dim for t in self.tables)
        self.backend = _backend
        self.ebc: Any = (
            self._torchrec(self.tables, weighted)
            if self.backend == "torchrec"
            else EmbeddingBags(self.tables, weighted, _sparse_min_rows)
        )
        for t in self.tables:
            nn.init.normal_(self.weight(t.feature), std=init_std)

    @staticmethod
    def _torchrec(tables: Sequence[TableSpec], weighted: bool) -> nn.Module:
        from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, PoolingType

        return EmbeddingBagCollection(
            tables=[
                EmbeddingBagConfig(
                    num_embeddings=t.num_embeddings,
                    embedding_dim=t.embedding_dim,
                    name=f"t_{t.feature}",
                    feature_names=[t.feature],
                    pooling=PoolingType.MEAN if t.pooling == "mean" else PoolingType.SUM,
                )
                for t in tables
            ],
            is_weighted=weighted,  # the KeyedJaggedTensor's per-value weights scale the rows
            device=torch.device("cpu"),
        )

    def weight(self, feature: str) -> nn.Parameter:
        """The embedding table of ``feature``."""
        return self.ebc.embedding_bags[f"t_{feature}"].weight

    def tie(self, feature: str, weight: nn.Parameter) -> None:
        """Make ``feature`` look up rows of ``weight`` (another arch's table of the same shape)."""
        own = self.weight(feature)
        if own.shape != weight.shape:
            raise ValueError(
                f"cannot tie {feature!r}: shape {tuple(own.shape)} vs {tuple(weight.shape)}"
            )
        self.ebc.embedding_bags[f"t_{feature}"].weight = weight

    def forward(self, features: KeyedJaggedTensor) -> torch.Tensor:
        if not self.tables:
            return torch.zeros(features.stride(), 0, device=features.values().device)
        if self.backend == "torch":
            return self.ebc(features)  # type: ignore[no-any-return,unused-ignore]
        pooled = self.ebc(features)
        order = [t.feature for t in self.tables]
        if pooled.keys() == order:
            return pooled.values()  # (B, sum of widths), in table order
        # a sharded collection (trainer=torchrec_dmp) gives its features in the plan's order
        return torch.cat([pooled[f] for f in order], dim=1)


def tie_shared(spec: FeatureSpec, user: SparseArch, item: SparseArch) -> None:
    """Make every user feature that ``shares`` an item feature's vocabulary (the engaged history
    and ``item_id``) look up the item arch's table itself: one parameter, trained by both."""
    owners = {t.feature for t in item.tables}
    for t in user.tables:
        owner = spec[t.feature].shares
        if owner in owners:
            user.tie(t.feature, item.weight(owner))


def mlp(dims: Sequence[int], dropout: float = 0.0, last_activation: bool = False) -> nn.Sequential:
    """Linear layers ``dims[0] -> ... -> dims[-1]`` with ReLU (and dropout) between them."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(dims)):
        layers.append(nn.Linear(a, b))
        if i < len(dims) - 2 or last_activation:
            layers.append(nn.ReLU())
            if dropout:
                layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)
