"""The simulated week's script (``make lifecycle``) end to end on a tiny lifecycle: day 0, a
service following production under load, the daily retrains, the table and the history plot.
Slow: three trainings' worth of days and a service (``make test-slow``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from package_fixtures import ROOT, tiny_lifecycle


@pytest.mark.slow
def test_the_week_script_runs_a_tiny_lifecycle(key_files: dict[str, Path], tmp_path: Path) -> None:
    generator = {"n_users": 300, "n_items": 200, "n_events": 8000, "n_boards": 60,
                 "n_creators": 30, "days": 20, "drift_days": 2, "new_pin_share": 0.05,
                 "rising_interests": 2}  # fmt: skip
    config = tiny_lifecycle(tmp_path, tmp_path / "logs", key_files, name="tiny_week",
                            generator=generator, base_days=18, days=2, holdout_days=4)  # fmt: skip
    path = tmp_path / "week.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "lifecycle_week.py"), "--config", str(path),
         "--clients", "2"],
        env={**os.environ, "PYTHONWARNINGS": "ignore"}, capture_output=True, text=True,
        timeout=1200,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    week = json.loads((tmp_path / "work" / "week.json").read_text())
    assert [d["day"] for d in week["days"]] == [0, 1, 2]
    assert week["service"]["requests"] > 0 and week["service"]["failed"] == 0
    assert "| 2 | v3 |" in (tmp_path / "work" / "week.md").read_text()
    assert (tmp_path / "work" / "history.png").stat().st_size > 10_000
