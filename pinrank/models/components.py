"""Building blocks shared by the networks: the sparse arch (torchrec) and MLPs.

Networks are plain ``nn.Module``s built from the feature spec and its fitted state (which give
the embedding tables' sizes); losses, metrics and optimisers live in ``pinrank.tasks``.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, PoolingType
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from pinrank.features.spec import FeatureSpec
from pinrank.features.state import FeatureState


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
        self.ebc = EmbeddingBagCollection(
            tables=[
                EmbeddingBagConfig(
                    num_embeddings=t.num_embeddings,
                    embedding_dim=t.embedding_dim,
                    name=f"t_{t.feature}",
                    feature_names=[t.feature],
                    pooling=PoolingType.MEAN if t.pooling == "mean" else PoolingType.SUM,
                )
                for t in self.tables
            ],
            is_weighted=weighted,  # the KeyedJaggedTensor's per-value weights scale the rows
            device=torch.device("cpu"),
        )
        for bag in self.ebc.embedding_bags.values():
            nn.init.normal_(bag.weight, std=init_std)

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
        return self.ebc(features).values()  # (B, sum of widths), in table order


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
