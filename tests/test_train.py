"""train.py: the real Hydra config composes, every experiment instantiates, a shrunken run and a
two-process DDP run (gloo, CPU) train and write metrics.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from package_fixtures import train

from pinrank.data.io import read_table
from pinrank.data.prepare import Prepared
from pinrank.resources import register_resolvers

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
    run_dir = train(args, tmp / "logs")
    found = list((tmp / "logs").rglob("metrics.json"))
    assert len(found) == 1, found
    return json.loads((run_dir / "metrics.json").read_text())


def _compose(overrides: list[str]):
    register_resolvers()  # ${pinrank_conf:} (Hydra registers it when it imports pkg://pinrank.conf)
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


@pytest.mark.parametrize("trainer", ["cpu", "gpu", "ddp", "torchrec_dmp"])
def test_trainer_configs_compose(tmp_path: Path, trainer: str) -> None:
    cfg = _compose([*_tiny(tmp_path), f"trainer={trainer}"])
    assert cfg.trainer._target_ == "pytorch_lightning.Trainer"
    if trainer == "gpu":
        assert cfg.trainer.precision == "bf16-mixed" and cfg.trainer.accelerator == "gpu"
    if trainer in ("ddp", "torchrec_dmp"):
        assert cfg.trainer.devices == 2 and cfg.trainer.strategy.process_group_backend == "gloo"
    if trainer == "torchrec_dmp":
        strategy = instantiate(cfg.trainer.strategy)
        assert strategy.sharding_types == ("table_wise", "column_wise")
        assert strategy.fused_optimizer == "torchrec.optim.RowWiseAdagrad"


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes(tmp_path: Path, experiment: str) -> None:
    cfg = _compose([f"experiment={experiment}", f"paths.data_dir={tmp_path}"])
    assert cfg.task_name == experiment
    instantiate(cfg.data.source)  # builds without touching data
    assert callable(instantiate(cfg.model.module))
    assert callable(instantiate(cfg.model.net))


def test_wide_deep_model_config_composes(tmp_path: Path) -> None:
    cfg = _compose([*_tiny(tmp_path)[:-1], "model=wide_deep"])
    assert cfg.model.monitor == "val/auc" and cfg.model.datamodule.crosses is True
    assert cfg.model.datamodule.sampled_negatives == 0  # "no event" negatives: off by default
    net_cfg = instantiate(cfg.model.net.cfg)
    assert net_cfg.wide and net_cfg.deep and tuple(net_cfg.hidden) == (256, 128)


def test_model_sets_the_trainer_epochs_unless_the_command_line_does(tmp_path: Path) -> None:
    paths = _tiny(tmp_path)[:3]
    for model, epochs in (("two_tower", 6), ("wide_deep", 10)):
        cfg = _compose([*paths, f"model={model}"])
        assert cfg.trainer.max_epochs == cfg.model.max_epochs == epochs
        assert _compose([*paths, f"model={model}", "trainer.max_epochs=2"]).trainer.max_epochs == 2
    assert _compose([*paths, "experiment=ml100k_wide_deep"]).trainer.max_epochs == 30


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
    # what each run records of its cost, and the runtime settings it ran under
    assert metrics["train/seconds"] > 0 and metrics["report/seconds"] > 0
    assert metrics["train/peak_rss_mb"] > 100 and metrics["train/flush_denormal"] is True
    # the popularity prior's beta is the grid value with the best val recall@20
    grid = {
        float(k.split("/")[2]): v for k, v in metrics.items() if k.startswith("tuning/popularity")
    }
    assert set(grid) == {0.0, 0.25, 0.5, 1.0, 1.5, 2.0}
    best = max(grid.values())
    assert metrics["retrieval/popularity_bias"] == min(b for b, v in grid.items() if v == best)
    assert metrics["val/recall@20"] == pytest.approx(best, abs=0.005)


def test_ddp_two_processes_train(tmp_path: Path) -> None:
    args = [*_tiny(tmp_path), "trainer=ddp", "trainer.max_epochs=1", "eval_oracle=false"]
    metrics = _run(args, tmp_path)
    assert metrics["train/world_size"] == 2
    assert "test/recall@20" in metrics
    # eval_oracle=false: the generator's oracle is left out of the report
    assert not any(k.startswith("oracle/") for k in metrics)


def test_tiny_wide_deep_run_writes_metrics_calibration_and_plots(tmp_path: Path) -> None:
    args = [a for a in _tiny(tmp_path) if not a.startswith("model.module.index")]
    metrics = _run(
        [
            *args,
            "model=wide_deep",
            "model.net.cfg.hidden=[32,16]",
            "model.module.logreg_grid=[1e-4]",
        ],
        tmp_path,
    )
    for key in (
        "val/auc", "test/auc", "test/logloss", "test/ece", "test/user_auc", "test/precision@10",
        "test/uncalibrated/ece", "test/uncalibrated/logloss", "cold/test/auc",
        "baseline/item_rate/test/auc", "baseline/item_rate/cold/test/auc",
        "baseline/logreg/test/auc", "baseline/user_item_rate/test/auc", "oracle/test/auc",
        "val/as_new_users/auc", "calibration/a",
    ):  # fmt: skip
        assert key in metrics, key
    for key, value in metrics.items():
        if key.endswith("/auc"):
            assert 0.5 < value <= 1.0, (key, value)
    # the calibration is fitted on val: it cannot raise val log loss
    assert metrics["val/logloss"] <= metrics["val/uncalibrated/logloss"] + 1e-9
    run_dir = next((tmp_path / "logs").rglob("metrics.json")).parent
    cal = json.loads((run_dir / "calibration.json").read_text())
    assert cal["method"] == "platt" and set(cal["params"]) == {"a", "b"}
    for name in ("reliability.png", "roc.png"):
        assert (run_dir / name).read_bytes()[:4] == b"\x89PNG"


def test_ddp_two_processes_train_the_ranker_and_report_on_every_event(tmp_path: Path) -> None:
    args = [a for a in _tiny(tmp_path) if not a.startswith("model.module.index")]
    metrics = _run(
        [*args, "model=wide_deep", "trainer=ddp", "trainer.max_epochs=1",
         "model.net.cfg.hidden=[32,16]", "model.module.logreg_grid=[1e-4]"],
        tmp_path,
    )  # fmt: skip
    assert metrics["train/world_size"] == 2
    # the report runs on rank 0 alone and still scores every test event, not its DDP share
    prepared = Prepared.load(next((tmp_path / "data").rglob("prepared.json")).parent)
    assert metrics["test/events"] == read_table(prepared.split("test"), "events").num_rows
