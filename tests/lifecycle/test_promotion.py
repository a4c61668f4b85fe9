"""Promotion by evidence: a model made worse on purpose (its ranker's weights shuffled) is
registered but not promoted, and the registry and the report say why; a model compared with
itself gains nothing; ``pinrank compare --check`` exits 3 when B is not better."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from package_fixtures import SIGNING_KEY, TRUST

from pinrank.lifecycle.compare import CompareConfig, load_holdout
from pinrank.lifecycle.promotion import evaluate_candidate
from pinrank.lifecycle.registry import PRODUCTION, Registry

ROOT = Path(__file__).resolve().parents[2]
CONFIG = CompareConfig(samples=200)


@pytest.fixture(scope="module")
def shuffled_package(
    trained_runs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The fixtures' package with the ranker's every weight tensor permuted (seeded)."""
    from pinrank.export.package import build_package
    from pinrank.export.run import TrainedRun

    ranking = TrainedRun.load(trained_runs["ranking"])
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in ranking.net.parameters():
            flat = p.flatten()
            p.copy_(flat[torch.randperm(flat.numel(), generator=generator)].view_as(p))
    out = tmp_path_factory.mktemp("shuffled") / "pkg"
    build_package([TrainedRun.load(trained_runs["retrieval"]), ranking], out,
                  command="pytest: ranker weights shuffled", signing_key=SIGNING_KEY)  # fmt: skip
    return out


@pytest.fixture(scope="module")
def holdout(trained_runs: dict[str, Path]):  # type: ignore[no-untyped-def]
    from pinrank.export.run import TrainedRun

    return load_holdout(TrainedRun.load(trained_runs["ranking"]).prepared.root, "test", CONFIG)


def test_a_worse_model_is_registered_but_not_promoted(
    package_dir: Path,
    shuffled_package: Path,
    holdout,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    registry = Registry(f"sqlite:///{tmp_path}/mlflow.db")
    first = registry.register(package_dir, TRUST)
    decision = evaluate_candidate(registry, holdout, CONFIG, TRUST, tmp_path / "r1", tmp_path / "c")
    assert decision.promoted and "first candidate becomes production" in decision.reasons[0]
    # offline = online: through the package, on the run's own test split, the training report
    auc = next(m for m in decision.metrics if m.name == "ranking/auc" and m.slice == "all")
    assert auc.b == pytest.approx(first.metrics["ranking/test/auc"], abs=1e-4)
    assert registry.get(1).metrics["holdout/all/ranking/auc"] == pytest.approx(auc.b)
    worse = registry.register(shuffled_package, TRUST)
    assert registry.get("candidate").number == worse.number == 2
    decision = evaluate_candidate(registry, holdout, CONFIG, TRUST, tmp_path / "r2", tmp_path / "c")
    assert not decision.promoted and registry.get(PRODUCTION).number == first.number
    auc = next(m for m in decision.metrics if m.name == "ranking/auc" and m.slice == "all")
    assert auc.diff.high < -0.005  # the shuffled ranker is worse, and surely so
    assert any(r.startswith("ranking/auc") and "worse by more than the tolerance" in r
               for r in decision.reasons)  # fmt: skip
    from pinrank.lifecycle.history import history_rows, plot_history

    rows = history_rows(registry)
    assert [(r["version"], r["served"]) for r in rows] == [(1, True), (2, False)]
    assert rows[1]["ranking/auc"] < rows[0]["ranking/auc"] - 0.005  # both on the hold-out
    assert plot_history(rows, tmp_path / "history.png").stat().st_size > 10_000
    tags = registry.get(2).tags
    assert (
        tags["pinrank.verdict"] == "not promoted"
        and "ranking/auc" in tags["pinrank.verdict_reasons"]
    )
    report = json.loads(decision.report.read_text())  # type: ignore[union-attr]
    assert report["verdict"]["b_is_better"] is False
    assert (tmp_path / "r2" / "compare.png").stat().st_size > 10_000
    # every slice's metrics are there, for both packages
    assert {(m["name"], m["slice"]) for m in report["metrics"]} >= {
        ("ranking/auc", "new_users"), ("retrieval/recall@20", "niche_pins"),
    }  # fmt: skip


def test_compare_cli_checks_and_a_model_equals_itself(
    package_dir: Path, shuffled_package: Path, holdout, key_files: dict[str, Path],  # type: ignore[no-untyped-def]
    tmp_path: Path,
) -> None:  # fmt: skip
    config = tmp_path / "compare.yaml"
    # no log-loss guard here: on 120 users the tiny ranker's served probabilities (context
    # defaults) are no better calibrated than the shuffled one's (+0.014 [-0.03, +0.06])
    config.write_text("samples: 100\nmax_users: 120\nguard: {ranking/auc: 0.005}\n")
    base = [sys.executable, "-m", "pinrank.cli", "compare", "--holdout",
            holdout.name.rsplit(":", 1)[0], "--config", str(config),
            "--trusted-key", str(key_files["public"]), "--check"]  # fmt: skip
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    same = subprocess.run([*base, str(package_dir), str(package_dir), "--out",
                           str(tmp_path / "same")], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=600)  # fmt: skip
    assert same.returncode == 3, same.stderr[-2000:]  # equal: nothing gained
    report = json.loads((tmp_path / "same" / "compare.json").read_text())
    assert all(m["diff"]["value"] == 0 and m["diff"]["low"] == 0 for m in report["metrics"])
    assert report["users"] == 120 and "no gain above 0.0" in same.stdout
    better = subprocess.run([*base, str(shuffled_package), str(package_dir), "--out",
                             str(tmp_path / "better")], capture_output=True, text=True, env=env,
                            cwd=tmp_path, timeout=600)  # fmt: skip
    assert better.returncode == 0, better.stdout[-3000:] + better.stderr[-2000:]
    assert "verdict: B is better" in better.stdout
