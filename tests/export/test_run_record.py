"""``run.json``, the one artifact export reads from a training run: a run directory stripped of
everything else (metrics.json, config.json, calibration.json, Hydra's files) and moved
elsewhere exports the same package; bad, foreign or stale records are refused by name."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from package_fixtures import SIGNING_KEY, TRUST

from pinrank.export.package import build_package
from pinrank.export.run import TrainedRun
from pinrank.runs import RUN_FILE, RunError, RunRecord
from pinrank.serving.package import load_package


def stripped(run_dir: Path, to: Path) -> Path:
    """A copy of ``run_dir`` in another place holding only run.json and the checkpoints."""
    shutil.copytree(run_dir, to)
    for path in sorted(to.iterdir()):
        if path.name not in (RUN_FILE, "checkpoints"):
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    return to


def test_export_reads_run_json_alone(
    trained_runs: dict[str, Path], package_dir: Path, tmp_path: Path
) -> None:
    runs = {k: stripped(v, tmp_path / "runs" / k) for k, v in trained_runs.items()}
    assert {p.name for p in runs["ranking"].iterdir()} == {RUN_FILE, "checkpoints"}
    for kind, run_dir in runs.items():
        record = RunRecord.read(run_dir)
        assert record.kind == kind and not Path(record.checkpoint).is_absolute()
        assert (record.calibration is not None) == (kind == "ranking")
        assert (record.retrieval is not None) == (kind == "retrieval")
    out = tmp_path / "pkg"
    loaded = [TrainedRun.load(runs["retrieval"]), TrainedRun.load(runs["ranking"])]
    build_package(loaded, out, command="pytest", signing_key=SIGNING_KEY)
    got, want = load_package(out, TRUST), load_package(package_dir, TRUST)
    for name in ("features", "columns", "index", "graphs"):
        a, b = got.manifest[name], want.manifest[name]
        assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True), name
    for kind in ("retrieval", "ranking"):
        a, b = got.manifest["models"][kind], want.manifest["models"][kind]
        assert a["net"] == b["net"] and a.get("calibration") == b.get("calibration")
        assert a["metrics"] == b["metrics"] and a["run_dir"] != b["run_dir"]
    assert got.read("graphs/ranker.onnx") == want.read("graphs/ranker.onnx")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.pop("format"), "not a pinrank-run v2 record"),
        (lambda d: d.update(format_version=1), "not a pinrank-run v2 record"),
        (lambda d: d.update(kind="clustering"), "run kind must be one of"),
        (lambda d: d.update(retrieval=None), "a retrieval run needs retrieval settings"),
        (lambda d: d.update(surprise=1), "unexpected keyword argument 'surprise'"),
        (lambda d: d.update(checkpoint=""), "needs net"),
        (lambda d: d.update(data="0" * 64), "changed since this run trained"),
        (lambda d: d.update(checkpoint="checkpoints/none.ckpt"), "best checkpoint"),
    ],
)
def test_a_bad_run_record_is_refused(
    trained_runs: dict[str, Path], tmp_path: Path, change: object, message: str
) -> None:
    run_dir = stripped(trained_runs["retrieval"], tmp_path / "run")
    data = json.loads((run_dir / RUN_FILE).read_text())
    change(data)  # type: ignore[operator]
    (run_dir / RUN_FILE).write_text(json.dumps(data))
    with pytest.raises((RunError, FileNotFoundError), match=message):
        TrainedRun.load(run_dir)


def test_a_folder_without_run_json_is_not_a_run(tmp_path: Path) -> None:
    with pytest.raises(RunError, match="is not a finished training run"):
        TrainedRun.load(tmp_path)
    (tmp_path / RUN_FILE).write_text("[1, 2")
    with pytest.raises(RunError, match=r"run\.json"):
        RunRecord.read(tmp_path)
