"""Experiment tracking: ``logger=mlflow`` logs a run's config, per-epoch and final metrics and
its folder; ``logger=tensorboard`` writes event files; names MLflow refuses are rewritten."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from package_fixtures import ROOT, tiny_overrides

from pinrank.lifecycle.tracking import flatten, metric_name, numbers, tracking_uri


def _train(args: list[str], env: dict[str, str]) -> Path:
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return Path(proc.stdout.strip().splitlines()[-1].removeprefix("run.json: ")).parent


def test_mlflow_logger_logs_config_metrics_and_the_run_folder(tmp_path: Path) -> None:
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path}/store/mlflow.db"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONWARNINGS": "ignore"}
    args = [*tiny_overrides(tmp_path, "tracked"), "logger=mlflow", "trainer.max_epochs=2",
            "model.module.index=exact"]  # fmt: skip
    run_dir = _train(args, env)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("pinrank/tracked")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params["model.module.index"] == "exact"
    assert run.data.params["trainer.max_epochs"] == "2"
    assert run.data.tags["pinrank.kind"] == "retrieval"
    assert run.data.tags["pinrank.run_dir"] == str(run_dir.resolve())
    # the final report, every number of it (recall@20 -> recall_at_20)
    assert run.data.metrics["test/recall_at_20"] == metrics["test/recall@20"]
    assert len(run.data.metrics) >= len(numbers(metrics))
    # per-epoch values while fitting
    assert len(client.get_metric_history(run.info.run_id, "val/loss")) == 2
    files = {a.path for a in client.list_artifacts(run.info.run_id, "run")}
    assert {"run/run.json", "run/metrics.json", "run/config.json", "run/checkpoints"} <= files
    # its artifacts live beside the store, not in the working folder
    assert (tmp_path / "store" / "artifacts").is_dir() and not (ROOT / "mlartifacts").exists()


def test_tensorboard_logger_writes_events(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    run_dir = _train([*tiny_overrides(tmp_path, "tb"), "logger=tensorboard",
                      "model.module.index=exact"], env)  # fmt: skip
    assert list((run_dir / "tensorboard").rglob("events.out.tfevents.*"))


def test_names_and_numbers() -> None:
    assert metric_name("test/recall@20") == "test/recall_at_20"
    assert metric_name("a|b{c}") == "a_b_c_"
    assert numbers({"a": {"b": 1, "c": True, "d": "x", "e": float("inf")}, "f": 0.5}) == {
        "a.b": 1.0, "f": 0.5,
    }  # fmt: skip
    assert dict(flatten({"x": {"y": [1]}})) == {"x.y": [1]}
    assert tracking_uri("http://h:1") == "http://h:1"
    old = os.environ.pop("MLFLOW_TRACKING_URI", None)
    try:
        assert tracking_uri() == "sqlite:///outputs/mlflow/mlflow.db"
    finally:
        if old is not None:
            os.environ["MLFLOW_TRACKING_URI"] = old
