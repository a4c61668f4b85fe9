"""Helpers shared by data tests: MovieLens-100K read through its data config."""

from __future__ import annotations

from pathlib import Path

from pinrank.data.sources import load_source

ROOT = Path(__file__).resolve().parents[1]


def movielens_raw(src: Path, out: Path) -> Path:
    """MovieLens-100K from ``src`` read by ``conf/data/ml100k.yaml`` into ``out`` (raw tables)."""
    source = load_source(ROOT / "conf" / "data" / "ml100k.yaml", ROOT, {"base": str(src)})
    source.make_raw(out)
    return out
