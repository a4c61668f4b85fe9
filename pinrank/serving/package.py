"""A model package on disk: loading it and checking that no byte of it changed.

Layout (written by :func:`pinrank.export.package.build_package`)::

    manifest.json               everything about the package (below); MANIFEST.sha256 its digest
    graphs/*.onnx               self-contained graphs: raw columns in, outputs out
    index/items.faiss           FAISS index of the item tower's embeddings (ids inside)
    catalogue/items.parquet     the item rows the index and the ranker were built from
    fallback/popular.parquet    engaged train events per item (the fallback feeds)
    features/state.json         the feature spec's fitted state (the spec is in the manifest)
    weights/*.safetensors       network weights, for the optional torch backend
    ids/<namespace>.parquet     the original of every int64 id, where the data's ids are strings

``manifest.json`` holds the format and version, the feature spec, every graph's inputs and
outputs (name, type, shape), the index description, the calibration, each model's training
metrics and resolved config, provenance (git commit, data fingerprint, created_at, created_by,
package versions, the commands that reproduce it) and the sha256 of every file.
``MANIFEST.sha256`` is the manifest's own digest (its first 16 hex digits are the model version)
and ``MANIFEST.sig`` an Ed25519 signature over the manifest (:mod:`pinrank.serving.signing`).

Loading trusts nothing in the folder (:func:`load_package`):

- the folder must lie under the trust policy's model roots, and hold only plain files and
  folders: a symlink anywhere in it, or a device or FIFO, is refused;
- the manifest's digest must match and its signature verify under a trusted key;
- every file the manifest lists is a plain relative path inside the folder (no absolute path,
  no ``..``, no backslash) and matches its sha256; a file it does not list is refused; every path
  the manifest points to (graphs, weights, state, catalogue, fallback, index) is a listed file;
- readers take a file's bytes through :meth:`Package.read`, which re-checks the sha256 of the
  bytes it returns, so what is scored is what was hashed, even if the folder changes later;
  the version is therefore a function of every byte that is read.

Nothing in a package is a pickle and nothing executes on load. This module imports no torch.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from pinrank.features.columns import ColumnSpec, trimmed
from pinrank.features.spec import FeatureSpec
from pinrank.features.state import FeatureState
from pinrank.serving.signing import SIGNATURE, SignatureError, Trust

# 2: signed, index size in the manifest; 3: the graphs' large tensors stored once, as external
# data in the package's weight files (pinrank.export.tensors). A v2 package still loads.
FORMAT, FORMAT_VERSION = "pinrank-model-package", 3
READABLE_VERSIONS = (2, 3)
MANIFEST, MANIFEST_DIGEST = "manifest.json", "MANIFEST.sha256"
UNLISTED = (MANIFEST, MANIFEST_DIGEST, SIGNATURE)  # the files that describe the others
GRAPHS = (
    "user_tower",
    "item_tower",
    "ranker",
    "ranker_user",
    "ranker_feed",
    "ranker_items",
    "ranker_pairs",
)
SECTION = "interests"  # the new-user interest model's sub-package (pinrank.export.interests)
MAX_MANIFEST_BYTES = 64 << 20
# the names a model's ``net`` entry may give: the networks and config classes of the fixed
# registry (pinrank.models.registry, which a test holds to these); nothing else is accepted
NETWORKS = (
    "pinrank.models.towers.TwoTower.from_spec",
    "pinrank.models.wide_deep.WideDeep.from_spec",
)
NET_CONFIGS = ("pinrank.models.towers.TowerConfig", "pinrank.models.wide_deep.WideDeepConfig")


class PackageError(ValueError):
    """The package is incomplete, altered, untrusted or of an unknown format; the message names
    the file and the reason."""


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass
class Package:
    """A loaded (and checked) package: its folder, manifest and file digests.

    ``version``: the first 16 hex digits of the manifest's sha256; ``signer``: the key id that
    signed it (``None``: loaded unverified, with ``allow_unsigned``).
    """

    root: Path
    manifest: dict[str, Any]
    files: dict[str, str] = field(default_factory=dict)
    version: str = ""
    signer: str | None = None
    sealed: bool = True

    @classmethod
    def unsealed(cls, root: Path, manifest: dict[str, Any]) -> Package:
        """A package folder being written (by the exporter): reads are not digest-checked."""
        return cls(Path(root), manifest, sealed=False)

    def path(self, relative: str) -> Path:
        """The path of a listed file (for reports; read its bytes with :meth:`read`)."""
        return self.root / self._listed(relative)

    def read(self, relative: str) -> bytes:
        """The bytes of a listed file, checked against the manifest's sha256 as they are read:
        no symlink is followed and nothing outside the folder is opened."""
        name = self._listed(relative)
        parts = PurePosixPath(name).parts
        for i in range(1, len(parts)):
            if (self.root.joinpath(*parts[:i])).is_symlink():
                raise PackageError(f"{self.root}: {name} lies under a symlink")
        try:
            fd = os.open(self.root.joinpath(*parts), os.O_RDONLY | os.O_NOFOLLOW)
        except OSError as err:
            raise PackageError(f"{self.root}: cannot open {name} ({err.strerror})") from None
        with os.fdopen(fd, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                raise PackageError(f"{self.root}: {name} is not a plain file")
            data = fh.read()
        if self.sealed and hashlib.sha256(data).hexdigest() != self.files[name]:
            raise PackageError(f"{self.root}: {name} was altered (sha256 does not match)")
        return data

    def _listed(self, relative: Any) -> str:
        name = safe_relative(relative, str(self.root))
        if self.sealed and name not in self.files:
            raise PackageError(f"{self.root}: {name!r} is not a file of the manifest")
        return name

    def graph_path(self, name: str) -> Path:
        return self.path(self.graph_file(name))

    def graph_file(self, name: str) -> str:
        graphs = self.manifest["graphs"]
        if name not in graphs:
            raise PackageError(f"{self.root}: no graph {name!r} (has {sorted(graphs)})")
        return str(graphs[name]["path"])

    def has(self, graph: str) -> bool:
        return graph in self.manifest["graphs"]

    def spec(self) -> FeatureSpec:
        """The feature spec, parsed from its YAML text (feature order is part of the model: it
        orders the networks' inputs)."""
        return FeatureSpec.from_dict(yaml.safe_load(self.manifest["features"]["spec"]))

    def state(self) -> FeatureState:
        """The fitted feature state; its vocabulary files are read through :meth:`read`."""
        path = str(self.manifest["features"]["state"])
        folder = str(PurePosixPath(path).parent)
        return FeatureState.from_json(
            self.read(path).decode(),
            f"{self.root}: {path}",
            lambda rel: self.read(f"{folder}/{rel}"),
        )

    def section(self, name: str = SECTION) -> Package:
        """The package's ``name`` section (the interest model: ``interests/``) as a package of
        its own: its manifest, its files (relative to its folder), read and digest-checked like
        every file of this package, whose signature covers them."""
        sub = self.manifest.get(name)
        if not isinstance(sub, dict):
            raise PackageError(f"{self.root}: the package has no {name!r} section")
        prefix = f"{name}/"
        files = {k[len(prefix) :]: v for k, v in self.files.items() if k.startswith(prefix)}
        return Package(self.root / name, sub, files, self.version, self.signer, self.sealed)

    def has_section(self, name: str = SECTION) -> bool:
        return isinstance(self.manifest.get(name), dict)

    def columns(self, side: str) -> list[ColumnSpec]:
        """The raw input columns of one side, as the graphs expect them (list columns with the
        trimming their features allow, from the spec)."""
        spec = self.spec()
        return [
            trimmed(spec, ColumnSpec(**c)) for c in self.manifest["columns"] if c["side"] == side
        ]


def safe_relative(relative: Any, where: str) -> str:
    """``relative`` as a normalised POSIX path inside a folder; PackageError for an absolute
    path, ``..``, ``.``, an empty part, a backslash or a NUL.

    Example::

        >>> safe_relative("graphs/ranker.onnx", "pkg")
        'graphs/ranker.onnx'
        >>> safe_relative("../outside.onnx", "pkg")
        Traceback (most recent call last):
        ...
        pinrank.serving.package.PackageError: pkg: path '../outside.onnx' leaves the package
    """
    bad = (
        not isinstance(relative, str)
        or not relative
        or relative.startswith("/")
        or "\\" in relative
        or "\x00" in relative
        or any(p in ("", ".", "..") for p in relative.split("/"))
    )
    if bad:
        raise PackageError(f"{where}: path {relative!r} leaves the package")
    return relative


def referenced_files(manifest: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    """Every ``(what, path)`` the manifest points to."""
    yield "features.state", manifest.get("features", {}).get("state")
    for name, graph in manifest.get("graphs", {}).items():
        yield f"graphs.{name}", graph.get("path") if isinstance(graph, dict) else None
    for kind, model in manifest.get("models", {}).items():
        yield f"models.{kind}.weights", model.get("weights") if isinstance(model, dict) else None
    for part in ("catalogue", "fallback", "index", "candidates"):
        if part in manifest:
            entry = manifest[part]
            yield f"{part}.path", entry.get("path") if isinstance(entry, dict) else None
    parts = manifest.get("item_parts")
    arrays = parts.get("arrays") if isinstance(parts, dict) else None
    for name, spec in arrays.items() if isinstance(arrays, dict) else ():
        yield f"item_parts.{name}", spec.get("path") if isinstance(spec, dict) else None
    tensors = manifest.get("tensors")
    if isinstance(tensors, dict) and tensors.get("path") is not None:
        yield "tensors.path", tensors["path"]
    ids = manifest.get("ids", {})
    for ns, entry in ids.items() if isinstance(ids, dict) else ():
        yield f"ids.{ns}.path", entry.get("path") if isinstance(entry, dict) else None
    section = manifest.get(SECTION)
    if isinstance(section, dict):  # its paths are relative to its folder
        within = referenced_files({k: v for k, v in section.items() if k != SECTION})
        for what, relative in within:
            inside = f"{SECTION}/{relative}" if isinstance(relative, str) else None
            yield f"{SECTION}.{what}", inside
    elif section is not None:
        yield SECTION, None


def check_net_names(net: Any, where: str) -> None:
    """Refuse a model's ``net`` entry whose ``_target_`` is not a network of the registry, or
    that names anything but its config classes below (no lookup of any name happens here or
    later: the names are keys of a fixed table).

    Example::

        >>> check_net_names({"_target_": "os.system"}, "pkg")
        Traceback (most recent call last):
        ...
        pinrank.serving.package.PackageError: pkg: net names 'os.system', not a known network
    """
    if not isinstance(net, dict) or net.get("_target_") not in NETWORKS:
        target = net.get("_target_") if isinstance(net, dict) else net
        raise PackageError(f"{where}: net names {target!r}, not a known network")
    stack = [v for k, v in net.items() if k != "_target_"]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if "_target_" in node and node["_target_"] not in NET_CONFIGS:
                raise PackageError(f"{where}: net names {node['_target_']!r}, not a known config")
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


def write_manifest(root: Path, manifest: dict[str, Any], signing_key: Any = None) -> None:
    """Record the sha256 of every file under ``root``, then write the manifest, its digest and,
    with ``signing_key`` (an Ed25519 private key), its signature."""
    from pinrank.serving.signing import sign

    files = sorted(
        p for p in root.rglob("*") if p.is_file() and p.relative_to(root).as_posix() not in UNLISTED
    )
    manifest["files"] = {p.relative_to(root).as_posix(): sha256(p) for p in files}
    data = json.dumps(manifest, indent=1).encode()
    (root / MANIFEST).write_bytes(data)
    (root / MANIFEST_DIGEST).write_text(hashlib.sha256(data).hexdigest() + "\n")
    if signing_key is not None:
        (root / SIGNATURE).write_bytes(sign(signing_key, data))


def load_package(root: str | Path, trust: Trust) -> Package:
    """Open a package, refusing it (PackageError naming the file and the reason) when it lies
    outside ``trust``'s roots, holds a symlink or a special file, is not signed by a trusted key
    (unless allowed), or when any file is missing, altered, unlisted or outside the folder."""
    given = Path(root)
    if not (given / MANIFEST).is_file():
        raise PackageError(f"{given} is not a model package: no {MANIFEST}")
    top = given.resolve()
    try:
        trust.check_location(top)
    except SignatureError as err:
        raise PackageError(str(err)) from None
    present = _walk(top)
    data = _small_file(top, MANIFEST, MAX_MANIFEST_BYTES)
    digest = hashlib.sha256(data).hexdigest()
    recorded = (
        _small_file(top, MANIFEST_DIGEST, 1024).decode(errors="replace").strip()
        if MANIFEST_DIGEST in present
        else None
    )
    if recorded != digest:
        raise PackageError(f"{top / MANIFEST}: altered ({MANIFEST_DIGEST} does not match)")
    signature = _small_file(top, SIGNATURE, 1 << 16) if SIGNATURE in present else None
    try:
        signer = trust.check(signature, data, str(top))
    except SignatureError as err:
        raise PackageError(str(err)) from None
    manifest = _parse_manifest(top, data)
    listed = manifest["files"]
    for relative, expected in listed.items():
        safe_relative(relative, str(top))
        if relative not in present:
            raise PackageError(f"{top}: {relative} is missing")
        if not isinstance(expected, str) or sha256(top / relative) != expected:
            raise PackageError(f"{top}: {relative} was altered (sha256 does not match)")
    extra = sorted(set(present) - set(listed) - set(UNLISTED))
    if extra:
        raise PackageError(f"{top}: files not in the manifest: {extra}")
    for what, relative in referenced_files(manifest):
        if safe_relative(relative, f"{top}: {what}") not in listed:
            raise PackageError(f"{top}: {what} names {relative!r}, which is not a listed file")
    for kind, model in manifest["models"].items():
        check_net_names(model.get("net") if isinstance(model, dict) else None, f"{top}: {kind}")
    if SECTION in manifest:  # a section is a package's manifest: the same checks
        _check_manifest_body(top / SECTION, manifest[SECTION])
        for kind, model in manifest[SECTION]["models"].items():
            where = f"{top}: {SECTION}.{kind}"
            check_net_names(model.get("net") if isinstance(model, dict) else None, where)
    return Package(top, manifest, dict(listed), digest[:16], signer)


def _walk(top: Path) -> set[str]:
    """The relative paths of every plain file under ``top``; PackageError for a symlink (to a
    file or a folder) or anything that is neither a plain file nor a folder."""
    files: set[str] = set()
    for folder, dirs, names in os.walk(top, followlinks=False):
        for name in [*dirs, *names]:
            path = Path(folder) / name
            mode = path.lstat().st_mode
            relative = path.relative_to(top).as_posix()
            if stat.S_ISLNK(mode):
                raise PackageError(f"{top}: {relative} is a symlink (a package holds none)")
            if stat.S_ISREG(mode):
                files.add(relative)
            elif not stat.S_ISDIR(mode):
                raise PackageError(f"{top}: {relative} is not a plain file or folder")
    return files


def _small_file(top: Path, name: str, limit: int) -> bytes:
    try:
        fd = os.open(top / name, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as err:
        raise PackageError(f"{top}: cannot open {name} ({err.strerror})") from None
    with os.fdopen(fd, "rb") as fh:
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise PackageError(f"{top}: {name} is larger than {limit} bytes")
    return data


def _parse_manifest(top: Path, data: bytes) -> dict[str, Any]:
    try:
        manifest = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise PackageError(f"{top / MANIFEST}: not JSON ({err})") from None
    if not isinstance(manifest, dict):
        raise PackageError(f"{top / MANIFEST}: not a JSON object")
    if manifest.get("format") != FORMAT or manifest.get("format_version") not in READABLE_VERSIONS:
        raise PackageError(
            f"{top}: format {manifest.get('format')!r} v{manifest.get('format_version')}, "
            f"expected {FORMAT!r} v{' or v'.join(map(str, READABLE_VERSIONS))}"
        )
    if not isinstance(manifest.get("files"), dict):
        raise PackageError(f"{top / MANIFEST}: 'files' is missing or not an object")
    _check_manifest_body(top, manifest)
    return manifest


def _check_manifest_body(top: Path, manifest: Any) -> None:
    """The parts every package manifest (or section) has, and only known graphs."""
    if not isinstance(manifest, dict):
        raise PackageError(f"{top}: the manifest section is not an object")
    for key in ("graphs", "models", "features"):
        if not isinstance(manifest.get(key), dict):
            raise PackageError(f"{top / MANIFEST}: {key!r} is missing or not an object")
    unknown = sorted(set(manifest["graphs"]) - set(GRAPHS))
    if unknown:
        raise PackageError(f"{top}: unknown graphs {unknown} (known: {list(GRAPHS)})")
