"""A loaded, verified and probed package, as the service (and each scoring process) holds it."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from pinrank.serving.feed import FeedConfig
from pinrank.serving.package import load_package
from pinrank.serving.runtime import OnnxBackend
from pinrank.serving.scorer import FeedScorer
from pinrank.serving.signing import Trust
from pinrank.serving.store import UserStore


@dataclass(frozen=True)
class Model:
    """A loaded, probed package: what one request uses from start to end."""

    scorer: FeedScorer
    version: str  # the first 16 hex digits of the manifest's sha256
    path: str
    created_at: str
    loaded_at: float
    signer: str = ""


def load_model(
    path: str | Path,
    store: UserStore,
    trust: Trust,
    threads: int = 1,
    feed: FeedConfig | None = None,
) -> Model:
    """Load and verify a package: its location, signature and every file against the manifest's
    digests (:func:`load_package` under ``trust``), then every graph run on a probe
    (:meth:`FeedScorer.probe`). ``threads``: ONNX Runtime intra-op threads per graph. Raises on
    any failure."""
    package = load_package(path, trust)
    backend = OnnxBackend(package, threads=threads)
    scorer = FeedScorer(package, store, backend, feed)
    scorer.probe()
    created = str(package.manifest.get("provenance", {}).get("created_at", ""))
    signer = f"signed by {package.signer}" if package.signer else "UNSIGNED"
    return Model(scorer, package.version, str(package.root), created, time.time(), signer)
