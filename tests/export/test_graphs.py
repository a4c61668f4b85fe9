"""The ranker's exported graph modules in torch (no ONNX needed): the per-user profile tables of
the user-bag crosses give the per-pair graph's scores, per feed and per catalogue."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from pinrank.calibration import Calibration
from pinrank.data.datamodule import PinrankDataModule
from pinrank.data.prepare import Prepared
from pinrank.export.graphs import PROFILE_GRID, graphs_for, profile_crosses
from pinrank.export.torch_backend import run_graph
from pinrank.export.verify import held_out_rows
from pinrank.features.columns import columns_for, pack
from pinrank.models.wide_deep import WideDeep, WideDeepConfig

CFG = WideDeepConfig(hidden=(16,), interaction_dim=4, examination=("position",))


@pytest.fixture(scope="module")
def ranker(synthetic_prepared: Prepared):
    """A ranker with large random wide weights (the profile crosses dominate its scores), its
    graphs, held-out rows as tables and raw arrays, and its featurizer."""
    dm = PinrankDataModule(str(synthetic_prepared.root), batch_size=128)
    dm.setup()
    torch.manual_seed(0)
    net = WideDeep.from_spec(dm.spec, dm.state, dm.dense_dims(), CFG)
    for t in net.cross.arch.tables:
        net.cross.arch.weight(t.feature).data.normal_()
    net.eval()
    tables = held_out_rows(synthetic_prepared, "test", 400)
    columns = [c for side, t in tables.items() for c in columns_for(dm.spec, side, t.schema)]
    arrays = {
        k: v
        for side, t in tables.items()
        for k, v in pack(t, columns_for(dm.spec, side, t.schema)).items()
    }
    graphs = graphs_for(net, dm.spec, dm.state, columns, Calibration("platt", {"a": 1.0, "b": 0.0}))
    assert dm.featurizer is not None
    return net, graphs, tables, arrays, columns, dm


def _run(ranker, graph: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    _, graphs, _, _, _, dm = ranker
    return run_graph(graphs[graph], dm.state, inputs)


def _per_feed(ranker, zero_tables: bool = False):
    """Logits of the held-out rows via ranker_user (each distinct user once) + ranker_feed and
    via ranker_items + ranker_pairs, and the user parts."""
    _, _, tables, arrays, columns, _ = ranker
    users = tables["user"].column("user_id").to_numpy()
    _, first, user_index = np.unique(users, return_index=True, return_inverse=True)
    user_cols = [c for c in columns if c.side == "user"]
    parts = _run(ranker, "ranker_user", pack(tables["user"].take(pa.array(first)), user_cols))
    if zero_tables:
        parts = {k: np.zeros_like(v) if k.endswith(".table") else v for k, v in parts.items()}
    index = {"user_index": user_index.astype(np.int64)}
    feed = _run(ranker, "ranker_feed", arrays | parts | index)["logit"]
    items = _run(ranker, "ranker_items", arrays)
    index["item_index"] = np.arange(len(users), dtype=np.int64)
    pairs = _run(ranker, "ranker_pairs", parts | items | index)["logit"]
    return feed, pairs, parts, len(first)


def test_the_profile_crosses_are_the_user_bag_crosses(ranker) -> None:
    net, graphs, *_, dm = ranker
    names = [c.name for c in profile_crosses(net, graphs["ranker_user"].features)]
    # bags of the user side x pin interests; not the single-valued user features' crosses
    assert names == ["interest_x_interest", "seen_x_interest", "history_x_interest"]
    for c in dm.spec.crosses:
        left = dm.spec[c.features[0]]
        grid = dm.state.cardinality(left.shares or left.name)
        grid *= dm.state.crosses[c.name]["right_cardinality"]
        assert (c.name in names) == (left.kind != "categorical" and grid <= PROFILE_GRID)


def test_user_parts_carry_profile_tables_not_the_profiles(ranker) -> None:
    _, graphs, *_, dm = ranker
    _, _, parts, n_users = _per_feed(ranker)
    for name in ("seen_x_interest", "history_x_interest", "interest_x_interest"):
        width = dm.state.crosses[name]["right_cardinality"]
        assert parts[f"user.{name}.table"].shape == (n_users, width)
        assert parts[f"user.{name}.table"].dtype == np.float32
    # the profiles no longer travel to the feed graph (only crosses paired per pair need them)
    assert not any(k.startswith(("user.seen_interests", "user.history_interests")) for k in parts)
    assert "user.user_id.indices" in parts  # user_x_interest stays pair-wise
    feed_inputs = {i.name for i in graphs["ranker_feed"].inputs}
    assert set(parts) <= feed_inputs and set(parts) <= {
        i.name for i in graphs["ranker_pairs"].inputs
    }


def test_factorised_scores_equal_per_pair_and_training_scores(ranker) -> None:
    net, _, tables, arrays, _, dm = ranker
    with torch.no_grad():
        training = net(dm.featurizer(tables)).double().numpy()
    per_pair = _run(ranker, "ranker", arrays)["logit"]
    feed, pairs, _, _ = _per_feed(ranker)
    assert float(np.std(training)) > 1.0  # the random wide weights give spread-out scores
    for got in (per_pair, feed, pairs):
        assert np.abs(got - training).max() <= 1e-5
    # the tables carry a large part of each score: without them the scores are far off
    without, _, _, _ = _per_feed(ranker, zero_tables=True)
    assert np.abs(without - training).max() > 1.0
