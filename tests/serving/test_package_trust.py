"""A package is untrusted input: every way of tampering with one is refused, with a message that
names the reason, by the service's reload (which keeps serving the old model), by
``pinrank feeds`` and by ``pinrank verify``."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from fastapi.testclient import TestClient
from package_fixtures import ROOT, SIGNING_KEY, TRUST, resign

from pinrank.cli import main as pinrank
from pinrank.export.tensors import load_inline
from pinrank.serving.package import MANIFEST, PackageError, load_package, write_manifest
from pinrank.serving.signing import SIGNATURE, Trust, generate_key
from pinrank.serving.store import TableStore
from serve.app import Settings, create_app

TOKEN = "trust-test-token"
ATTACKER = generate_key()


def _manifest(pkg: Path) -> dict:
    return json.loads((pkg / MANIFEST).read_text())


def _flip(path: Path, at: float = 0.5) -> None:
    data = bytearray(path.read_bytes())
    data[int(len(data) * at)] ^= 0x01
    path.write_bytes(bytes(data))


def flip_file(relative: str) -> Callable[[Path], str]:
    def damage(pkg: Path) -> str:
        _flip(pkg / relative)
        return f"{relative} was altered" if relative != MANIFEST else "manifest.json: altered"

    return damage


def flip_digest(pkg: Path) -> str:
    text = (pkg / "MANIFEST.sha256").read_text()
    (pkg / "MANIFEST.sha256").write_text(("1" if text[0] != "1" else "2") + text[1:])
    return "manifest.json: altered"


def changed_signature(pkg: Path) -> str:
    record = json.loads((pkg / SIGNATURE).read_text())
    sig = record["signature"]
    record["signature"] = ("A" if sig[0] != "A" else "B") + sig[1:]
    (pkg / SIGNATURE).write_text(json.dumps(record))
    return "does not match the manifest"


def unsigned(pkg: Path) -> str:
    (pkg / SIGNATURE).unlink()
    return "unsigned"


def unlisted_file(pkg: Path) -> str:
    (pkg / "graphs" / "extra.onnx").write_bytes((pkg / "graphs" / "ranker.onnx").read_bytes())
    return r"files not in the manifest: \['graphs/extra.onnx'\]"


def symlinked_folder(pkg: Path) -> str:
    outside = pkg.parent / f"{pkg.name}-outside"
    outside.mkdir()
    os.symlink(outside, pkg / "graphs" / "more")
    return "graphs/more is a symlink"


def symlinked_file(pkg: Path) -> str:
    target = pkg / "catalogue" / "items.parquet"
    outside = pkg.parent / f"{pkg.name}-items.parquet"
    shutil.move(target, outside)
    os.symlink(outside, target)
    return "catalogue/items.parquet is a symlink"


def outside_path(prefix: str) -> Callable[[Path], str]:
    """The item tower moved out of the folder, the manifest pointing at it, re-signed with the
    trusted key (as a compromised exporter would): the path check alone must refuse it."""

    def damage(pkg: Path) -> str:
        outside = pkg.parent / f"{pkg.name}-item_tower.onnx"
        shutil.move(pkg / "graphs" / "item_tower.onnx", outside)
        name = f"../{outside.name}" if prefix == ".." else str(outside)
        m = _manifest(pkg)
        m["graphs"]["item_tower"]["path"] = name
        files = {k: v for k, v in m["files"].items() if k != "graphs/item_tower.onnx"}
        m["files"] = files | {name: hashlib.sha256(outside.read_bytes()).hexdigest()}
        data = json.dumps(m, indent=1).encode()
        (pkg / MANIFEST).write_bytes(data)
        (pkg / "MANIFEST.sha256").write_text(hashlib.sha256(data).hexdigest() + "\n")
        from pinrank.serving.signing import sign

        (pkg / SIGNATURE).write_bytes(sign(SIGNING_KEY, data))
        return "leaves the package"

    return damage


def resigned_by_attacker(pkg: Path) -> str:
    """An edited graph with every digest recomputed and a fresh signature by another key."""
    _scale_ranker(pkg)
    write_manifest(pkg, _manifest(pkg), ATTACKER)
    return "is not trusted"


def garbage_graph(name: str) -> Callable[[Path], str]:
    """Garbage bytes in a graph that no feed path reads first, signed with the trusted key:
    only loading and probing every graph finds it."""

    def damage(pkg: Path) -> str:
        (pkg / "graphs" / f"{name}.onnx").write_bytes(b"\x08\x07garbage" * 64)
        resign(pkg)
        return f"graph '{name}'"

    return damage


def _scale_ranker(pkg: Path) -> None:
    path = pkg / "graphs" / "ranker.onnx"
    model = load_inline(pkg, "graphs/ranker.onnx")  # self-contained again, then altered
    for t in model.graph.initializer:
        if t.data_type == onnx.TensorProto.FLOAT and np.prod(t.dims) > 8:
            arr = onnx.numpy_helper.to_array(t) * 3.0
            t.CopyFrom(onnx.numpy_helper.from_array(arr.astype(np.float32), t.name))
    onnx.save(model, str(path))


def altered_ranker(pkg: Path) -> str:
    """A valid ranker graph with other weights, signed with the trusted key: it disagrees with
    the per-feed and per-catalogue graphs on the probe."""
    _scale_ranker(pkg)
    resign(pkg)
    return "disagree on the probe"


def _point_external(pkg: Path, location: str, offset: int = 0, grow: int = 0) -> None:
    """Point the item tower's largest initializer at ``location`` (ONNX external data)."""
    path = pkg / "graphs" / "item_tower.onnx"
    model = load_inline(pkg, "graphs/item_tower.onnx")
    t = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    length = len(t.raw_data) + grow
    onnx.external_data_helper.set_external_data(t, location=location, offset=offset, length=length)
    t.ClearField("raw_data")
    t.data_location = onnx.TensorProto.EXTERNAL
    path.write_bytes(model.SerializeToString())
    resign(pkg)


def external_data(pkg: Path) -> str:
    """A graph whose weights point to a file outside the package (ONNX external data)."""
    _point_external(pkg, "../../../etc/hostname")
    return "has external data"


def external_in_a_listed_file(pkg: Path) -> str:
    """External data in a file of the package that is not a weights file (the catalogue)."""
    _point_external(pkg, "catalogue/items.parquet")
    return "not one of the package's weight files"


def external_past_the_end(pkg: Path) -> str:
    """External data whose range runs past the end of the weights file."""
    size = (pkg / "weights" / "retrieval.safetensors").stat().st_size
    _point_external(pkg, "weights/retrieval.safetensors", offset=size - 16)
    return "its type and shape take"


def external_wrong_length(pkg: Path) -> str:
    """External data whose length is not the tensor's type times its shape."""
    _point_external(pkg, "weights/retrieval.safetensors", grow=4)
    return "its type and shape take"


def crafted_target(pkg: Path) -> str:
    """A net entry that walks attributes from an allowed prefix (what the old prefix check let
    through), signed with the trusted key."""
    m = _manifest(pkg)
    marker = pkg.parent / f"{pkg.name}-pwned"
    m["models"]["ranking"]["net"] = {
        "_target_": "pinrank.export.run.Path.touch",
        "self": str(marker),
    }
    resign(pkg, m)
    return "not a known network"


def index_count(pkg: Path) -> str:
    """The wrapped index's header says 10^9 vectors (the manifest, re-signed, is unchanged)."""
    path = pkg / "index" / "items.faiss"
    data = bytearray(path.read_bytes())
    struct.pack_into("<q", data, 37 + 8, 10**9)  # the inner header's ntotal
    path.write_bytes(bytes(data))
    resign(pkg)
    return "index header .* says 1000000000 vectors"


def item_parts_shape(pkg: Path) -> str:
    """The manifest, re-signed, says an item parts array has another shape than its file."""
    m = _manifest(pkg)
    spec = next(iter(m["item_parts"]["arrays"].values()))
    spec["shape"] = [spec["shape"][0] + 1, *spec["shape"][1:]]
    resign(pkg, m)
    return "one row for each of the"


def item_parts_size(pkg: Path) -> str:
    """An item parts file cut short, re-signed."""
    m = _manifest(pkg)
    spec = next(iter(m["item_parts"]["arrays"].values()))
    path = pkg / spec["path"]
    path.write_bytes(path.read_bytes()[:-4])
    resign(pkg)
    return "takes the manifest's size times its type"


def item_parts_object_dtype(pkg: Path) -> str:
    """The manifest, re-signed, says an item parts array holds Python objects."""
    m = _manifest(pkg)
    next(iter(m["item_parts"]["arrays"].values()))["dtype"] = "|O"
    resign(pkg, m)
    return "expected a little-endian number or bool array"


def index_vector_size(pkg: Path) -> str:
    """The id vector's 8-byte length field asks for 1 GiB; the headers still match."""
    _grow_id_vector(pkg / "index" / "items.faiss", _manifest(pkg)["index"]["items"])
    resign(pkg)
    return "FAISS cannot read the index"


def _grow_id_vector(path: Path, items: int) -> None:
    data = bytearray(path.read_bytes())
    struct.pack_into("<Q", data, len(data) - 8 * items - 8, 1 << 27)  # int64s: 1 GiB
    path.write_bytes(bytes(data))


CASES: dict[str, Callable[[Path], str]] = {
    "flip_graph": flip_file("graphs/item_tower.onnx"),
    "flip_index": flip_file("index/items.faiss"),
    "flip_catalogue": flip_file("catalogue/items.parquet"),
    "flip_fallback": flip_file("fallback/popular.parquet"),
    "flip_state": flip_file("features/state.json"),
    "flip_weights": flip_file("weights/ranking.safetensors"),
    "flip_manifest": flip_file(MANIFEST),
    "flip_digest": flip_digest,
    "flip_signature": changed_signature,
    "unsigned": unsigned,
    "unlisted_file": unlisted_file,
    "symlinked_folder": symlinked_folder,
    "symlinked_file": symlinked_file,
    "outside_relative": outside_path(".."),
    "outside_absolute": outside_path("/"),
    "resigned_by_attacker": resigned_by_attacker,
    "garbage_item_tower": garbage_graph("item_tower"),
    "garbage_ranker": garbage_graph("ranker"),
    "garbage_ranker_feed": garbage_graph("ranker_feed"),
    "altered_ranker": altered_ranker,
    "external_data": external_data,
    "external_in_a_listed_file": external_in_a_listed_file,
    "external_past_the_end": external_past_the_end,
    "external_wrong_length": external_wrong_length,
    "crafted_target": crafted_target,
    "index_count": index_count,
    "item_parts_shape": item_parts_shape,
    "item_parts_size": item_parts_size,
    "item_parts_object_dtype": item_parts_object_dtype,
    "index_vector_size": index_vector_size,
}


@pytest.fixture(scope="module")
def models(package_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The model root: the good package at ``good``; tampered copies go beside it."""
    root = tmp_path_factory.mktemp("model_root")
    shutil.copytree(package_dir, root / "good")
    return root


@pytest.fixture(scope="module")
def client(models: Path, users_path: Path) -> TestClient:
    settings = Settings(models / "good", trust=TRUST, admin_token=TOKEN)
    return TestClient(create_app(settings, TableStore.from_parquet(users_path)))


def tampered(models: Path, case: str) -> tuple[Path, str]:
    pkg = models / case
    shutil.rmtree(pkg, ignore_errors=True)
    shutil.copytree(models / "good", pkg)
    return pkg, CASES[case](pkg)


@pytest.mark.parametrize("case", list(CASES))
def test_a_tampered_package_is_refused_everywhere(
    case: str,
    models: Path,
    client: TestClient,
    users_path: Path,
    key_files: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    pkg, reason = tampered(models, case)
    before = client.get("/readyz").json()["model_version"]
    # the service: reload refused with the reason, the old model still serving
    r = client.post(
        "/admin/reload", json={"package": str(pkg)}, headers={"authorization": f"Bearer {TOKEN}"}
    )
    assert r.status_code == 422, r.text
    assert "still serving the old one" in r.json()["error"]["message"]
    assert re.search(reason, r.json()["error"]["message"]), r.json()["error"]["message"]
    assert client.get("/readyz").json()["model_version"] == before
    assert client.get("/v1/feed/1?k=5").status_code == 200
    # pinrank feeds: refused before any shard is written
    trust = ["--trusted-key", str(key_files["public"])]
    out = tmp_path / "feeds"
    with pytest.raises(SystemExit) as exit_feeds:
        pinrank(["feeds", str(pkg), "--users", str(users_path), "--out", str(out), *trust,
                 "--no-progress"])  # fmt: skip
    assert re.search(reason, str(exit_feeds.value.code)), exit_feeds.value.code
    assert not list(out.glob("part-*"))
    # pinrank verify
    assert pinrank(["verify", str(pkg), "--rows", "50", *trust]) == 2
    err = capsys.readouterr().err
    assert re.search(reason, err), err
    assert not (models / f"{case}-pwned").exists()


def test_reload_accepts_only_packages_under_the_model_roots(
    models: Path, client: TestClient, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(models / "good", elsewhere)
    r = client.post(
        "/admin/reload",
        json={"package": str(elsewhere)},
        headers={"authorization": f"Bearer {TOKEN}"},
    )
    assert r.status_code == 422
    assert "outside the configured model roots" in r.json()["error"]["message"]
    # a symlink inside the root that leads outside it is judged by where it leads
    link = models / "link-to-elsewhere"
    link.unlink(missing_ok=True)
    os.symlink(elsewhere, link)
    r = client.post(
        "/admin/reload", json={"package": str(link)}, headers={"authorization": f"Bearer {TOKEN}"}
    )
    assert r.status_code == 422
    assert "outside the configured model roots" in r.json()["error"]["message"]
    ok = client.post("/admin/reload", headers={"authorization": f"Bearer {TOKEN}"})
    assert ok.status_code == 200, ok.text


def test_trust_policy_outcomes(package_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(PackageError, match="no trusted public keys are configured"):
        load_package(package_dir, Trust())
    with pytest.raises(PackageError, match="is not trusted"):
        load_package(package_dir, Trust(keys=(ATTACKER.public_key(),)))
    # development: an untrusted signer or no signature is loaded, with a warning, unverified
    assert load_package(package_dir, Trust(allow_unsigned=True)).signer is None
    pkg = tmp_path / "pkg"
    shutil.copytree(package_dir, pkg)
    (pkg / SIGNATURE).unlink()
    assert load_package(pkg, Trust(allow_unsigned=True)).signer is None
    # but a signature that fails under a trusted key is refused even then
    shutil.copytree(package_dir, tmp_path / "bad")
    changed_signature(tmp_path / "bad")
    with pytest.raises(PackageError, match="does not match"):
        load_package(tmp_path / "bad", Trust(TRUST.keys, allow_unsigned=True))
    good = load_package(package_dir, TRUST)
    assert good.signer is not None and len(good.version) == 16


def test_reads_are_checked_against_the_digests_after_loading(
    package_dir: Path, tmp_path: Path
) -> None:
    """A file changed after the package was loaded is refused when it is read, so what is scored
    is what was hashed (and what the version names)."""
    pkg = tmp_path / "pkg"
    shutil.copytree(package_dir, pkg)
    package = load_package(pkg, TRUST)
    _flip(pkg / "graphs" / "ranker.onnx")
    with pytest.raises(PackageError, match=r"graphs/ranker\.onnx was altered"):
        package.read("graphs/ranker.onnx")
    with pytest.raises(PackageError, match="not a file of the manifest"):
        package.read("graphs/other.onnx")
    with pytest.raises(PackageError, match="leaves the package"):
        package.read("graphs/../manifest.json")


INDEX_MEMORY = """
import resource, sys
from pinrank.retrieval.index_io import IndexFileError, read_index_checked
from pinrank.serving.package import load_package
from pinrank.serving.signing import Trust
package = load_package(sys.argv[1], Trust(allow_unsigned=True))
spec = package.manifest["index"]
data = package.read(spec["path"])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    read_index_checked(data, spec)
    raise SystemExit("accepted")
except IndexFileError as err:
    print(err)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
"""


def test_an_index_length_field_cannot_make_the_loader_allocate(
    package_dir: Path, tmp_path: Path
) -> None:
    """The id vector's length field set to 1 GiB: refused with peak memory up by < 64 MB."""
    pkg = tmp_path / "pkg"
    shutil.copytree(package_dir, pkg)
    _grow_id_vector(pkg / "index" / "items.faiss", _manifest(pkg)["index"]["items"])
    resign(pkg)
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(INDEX_MEMORY), str(pkg)],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    message, grew_mb = proc.stdout.strip().splitlines()
    assert "FAISS cannot read the index" in message
    assert int(grew_mb) < 64, f"the refused read grew peak RSS by {grew_mb} MB"
