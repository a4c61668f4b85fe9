"""From finished training runs to one model package (layout: :mod:`pinrank.serving.package`).

:func:`build_package` exports the graphs of a retrieval run (user and item towers) and/or a
ranking run (the ranker per pair, its per-feed pair ``ranker_user`` + ``ranker_feed`` and its
catalogue pair ``ranker_items`` + ``ranker_pairs``),
embeds the whole catalogue through the exported item tower into the run's FAISS index, and
writes the catalogue, the fallback popularity table, the feature state, the weights as
safetensors and the manifest with provenance and checksums. It writes into a temporary folder
beside ``out`` and renames it at the end, so a failed export leaves no half package.
"""

from __future__ import annotations

import getpass
import importlib.metadata
import json
import logging
import shutil
import socket
import subprocess
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from safetensors.torch import save_model

from pinrank.data.io import read_table
from pinrank.data.prepare import Prepared
from pinrank.evaluation.retrieval import popularity_scores
from pinrank.export.graphs import Graph, graphs_for
from pinrank.export.index import (
    IndexConfig,
    check_recall,
    choose_index,
    distinct_first,
    measure_recall,
)
from pinrank.export.interests import export_interests, write_candidates
from pinrank.export.onnx import export_graph
from pinrank.export.run import TrainedRun
from pinrank.export.tensors import share
from pinrank.export.verify import held_out_rows
from pinrank.features.columns import ColumnSpec, columns_for, pack
from pinrank.retrieval.bias import impression_counts, item_vectors, query_vectors
from pinrank.retrieval.topk import FaissTopK
from pinrank.serving.catalogue import Catalogue
from pinrank.serving.package import (
    FORMAT,
    FORMAT_VERSION,
    SECTION,
    Package,
    load_package,
    write_manifest,
)
from pinrank.serving.probe import probe_graphs
from pinrank.serving.ranking import context_arrays, item_part_runs
from pinrank.serving.runtime import OnnxBackend
from pinrank.serving.signing import Trust

VERSIONED = ("pinrank", "torch", "torchrec", "onnx", "onnxruntime", "faiss-cpu", "numpy", "pyarrow")
TRACE_ROWS = 256
log = logging.getLogger(__name__)


def build_package(
    runs: list[TrainedRun],
    out: str | Path,
    command: str = "",
    context: dict[str, Any] | None = None,
    overwrite: bool = False,
    signing_key: Ed25519PrivateKey | None = None,
    exporter: str = "torchscript",
    index: IndexConfig | None = None,
) -> Package:
    """Export ``runs`` (at most one retrieval and one ranking run, trained on the same prepared
    data, and at most one new-user interest run, which goes into the ``interests/`` section:
    :mod:`pinrank.export.interests`; alone, it is the package) into the package folder
    ``out``, signed with ``signing_key`` (``None``: unsigned, for development; loaders refuse
    it unless they allow unsigned packages); returns it loaded and checked as any loader would
    (every file, the signature, every graph on a probe).

    ``context``: values of the context columns used when a feed is scored before it is shown
    (position, surface); a column left out takes its most frequent value in train events.
    ``exporter``: the ONNX exporter of :func:`pinrank.export.onnx.export_graph`.
    ``index``: how the FAISS index is chosen and checked (:mod:`pinrank.export.index`).
    """
    interest = [r for r in runs if r.kind == "interests"]
    if interest and len(interest) < len(runs):  # with the pin models: their section
        runs = [r for r in runs if r.kind != "interests"]
    else:
        interest = []  # alone: the interest model is the package (the section's own build)
    prepared = _common_data(runs)
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists (pass overwrite to replace it)")
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    spec, state = prepared.spec(), prepared.state()
    tables = held_out_rows(prepared, "test", TRACE_ROWS)  # what the graphs are traced on
    columns = [c for side, t in tables.items() for c in columns_for(spec, side, t.schema)]
    arrays: dict[str, np.ndarray] = {}
    for side, t in tables.items():
        arrays |= pack(t, [c for c in columns if c.side == side])
    state.save(tmp / "features" / "state.json")
    items = prepared.items()
    pq.write_table(items, _mkdir(tmp / "catalogue") / "items.parquet")
    popular = _popularity(prepared)
    pq.write_table(popular, _mkdir(tmp / "fallback") / "popular.parquet")
    graphs: dict[str, Any] = {}
    models: dict[str, Any] = {}
    for run in runs:
        built = graphs_for(run.net, spec, state, columns, run.calibration)
        for name, graph in built.items():
            feed_arrays = arrays | _parts(graphs, tmp, arrays)
            path = export_graph(graph, feed_arrays, tmp / "graphs" / f"{name}.onnx", exporter)
            graphs[name] = _graph_entry(path, graph)
        save_model(run.net, str(_mkdir(tmp / "weights") / f"{run.kind}.safetensors"))
        models[run.kind] = _model_entry(run)
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "features": {
            "spec": prepared.spec_path.read_text(),  # the YAML text: its order is meaningful
            "names": [f"{f.side}.{f.name}" for f in spec.features] + [c.name for c in spec.crosses],
            "state": "features/state.json",
            "units": {f.name: f.unit for f in spec.features if f.unit is not None},
        },
        "columns": [c.to_dict() for c in columns],
        "context_defaults": _context_defaults(prepared, spec, context or {}),
        "graphs": graphs,
        "models": models,
        "catalogue": {"path": "catalogue/items.parquet", "rows": items.num_rows},
        "fallback": {"path": "fallback/popular.parquet"},
        "provenance": provenance(runs, prepared, command, exporter),
    }
    if "interests" in models:  # the interest model alone (e.g. the section's own build)
        manifest["candidates"] = write_candidates(runs[0], tmp)
    if "retrieval" in models:
        manifest["index"] = _write_index(tmp, runs, items, columns, index or IndexConfig())
    if "ranker_items" in graphs:
        manifest["item_parts"] = _write_item_parts(tmp, manifest, items, popular)
    ids = _write_ids(prepared, tmp)
    if ids:
        manifest["ids"] = ids
    # every tensor once: the graphs' large initializers point into the weights or one shared
    # file (after the index, which the self-contained item tower computed)
    manifest["tensors"] = share(
        tmp, [g["path"] for g in graphs.values()], [m["weights"] for m in models.values()]
    )
    if interest:  # the interest model's own package, as the section interests/
        manifest[SECTION] = export_interests(interest[0], tmp, exporter, build_package)
    write_manifest(tmp, manifest, signing_key)
    own = Trust(
        keys=(signing_key.public_key(),) if signing_key else (), allow_unsigned=not signing_key
    )
    _probe(load_package(tmp, own))  # what we wrote must pass the same checks as any package
    if interest:
        _probe(load_package(tmp, own).section())
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return load_package(out, own)


def _probe(package: Package) -> None:
    """Every graph on a probe (:func:`~pinrank.serving.probe.probe_graphs`)."""
    probe_graphs(package, OnnxBackend(package))


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _common_data(runs: list[TrainedRun]) -> Prepared:
    if not runs:
        raise ValueError("build_package needs at least one training run")
    kinds = Counter(r.kind for r in runs)
    if any(n > 1 for n in kinds.values()):
        raise ValueError(f"one run of each kind at most, got {dict(kinds)}")
    states = {r.prepared.state_path.read_bytes() for r in runs}
    if len(states) > 1:
        roots = [str(r.prepared.root) for r in runs]
        raise ValueError(f"runs were trained on different feature states: {roots}")
    if any(r.kind in ("ranking", "interests") and r.calibration is None for r in runs):
        raise ValueError("the ranking run has no calibration.json")
    return runs[0].prepared


def _parts(
    graphs: dict[str, Any], root: Path, arrays: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Example inputs of the graphs that take parts (``ranker_feed``, ``ranker_pairs``): the
    exported part graphs' outputs on the sample, with identity indices."""
    backend = OnnxBackend(Package.unsealed(root, {"graphs": graphs}))
    rows = len(next(iter(arrays.values())))
    out: dict[str, np.ndarray] = {}
    for graph, index in (("ranker_user", "user_index"), ("ranker_items", "item_index")):
        if graph in graphs:
            out |= backend.run(graph, arrays) | {index: np.arange(rows, dtype=np.int64)}
    return out


def _graph_entry(path: Path, graph: Graph) -> dict[str, Any]:
    """Where a graph is and what it takes and gives: names, element types and shapes."""
    model = onnx.load(str(path), load_external_data=False)
    outputs = []
    for o in model.graph.output:
        t = o.type.tensor_type
        dims = [d.dim_param or d.dim_value for d in t.shape.dim]
        outputs.append({"name": o.name, "dtype": DTYPES[t.elem_type], "shape": dims})
    return {
        "path": f"graphs/{path.name}",
        "inputs": [i.to_dict() for i in graph.inputs],
        "outputs": outputs,
    }


def _model_entry(run: TrainedRun) -> dict[str, Any]:
    entry = {
        "kind": run.kind,
        "weights": f"weights/{run.kind}.safetensors",
        "net": run.record.net,
        "metrics": run.metrics,
        "config": run.record.config,
        "run_dir": str(run.root),
    }
    if run.calibration is not None:
        entry["calibration"] = run.calibration.to_dict()
    return entry


def _write_ids(prepared: Prepared, root: Path) -> dict[str, Any]:
    """The data's string ids (``ids: map`` or ``hash`` in its data config): per namespace the
    original of every int64 id, ``ids/<namespace>.parquet`` sorted by id, so the scorer, batch
    feeds and the service take and give the originals (:mod:`pinrank.serving.ids`)."""
    meta = (
        json.loads((prepared.raw / "source.json").read_text())
        if (prepared.raw / "source.json").exists()
        else {}
    )
    kinds, columns = meta.get("ids", {}), meta.get("id_columns", {})
    out: dict[str, Any] = {}
    for ns, kind in sorted(kinds.items()):
        table = pq.read_table(prepared.raw / "ids" / f"{ns}.parquet", columns=["id", "original"])
        table = table.sort_by("id")
        path = f"ids/{ns}.parquet"
        pq.write_table(table, _mkdir(root / "ids") / f"{ns}.parquet")
        held = sorted(c for c, n in columns.items() if n == ns)  # e.g. items.interests
        out[ns] = {"kind": kind, "path": path, "count": table.num_rows, "columns": held}
    return out


def _popularity(prepared: Prepared) -> pa.Table:
    """Engaged train events per item (every catalogue item, 0 where none): fallback feeds."""
    train = read_table(prepared.split("train"), "events", ["item_id", "engaged"])
    ids = np.sort(prepared.items().column("item_id").to_numpy())
    return pa.table({"item_id": ids, "engaged": popularity_scores(train, ids).astype(np.int64)})


def _context_defaults(prepared: Prepared, spec: Any, given: dict[str, Any]) -> dict[str, Any]:
    """The value of each context column when a not-yet-shown pin is scored."""
    out = {}
    names = spec.sources("context")
    unknown = set(given) - set(names)
    if unknown:
        raise ValueError(f"context defaults for unknown columns {sorted(unknown)}; has {names}")
    if not names:
        return {}
    train = read_table(prepared.split("train"), "events", names)
    for name in names:
        if name in given:
            out[name] = given[name]
            continue
        vc = pc.value_counts(train.column(name).drop_null()).to_pylist()
        out[name] = max(vc, key=lambda v: (v["counts"], str(v["values"])))["values"] if vc else None
    return out


def _write_item_parts(
    root: Path, manifest: dict[str, Any], items: pa.Table, popular: pa.Table, chunk: int = 65536
) -> dict[str, Any]:
    """Every catalogue row's part of the ranker (``ranker_items`` with the context defaults),
    computed once here and stored as raw little-endian arrays ``parts/items/NN.bin`` (dtype and
    shape in the manifest: no header to parse, nothing a pickle could hide in) for the scorer to
    memory-map (:func:`pinrank.serving.ranking.stored_item_parts`). Written ``chunk`` rows at a
    time, so memory stays bounded by a chunk whatever the catalogue (1.1 GB of parts at 1M
    pins); a padded array (``.indices``, ``.kept``) has the catalogue-wide width the packed
    inputs have, a narrower chunk is padded to it."""
    unsealed = Package.unsealed(root, manifest)  # its graphs are still self-contained here
    catalogue = Catalogue(items, popular, unsealed.columns("item"))  # as the scorer packs them
    runs = item_part_runs(OnnxBackend(unsealed), catalogue, context_arrays(unsealed), chunk)
    folder, n = _mkdir(root / "parts" / "items"), len(catalogue.ids)
    files: dict[str, Any] = {}
    layout: dict[str, tuple[np.dtype, tuple[int, ...]]] = {}
    try:
        for _, out in runs:
            for i, name in enumerate(sorted(out)):
                array = np.asarray(out[name])
                if name not in layout:
                    layout[name] = (array.dtype.newbyteorder("<"), array.shape[1:])
                    files[name] = (folder / f"{i:02d}.bin").open("wb")
                dtype, tail = layout[name]
                if array.ndim == 2 and array.shape[1] < tail[0]:
                    array = np.pad(array, ((0, 0), (0, tail[0] - array.shape[1])))
                if array.shape[1:] != tail:
                    raise ValueError(f"ranker_items gave {name} of shape {array.shape[1:]} "
                                     f"after {tail} for the catalogue's first rows")  # fmt: skip
                files[name].write(np.ascontiguousarray(array, dtype).tobytes())
    finally:
        for fh in files.values():
            fh.close()
    arrays = {
        name: {
            "path": f"parts/items/{i:02d}.bin",
            "dtype": layout[name][0].str,
            "shape": [n, *layout[name][1]],
        }
        for i, name in enumerate(sorted(layout))
    }
    return {"rows": n, "arrays": arrays}


def _write_index(
    root: Path,
    runs: list[TrainedRun],
    items: pa.Table,
    columns: list[ColumnSpec],
    config: IndexConfig,
) -> dict[str, Any]:
    """Embed every catalogue item through the exported item tower and index it with the FAISS
    index ``config`` chooses (by catalogue size, or the retrieval run's), then measure its recall
    against exact search on held-out users' queries from the exported user tower."""
    run = next(r for r in runs if r.kind == "retrieval")
    settings = run.record.retrieval
    assert settings is not None  # a retrieval record has them (RunRecord)
    graphs = {name: {"path": f"graphs/{name}.onnx"} for name in ("item_tower", "user_tower")}
    backend = OnnxBackend(Package.unsealed(root, {"graphs": graphs}))
    item_cols = [c for c in columns if c.side == "item"]
    chunks = [
        backend.run("item_tower", pack(items.slice(i, 8192), item_cols))["embedding"]
        for i in range(0, items.num_rows, 8192)
    ]
    emb = np.concatenate(chunks).astype(np.float32)
    ids = items.column("item_id").to_numpy().astype(np.int64)
    queries = _recall_queries(backend, run.prepared, columns, config.recall_queries)
    entry: dict[str, Any] = {"popularity_bias": settings.popularity_bias}
    if entry["popularity_bias"]:  # the prior chosen on val: searched on augmented vectors
        train = read_table(run.prepared.split("train"), "events", ["item_id"])
        emb = item_vectors(emb, impression_counts(train.column("item_id").to_numpy(), ids))
        temperature: float = getattr(run.net, "temperature")  # noqa: B009 (nn.Module attribute)
        queries = query_vectors(queries, temperature, settings.popularity_bias)
        entry |= {"temperature": temperature, "prior": "log1p(train impressions)"}
    factory, params, why = choose_index(
        config, len(ids), emb.shape[1], settings.index, settings.index_params
    )
    topk = FaissTopK(factory, params.get("nprobe"), params.get("ef_search"), use_gpu=False)
    topk.index(emb, ids)
    recall = measure_recall(topk, emb, ids, queries, config.recall_k)
    log.debug(
        "index %s %s (%s): recall@%d %.4f vs exact over %d held-out users",
        *(factory, params, why, recall["k"], recall["recall_vs_exact"], recall["queries"]),
    )
    check_recall(config, factory, params, recall["recall_vs_exact"])
    path = _mkdir(root / "index") / "items.faiss"
    topk.save(str(path))
    return {
        "bytes": path.stat().st_size,
        "path": "index/items.faiss",
        "factory": factory,
        "params": params,
        "chosen_by": why,
        "recall": recall | {"min_recall": config.min_recall},
        "metric": "inner_product",
        "dim": int(emb.shape[1]),
        "items": len(ids),
        **entry,
    }


def _recall_queries(
    backend: OnnxBackend, prepared: Prepared, columns: list[ColumnSpec], n: int
) -> np.ndarray:
    """``[<= n, D]`` user-tower embeddings of the test split's first ``n`` distinct users
    (in event order), the queries the index's recall is measured on."""
    users = read_table(prepared.split("test"), "events", ["user_id"]).column("user_id")
    user_ids = users.to_numpy()
    picked = user_ids[distinct_first(user_ids, n)]
    index, _ = prepared.indexes()
    rows = index.take(picked)
    user_cols = [c for c in columns if c.side == "user"]
    chunks = [
        backend.run("user_tower", pack(rows.slice(i, 8192), user_cols))["embedding"]
        for i in range(0, rows.num_rows, 8192)
    ]
    return np.concatenate(chunks).astype(np.float32)


def provenance(
    runs: list[TrainedRun], prepared: Prepared, command: str, exporter: str = "torchscript"
) -> dict[str, Any]:
    """How, when and by whom the package was built, and how to build it again."""
    repo = Path(__file__).resolve().parents[2]
    return {
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "created_by": f"{getpass.getuser()}@{socket.gethostname()}",
        "git": _git(repo),
        "versions": {p: _version(p) for p in VERSIONED},
        "data": {
            "prepared": str(prepared.root),
            "raw": str(prepared.raw),
            "fingerprint": prepared.fingerprint(),
        },
        "export_command": command,
        "exporter": exporter,
        "train_commands": {r.kind: r.record.train_command for r in runs},
    }


def _git(repo: Path) -> dict[str, Any]:
    def git(*args: str) -> str:
        proc = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)
        return proc.stdout.strip() if proc.returncode == 0 else ""

    commit = git("rev-parse", "HEAD")
    return {
        "commit": commit or None,
        "dirty": bool(git("status", "--porcelain")) if commit else None,
    }


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


DTYPES = {1: "float32", 7: "int64", 9: "bool", 11: "float64", 8: "string"}
