"""Towers: sized from the fitted spec, normalised outputs, gradients reach every table."""

from __future__ import annotations

import torch

from pinrank.data.datamodule import PinrankDataModule
from pinrank.data.prepare import Prepared
from pinrank.models.towers import TowerConfig, TwoTower


def _net(dm: PinrankDataModule, **kw: object) -> TwoTower:
    return TwoTower.from_spec(dm.spec, dm.state, dm.dense_dims(), **kw)  # type: ignore[arg-type]


def test_towers_follow_the_spec(synthetic_prepared: Prepared) -> None:
    dm = PinrankDataModule(str(synthetic_prepared.root), batch_size=64)
    net = _net(
        dm,
        user=TowerConfig(hidden=(32,), output_dim=16),
        item=TowerConfig(hidden=(32,), output_dim=16),
    )
    user_tables = {t.feature: t.num_embeddings for t in net.user_tower.sparse.tables}
    assert set(user_tables) == {f.name for f in dm.spec.side("user", sparse=True)}
    assert user_tables["history"] == dm.state.cardinality("item_id")
    batch = next(iter(dm.train_dataloader()))
    u, v = net.user_embedding(batch), net.item_embedding(batch)
    assert u.shape == v.shape == (64, 16)
    torch.testing.assert_close(u.norm(dim=1), torch.ones(64))
    assert net(batch).shape == (64,)


def test_gradients_reach_every_embedding_table(synthetic_prepared: Prepared) -> None:
    dm = PinrankDataModule(str(synthetic_prepared.root), batch_size=256)
    net = _net(dm)
    batch = next(iter(dm.train_dataloader()))
    net(batch).sum().backward()
    for tower in (net.user_tower, net.item_tower):
        for name, bag in tower.sparse.ebc.embedding_bags.items():
            assert bag.weight.grad is not None and bag.weight.grad.abs().sum() > 0, name


def test_excluded_features_have_no_table(synthetic_prepared: Prepared) -> None:
    dm = PinrankDataModule(str(synthetic_prepared.root))
    net = _net(dm, user=TowerConfig(exclude=("user_id",)))
    assert "user_id" not in {t.feature for t in net.user_tower.sparse.tables}


def test_shared_features_tie_to_the_item_table(synthetic_prepared: Prepared) -> None:
    dm = PinrankDataModule(str(synthetic_prepared.root), batch_size=128)
    net = _net(dm)
    item_table = net.item_tower.sparse.weight("item_id")
    shared = [f.name for f in dm.spec.side("user", sparse=True) if f.shares == "item_id"]
    assert shared
    for name in shared:
        assert net.user_tower.sparse.weight(name) is item_table
    # one parameter, counted once; the user tower's history trains the item table too
    assert sum(p is item_table for p in net.parameters()) == 1
    batch = next(iter(dm.train_dataloader()))
    net.user_embedding(batch).sum().backward()
    assert item_table.grad is not None and item_table.grad.abs().sum() > 0
    untied = _net(dm, tie_shared=False)
    assert untied.user_tower.sparse.weight(shared[0]) is not untied.item_tower.sparse.weight(
        "item_id"
    )
