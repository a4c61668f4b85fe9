"""train.py: the real Hydra config composes, every experiment instantiates, a shrunken run and a
two-process DDP run (gloo, CPU) train and write metrics.json."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml"))


def _tiny(tmp: Path) -> list[str]:
    """Overrides that shrink the default run to seconds."""
    return [
        f"paths.data_dir={tmp}/data",
        f"paths.log_dir={tmp}/logs",
        f"paths.conf_dir={ROOT}/conf",
        "data.source.generator.n_users=300",
        "data.source.generator.n_items=200",
        "data.source.generator.n_events=8000",
        "data.datamodule.batch_size=256",
        "data.datamodule.num_workers=0",
        "trainer.max_epochs=2",
        "trainer.enable_progress_bar=false",
        "model.module.index=HNSW16",
    ]


def _run(args: list[str], tmp: Path) -> dict:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *args], cwd=ROOT, env=env,
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    found = list((tmp / "logs").rglob("metrics.json"))
    assert len(found) == 1, found
    return json.loads(found[0].read_text())


def _compose(overrides: list[str]):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("train", overrides=overrides, return_hydra_config=True)


def test_default_config_composes_and_instantiates(tmp_path: Path) -> None:
    # outside a Hydra run there is no runtime output dir to interpolate: name one
    cfg = _compose([*_tiny(tmp_path), f"paths.output_dir={tmp_path}/out"])
    assert cfg.model.monitor == "val/recall@20" and cfg.trainer.accelerator == "cpu"
    source = instantiate(cfg.data.source)
    assert source.generator.n_users == 300
    partial_net = instantiate(cfg.model.net)
    assert callable(partial_net)
    assert set(instantiate(cfg.callbacks)) == {"model_checkpoint", "early_stopping"}


@pytest.mark.parametrize("trainer", ["cpu", "gpu", "ddp"])
def test_trainer_configs_compose(tmp_path: Path, trainer: str) -> None:
    cfg = _compose([*_tiny(tmp_path), f"trainer={trainer}"])
    assert cfg.trainer._target_ == "pytorch_lightning.Trainer"
    if trainer == "gpu":
        assert cfg.trainer.precision == "bf16-mixed" and cfg.trainer.accelerator == "gpu"
    if trainer == "ddp":
        assert cfg.trainer.devices == 2 and cfg.trainer.strategy.process_group_backend == "gloo"


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes(tmp_path: Path, experiment: str) -> None:
    cfg = _compose([f"experiment={experiment}", f"paths.data_dir={tmp_path}"])
    assert cfg.task_name == experiment
    instantiate(cfg.data.source)  # builds without touching data
    assert callable(instantiate(cfg.model.module))


def test_tiny_training_run_writes_metrics(tmp_path: Path) -> None:
    metrics = _run(_tiny(tmp_path), tmp_path)
    for key in (
        "test/recall@20",
        "test/ndcg@20",
        "val/recall@20",
        "test/hit_rate@100",
        "baseline/popularity/test/recall@20",
        "baseline/random/test/recall@20",
        "oracle/test/recall@20",
        "index/recall@100_vs_exact",
    ):
        assert key in metrics, key
        assert 0.0 <= metrics[key] <= 1.0, key
    assert metrics["train/epochs"] == 2
    assert metrics["test/recall@20"] > metrics["baseline/random/test/recall@20"]


def test_ddp_two_processes_train(tmp_path: Path) -> None:
    metrics = _run([*_tiny(tmp_path), "trainer=ddp", "trainer.max_epochs=1"], tmp_path)
    assert metrics["train/world_size"] == 2
    assert "test/recall@20" in metrics
