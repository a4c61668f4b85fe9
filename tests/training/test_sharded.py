"""trainer=torchrec_dmp: both models train in 2 processes (gloo) with their tables sharded by
torchrec, their packages verify, and the sharded checkpoint loads on another world size (2 -> 1)
with the weights of the whole one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from package_fixtures import ROOT, tiny_overrides
from torch import nn

pytest.importorskip("torchrec")

from pinrank.export.run import TrainedRun
from pinrank.training.sharded import (
    SHARDED_SUFFIX,
    ShardingError,
    check_shardable,
    fused_optimizer,
    load_sharded,
)


def _ebc(name: str) -> nn.Module:
    from torchrec import EmbeddingBagCollection, EmbeddingBagConfig

    return EmbeddingBagCollection(
        tables=[
            EmbeddingBagConfig(name=name, embedding_dim=8, num_embeddings=10, feature_names=[name])
        ],
        device=torch.device("cpu"),
    )


def test_tied_tables_and_networks_without_collections_are_refused() -> None:
    net = nn.Module()
    net.user, net.item = _ebc("t_history"), _ebc("t_item_id")
    assert set(check_shardable(net)) == {"user", "item"}
    net.user.embedding_bags["t_history"].weight = net.item.embedding_bags["t_item_id"].weight
    with pytest.raises(ShardingError, match="tie_shared=false"):
        check_shardable(net)
    with pytest.raises(ShardingError, match="sparse_arch=torchrec"):
        check_shardable(nn.Linear(2, 2))
    assert fused_optimizer("torch.optim.Adagrad") is torch.optim.Adagrad
    with pytest.raises(ShardingError, match=r"torch\.optim\.Nope"):
        fused_optimizer("torch.optim.Nope")


def _pinrank_train(args: list[str]) -> None:
    """``pinrank train``, the installed command: Lightning starts the second process by running
    the command's script again, which must be runnable."""
    command = [str(Path(sys.executable).parent / "pinrank"), "train", *args]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=1200)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]


@pytest.fixture(scope="module")
def sharded_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("sharded")
    runs = {}
    models = {
        "tt": ["model.net.tie_shared=false", "model.module.index=exact"],
        "wd": ["model=wide_deep", "model.net.cfg.tie_shared=false",
               "model.net.cfg.hidden=[32,16]", "model.module.logreg_grid=[]"],
    }  # fmt: skip
    for task, model in models.items():
        _pinrank_train(
            [*tiny_overrides(tmp, task), *model, "trainer=torchrec_dmp", "eval_oracle=false"]
        )
        (runs[task],) = [p.parent for p in (tmp / "logs" / task).rglob("run.json")]
    return runs


def test_both_models_train_sharded_in_two_processes(sharded_runs: dict[str, Path]) -> None:
    for run in sharded_runs.values():
        metrics = json.loads((run / "metrics.json").read_text())
        assert metrics["train/world_size"] == 2 and metrics["train/sparse_arch"] == "torchrec"
        assert metrics["train/steps"] > 0
        assert (run / "checkpoints" / f"best.ckpt{SHARDED_SUFFIX}" / ".metadata").exists()
    wd = json.loads((sharded_runs["wd"] / "metrics.json").read_text())
    assert wd["test/auc"] > 0.5


def test_the_sharded_checkpoint_loads_in_one_process(sharded_runs: dict[str, Path]) -> None:
    """2 -> 1: every table and layer read back from the shards equals the whole checkpoint."""
    for run_dir in sharded_runs.values():
        run = TrainedRun.load(run_dir)
        whole = run.net.state_dict()
        fresh = TrainedRun.load(run_dir).net
        with torch.no_grad():
            for p in fresh.parameters():
                p.zero_()
        load_sharded(fresh, run_dir / "checkpoints" / f"best.ckpt{SHARDED_SUFFIX}")
        loaded = fresh.state_dict()
        assert set(loaded) == set(whole)
        for key, value in whole.items():
            assert torch.equal(loaded[key], value), key
    with pytest.raises(FileNotFoundError, match="not a sharded checkpoint"):
        load_sharded(fresh, run_dir)


def test_the_package_of_sharded_runs_verifies(sharded_runs: dict[str, Path], tmp_path) -> None:
    from pinrank.export.package import build_package
    from pinrank.export.verify import held_out_rows, verify

    runs = [TrainedRun.load(sharded_runs["tt"]), TrainedRun.load(sharded_runs["wd"])]
    package = build_package(runs, tmp_path / "pkg")  # its graphs checked against the runs
    report = verify(package, held_out_rows(runs[0].prepared, "test", 300))
    assert report.ok and report.max_diff <= 1e-5, str(report)


def test_a_sharded_network_scores_as_the_whole_one(sharded_runs: dict[str, Path]) -> None:
    """Sharded collections give their features in the plan's order, not the tables': the
    networks must read them by name (two processes, both models, held-out rows)."""
    script = Path(__file__).with_name("sharded_parity.py")
    for run in sharded_runs.values():
        proc = subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
             str(script), str(run)],
            cwd=ROOT, capture_output=True, text=True, timeout=600,
            env={**os.environ, "PYTHONWARNINGS": "ignore"},
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
        assert proc.stdout.count("max abs diff") == 2, proc.stdout
