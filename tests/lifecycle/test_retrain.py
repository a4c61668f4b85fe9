"""``pinrank retrain``: a retrain killed with SIGKILL after a step's work (before it is recorded)
and started again ends with the same data and the same registry contents as one that was never
interrupted: no duplicated events, registrations or promotions."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from package_fixtures import ROOT, tiny_lifecycle

from pinrank.data.synthetic import SyntheticConfig, generate
from pinrank.lifecycle.registry import Registry
from pinrank.lifecycle.retrain import FAULT_ENV


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("lifecycle_logs") / "raw"
    generate(SyntheticConfig(n_users=300, n_items=200, n_events=8000, n_boards=60,
                             n_creators=30), out)  # fmt: skip
    return out


def _lifecycle(tmp: Path, logs: Path, key_files: dict[str, Path]) -> Path:
    config = tiny_lifecycle(tmp, logs, key_files, name="tiny", base_days=50, days=1,
                            holdout_days=5, warm_start=True)  # fmt: skip
    path = tmp / "lifecycle.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _retrain(config: Path, fault: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    env.pop(FAULT_ENV, None)
    if fault:
        env[FAULT_ENV] = fault
    return subprocess.run([sys.executable, "-m", "pinrank.cli", "retrain", "--config",
                           str(config), "--through", "1"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)  # fmt: skip


def _data(work: Path) -> dict[str, str]:
    files = [*sorted((work / "days").glob("*/raw/*/*.parquet")),
             *sorted((work / "holdout").glob("*.parquet"))]  # fmt: skip
    return {str(f.relative_to(work)): hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


def _registry(tmp: Path) -> list[tuple[str, list[str], str]]:
    registry = Registry(f"sqlite:///{tmp}/mlflow.db")
    return [(v.tags["pinrank.day"], v.aliases, v.tags.get("pinrank.verdict", ""))
            for v in registry.versions()]  # fmt: skip


def test_a_killed_retrain_resumes_to_the_same_data_and_registry(
    logs: Path, key_files: dict[str, Path], tmp_path: Path
) -> None:
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    for folder in (whole, killed):
        folder.mkdir()
    done = _retrain(_lifecycle(whole, logs, key_files))
    assert done.returncode == 0, done.stderr[-3000:]
    config = _lifecycle(killed, logs, key_files)
    # SIGKILL after day 1's package was registered and its alias set, before it is recorded
    died = _retrain(config, fault="1:register")
    assert died.returncode == -signal.SIGKILL, died.stderr[-3000:]
    state = json.loads((killed / "work" / "state.json").read_text())
    assert "register" not in state["days"]["1"] and "export" in state["days"]["1"]
    again = _retrain(config)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "day 1: v2" in again.stdout
    assert _data(killed / "work") == _data(whole / "work") and _data(whole / "work")
    assert _registry(killed) == _registry(whole)
    assert [d for d, _, _ in _registry(whole)] == ["0", "1"]  # one registration a day
    history = [Registry(f"sqlite:///{t}/mlflow.db").history() for t in (whole, killed)]
    assert history[0] == history[1]
    decisions = [json.loads((t / "work" / "days" / "1" / "decision.json").read_text())
                 for t in (whole, killed)]  # fmt: skip
    assert decisions[0]["promoted"] == decisions[1]["promoted"]
    # day 1 began from production's runs (day 0's: the first production)
    days = [json.loads((t / "work" / "state.json").read_text())["days"] for t in (whole, killed)]
    for state in days:
        assert state["1"]["ranking"]["init_from"] == state["0"]["ranking"]["run"]
        assert state["0"]["ranking"]["init_from"] is None
    run = Path(days[0]["1"]["ranking"]["run"])
    assert (
        json.loads(
            (ROOT / run / "metrics.json").read_text()
            if not run.is_absolute()
            else (run / "metrics.json").read_text()
        )["warm_start/rows_copied"]
        > 0
    )
    # the hold-out window was never trained on: no day's raw events fall in it
    import pyarrow.parquet as pq

    meta = json.loads((whole / "work" / "holdout" / "holdout.json").read_text())
    lo, hi = meta["window"]
    for day in ("0", "1"):
        ts = pq.read_table(whole / "work" / "days" / day / "raw" / "events").column("ts")
        assert not any(lo <= t < hi for t in ts.to_pylist())
    held = pq.read_table(whole / "work" / "holdout" / "events.parquet")
    assert held.num_rows > 0
