"""The model registry on MLflow: packages registered once with their metrics and provenance,
aliases, promotion and rollback, fetched back byte for byte and checked; the same commands
against a real ``mlflow server`` on loopback."""

from __future__ import annotations

import filecmp
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from package_fixtures import TRUST, free_port, resign, wait_until_up

from pinrank.lifecycle.registry import CANDIDATE, PRODUCTION, Registry, RegistryError
from pinrank.serving.package import MANIFEST, PackageError, load_package

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    return Registry(f"sqlite:///{tmp_path}/mlflow/mlflow.db", name="pins")


def _same_files(a: Path, b: Path) -> None:
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    _, mismatch, errors = filecmp.cmpfiles(a, b, [str(f) for f in files], shallow=False)
    assert not mismatch and not errors


def test_register_promote_rollback_fetch(
    registry: Registry, package_dir: Path, interest_package_dir: Path, tmp_path: Path
) -> None:
    assert registry.versions() == []
    first = registry.register(package_dir, TRUST)
    version = load_package(package_dir, TRUST).version
    assert (first.number, first.package_version, first.aliases) == (1, version, [CANDIDATE])
    assert first.tags["pinrank.data_fingerprint"] and first.tags["pinrank.models"] == (
        "ranking,retrieval"
    )
    assert first.metrics["ranking/test/auc"] > 0.5  # the package's own report, registered
    assert any(k.startswith("retrieval/test/recall_at_") for k in first.metrics)
    # the same bytes again: the same version, no second registration
    assert registry.register(package_dir, TRUST).number == 1 and len(registry.versions()) == 1
    second = registry.register(interest_package_dir, TRUST, description="with interests")
    assert second.number == 2 and registry.get(CANDIDATE).number == 2
    assert registry.get(1).aliases == []  # the alias moved
    assert "interests" in second.tags["pinrank.models"]
    assert registry.get(second.package_version[:8]).number == 2
    assert registry.get("@candidate").number == registry.get("v2").number == 2

    registry.promote(1, reason="first")
    assert registry.promote(CANDIDATE).aliases == [CANDIDATE, PRODUCTION]
    assert registry.history() == [1, 2]
    assert registry.rollback().number == 1 and registry.get(PRODUCTION).number == 1
    assert registry.history() == [1]
    with pytest.raises(RegistryError, match="no earlier production version"):
        registry.rollback()
    with pytest.raises(RegistryError, match=r"'v9' is not registered .* v1 .* v2"):
        registry.get("v9")

    cache = tmp_path / "cache"
    fetched = registry.fetch(PRODUCTION, cache, TRUST)
    assert fetched == cache / version and load_package(fetched, TRUST).version == version
    _same_files(package_dir, fetched)
    # an altered local copy is fetched again, not served
    weights = next(fetched.glob("weights/*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    assert registry.fetch(PRODUCTION, cache, TRUST) == fetched
    _same_files(package_dir, fetched)
    assert [p.name for p in cache.iterdir()] == [version]  # no staging folder left behind


def test_a_package_that_does_not_load_is_never_registered(
    registry: Registry, package_dir: Path, tmp_path: Path
) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(package_dir, bad)
    weights = next(bad.glob("weights/*.safetensors"))
    weights.write_bytes(weights.read_bytes() + b"x")
    with pytest.raises(PackageError, match="altered"):
        registry.register(bad, TRUST)
    assert registry.versions() == []


def test_registered_files_that_are_not_the_version_are_refused(
    registry: Registry, package_dir: Path, tmp_path: Path
) -> None:
    """The registry's copy replaced by another (validly signed) package: fetch refuses it."""
    v = registry.register(package_dir, TRUST)
    other = tmp_path / "other"
    shutil.copytree(package_dir, other)
    manifest = json.loads((other / MANIFEST).read_text())
    manifest["provenance"]["export_command"] = "something else"
    resign(other, manifest)
    stored = Path(v.source.removeprefix("file://"))
    shutil.rmtree(stored)
    shutil.copytree(other, stored)
    with pytest.raises(PackageError, match=f"registered v1 is package {v.package_version}"):
        registry.fetch(1, tmp_path / "cache", TRUST)


def _cli(args: list[str], env: dict[str, str], cwd: Path) -> str:
    proc = subprocess.run([sys.executable, "-m", "pinrank.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_the_same_commands_against_a_real_mlflow_server(
    package_dir: Path, key_files: dict[str, Path], tmp_path: Path
) -> None:
    port = free_port()
    mlflow = Path(sys.executable).with_name("mlflow")
    server = subprocess.Popen(
        [str(mlflow), "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{tmp_path}/server.db",
         "--artifacts-destination", str(tmp_path / "server-artifacts"), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path,
    )  # fmt: skip
    try:
        wait_until_up(f"http://127.0.0.1:{port}/health", server, detail=lambda: "no mlflow server")
        env = {**os.environ, "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}"}
        trust = ["--trusted-key", str(key_files["public"])]
        work = tmp_path / "client"
        work.mkdir()
        out = _cli(["models", "register", str(package_dir), *trust], env, work)
        assert "v1 (package" in out and "['candidate']" in out
        _cli(["models", "promote", "--reason", "first"], env, work)
        listed = json.loads(_cli(["models", "list", "--json"], env, work))
        assert [(v["version"], v["aliases"]) for v in listed] == [(1, ["candidate", "production"])]
        fetched = Path(_cli(["models", "fetch", "production", "--out", "cache", *trust], env,
                            work).strip().splitlines()[-1])  # fmt: skip
        _same_files(package_dir, work / fetched)
        assert not (work / "outputs").exists()  # nothing went to the embedded store
        assert (tmp_path / "server-artifacts").is_dir()  # the files went through the server
    finally:
        server.terminate()
        server.wait(30)
