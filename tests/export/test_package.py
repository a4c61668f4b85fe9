"""Model packages: parity of every graph with the training path (ONNX Runtime and the torch
backend, clean and corrupted rows), the manifest, integrity checks, no pickles, the ranker graph
in a process without torch, and the command lines."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from package_fixtures import TRUST

from pinrank.data.prepare import Prepared
from pinrank.export.torch_backend import TorchBackend
from pinrank.export.verify import held_out_rows, verify
from pinrank.features.columns import INT_NULL, pack
from pinrank.features.featurizer import Featurizer
from pinrank.serving.package import PackageError, load_package
from pinrank.serving.runtime import OnnxBackend

ROOT = Path(__file__).resolve().parents[2]
GRAPH_OUTPUTS = {
    "user_tower/embedding",
    "item_tower/embedding",
    "ranker/probability",
    "ranker/logit",
    "ranker_feed/probability",
    "ranker_feed/logit",
    "ranker_pairs/probability",
    "ranker_pairs/logit",
    "ranker_items/stored",  # the item parts stored at export against ranker_items again
}


def _prepared(package_dir: Path) -> Prepared:
    return Prepared.load(
        load_package(package_dir, TRUST).manifest["provenance"]["data"]["prepared"]
    )


def _set(table: pa.Table, name: str, values: list, type_: pa.DataType) -> pa.Table:
    return table.set_column(table.schema.get_field_index(name), name, pa.array(values, type_))


def corrupt(tables: dict[str, pa.Table]) -> dict[str, pa.Table]:
    """Every kind of bad value the spec has a policy for, in the first rows of each side."""
    u, i, c = tables["user"], tables["item"], tables["context"]
    # the corrupted user rows get ids of their own: one row per user id, as in real data
    uid = u.column("user_id").to_pylist()
    uid[:3] = [10**9, 10**9 + 1, 10**9 + 2]
    u = _set(u, "user_id", uid, pa.int64())
    age = u.column("age").to_pylist()
    age[:3] = [None, 150, -4]
    u = _set(u, "age", age, u.schema.field("age").type)
    country = u.column("country").to_pylist()
    country[:2] = [None, "Atlantis"]
    u = _set(u, "country", country, pa.string())
    hist = u.column("history").to_pylist()
    hist[0], hist[1], hist[2] = [None, -3, 10**12], None, list(range(400))  # long: truncated
    u = _set(u, "history", hist, u.schema.field("history").type)
    last = u.column("last_ts").to_pylist()
    last[3:5] = [1_700_000_000_000, 2**60]  # milliseconds where seconds are expected; > 2^53
    u = _set(u, "last_ts", last, u.schema.field("last_ts").type)
    age[3:5] = [2_000_000_000, -7]
    u = _set(u, "age", age, u.schema.field("age").type)
    events = i.column("train_events").to_pylist()
    events[4] = 2**60 + 1
    i = _set(i, "train_events", events, i.schema.field("train_events").type)
    mean_ts = i.column("mean_ts").to_pylist()
    mean_ts[5] = 1_700_000_000_000.0
    i = _set(i, "mean_ts", mean_ts, i.schema.field("mean_ts").type)
    q = i.column("quality").to_pylist()
    q[:3] = [None, float("nan"), 7.0]
    i = _set(i, "quality", q, i.schema.field("quality").type)
    emb = i.column("embedding").to_pylist()
    emb[0], emb[1] = [1.0, 2.0], None  # wrong length, null
    i = _set(i, "embedding", emb, i.schema.field("embedding").type)
    ids = i.column("item_id").to_pylist()
    ids[3] = 987654321  # not in the vocabulary
    i = _set(i, "item_id", ids, pa.int64())
    inter = i.column("interests").to_pylist()
    inter[0] = [None, 1, -2]
    i = _set(i, "interests", inter, i.schema.field("interests").type)
    pos = c.column("position").to_pylist()
    pos[:2] = [-5, None]
    c = _set(c, "position", pos, c.schema.field("position").type)
    surface = c.column("surface").to_pylist()
    surface[:2] = ["", "nowhere"]
    c = _set(c, "surface", surface, pa.string())
    return {"user": u, "item": i, "context": c}


@pytest.mark.parametrize("backend", ["onnx", "torch"])
def test_every_graph_matches_the_training_path(package_dir: Path, backend: str) -> None:
    package = load_package(package_dir, TRUST)
    tables = held_out_rows(_prepared(package_dir), "test", 700)
    be = OnnxBackend(package) if backend == "onnx" else TorchBackend(package, "cpu")
    report = verify(package, tables, be)
    assert set(report.diffs) == GRAPH_OUTPUTS
    assert report.ok, str(report)
    assert report.max_diff <= 1e-5


def test_parity_holds_on_corrupted_rows(package_dir: Path) -> None:
    package = load_package(package_dir, TRUST)
    tables = corrupt(held_out_rows(_prepared(package_dir), "val", 300))
    arrays = pack(tables["user"], package.columns("user"))
    assert arrays["user.age"][0] == INT_NULL and arrays["user.country"][0] == ""
    report = verify(package, tables)
    assert report.ok, str(report)
    # same outcome: the out-of-unit and huge values take the defaults in both paths
    counts = Featurizer(package.spec(), package.state())(tables).counts
    assert counts[("last_active", "out_of_range")] >= 2
    assert counts[("in_fashion", "out_of_range")] >= 1
    assert counts[("age", "out_of_range")] >= 2
    assert package.manifest["features"]["units"] == {
        "last_active": "epoch_s",
        "in_fashion": "epoch_s",
    }


def test_a_wrong_network_fails_verification(package_dir: Path, tmp_path: Path) -> None:
    """The check can fail: scoring the ranker with the other model's weights is caught."""
    package = load_package(package_dir, TRUST)
    tables = held_out_rows(_prepared(package_dir), "test", 200)

    class Shifted(OnnxBackend):
        def run(self, graph: str, inputs: dict) -> dict:
            out = super().run(graph, inputs)
            return {k: v + 1e-3 if k == "probability" else v for k, v in out.items()}

    report = verify(package, tables, Shifted(package))
    assert not report.ok and report.diffs["ranker/probability"] == pytest.approx(1e-3, rel=1e-2)


def test_graphs_take_raw_typed_columns(package_dir: Path) -> None:
    package = load_package(package_dir, TRUST)
    manifest = package.manifest
    kinds = {f"{c['side']}.{c['column']}": c["kind"] for c in manifest["columns"]}
    assert kinds["user.country"] == "string" and kinds["user.history"] == "int_list"
    assert kinds["item.embedding"] == "vector" and kinds["context.position"] == "int"
    model = onnx.load(str(package.graph_path("ranker")), load_external_data=False)
    inputs = {i.name: i.type.tensor_type.elem_type for i in model.graph.input}
    assert inputs["user.country"] == onnx.TensorProto.STRING
    assert inputs["user.history"] == onnx.TensorProto.INT64 and "user.history.lengths" in inputs
    assert [i["name"] for i in manifest["graphs"]["ranker"]["inputs"]] == list(inputs)
    assert not any(name.startswith("vocab.") for name in inputs)  # lookups are inside
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param  # dynamic batch
    outputs = {o["name"]: o for o in manifest["graphs"]["user_tower"]["outputs"]}
    assert outputs["embedding"]["dtype"] == "float32"


def test_manifest_carries_features_calibration_metrics_and_provenance(package_dir: Path) -> None:
    m = load_package(package_dir, TRUST).manifest
    assert m["features"]["names"][0] == "user.user_id"
    assert m["models"]["ranking"]["calibration"]["method"] in ("platt", "isotonic", "identity")
    assert "test/auc" in m["models"]["ranking"]["metrics"]
    assert "test/recall@20" in m["models"]["retrieval"]["metrics"]
    prov = m["provenance"]
    assert len(prov["git"]["commit"]) == 40 and "@" in prov["created_by"]
    assert prov["train_commands"]["ranking"].startswith("python train.py")
    assert "model=wide_deep" in prov["train_commands"]["ranking"]
    assert len(prov["data"]["fingerprint"]) == 64 and prov["versions"]["onnxruntime"]
    assert m["index"]["items"] == m["catalogue"]["rows"]
    # the index chosen by catalogue size, its recall against exact search measured at export
    assert m["index"]["factory"] == "HNSW32" and "pins (<= 200,000 pins)" in m["index"]["chosen_by"]
    recall = m["index"]["recall"]
    assert recall["k"] == min(100, m["catalogue"]["rows"]) and recall["queries"] > 0
    assert recall["min_recall"] <= recall["recall_vs_exact"] <= 1.0
    assert set(m["context_defaults"]) == {"surface", "position"}


def test_package_holds_no_pickle(package_dir: Path) -> None:
    for path in package_dir.rglob("*"):
        if path.is_file():
            head = path.read_bytes()[:2]
            assert not (head[:1] == b"\x80" and head[1:2] in b"\x02\x03\x04\x05"), path
            assert path.suffix not in (".pkl", ".pickle", ".pt", ".ckpt", ".npy"), path


@pytest.mark.parametrize(
    "damage", ["flip_byte", "edit_manifest", "delete_file", "extra_file", "no_digest"]
)
def test_a_changed_package_is_refused(package_dir: Path, tmp_path: Path, damage: str) -> None:
    pkg = tmp_path / "pkg"
    shutil.copytree(package_dir, pkg)
    if damage == "flip_byte":
        target = pkg / "graphs" / "ranker.onnx"
        data = bytearray(target.read_bytes())
        data[len(data) // 2] ^= 1
        target.write_bytes(bytes(data))
        match = "graphs/ranker.onnx was altered"
    elif damage == "edit_manifest":
        m = json.loads((pkg / "manifest.json").read_text())
        m["context_defaults"]["position"] = 3
        (pkg / "manifest.json").write_text(json.dumps(m))
        match = "manifest.json: altered"
    elif damage == "delete_file":
        (pkg / "index" / "items.faiss").unlink()
        match = "index/items.faiss is missing"
    elif damage == "extra_file":
        (pkg / "graphs" / "evil.onnx").write_bytes(b"x")
        match = "not in the manifest"
    else:
        (pkg / "MANIFEST.sha256").unlink()
        match = "altered"
    with pytest.raises(PackageError, match=match):
        load_package(pkg, TRUST)


NO_TORCH = """
import sys
sys.modules["torch"] = None  # any import of torch now raises
import numpy as np, pyarrow.parquet as pq
from pinrank.features.columns import pack
from pinrank.serving.package import load_package
from pinrank.serving.runtime import OnnxBackend
from pinrank.serving.signing import Trust
try:
    import torch  # noqa
    raise SystemExit("torch imported")
except ImportError:
    pass
package = load_package(sys.argv[1], Trust.from_files([sys.argv[4]]))
arrays = {}
for side in ("user", "item", "context"):
    arrays |= pack(pq.read_table(f"{sys.argv[2]}/{side}.parquet"), package.columns(side))
out = OnnxBackend(package).run("ranker", arrays)
np.save(sys.argv[3], out["probability"])
heavy = ("torch", "pytorch_lightning", "hydra")
assert not [m for m, v in sys.modules.items() if v is not None and m.startswith(heavy)]
"""


def test_ranker_graph_runs_where_torch_cannot_be_imported(
    package_dir: Path, tmp_path: Path, key_files: dict[str, Path]
) -> None:
    package = load_package(package_dir, TRUST)
    tables = held_out_rows(_prepared(package_dir), "test", 100)
    for side, table in tables.items():
        pq.write_table(table, tmp_path / f"{side}.parquet")
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    out = tmp_path / "p.npy"
    proc = subprocess.run(
        [sys.executable, "-c", NO_TORCH, str(package_dir), str(tmp_path), str(out),
         str(key_files["public"])],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    arrays = {}
    for side, table in tables.items():
        arrays |= pack(table, package.columns(side))
    expected = TorchBackend(package, "cpu").run("ranker", arrays)["probability"]
    assert np.abs(np.load(out) - expected).max() <= 1e-5


def test_verify_command_passes_and_fails(package_dir: Path, key_files: dict[str, Path]) -> None:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "pinrank.cli", "verify", str(package_dir), "--rows", "200",
           "--trusted-key", str(key_files["public"])]  # fmt: skip
    ok = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "OK: max abs diff" in ok.stdout and "ranker_feed/probability" in ok.stdout
    bad = subprocess.run([*cmd, "--tol", "-1"], capture_output=True, text=True, env=env, cwd=ROOT)
    assert bad.returncode == 1 and "FAILED" in bad.stdout


def test_export_command_writes_a_verified_package(
    trained_runs: dict[str, Path], tmp_path: Path, key_files: dict[str, Path]
) -> None:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    out = tmp_path / "ranker_only"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "export.py"), f"run_dir={trained_runs['ranking']}",
         f"out={out}", "verify.rows=100", "+context.position=2",
         f"signing_key={key_files['private']}"],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "OK: max abs diff" in proc.stdout
    package = load_package(out, TRUST)
    assert set(package.manifest["graphs"]) == {
        "ranker",
        "ranker_user",
        "ranker_feed",
        "ranker_items",
        "ranker_pairs",
    }
    assert package.manifest["context_defaults"]["position"] == 2
    again = subprocess.run(
        [sys.executable, str(ROOT / "export.py"), f"run_dir={trained_runs['ranking']}",
         f"out={out}", "verify.rows=0"],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=600,
    )  # fmt: skip
    assert again.returncode != 0 and "exists" in again.stderr


def test_feed_command_serves_known_and_unknown_users(
    package_dir: Path, key_files: dict[str, Path]
) -> None:
    env = {
        **os.environ,
        "PYTHONWARNINGS": "ignore",
        "PINRANK_TRUSTED_KEYS": str(key_files["public"]),
    }
    data = str(_prepared(package_dir).root)
    cmd = [
        sys.executable,
        "-m",
        "pinrank.cli",
        "feed",
        str(package_dir),
        "--data",
        data,
        "--k",
        "5",
    ]
    proc = subprocess.run(
        [*cmd, "--users", "1", "--user", "999999999", "--interests", "1", "2"],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert "[feed] backend onnxruntime" in lines[0]
    assert any("path personalized" in line for line in lines)
    assert any("user 999999999: 5 pins, path unknown_user_interests" in line for line in lines)
    assert sum(" score " in line for line in lines) == 5  # the known user's feed
    assert sum(" popularity " in line for line in lines) == 5  # the fallback: no model score


def test_a_package_with_the_popularity_prior_retrieves_by_the_biased_score(
    trained_runs: dict[str, Path], tmp_path: Path
) -> None:
    from pinrank.data.io import read_table
    from pinrank.export.package import build_package
    from pinrank.export.run import TrainedRun
    from pinrank.retrieval.bias import impression_counts
    from pinrank.serving.feed import FeedConfig
    from pinrank.serving.scorer import FeedScorer
    from pinrank.serving.store import TableStore

    retrieval = TrainedRun.load(trained_runs["retrieval"])
    settings = retrieval.record.retrieval
    assert settings is not None
    retrieval.record = dataclasses.replace(  # as if chosen on val
        retrieval.record, retrieval=dataclasses.replace(settings, popularity_bias=0.5)
    )
    runs = [retrieval, TrainedRun.load(trained_runs["ranking"])]
    package = build_package(runs, tmp_path / "pkg")
    index = package.manifest["index"]
    temperature = retrieval.net.temperature
    assert index["popularity_bias"] == 0.5 and index["temperature"] == temperature
    be = OnnxBackend(package)
    items = pq.read_table(package.path("catalogue/items.parquet"))
    item_emb = be.run("item_tower", pack(items, package.columns("item")))["embedding"]
    assert index["dim"] == item_emb.shape[1] + 2
    users = retrieval.prepared.users()
    user = users.slice(5, 1)
    uid = int(user.column("user_id")[0].as_py())
    u = be.run("user_tower", pack(user, package.columns("user")))["embedding"]
    train = read_table(retrieval.prepared.split("train"), "events", ["item_id"])
    ids = items.column("item_id").to_numpy()
    counts = impression_counts(train.column("item_id").to_numpy(), ids)
    reference = (u @ item_emb.T)[0] / temperature + 0.5 * np.log1p(counts)  # [N]
    seen = np.asarray(user.column("seen")[0].as_py() or [], np.int64)
    reference[np.isin(ids, seen)] = -np.inf
    expected = ids[np.argsort(-reference, kind="stable")[:40]]
    config = FeedConfig(candidates=40, interest_candidates=0)
    cands = FeedScorer(package, TableStore(users), config=config).candidates(uid, k=10)
    retrieved = cands.item_ids[cands.sources == "retrieval"]
    assert len(retrieved) == 40 and np.isin(retrieved, expected).mean() >= 0.95


def test_an_index_below_its_minimum_recall_fails_the_export(
    trained_runs: dict[str, Path], tmp_path: Path
) -> None:
    from pinrank.export.index import IndexConfig, IndexRecallError, IndexRule
    from pinrank.export.package import build_package
    from pinrank.export.run import TrainedRun

    runs = [TrainedRun.load(trained_runs["retrieval"]), TrainedRun.load(trained_runs["ranking"])]
    one_list = IndexRule(None, "IVF{nlist},Flat", {"nprobe": 1})  # 1 of several lists
    config = IndexConfig(by_size=(one_list,), min_recall=0.99)
    with pytest.raises(IndexRecallError, match=r"IVF\d+,Flat .* below index.min_recall=0.99"):
        build_package(runs, tmp_path / "pkg", index=config)
    assert not (tmp_path / "pkg").exists()  # nothing half-written in its place


def test_a_long_list_does_not_set_the_padded_width(package_dir: Path) -> None:
    """One user with 10,000 history pins (nulls and negative ids among them) in a batch: the
    packed lists are at most max_len wide, and every ranker graph gives what it gives on the
    untrimmed, 10,000-wide input."""
    package = load_package(package_dir, TRUST)
    tables = held_out_rows(_prepared(package_dir), "test", 64)
    u = tables["user"]
    hist = u.column("history").to_pylist()
    hist[0] = [None, -1, *range(10_000)][::-1]
    u = _set(u, "history", hist, u.schema.field("history").type)
    uid = u.column("user_id").to_pylist()
    uid[0] = 10**9 + 7  # its own id: one row per user id, as in real data
    tables["user"] = _set(u, "user_id", uid, pa.int64())
    trimmed: dict[str, np.ndarray] = {}
    full: dict[str, np.ndarray] = {}
    for side, table in tables.items():
        cols = package.columns(side)
        trimmed |= pack(table, cols)
        full |= pack(table, [dataclasses.replace(c, max_len=None) for c in cols])
    history = next(c for c in package.columns("user") if c.column == "history")
    assert history.max_len == 50 and history.keep_last
    assert trimmed["user.history"].shape[1] <= 50 < full["user.history"].shape[1]
    backend = OnnxBackend(package)
    for graph in ("ranker", "user_tower"):
        a, b = backend.run(graph, trimmed), backend.run(graph, full)
        for name in a:
            assert np.abs(a[name] - b[name]).max() <= 1e-6, (graph, name)
    report = verify(package, tables)
    assert report.ok, str(report)


@pytest.fixture(scope="module")
def dynamo_package_dir(trained_runs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    """The fixture package's runs exported again with the dynamo exporter."""
    from package_fixtures import SIGNING_KEY

    from pinrank.export.package import build_package
    from pinrank.export.run import TrainedRun

    runs = [TrainedRun.load(trained_runs["retrieval"]), TrainedRun.load(trained_runs["ranking"])]
    out = tmp_path_factory.mktemp("dynamo") / "pkg"
    build_package(runs, out, command="pytest", signing_key=SIGNING_KEY, exporter="dynamo")
    return out


@pytest.mark.parametrize("rows", [1, 700])
def test_both_exporters_match_the_training_path_and_each_other(
    package_dir: Path, dynamo_package_dir: Path, rows: int
) -> None:
    """The traced (torchscript) and the torch.export (dynamo) graphs agree with the training path
    (so with each other) at batch sizes and list widths other than the ones they were traced on,
    and on corrupted rows."""
    traced, dynamo = load_package(package_dir, TRUST), load_package(dynamo_package_dir, TRUST)
    assert traced.manifest["provenance"]["exporter"] == "torchscript"
    assert dynamo.manifest["provenance"]["exporter"] == "dynamo"
    tables = held_out_rows(_prepared(package_dir), "test", rows)
    for package in (traced, dynamo):
        report = verify(package, tables)
        assert set(report.diffs) == GRAPH_OUTPUTS and report.ok, str(report)
    corrupted = corrupt(held_out_rows(_prepared(package_dir), "val", 300))
    assert verify(dynamo, corrupted).ok


def test_an_unknown_exporter_is_refused() -> None:
    from pinrank.export.onnx import export_graph

    with pytest.raises(ValueError, match="exporter 'tflite'"):
        export_graph(None, {}, "x.onnx", exporter="tflite")  # type: ignore[arg-type]
