"""Every graph of a package run once before the package is accepted.

A loader that runs only the graphs the feed path needs would accept garbage in the others
(``item_tower``, ``ranker``), to fail on the first request that reaches them. :func:`probe_graphs`
loads every graph the manifest lists, runs it on a probe (a new user, the first catalogue pins,
the context defaults), and checks what comes out: the outputs the manifest declares, with their
element types, finite values, embeddings of the index's width, probabilities in ``[0, 1]``, and
the three ways of scoring the ranker (per pair; per feed, ``ranker_user`` + ``ranker_feed``;
per catalogue, ``ranker_items`` + ``ranker_pairs``) agreeing with each other, so that one altered
ranker graph among several is caught. Raises PackageError naming the graph and what is wrong.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pinrank.features.columns import pack
from pinrank.retrieval.index_io import IndexFileError, read_index_checked
from pinrank.serving.catalogue import Catalogue
from pinrank.serving.conform import conform
from pinrank.serving.package import Package, PackageError
from pinrank.serving.runtime import Backend
from pinrank.serving.store import ID_COLUMN

PROBE_ITEMS = 4
AGREEMENT = 1e-4  # the ranker's three paths on the probe (float32, up to summation order)
PROBE_USER = 2**62


def package_index(package: Package) -> Any:
    """The package's FAISS index, its header checked against the manifest before FAISS reads
    it (:func:`~pinrank.retrieval.index_io.read_index_checked`)."""
    spec = package.manifest["index"]
    try:
        return read_index_checked(package.read(spec["path"]), spec)
    except IndexFileError as err:
        raise PackageError(f"{package.root}: {spec['path']}: {err}") from None


def probe_graphs(
    package: Package, backend: Backend, catalogue: Catalogue | None = None
) -> dict[str, dict[str, np.ndarray]]:
    """Run every graph of ``package`` on ``backend``; returns each graph's outputs. Without
    ``catalogue`` (one already loaded), the catalogue and the index are read and checked too."""
    if catalogue is None and "index" in package.manifest:
        package_index(package)
    catalogue = catalogue or Catalogue.from_package(package)
    n = min(PROBE_ITEMS, len(catalogue.ids))
    if n == 0:
        raise PackageError(f"{package.root}: the catalogue is empty")
    user, _ = conform({ID_COLUMN: PROBE_USER}, package.columns("user"))
    context, _ = conform(package.manifest.get("context_defaults", {}), package.columns("context"))
    one_user = pack(user, package.columns("user"))  # [1]
    pairs = {k: np.repeat(v, n, axis=0) for k, v in one_user.items()}
    pairs |= {k: v[:n] for k, v in catalogue.arrays.items()}
    pairs |= {
        k: np.repeat(v, n, axis=0) for k, v in pack(context, package.columns("context")).items()
    }
    outputs: dict[str, dict[str, np.ndarray]] = {}

    def run(graph: str, inputs: dict[str, np.ndarray], rows: int) -> dict[str, np.ndarray]:
        try:
            out = backend.run(graph, inputs)
        except PackageError:
            raise
        except Exception as err:  # any runtime failure means the graph is unusable
            raise PackageError(
                f"{package.root}: graph {graph!r} fails on a probe ({err})"
            ) from None
        _check_outputs(package, graph, out, rows)
        outputs[graph] = out
        return out

    index = {"user_index": np.zeros(n, np.int64), "item_index": np.arange(n, dtype=np.int64)}
    for graph in package.manifest["graphs"]:
        if graph in ("user_tower", "ranker_user"):
            run(graph, one_user, 1)
        elif graph in ("item_tower", "ranker", "ranker_items"):
            run(graph, pairs, n)
    if package.has("ranker_feed"):
        run("ranker_feed", pairs | _parts(outputs, "ranker_user") | index, n)
    if package.has("ranker_pairs"):
        parts = _parts(outputs, "ranker_user") | _parts(outputs, "ranker_items")
        run("ranker_pairs", parts | index, n)
    _check_agreement(package, outputs)
    return outputs


def _parts(outputs: dict[str, dict[str, np.ndarray]], graph: str) -> dict[str, np.ndarray]:
    if graph not in outputs:
        raise PackageError(f"the package has no {graph!r}, which the other ranker graphs need")
    return outputs[graph]


def _check_outputs(package: Package, graph: str, out: dict[str, Any], rows: int) -> None:
    where = f"{package.root}: graph {graph!r}"
    declared = {o["name"]: o for o in package.manifest["graphs"][graph].get("outputs", [])}
    if declared and set(declared) != set(out):
        raise PackageError(f"{where} gives {sorted(out)}, the manifest declares {sorted(declared)}")
    for name, value in out.items():
        arr = np.asarray(value)
        dtype = declared.get(name, {}).get("dtype")
        if dtype is not None and arr.dtype != np.dtype(dtype):
            raise PackageError(f"{where}: output {name!r} is {arr.dtype}, declared {dtype}")
        if arr.ndim == 0 or arr.shape[0] != rows:
            raise PackageError(f"{where}: output {name!r} has shape {arr.shape} for {rows} rows")
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise PackageError(f"{where}: output {name!r} is not finite on the probe")
    if "probability" in out:
        p = np.asarray(out["probability"])
        if ((p < 0) | (p > 1)).any():
            raise PackageError(f"{where}: probabilities outside [0, 1] on the probe: {p}")
    if "embedding" in out and "index" in package.manifest:
        dim = int(package.manifest["index"]["dim"])
        width = np.asarray(out["embedding"]).shape[-1]
        tower_dim = dim - (2 if package.manifest["index"].get("popularity_bias") else 0)  # prior
        if width != tower_dim:
            raise PackageError(f"{where}: embeddings of width {width}, the index has {tower_dim}")


def _check_agreement(package: Package, outputs: dict[str, dict[str, np.ndarray]]) -> None:
    paths = [g for g in ("ranker", "ranker_feed", "ranker_pairs") if g in outputs]
    for graph in paths[1:]:
        for name in ("probability", "logit"):
            a = np.asarray(outputs[paths[0]][name], np.float64)
            b = np.asarray(outputs[graph][name], np.float64)
            diff = float(np.abs(a - b).max())
            if diff > AGREEMENT:
                raise PackageError(
                    f"{package.root}: graphs {paths[0]!r} and {graph!r} disagree on the probe "
                    f"({name} differs by {diff:.3g}): one of them was altered"
                )
