"""Tiny trained runs and a model package built from them, shared by the export and serving
tests (session-scoped: trained once, a minute or so on 2 cores)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from cryptography.hazmat.primitives import serialization

from pinrank.serving.signing import Trust, generate_key

ROOT = Path(__file__).resolve().parents[1]
# the test session's signing key: packages built by the fixtures are signed with it, and TRUST
# (trusting it alone) is what the tests load them with
SIGNING_KEY = generate_key()
TRUST = Trust(keys=(SIGNING_KEY.public_key(),))


def resign(root: Path, manifest: dict | None = None) -> None:
    """Re-hash and re-sign a package folder after a test changed it on purpose."""
    import json

    from pinrank.serving.package import MANIFEST, write_manifest

    write_manifest(root, manifest or json.loads((root / MANIFEST).read_text()), SIGNING_KEY)


@pytest.fixture(scope="session")
def key_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """SIGNING_KEY as PEM files: ``private`` (for export.py) and ``public`` (--trusted-key)."""
    folder = tmp_path_factory.mktemp("keys")
    private, public = folder / "signing.key", folder / "signing.pub"
    private.write_bytes(
        SIGNING_KEY.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    public.write_bytes(
        SIGNING_KEY.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return {"private": private, "public": public}


def free_port() -> int:
    """A loopback port free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until_up(
    url: str, proc: subprocess.Popen, seconds: float = 120, detail: Callable[[], str] = str
) -> None:
    """Return once ``url`` answers 2xx; fail when ``proc`` exits or ``seconds`` pass
    (``detail()``: what to show then, e.g. the server's log)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:  # refused, or an HTTP error status (503 until ready)
            assert proc.poll() is None and time.monotonic() < deadline, f"{url}: {detail()}"
            time.sleep(0.3)


def tiny_lifecycle(tmp: Path, logs: Path | str, key_files: dict[str, Path], **extra: Any) -> dict:
    """A lifecycle config of seconds per day (``pinrank retrain``, scripts/lifecycle_week.py):
    tiny runs of both models, 100 bootstrap samples, SQLite tracking under ``tmp``; ``extra``
    adds or replaces keys."""
    return {
        "work": str(tmp / "work"), "logs": str(logs),
        "spec": str(ROOT / "conf" / "features" / "synthetic.yaml"),
        "retrieval": ["data.datamodule.batch_size=256", "trainer.max_epochs=1",
                      "model.module.index=exact"],
        "ranking": ["model=wide_deep", "data.datamodule.batch_size=256", "trainer.max_epochs=1",
                    "model.module.logreg_grid=[]"],
        "compare": {"samples": 100},
        "tracking_uri": f"sqlite:///{tmp}/mlflow.db",
        "signing_key": str(key_files["private"]), "trusted_key": str(key_files["public"]),
        **extra,
    }  # fmt: skip


def tiny_overrides(tmp: Path, task: str) -> list[str]:
    """train.py overrides for a run of seconds on a small synthetic data set."""
    return [
        f"paths.data_dir={tmp}/data",
        f"paths.log_dir={tmp}/logs",
        f"paths.conf_dir={ROOT}/conf",
        f"task_name={task}",
        "data.source.generator.n_users=300",
        "data.source.generator.n_items=200",
        "data.source.generator.n_events=8000",
        "data.datamodule.batch_size=256",
        "data.datamodule.num_workers=0",
        "trainer.max_epochs=1",
        "trainer.enable_progress_bar=false",
    ]


def train(args: list[str], log_dir: Path) -> Path:
    """Run train.py; returns the run directory (the one holding metrics.json)."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *args], cwd=ROOT, env=env,
        capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    found = sorted(log_dir.rglob("metrics.json"))
    assert found, f"no metrics.json under {log_dir}"
    return found[-1].parent


@pytest.fixture(scope="session")
def trained_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Run directories of a tiny two-tower (``retrieval``) and wide-and-deep (``ranking``) run
    on the same data."""
    tmp = tmp_path_factory.mktemp("runs")
    retrieval = train(
        [*tiny_overrides(tmp, "tt"), "model.module.index=HNSW16"], tmp / "logs" / "tt"
    )
    ranking = train([*tiny_overrides(tmp, "wd"), "model=wide_deep"], tmp / "logs" / "wd")
    return {"retrieval": retrieval, "ranking": ranking}


def tiny_interest_overrides(tmp: Path) -> list[str]:
    """train.py overrides for a tiny new-user interest run on the same synthetic data as
    :func:`tiny_overrides` (its interest examples, data=synthetic_interests)."""
    generator = [o.replace("data.source.", "data.base.source.") for o in tiny_overrides(tmp, "")
                 if o.startswith("data.source.generator.")]  # fmt: skip
    return [
        "model=interests", "data=synthetic_interests", f"paths.data_dir={tmp}/data",
        f"paths.log_dir={tmp}/logs", f"paths.conf_dir={ROOT}/conf", "task_name=interests",
        *generator, "trainer.max_epochs=1", "trainer.enable_progress_bar=false",
        "model.module.candidates_per_segment=15",
    ]  # fmt: skip


@pytest.fixture(scope="session")
def interest_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run directory of a tiny new-user interest model (model=interests)."""
    tmp = tmp_path_factory.mktemp("interest_run")
    return train(tiny_interest_overrides(tmp), tmp / "logs")


@pytest.fixture(scope="session")
def interest_package_dir(
    trained_runs: dict[str, Path], interest_run: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A model package with both pin models and the interest model's section (do not modify
    it: copy it first)."""
    from pinrank.export.package import build_package
    from pinrank.export.run import TrainedRun

    out = tmp_path_factory.mktemp("interest_package") / "pkg"
    runs = [TrainedRun.load(trained_runs[k]) for k in ("retrieval", "ranking")]
    runs.append(TrainedRun.load(interest_run))
    build_package(runs, out, command="pytest", signing_key=SIGNING_KEY)
    return out


@pytest.fixture(scope="session")
def package_dir(trained_runs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model package with both models (do not modify it: copy it first)."""
    from pinrank.export.package import build_package
    from pinrank.export.run import TrainedRun

    out = tmp_path_factory.mktemp("package") / "pkg"
    runs = [TrainedRun.load(trained_runs["retrieval"]), TrainedRun.load(trained_runs["ranking"])]
    build_package(runs, out, command="pytest", signing_key=SIGNING_KEY)
    return out


@pytest.fixture(scope="session")
def users(trained_runs: dict[str, Path]) -> pa.Table:
    """The users of the package's data (with their train-derived columns), as one table."""
    from pinrank.export.run import TrainedRun

    return TrainedRun.load(trained_runs["ranking"]).prepared.users()


@pytest.fixture(scope="session")
def users_path(users: pa.Table, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """:func:`users` as one Parquet file."""
    path = tmp_path_factory.mktemp("package_users") / "users.parquet"
    pq.write_table(users, path)
    return path
