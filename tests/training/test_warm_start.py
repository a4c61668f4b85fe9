"""Warm start (``init_from=RUN``): from a run on the same data a network begins with exactly its
weights; when a vocabulary changes, rows follow their values, not their indices; ``train.py``
records what it copied."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from package_fixtures import tiny_overrides, train

from pinrank.export.run import TrainedRun, build_net
from pinrank.features.state import FeatureState
from pinrank.models.components import SparseArch
from pinrank.training.warm_start import SPECIAL_ROWS, warm_start


@pytest.mark.parametrize("kind", ["retrieval", "ranking"])
def test_the_same_data_gives_the_same_weights(trained_runs: dict[str, Path], kind: str) -> None:
    run = TrainedRun.load(trained_runs[kind])
    spec, state = run.prepared.spec(), run.prepared.state()
    torch.manual_seed(1)
    fresh = build_net(run.record.net, spec, state)
    report = warm_start(fresh, spec, state, trained_runs[kind])
    old, new = run.net.state_dict(), fresh.state_dict()
    assert old.keys() == new.keys()
    assert all(torch.equal(old[k], new[k]) for k in old), [
        k for k in old if not torch.equal(old[k], new[k])
    ]
    assert report["rows_new"] == 0 and report["rows_copied"] > 0 and report["tables"]


def test_rows_follow_their_values_when_the_vocabulary_changes(
    trained_runs: dict[str, Path],
) -> None:
    run = TrainedRun.load(trained_runs["ranking"])
    spec, state = run.prepared.spec(), run.prepared.state()
    name = next(n for n, st in state.features.items()
                if "vocab" in st and len(st["vocab"]) > 10)  # fmt: skip
    old_vocab = np.asarray(state.features[name]["vocab"].to_numpy(zero_copy_only=False))
    # the new day's vocabulary: the old one reversed, less its first 3 values, with 4 new ones
    kept = old_vocab[3:][::-1]
    fresh_values = (
        (np.arange(4) + 10**9).astype(old_vocab.dtype)
        if old_vocab.dtype.kind == "i"
        else np.array([f"new{i}" for i in range(4)], dtype=object)
    )
    new_vocab = np.concatenate([fresh_values[:2], kept, fresh_values[2:]])
    features = copy.deepcopy({k: dict(v) for k, v in state.features.items()})
    features[name]["vocab"] = pa.array(new_vocab.tolist())
    features[name]["cardinality"] = len(new_vocab) + SPECIAL_ROWS
    new_state = FeatureState(features, state.crosses, state.rows)
    torch.manual_seed(2)
    net = build_net(run.record.net, spec, new_state)
    tables = [(p, m) for p, m in net.named_modules() if isinstance(m, SparseArch)
              and any(t.feature == name for t in m.tables)]  # fmt: skip
    assert tables, f"no table of {name}"
    before = {p: m.weight(name).detach().clone() for p, m in tables}
    report = warm_start(net, spec, new_state, trained_runs["ranking"])
    old_modules = dict(run.net.named_modules())
    for path, module in tables:
        new_w, old_w = module.weight(name).detach(), old_modules[path].weight(name).detach()
        for value in kept[:5]:
            i = int(np.flatnonzero(new_vocab == value)[0]) + SPECIAL_ROWS
            j = int(np.flatnonzero(old_vocab == value)[0]) + SPECIAL_ROWS
            assert torch.equal(new_w[i], old_w[j])
        for value in fresh_values:  # new values keep their fresh rows
            i = int(np.flatnonzero(new_vocab == value)[0]) + SPECIAL_ROWS
            assert torch.equal(new_w[i], before[path][i])
        assert torch.equal(new_w[:SPECIAL_ROWS], old_w[:SPECIAL_ROWS])
    assert report["rows_new"] >= 4 * len(tables)


def test_train_records_its_warm_start(trained_runs: dict[str, Path], tmp_path: Path) -> None:
    args = [*tiny_overrides(tmp_path, "warm"), "model=wide_deep",
            f"init_from={trained_runs['ranking']}"]  # fmt: skip
    metrics = json.loads((train(args, tmp_path / "logs") / "metrics.json").read_text())
    assert metrics["warm_start/run"] == str(trained_runs["ranking"])
    assert metrics["warm_start/rows_copied"] > 0 and metrics["warm_start/parameters"] > 0
