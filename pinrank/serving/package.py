"""A model package on disk: loading it and checking that no byte of it changed.

Layout (written by :func:`pinrank.export.package.build_package`)::

    manifest.json               everything about the package (below); MANIFEST.sha256 its digest
    graphs/*.onnx               self-contained graphs: raw columns in, outputs out
    index/items.faiss           FAISS index of the item tower's embeddings (ids inside)
    catalogue/items.parquet     the item rows the index and the ranker were built from
    fallback/popular.parquet    engaged train events per item (the fallback feeds)
    features/state.json         the feature spec's fitted state (the spec is in the manifest)
    weights/*.safetensors       network weights, for the optional torch backend

``manifest.json`` holds the format and version, the feature spec, every graph's inputs and
outputs (name, type, shape), the index description, the calibration, each model's training
metrics and resolved config, provenance (git commit, data fingerprint, created_at, created_by,
package versions, the commands that reproduce it) and the sha256 of every file. Nothing in a
package is a pickle and nothing executes on load. This module imports no torch.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pinrank.features.columns import ColumnSpec
from pinrank.features.spec import FeatureSpec
from pinrank.features.state import FeatureState

FORMAT, FORMAT_VERSION = "pinrank-model-package", 1
MANIFEST, MANIFEST_DIGEST = "manifest.json", "MANIFEST.sha256"


class PackageError(ValueError):
    """The package is incomplete, altered or of an unknown format; the message names the file."""


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass
class Package:
    """A loaded (and checked) package: its folder and manifest."""

    root: Path
    manifest: dict[str, Any]

    def path(self, relative: str) -> Path:
        return self.root / relative

    def graph_path(self, name: str) -> Path:
        graphs = self.manifest["graphs"]
        if name not in graphs:
            raise PackageError(f"{self.root}: no graph {name!r} (has {sorted(graphs)})")
        return self.path(graphs[name]["path"])

    def has(self, graph: str) -> bool:
        return graph in self.manifest["graphs"]

    def spec(self) -> FeatureSpec:
        """The feature spec, parsed from its YAML text (feature order is part of the model: it
        orders the networks' inputs)."""
        return FeatureSpec.from_dict(yaml.safe_load(self.manifest["features"]["spec"]))

    def state(self) -> FeatureState:
        return FeatureState.load(self.path(self.manifest["features"]["state"]))

    def columns(self, side: str) -> list[ColumnSpec]:
        """The raw input columns of one side, as the graphs expect them."""
        return [ColumnSpec(**c) for c in self.manifest["columns"] if c["side"] == side]


def write_manifest(root: Path, manifest: dict[str, Any]) -> None:
    """Record the sha256 of every file under ``root``, then write the manifest and its digest."""
    files = sorted(
        p for p in root.rglob("*") if p.is_file() and p.name not in (MANIFEST, MANIFEST_DIGEST)
    )
    manifest["files"] = {str(p.relative_to(root)): sha256(p) for p in files}
    (root / MANIFEST).write_text(json.dumps(manifest, indent=1))
    (root / MANIFEST_DIGEST).write_text(sha256(root / MANIFEST) + "\n")


def load_package(root: str | Path) -> Package:
    """Open a package, refusing it when any file is missing, altered or not listed."""
    root = Path(root)
    manifest_path = root / MANIFEST
    if not manifest_path.is_file():
        raise PackageError(f"{root} is not a model package: no {MANIFEST}")
    digest = root / MANIFEST_DIGEST
    if not digest.is_file() or digest.read_text().strip() != sha256(manifest_path):
        raise PackageError(f"{manifest_path}: altered ({MANIFEST_DIGEST} does not match)")
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as err:
        raise PackageError(f"{manifest_path}: not JSON ({err})") from None
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise PackageError(
            f"{root}: format {manifest.get('format')!r} v{manifest.get('format_version')}, "
            f"expected {FORMAT!r} v{FORMAT_VERSION}"
        )
    listed = manifest.get("files", {})
    for relative, expected in listed.items():
        path = root / relative
        if not path.is_file():
            raise PackageError(f"{root}: {relative} is missing")
        if sha256(path) != expected:
            raise PackageError(f"{root}: {relative} was altered (sha256 does not match)")
    present = {
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file() and p.name not in (MANIFEST, MANIFEST_DIGEST)
    }
    extra = sorted(present - set(listed))
    if extra:
        raise PackageError(f"{root}: files not in the manifest: {extra}")
    return Package(root, manifest)
