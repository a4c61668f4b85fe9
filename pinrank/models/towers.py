"""The two-tower retrieval network: a user tower and an item tower into one embedding space.

Each tower pools its side's sparse features with a :class:`SparseArch` (its sparse front end),
concatenates the side's dense features, and maps them through an MLP to an L2-normalised
embedding (:meth:`Tower.head`, the part that training and the exported graph share). The score
of a (user, pin) pair is their inner product divided by a temperature.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pinrank.features.featurizer import FeatureBatch
from pinrank.features.jagged import KeyedJaggedTensor
from pinrank.features.spec import FeatureSpec
from pinrank.features.state import FeatureState
from pinrank.models.components import SparseArch, TableSpec, mlp, tables_for
from pinrank.models.components import tie_shared as tie_shared_tables


@dataclass(frozen=True)
class TowerConfig:
    """Shape of one tower.

    Attributes:
        hidden: widths of the hidden layers.
        output_dim: width of the embedding.
        embedding_dim: one width for all tables (``None``: each feature's own).
        dropout: dropout between hidden layers.
        exclude: sparse features the tower leaves out.
    """

    hidden: tuple[int, ...] = (256,)
    output_dim: int = 64
    embedding_dim: int | None = None
    dropout: float = 0.0
    exclude: tuple[str, ...] = ()


class Tower(nn.Module):
    """Sparse + dense features of one side -> L2-normalised embedding [B, output_dim].

    Args:
        tables: the side's embedding tables.
        dense_dim: width of the side's dense tensor.
        cfg: hidden widths, output width, dropout.
    """

    def __init__(self, tables: Sequence[TableSpec], dense_dim: int, cfg: TowerConfig) -> None:
        super().__init__()
        self.sparse = SparseArch(tables)
        self.dense_dim = dense_dim
        self.mlp = mlp(
            [self.sparse.output_dim + dense_dim, *cfg.hidden, cfg.output_dim], cfg.dropout
        )

    def forward(self, sparse: KeyedJaggedTensor, dense: torch.Tensor) -> torch.Tensor:
        return self.head(self.sparse(sparse), dense)

    def head(self, pooled: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        """Everything after the sparse front end: the pooled tables [B, sum widths] and the
        dense features [B, dense_dim] -> the normalised embedding. Training pools with torchrec
        (:meth:`forward`); the exported tower graph pools padded indices and calls this."""
        x = torch.cat([pooled, dense], dim=1)  # (B, sum widths + dense_dim)
        return F.normalize(self.mlp(x), dim=1)


class TwoTower(nn.Module):
    """User and item towers sharing an embedding space; scores are ``u . v / temperature``.

    Example::

        >>> t = TowerConfig(hidden=(8,), output_dim=4)
        >>> net = TwoTower(Tower([TableSpec("u", 5, 3)], 0, t), Tower([TableSpec("i", 7, 3)], 2, t))
        >>> u = net.user_tower(KeyedJaggedTensor.from_lengths_sync(["u"], torch.tensor([1, 2]),
        ...                                                        torch.tensor([1, 1])),
        ...                    torch.zeros(2, 0))
        >>> tuple(u.shape), round(float(u.norm(dim=1)[0]), 4)
        ((2, 4), 1.0)
    """

    def __init__(self, user_tower: Tower, item_tower: Tower, temperature: float = 0.05) -> None:
        super().__init__()
        self.user_tower, self.item_tower = user_tower, item_tower
        self.temperature = temperature

    @classmethod
    def from_spec(
        cls,
        spec: FeatureSpec,
        state: FeatureState,
        dense_dims: dict[str, int],
        user: TowerConfig | None = None,
        item: TowerConfig | None = None,
        temperature: float = 0.05,
        tie_shared: bool = True,
    ) -> TwoTower:
        """Size the towers' tables from the fitted state; ``dense_dims`` per side.

        With ``tie_shared``, a user feature that ``shares`` an item feature's vocabulary (e.g.
        the engaged history and ``item_id``) looks up the item tower's table itself: the user is
        then described by the same item vectors that the item tower embeds.
        """
        user, item = user or TowerConfig(), item or TowerConfig()
        if user.output_dim != item.output_dim:
            raise ValueError(f"tower widths differ: user {user.output_dim}, item {item.output_dim}")
        user_tables = tables_for(spec, state, "user", user.embedding_dim, user.exclude)
        item_tables = tables_for(spec, state, "item", item.embedding_dim, item.exclude)
        net = cls(
            Tower(user_tables, dense_dims["user"], user),
            Tower(item_tables, dense_dims["item"], item),
            temperature,
        )
        if tie_shared:
            tie_shared_tables(spec, net.user_tower.sparse, net.item_tower.sparse)
        return net

    def user_embedding(self, batch: FeatureBatch) -> torch.Tensor:
        """[B, D] normalised user embeddings of a batch."""
        return self.user_tower(batch.sparse["user"], batch.dense["user"])

    def item_embedding(self, batch: FeatureBatch) -> torch.Tensor:
        """[B, D] normalised item embeddings of a batch."""
        return self.item_tower(batch.sparse["item"], batch.dense["item"])

    def forward(self, batch: FeatureBatch) -> torch.Tensor:
        """[B] scores of the batch's (user, item) pairs."""
        return (self.user_embedding(batch) * self.item_embedding(batch)).sum(1) / self.temperature
