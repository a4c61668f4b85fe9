"""Benchmark: synthetic generator time and peak memory at scale.

    python benchmarks/generate_scale.py --users 10000000 --events 50000000 --items 1000000

Writes the data under --out (deleted afterwards unless --keep) and the numbers to
benchmarks/results/generate_<users>u_<events>e.json. Peak RSS is the process's own maximum
resident set (getrusage), which bounds what the generator held at any moment.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import tempfile
import time
from pathlib import Path

import pyarrow.dataset as ds

from pinrank.data.synthetic import SyntheticConfig, generate


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--users", type=int, default=1_000_000)
    ap.add_argument("--events", type=int, default=5_000_000)
    ap.add_argument("--items", type=int, default=None, help="default: users / 10")
    ap.add_argument("--out", default=None, help="default: a temporary folder")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    n_items = args.items or max(args.users // 10, 1000)
    cfg = SyntheticConfig(
        n_users=args.users,
        n_items=n_items,
        n_events=args.events,
        n_boards=max(n_items // 10, 100),
        n_creators=max(n_items // 50, 50),
    )
    out = Path(args.out or tempfile.mkdtemp(prefix="pinrank-gen-"))
    t0 = time.perf_counter()
    generate(cfg, out)
    secs = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    size_mb = sum(f.stat().st_size for f in out.rglob("*.parquet")) / 2**20
    result = {
        "users": cfg.n_users,
        "items": cfg.n_items,
        "events": cfg.n_events,
        "events_written": ds.dataset(str(out / "events")).count_rows(),
        "users_written": ds.dataset(str(out / "users")).count_rows(),
        "seconds": round(secs, 1),
        "events_per_second": round(cfg.n_events / secs),
        "peak_rss_mb": round(peak_mb),
        "parquet_mb": round(size_mb),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
    }
    print(json.dumps(result, indent=2))
    dest = Path(__file__).parent / "results" / f"generate_{cfg.n_users}u_{cfg.n_events}e.json"
    dest.parent.mkdir(exist_ok=True)
    dest.write_text(json.dumps(result, indent=2) + "\n")
    if not args.keep:
        shutil.rmtree(out)


if __name__ == "__main__":
    main()
