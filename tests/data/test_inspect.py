"""``pinrank inspect``: the report counts what is in the files (malformed values included,
where ingest would stop), and the suggested feature spec trains as written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from data_fixtures import ROOT

from pinrank.cli import main
from pinrank.data.datamodule import PinrankDataModule
from pinrank.data.sources import TableSource, load_source
from pinrank.features.spec import FeatureSpec
from pinrank.models.towers import TowerConfig, TwoTower
from pinrank.models.wide_deep import WideDeep, WideDeepConfig


def _trains(source: TableSource, spec: Path, root: Path) -> None:
    """Both models take a few steps on ``source``'s data featurized by ``spec``."""
    prepared = TableSource(**{**source.__dict__, "root": str(root), "spec": str(spec)}).ensure()
    dm = PinrankDataModule(str(prepared.root), batch_size=256)
    dm.setup()
    torch.manual_seed(0)
    tower = TowerConfig(hidden=(16,), output_dim=8)
    for net in (
        WideDeep.from_spec(dm.spec, dm.state, dm.dense_dims(), WideDeepConfig(hidden=(16,))),
        TwoTower.from_spec(dm.spec, dm.state, dm.dense_dims(), tower, tower),
    ):
        opt = torch.optim.Adam(net.parameters(), lr=0.01)
        for _, batch in zip(range(3), dm.train_dataloader(), strict=False):
            assert batch.labels is not None
            loss = torch.nn.functional.binary_cross_entropy_with_logits(net(batch), batch.labels)
            opt.zero_grad()
            loss.backward()
            opt.step()
            assert np.isfinite(float(loss.detach()))


FILES = ("inspect.json", "suggested_spec.yaml", "events_per_day.png", "activity.png")


def _inspect(
    config: Path, out: Path, capsys: pytest.CaptureFixture[str], *extra: str, files=FILES
) -> str:
    assert main(["inspect", str(config), "--out", str(out), "--root-dir", str(ROOT), *extra]) == 0
    text = capsys.readouterr().out
    for name in files:
        assert (out / name).stat().st_size > 0, name
    return text


def test_inspect_synthetic_data_and_train_on_its_spec(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "synthetic.yaml"
    config.write_text(
        "source:\n"
        "  _target_: pinrank.data.sources.SyntheticSource\n"
        f"  root: {tmp_path / 'data'}\n"
        "  spec: ${paths.conf_dir}/features/synthetic.yaml\n"
        "  generator: {_target_: pinrank.data.synthetic.SyntheticConfig, n_users: 500,\n"
        "              n_items: 300, n_events: 8000, n_boards: 40, n_creators: 20,\n"
        "              dirty: 0.05}\n"
    )
    text = _inspect(config, tmp_path / "out", capsys)
    assert "events: 8,000, label rate" in text and "events per user: median" in text
    report = json.loads((tmp_path / "out" / "inspect.json").read_text())
    assert report["events"]["rows"] == 8000
    age = report["source_columns"]["users"]["age"]
    assert age["nulls"] > 0 and (age["min"] == 0 or age["max"] == 150)  # the dirty ages
    spec_path = tmp_path / "out" / "suggested_spec.yaml"
    spec = yaml.safe_load(spec_path.read_text())
    assert "engagement" not in spec["features"]  # the label's column is never a feature
    assert spec["features"]["board_id"]["kind"] == "categorical"  # an id, not a quantity
    assert spec["features"]["embedding"]["dim"] == 8
    assert "gender_x_interests" in spec["crosses"]
    FeatureSpec.from_yaml(spec_path)
    raw = tmp_path / "data" / "raw"
    _trains(TableSource.of_raw(raw, str(tmp_path), "unused"), spec_path, tmp_path / "trained")


def test_inspect_counts_malformed_values_that_ingest_refuses(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = tmp_path / "files"
    files.mkdir()
    rows = ["user,item,ts,rating"] + [f"u{i % 7},{i % 11},{1_700_000_000 + i},{i % 5 + 1}"
                                      for i in range(200)]  # fmt: skip
    rows[10] = "u1,x,1700000009,5"  # an item id that is no integer
    (files / "events.csv").write_text("\n".join(rows) + "\n")
    config = tmp_path / "mine.yaml"
    config.write_text(
        "source:\n"
        "  _target_: pinrank.data.sources.TableSource\n"
        f"  root: {tmp_path / 'data'}\n"
        f"  spec: {tmp_path / 'spec.yaml'}\n"
        f"  base: {files}\n"
        "  label: rating >= 4\n"
        "  ids: {user_id: map}\n"
        "  tables:\n"
        "    events: {path: events.csv, format: csv,\n"
        "             columns: {user_id: user, item_id: item, ts: {column: ts, time: s}}}\n"
    )
    text = _inspect(config, tmp_path / "out", capsys)
    assert "-> item_id: 1 values do not convert, e.g. 'x'" in text
    report = json.loads((tmp_path / "out" / "inspect.json").read_text())
    assert report["columns"]["events"]["item_id"]["malformed"] == 1
    assert report["events"]["label_rate"] == pytest.approx(80 / 200)
    with pytest.raises(ValueError, match="'x' is not an id of item_id"):
        load_source(config).ensure()  # ingest stops at it
    # a wrong time unit: every value counted, in one vectorised pass per batch
    config.write_text(config.read_text().replace("time: s", "time: iso"))
    _inspect(config, tmp_path / "out2", capsys, files=FILES[:2])  # no time: no days to plot
    report = json.loads((tmp_path / "out2" / "inspect.json").read_text())
    assert report["columns"]["events"]["ts"]["malformed"] == 200


def test_inspect_movielens_and_train_on_its_spec(
    ml100k: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = ROOT / "conf" / "data" / "ml100k.yaml"
    text = _inspect(config, tmp_path / "out", capsys, "--set", f"base={ml100k}")
    assert "events: 100,000, label rate 0.554, 943 users, 1,682 items" in text
    spec = yaml.safe_load((tmp_path / "out" / "suggested_spec.yaml").read_text())
    assert spec["features"]["item_interests"]["kind"] == "multi_categorical"  # the genres
    assert "gender_x_interests" in spec["crosses"]
    source = load_source(config, ROOT, {"base": str(ml100k)})
    assert isinstance(source, TableSource)
    _trains(source, tmp_path / "out" / "suggested_spec.yaml", tmp_path / "trained")
