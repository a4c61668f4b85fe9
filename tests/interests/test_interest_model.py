"""The new-user interest data set and model end to end on a tiny synthetic data set: derived
from the base source, prepared with the same cold-start users, trained by train.py, reported
against random, popularity and segment popularity, recorded for export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from package_fixtures import train

from pinrank.data.io import read_table
from pinrank.data.sources import SyntheticSource
from pinrank.data.synthetic import SyntheticConfig
from pinrank.interests.labels import Window, interest_examples
from pinrank.interests.segments import Candidates
from pinrank.interests.source import InterestSource
from pinrank.runs import RunRecord

ROOT = Path(__file__).resolve().parents[2]
TINY = SyntheticConfig(n_users=400, n_items=300, n_events=16_000, n_boards=60, n_creators=30)


def test_the_interest_data_set_is_derived_from_its_base(tmp_path: Path) -> None:
    base = SyntheticSource(str(tmp_path / "base"), str(ROOT / "conf/features/synthetic.yaml"),
                           generator=TINY)  # fmt: skip
    source = InterestSource(
        str(tmp_path / "interests"), str(ROOT / "conf/features/interests.yaml"),
        base=base, window=Window(events=20), segment=["country", "gender"],
    )  # fmt: skip
    prepared = source.ensure()
    raw = base.ensure_raw()
    expected = interest_examples(
        read_table(raw / "events", "events"), read_table(raw / "items", "items"), Window(events=20)
    )
    events = read_table(prepared.raw / "events", "events")
    assert events.select(expected.column_names).to_pylist() == expected.to_pylist()
    # the same cold-start users as the base data set: all their examples, and only theirs
    cold = read_table(prepared.split("cold"), "events")["user_id"].to_numpy()
    assert cold.size and (cold % 10 == 0).all()
    assert not (read_table(prepared.split("train"), "events")["user_id"].to_numpy() % 10 == 0).any()
    users = read_table(prepared.raw / "users", "users")
    assert users["segment"].to_pylist()[:1] == [
        f"{users['country'][0].as_py() or ''}|{users['gender'][0].as_py() or ''}"
    ]
    items = read_table(prepared.raw / "items", "items")
    assert set(items["item_id"].to_pylist()) >= set(events["item_id"].to_pylist())
    # nothing changed: nothing is rebuilt
    stamp = (prepared.root / ".fingerprint").stat().st_mtime_ns
    source.ensure()
    assert (prepared.root / ".fingerprint").stat().st_mtime_ns == stamp


def test_tiny_interest_model_trains_and_reports_against_its_baselines(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    run = train(
        [
            "model=interests", "data=synthetic_interests",
            f"paths.data_dir={tmp_path}/data", f"paths.log_dir={logs}",
            f"paths.conf_dir={ROOT}/conf",
            *(f"data.base.source.generator.{k}={v}" for k, v in
              (("n_users", 600), ("n_items", 300), ("n_events", 24000))),
            "trainer.max_epochs=3", "trainer.enable_progress_bar=false",
            "model.module.candidates_per_segment=20",
        ],
        logs,
    )  # fmt: skip
    metrics = json.loads((run / "metrics.json").read_text())
    for name in ("random", "popularity", "segment_popularity", "item_rate"):
        assert f"baseline/{name}/cold/test/auc" in metrics, name
    for name in ("random", "popularity", "segment_popularity"):
        for m in ("precision@10", "recall@10"):
            assert 0 <= metrics[f"baseline/{name}/cold/test/candidates/{m}"] <= 1
    assert metrics["cold/test/auc"] > metrics["baseline/random/cold/test/auc"]
    assert metrics["cold/test/candidates/users"] > 10
    # the candidates the report ranked: saved for export, 20 per segment
    cand = Candidates.from_table(pq.read_table(run / "candidates.parquet"))
    assert cand.segments and all(len(v) <= 20 for v in cand.segments.values())
    assert len(np.unique(cand.popular)) == len(cand.popular)
    record = RunRecord.read(run)
    assert record.kind == "interests" and record.calibration is not None
    assert record.interests == {
        "segment": ["country", "gender"],
        "candidates": "candidates.parquet",
        "candidates_per_segment": 20,
    }
    assert (run / "interests.png").stat().st_size > 1000
