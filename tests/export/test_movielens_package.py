"""The package of MovieLens-100K models (the data of docs/evaluation.md) holds parity with the
training path for every graph, through ONNX Runtime and the torch backend. Skips without the data
set."""

from __future__ import annotations

from pathlib import Path

from package_fixtures import ROOT, SIGNING_KEY, train

from pinrank.export.package import build_package
from pinrank.export.run import TrainedRun
from pinrank.export.torch_backend import TorchBackend
from pinrank.export.verify import held_out_rows, verify
from pinrank.serving.runtime import OnnxBackend


def _short(tmp: Path, experiment: str, ml100k: Path) -> list[str]:
    """A MovieLens run of a few batches: parity does not need a good model."""
    return [
        f"experiment={experiment}",
        f"paths.data_dir={tmp}/data",
        f"paths.log_dir={tmp}/logs",
        f"paths.conf_dir={ROOT}/conf",
        f"data.source.base={ml100k}",
        "trainer.max_epochs=1",
        "+trainer.limit_train_batches=4",
        "trainer.enable_progress_bar=false",
    ]


def test_movielens_package_matches_the_training_path(ml100k: Path, tmp_path: Path) -> None:
    runs = [
        train([*_short(tmp_path, "ml100k_two_tower", ml100k), "model.module.index=HNSW16"],
              tmp_path / "logs" / "ml100k_two_tower"),
        train([*_short(tmp_path, "ml100k_wide_deep", ml100k), "model.module.logreg_grid=[1e-4]"],
              tmp_path / "logs" / "ml100k_wide_deep"),
    ]  # fmt: skip
    package = build_package(
        [TrainedRun.load(r) for r in runs], tmp_path / "pkg", signing_key=SIGNING_KEY
    )
    assert package.manifest["context_defaults"] == {}  # MovieLens has no context features
    prepared = TrainedRun.load(runs[0]).prepared
    for split in ("test", "cold"):  # cold-start users: ids and histories unknown to the model
        tables = held_out_rows(prepared, split, 1500)
        for backend in (OnnxBackend(package), TorchBackend(package, "cpu")):
            report = verify(package, tables, backend)
            assert len(report.diffs) == 9 and report.ok, (
                f"{split}: {report}"
            )  # 4 ranker graphs, stored parts
