"""The wheel as a user installs it: ``pip install pinrank-*.whl[serve]`` into a fresh venv, outside
the repository, has no torch, is at most a third of the development venv, and its ``pinrank``
command prints a feed and serves one over HTTP from a package built by training."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from package_fixtures import free_port

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "setup.py", "README.md", "pinrank", "conf", "serve")


def _run(args: list[str], cwd: Path, timeout: float = 600) -> str:
    proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONNOUSERSITE": "1"})  # fmt: skip
    assert proc.returncode == 0, f"{' '.join(args)}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


@pytest.fixture(scope="module")
def serve_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the built wheel and its [serve] extra, pinned by the lock file."""
    tmp = tmp_path_factory.mktemp("install")
    src = tmp / "src"  # a copy: building in the checkout would leave build/ and egg-info there
    src.mkdir()
    for name in SOURCES:
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy2
        copy(ROOT / name, src / name, **({"ignore": shutil.ignore_patterns("__pycache__")}
                                          if (ROOT / name).is_dir() else {}))  # fmt: skip
    dist = tmp / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
          "-w", str(dist), str(src)], tmp)  # fmt: skip
    wheels = list(dist.glob("pinrank-*.whl"))
    assert len(wheels) == 1, wheels
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], tmp)
    # the lock's versions (pip constraints take no extras: ray[data]==... -> ray==...)
    lock = (ROOT / "requirements" / "cpu.txt").read_text()
    constraints = tmp / "constraints.txt"
    constraints.write_text(re.sub(r"^([A-Za-z0-9_.-]+)\[[^\]]*\]", r"\1", lock, flags=re.M))
    _run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
          f"{wheels[0]}[serve]", "-c", str(constraints)], tmp)  # fmt: skip
    return venv


def test_serve_extra_has_no_torch_and_is_a_third_of_the_dev_venv(serve_venv: Path) -> None:
    python = str(serve_venv / "bin" / "python")
    probe = ("import importlib.util as u, json; print(json.dumps({m: u.find_spec(m) is not None "
             "for m in ['torch', 'torchrec', 'pytorch_lightning', 'hydra', 'onnxruntime', "
             "'faiss', 'fastapi', 'pinrank.service', 'pinrank.conf']}))")  # fmt: skip
    found = json.loads(_run([python, "-c", probe], serve_venv))
    assert found == {
        "torch": False, "torchrec": False, "pytorch_lightning": False, "hydra": False,
        "onnxruntime": True, "faiss": True, "fastapi": True, "pinrank.service": True,
        "pinrank.conf": True,
    }  # fmt: skip
    ours, dev = _size(serve_venv), _size(Path(sys.prefix))
    print(f"venv sizes: pinrank[serve] {ours / 2**20:.0f} MiB, development {dev / 2**20:.0f} MiB")
    assert ours * 3 <= dev, (
        f"pinrank[serve] venv {ours / 2**20:.0f} MiB > a third of {dev / 2**20:.0f}"
    )
    version = _run([str(serve_venv / "bin" / "pinrank"), "--version"], serve_venv)
    assert version.startswith("pinrank ")


def test_installed_pinrank_prints_and_serves_a_feed_without_torch(
    serve_venv: Path, package_dir: Path, users_path: Path, key_files: dict[str, Path],
    tmp_path: Path,
) -> None:  # fmt: skip
    pinrank = str(serve_venv / "bin" / "pinrank")
    trust = ["--trusted-key", str(key_files["public"])]
    out = _run([pinrank, "-q", "feed", str(package_dir), *trust, "--users", "1", "--k", "5"],
               tmp_path)  # fmt: skip
    assert ": 5 pins, path " in out and out.count(" pin ") == 5, out

    port = free_port()
    proc = subprocess.Popen(
        [pinrank, "serve", "run", str(package_dir), "--users", str(users_path),
         "--port", str(port), *trust],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        user = _first_user(users_path)
        body = _get_when_up(f"http://127.0.0.1:{port}/v1/feed/{user}?k=5", proc)
    finally:
        proc.terminate()
        log = proc.communicate(timeout=30)[0]
    feed = json.loads(body)
    assert len(feed["items"]) == 5, feed
    assert all(0.0 < item["score"] < 1.0 for item in feed["items"]), feed
    assert "Traceback" not in log, log


def _first_user(users_path: Path) -> int:
    import pyarrow.parquet as pq

    return int(pq.read_table(users_path, columns=["user_id"]).column(0)[0].as_py())


def _get_when_up(url: str, proc: subprocess.Popen, limit_s: float = 120.0) -> bytes:
    deadline = time.monotonic() + limit_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return bytes(response.read())
        except OSError:
            if proc.poll() is not None:
                raise AssertionError(f"server exited:\n{proc.communicate()[0][-3000:]}") from None
            assert time.monotonic() < deadline, "server did not answer in time"
            time.sleep(0.3)
