"""Fixtures of the service tests: the tiny package in two versions, the users as Parquet, and a
real ``redis-server`` on loopback."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from package_fixtures import SIGNING_KEY, free_port

from pinrank.serving.package import MANIFEST, write_manifest


@pytest.fixture(scope="session")
def packages(package_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two versions of the tiny package ("a", "b": the same graphs, different manifests, so
    different versions) and a tampered copy ("tampered": a graph altered after packaging)."""
    root = tmp_path_factory.mktemp("serve_packages")
    out = {}
    for name in ("a", "b", "tampered"):
        shutil.copytree(package_dir, root / name)
        manifest = json.loads((root / name / MANIFEST).read_text())
        manifest["provenance"]["release"] = name
        write_manifest(root / name, manifest, SIGNING_KEY)
        out[name] = root / name
    graph = out["tampered"] / "graphs" / "ranker_pairs.onnx"
    graph.write_bytes(graph.read_bytes()[:-16] + b"\0" * 16)
    return out


@pytest.fixture
def port() -> int:
    """A loopback port free right now."""
    return free_port()


class RedisServer:
    """A ``redis-server`` on loopback without persistence; can be paused, resumed and killed."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server is not installed (.ci/run installs it)")
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()
