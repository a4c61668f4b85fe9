"""Parity of a package with the training path: ``pinrank verify <package>``.

Held-out rows are scored twice: through the training path (the NumPy featurizer, torchrec
KeyedJaggedTensors and the torch networks rebuilt from the package's weights, calibration in
NumPy) and through a backend from raw columns (ONNX Runtime by default, or the torch backend).
Every output of every graph is compared; the ranker is also scored the per-feed way
(``ranker_user`` once per distinct user, ``ranker_feed`` per candidate) and the per-catalogue
way (``ranker_items`` per candidate, ``ranker_pairs`` per pair). The package passes when the
largest absolute difference is at most ``tol`` (1e-5 in fp32).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from pinrank.calibration import Calibration
from pinrank.data.io import read_table
from pinrank.data.prepare import Prepared
from pinrank.export.torch_backend import package_net
from pinrank.features.columns import ColumnSpec, pack
from pinrank.features.featurizer import Featurizer
from pinrank.serving.catalogue import Catalogue
from pinrank.serving.package import Package
from pinrank.serving.ranking import context_arrays, item_part_runs, stored_item_parts
from pinrank.serving.runtime import Backend, OnnxBackend


@dataclass
class ParityReport:
    """Largest absolute difference per ``graph/output`` on ``rows`` held-out rows."""

    backend: str
    rows: int
    tol: float
    diffs: dict[str, float] = field(default_factory=dict)

    @property
    def max_diff(self) -> float:
        return max(self.diffs.values(), default=0.0)

    @property
    def ok(self) -> bool:
        return bool(self.diffs) and self.max_diff <= self.tol

    def __str__(self) -> str:
        lines = [f"parity of {self.rows} held-out rows, training path vs {self.backend}:"]
        lines += [f"  {k:<32} max abs diff {v:.3g}" for k, v in self.diffs.items()]
        verdict = "OK" if self.ok else "FAILED"
        lines.append(f"{verdict}: max abs diff {self.max_diff:.3g} (tolerance {self.tol:g})")
        return "\n".join(lines)


def held_out_rows(prepared: Prepared, split: str, rows: int) -> dict[str, pa.Table]:
    """The first ``rows`` events of ``split`` with their user and item rows (row-aligned)."""
    events = read_table(prepared.split(split), "events").slice(0, rows)
    users, items = prepared.indexes()
    return {
        "user": users.take(events.column("user_id").to_numpy()),
        "item": items.take(events.column("item_id").to_numpy()),
        "context": events,
    }


def verify(
    package: Package,
    tables: dict[str, pa.Table],
    backend: Backend | None = None,
    tol: float = 1e-5,
) -> ParityReport:
    """Compare the training path with ``backend`` (ONNX Runtime by default) on ``tables``."""
    backend = backend or OnnxBackend(package)
    spec, state = package.spec(), package.state()
    featurizer = Featurizer(spec, state)
    arrays: dict[str, Any] = {}
    for side, table in tables.items():
        arrays |= pack(table, package.columns(side))
    report = ParityReport(backend.name, tables["context"].num_rows, tol)
    for kind, entry in package.manifest["models"].items():
        net = package_net(package, kind)
        with torch.no_grad():
            if kind == "retrieval":
                _towers(report, net, featurizer, tables, arrays, backend)
            else:
                cal = Calibration.from_dict(entry["calibration"])
                ranker_parity(
                    report,
                    net,
                    cal,
                    featurizer,
                    tables,
                    arrays,
                    backend,
                    package.columns("user"),
                    package.has("ranker_pairs"),
                )
    if package.manifest.get("item_parts") is not None:
        _stored_item_parts(report, package, backend)
    return report


def _stored_item_parts(
    report: ParityReport, package: Package, backend: Backend, chunk: int = 65536
) -> None:
    """The item parts stored at export against ``ranker_items`` run again over the catalogue,
    ``chunk`` rows at a time (memory stays bounded by a chunk, not the catalogue: at 1M pins
    the parts are 1.1 GB). A padded array (``.indices``, ``.kept``) is stored at the widest
    width of the catalogue; a chunk's narrower one is compared with its zero padding."""
    catalogue = Catalogue.from_package(package)
    stored = stored_item_parts(package, len(catalogue.ids))
    assert stored is not None
    worst = 0.0
    for start, again in item_part_runs(backend, catalogue, context_arrays(package), chunk):
        if set(again) != set(stored):
            raise ValueError(
                f"stored item parts {sorted(stored)}, ranker_items gives {sorted(again)}"
            )
        for name, array in again.items():
            ours = np.asarray(stored[name][start : start + len(array)])
            if array.ndim == 2 and ours.ndim == 2 and array.shape[1] < ours.shape[1]:
                array = np.pad(array, ((0, 0), (0, ours.shape[1] - array.shape[1])))
            worst = max(worst, _diff(ours, array))
    report.diffs["ranker_items/stored"] = worst


def _diff(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    return float(np.abs(a - b).max()) if a.size else 0.0


def _towers(
    report: ParityReport, net: Any, fz: Featurizer, tables: Any, arrays: Any, be: Backend
) -> None:
    for side, tower in (("user", net.user_tower), ("item", net.item_tower)):
        batch = fz({side: tables[side]})
        ref = tower(batch.sparse[side], batch.dense[side]).numpy()
        report.diffs[f"{side}_tower/embedding"] = _diff(
            be.run(f"{side}_tower", arrays)["embedding"], ref
        )


def ranker_parity(
    report: ParityReport,
    net: Any,
    cal: Calibration,
    fz: Featurizer,
    tables: Any,
    arrays: Any,
    be: Backend,
    user_columns: list[ColumnSpec],
    pairs: bool,
) -> None:
    """Record in ``report`` the differences of the ranker's graphs on ``be`` from the training
    path (``net`` on the featurizer's batch, ``cal`` in NumPy): per pair (``ranker``), per feed
    (``ranker_user`` once per distinct user + ``ranker_feed``) and, with ``pairs``, per
    catalogue (``ranker_items`` + ``ranker_pairs``)."""
    logit = net(fz(tables)).double().numpy()
    prob = cal(logit)
    out = be.run("ranker", arrays)
    report.diffs["ranker/probability"] = _diff(out["probability"], prob)
    report.diffs["ranker/logit"] = _diff(out["logit"], logit)
    # per feed: each distinct user's part once, gathered by user_index
    users = tables["user"].column("user_id").to_numpy()
    _, first, user_index = np.unique(users, return_index=True, return_inverse=True)
    user_arrays = pack(tables["user"].take(first), user_columns)
    parts = be.run("ranker_user", user_arrays)
    feed = be.run("ranker_feed", arrays | parts | {"user_index": user_index.astype(np.int64)})
    report.diffs["ranker_feed/probability"] = _diff(feed["probability"], prob)
    report.diffs["ranker_feed/logit"] = _diff(feed["logit"], logit)
    if not pairs:  # a package from before the catalogue factorisation
        return
    # per catalogue: each candidate's part once too (here each row's pin and context)
    items = be.run("ranker_items", arrays)
    index = {"user_index": user_index.astype(np.int64), "item_index": np.arange(len(logit))}
    out = be.run("ranker_pairs", parts | items | index)
    report.diffs["ranker_pairs/probability"] = _diff(out["probability"], prob)
    report.diffs["ranker_pairs/logit"] = _diff(out["logit"], logit)
