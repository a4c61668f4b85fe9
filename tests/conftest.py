"""Shared fixtures: a small synthetic data set, generated and prepared once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# tiny trained runs and a model package, for the export and serving tests
from package_fixtures import (  # noqa: F401
    interest_package_dir,
    interest_run,
    key_files,
    package_dir,
    trained_runs,
    users,
    users_path,
)

from pinrank.data.prepare import Prepared, prepare
from pinrank.data.synthetic import SyntheticConfig, generate

ROOT = Path(__file__).resolve().parents[1]
SYNTHETIC_SPEC = ROOT / "conf" / "features" / "synthetic.yaml"
MOVIELENS_SPEC = ROOT / "conf" / "features" / "movielens.yaml"
SMALL = SyntheticConfig(
    n_users=600, n_items=400, n_events=12_000, n_boards=60, n_creators=30, dirty=0.05
)


def movielens_dir() -> Path:
    return Path(os.environ.get("PINRANK_ML100K", ROOT.parent / "shared" / "data" / "ml-100k"))


@pytest.fixture(scope="session")
def small_config() -> SyntheticConfig:
    """The config of ``synthetic_raw``: small, with 5% dirty rows."""
    return SMALL


@pytest.fixture(scope="session")
def ml100k() -> Path:
    path = movielens_dir()
    if not (path / "u.data").exists():
        pytest.skip(f"MovieLens-100K not found at {path}: set PINRANK_ML100K to run these tests")
    return path


@pytest.fixture(scope="session")
def synthetic_raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate(SMALL, tmp_path_factory.mktemp("synthetic") / "raw")


@pytest.fixture(scope="session")
def synthetic_prepared(synthetic_raw: Path) -> Prepared:
    return prepare(synthetic_raw, synthetic_raw.parent / "prepared", SYNTHETIC_SPEC)
