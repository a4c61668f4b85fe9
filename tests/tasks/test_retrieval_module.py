"""The retrieval module: trains, and its protocol evaluation excludes train items."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from pinrank.data.datamodule import PinrankDataModule
from pinrank.data.io import read_table
from pinrank.data.prepare import Prepared
from pinrank.evaluation.retrieval import retrieval_metrics
from pinrank.models.towers import TowerConfig, TwoTower
from pinrank.retrieval import build_topk
from pinrank.tasks.retrieval import RetrievalModule


@pytest.fixture(scope="module")
def trained(synthetic_prepared: Prepared) -> tuple[RetrievalModule, PinrankDataModule]:
    pl.seed_everything(0)
    dm = PinrankDataModule(str(synthetic_prepared.root), batch_size=256, engaged_only=True)
    tower = TowerConfig(hidden=(64,), output_dim=32)
    net = TwoTower.from_spec(dm.spec, dm.state, dm.dense_dims(), user=tower, item=tower)
    module = RetrievalModule(net, functools.partial(torch.optim.Adam, lr=3e-3), mixed_negatives=32)
    trainer = pl.Trainer(
        max_epochs=3,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, datamodule=dm)
    return module, dm


def test_training_beats_popularity_and_random(
    trained: tuple[RetrievalModule, PinrankDataModule],
) -> None:
    module, dm = trained
    report = module.full_report(dm, ks=(20, 50))
    assert report["test/recall@50"] > report["baseline/random/test/recall@50"] * 3
    assert report["test/recall@50"] > report["baseline/popularity/test/recall@50"]


def test_evaluation_never_returns_train_items(
    trained: tuple[RetrievalModule, PinrankDataModule],
) -> None:
    module, dm = trained
    task = module.task(dm, "test")
    items, users = module.embed(dm, "item", task.catalogue), module.embed(dm, "user", task.users)
    _, ids = build_topk("exact").index(items, task.catalogue).search(users, 50, task.exclude)
    train = read_table(dm.prepared.split("train"), "events", ["user_id", "item_id"])
    seen: dict[int, set[int]] = {}
    for u, i in zip(train["user_id"].to_pylist(), train["item_id"].to_pylist(), strict=True):
        seen.setdefault(u, set()).add(i)
    for row, user in enumerate(task.users.tolist()):
        assert not seen.get(user, set()) & set(ids[row].tolist())
    assert module.evaluate(dm, "test", ks=(50,))["test/recall@50"] == pytest.approx(
        retrieval_metrics(ids, task.truth, (50,))["recall@50"]
    )


def test_embeddings_are_deterministic_in_eval_mode(
    trained: tuple[RetrievalModule, PinrankDataModule],
) -> None:
    module, dm = trained
    ids = dm.catalogue()[:100]
    np.testing.assert_array_equal(module.embed(dm, "item", ids), module.embed(dm, "item", ids))


def test_full_catalogue_negatives(trained: tuple[RetrievalModule, PinrankDataModule]) -> None:
    module, dm = trained
    module.mixed_negatives = -1
    try:
        emb, ids, log_q = module._negatives(dm)
    finally:
        module.mixed_negatives = 32
    assert torch.equal(ids, torch.from_numpy(dm.catalogue()))  # every item once
    assert emb.shape[0] == len(dm.catalogue()) and torch.all(log_q == 0)
    module.mixed_negatives = 8
    try:
        _, ids, log_q = module._negatives(dm)
    finally:
        module.mixed_negatives = 32
    assert len(ids) == 8 and torch.allclose(
        log_q, torch.full((8,), np.log(8 / len(dm.catalogue())))
    )


def test_oracle_top_k_selects_as_a_stable_full_sort_in_bounded_chunks() -> None:
    """The oracle's ranking keeps the full sort's order (ties by catalogue order) and scores at
    most ``pairs`` (user, item) pairs at once."""
    from types import SimpleNamespace

    from pinrank.tasks.retrieval import _smallest, oracle_ranking

    rng = np.random.default_rng(0)
    for n, k in [(50, 10), (10, 20), (1000, 100), (7, 7)]:
        s = rng.integers(0, 5, n).astype(np.float64)  # many ties
        s[rng.random(n) < 0.2] = np.inf
        np.testing.assert_array_equal(_smallest(s, k), np.argsort(s, kind="stable")[:k])

    catalogue = np.arange(100, 400)
    users = np.arange(9)
    scores = rng.integers(0, 4, (len(users), len(catalogue))).astype(np.float64)
    largest: list[int] = []

    class Oracle:
        def retrieval_scores(self, u: np.ndarray, items: np.ndarray) -> np.ndarray:
            largest.append(len(u) * len(items))
            return scores[u][:, items - 100]

    exclude = [catalogue[rng.choice(len(catalogue), 5, replace=False)] for _ in users]
    task = SimpleNamespace(users=users, catalogue=catalogue, exclude=exclude)
    got = oracle_ranking(Oracle(), task, 12, pairs=2 * len(catalogue))  # type: ignore[arg-type]
    assert max(largest) <= 2 * len(catalogue)
    for u in users:
        s = -scores[u].copy()
        s[np.isin(catalogue, exclude[u])] = np.inf
        np.testing.assert_array_equal(got[u], catalogue[np.argsort(s, kind="stable")[:12]])


def test_the_popularity_prior_is_tuned_on_a_sample_of_val_users(
    trained: tuple[RetrievalModule, PinrankDataModule],
) -> None:
    module, dm = trained
    module.popularity_bias, module.tuning_queries = (0.0, 1.0), 25
    try:
        out: dict[str, float] = {}
        task = module.task(dm, "val")
        counts = np.ones(len(task.catalogue))
        module._choose_bias(dm, task, counts, out)
    finally:
        module.popularity_bias, module.tuning_queries = (0.0,), 20_000
    assert task.num_queries > 25 and out["tuning/queries"] == 25
    assert {
        "tuning/popularity_bias/0/val/recall@20",
        "tuning/popularity_bias/1/val/recall@20",
    } < set(out)
    with pytest.raises(ValueError, match="tuning_queries"):
        RetrievalModule(module.net, functools.partial(torch.optim.Adam), tuning_queries=0)
