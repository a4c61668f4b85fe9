"""Bring your data, write a config, train: a small log in a foreign shape goes through config
files alone (a data config found by Hydra, a feature spec) to both trainings, a package that
`pinrank verify` holds to the training path, batch feeds and the service, which take and give
the ids as the data gave them. The CSV shape (string ids) runs by default; the Parquet and TSV
shapes are marked slow."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from data_fixtures import FEATURES, SHAPES, SPEC
from fastapi.testclient import TestClient
from package_fixtures import ROOT, SIGNING_KEY, TRUST, train

from pinrank.batch.feeds import read_feeds, run_feeds
from pinrank.batch.units import JobConfig
from pinrank.data.io import read_table
from pinrank.export.package import build_package
from pinrank.export.run import TrainedRun
from pinrank.export.verify import held_out_rows, verify
from pinrank.serving.runtime import OnnxBackend
from pinrank.serving.store import TableStore
from serve.app import Settings, create_app


@pytest.fixture(scope="module")
def log(synthetic_raw: Path) -> dict[str, pa.Table]:
    events = read_table(synthetic_raw / "events", "events").slice(0, 6000)
    return {
        "events": events,
        "users": read_table(synthetic_raw / "users", "users"),
        "items": read_table(synthetic_raw / "items", "items"),
    }


def _config(tmp: Path, shape: str, log: dict[str, pa.Table]) -> Path:
    """``tmp/conf/data/mine.yaml`` reading the shape's files; returns the config folder."""
    cfg: dict[str, Any] = SHAPES[shape](log, tmp / "files")
    (tmp / "spec.yaml").write_text(SPEC % FEATURES[shape])
    data = {
        "source": {
            "_target_": "pinrank.data.sources.TableSource",
            "root": str(tmp / "data"),
            "spec": str(tmp / "spec.yaml"),
            "split": {"_target_": "pinrank.data.splits.SplitConfig"},
            **cfg,
        },
        "datamodule": {
            "_target_": "pinrank.data.datamodule.PinrankDataModule",
            "batch_size": 256,
            "eval_batch_size": 1024,
            "num_workers": 0,
            "seed": "${seed}",
        },
    }
    (tmp / "conf" / "data").mkdir(parents=True)
    (tmp / "conf" / "data" / "mine.yaml").write_text(yaml.safe_dump(data))
    return tmp / "conf"


def _runs(tmp: Path, conf: Path, shape: str) -> list[TrainedRun]:
    common = [
        f"hydra.searchpath=[file://{conf}]",
        "data=mine",
        f"paths.data_dir={tmp}/data",
        f"paths.log_dir={tmp}/logs",
        f"paths.conf_dir={ROOT}/conf",
        "trainer.max_epochs=1",
        "+trainer.limit_train_batches=4",
        "trainer.enable_progress_bar=false",
    ]
    exam = [] if shape == "tsv" else ["model.net.cfg.examination=[]"]  # no position column
    retrieval = train([*common, "task_name=tt", "model.module.index=HNSW16"], tmp / "logs" / "tt")
    ranking = train(
        [*common, "task_name=wd", "model=wide_deep", "model.module.logreg_grid=[1e-4]", *exam],
        tmp / "logs" / "wd",
    )
    return [TrainedRun.load(retrieval), TrainedRun.load(ranking)]


def _own_data_end_to_end(
    tmp: Path, shape: str, log: dict[str, pa.Table], other: Path | None = None
) -> None:
    runs = _runs(tmp, _config(tmp, shape, log), shape)
    package = build_package(runs, tmp / "pkg", signing_key=SIGNING_KEY)
    prepared = runs[0].prepared
    report = verify(package, held_out_rows(prepared, "test", 500), OnnxBackend(package))
    assert report.ok, report
    strings = shape == "csv"  # user ids mapped, item ids hashed
    assert ("ids" in package.manifest) == strings
    # batch feeds: the originals in and out
    users = prepared.users()
    pq.write_table(users, tmp / "users.parquet")
    run_feeds(tmp / "pkg", tmp / "users.parquet", tmp / "feeds", trust=TRUST, progress=False)
    feeds = read_feeds(tmp / "feeds")
    assert feeds.num_rows > 0 and len(set(feeds["user_id"].to_pylist())) == users.num_rows
    first_user = feeds["user_id"][0].as_py()
    if strings:
        assert feeds.schema.field("user_id").type == pa.string()
        assert all(u.startswith("m-") for u in feeds["user_id"].to_pylist())
        assert all(i.startswith("p-") for i in feeds["item_id"].to_pylist())
    else:
        assert feeds.schema.field("user_id").type == pa.int64()
    # the service: a request by the original id gets the batch job's feed
    app = create_app(Settings(str(tmp / "pkg"), trust=TRUST, admin_token="t"), TableStore(users))
    with TestClient(app) as client:
        k = JobConfig().k  # the batch job's k: quotas and caps depend on it
        got = client.get(f"/v1/feed/{first_user}", params={"k": k})
        assert got.status_code == 200, got.text
        body = got.json()
        assert body["user_id"] == first_user and body["path"].startswith("personalized")
        batch = feeds.filter(pa.compute.equal(feeds["user_id"], first_user))
        assert [i["item_id"] for i in body["items"]] == batch["item_id"].to_pylist()
        pins = [i["item_id"] for i in body["items"][:2]]
        scored = client.post("/v1/score", json={"user_id": first_user, "item_ids": pins})
        assert scored.status_code == 200, scored.text
        assert len(scored.json()["scores"]) == 2
        if strings:
            unknown = client.get("/v1/feed/somebody-new", params={"k": 3}).json()
            assert unknown["user_id"] == "somebody-new"
            assert unknown["path"] == "unknown_user_popular" and len(unknown["items"]) == 3
            missing = client.post("/v1/score", json={"user_id": first_user, "item_ids": ["p-x"]})
            assert missing.status_code == 404 and "p-x" in missing.text
        else:
            assert client.get("/v1/feed/m-1").status_code == 422  # integer ids stay strict
        if other is not None:  # a package of integer ids would change the routes' types
            shutil.copytree(other, tmp / "other")  # (under the service's model roots)
            refused = client.post("/admin/reload", json={"package": str(tmp / "other")},
                                  headers={"Authorization": "Bearer t"})  # fmt: skip
            assert refused.status_code == 422 and "restart the service" in refused.text
            assert client.get(f"/v1/feed/{first_user}").status_code == 200  # still serving
    manifest = json.loads((tmp / "pkg" / "manifest.json").read_text())
    if strings:
        assert manifest["ids"]["user_id"]["kind"] == "map"
        assert manifest["ids"]["item_id"]["kind"] == "hash"


def test_csv_log_with_string_ids_end_to_end(
    tmp_path: Path, log: dict[str, pa.Table], package_dir: Path
) -> None:
    _own_data_end_to_end(tmp_path, "csv", log, other=package_dir)


@pytest.mark.slow
@pytest.mark.parametrize("shape", ["parquet", "tsv"])
def test_other_shapes_end_to_end(tmp_path: Path, log: dict[str, pa.Table], shape: str) -> None:
    _own_data_end_to_end(tmp_path, shape, log)
