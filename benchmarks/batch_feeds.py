"""Benchmark: end-to-end batch feeds (``pinrank feeds``): feeds/s and peak RSS by number of users.

    python benchmarks/batch_feeds.py                          # 10k, 100k and 1M users
    python benchmarks/batch_feeds.py --users 10000 --engine ray

Synthetic users: the rows of the package's prepared users (demographics, followed interests,
history, seen pins) drawn at random and given fresh ids (the graphs hash ids, so a new id is a
valid user), written as Parquet with ``--row-group`` users per row group. Each size runs
``pinrank feeds`` in its own process (50-pin feeds from 400 retrieved + 100 interest candidates,
i.e. 500 ranked per user) and reads back its ``_SUCCESS.json``: users/s while scoring (the
package load excluded), wall seconds, and the peak RSS of the driver and of its largest worker
process (``pinrank feeds`` runs one per CPU by default; ``--workers 1`` scores in the driver).
Writes benchmarks/results/batch_feeds.json and batch_feeds.png.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pinrank.data.prepare import Prepared

matplotlib.use("Agg")
import matplotlib.pyplot as plt

RESULTS = Path(__file__).parent / "results"
ROOT = Path(__file__).resolve().parents[1]


def synthetic_users(base: pa.Table, n: int, path: Path, row_group: int, seed: int = 0) -> Path:
    """``n`` users copied from random rows of ``base`` under fresh ids, streamed to Parquet."""
    rng = np.random.default_rng(seed)
    first = int(np.max(base.column("user_id").to_numpy())) + 1
    path.parent.mkdir(parents=True, exist_ok=True)
    with pq.ParquetWriter(path, base.schema, compression="zstd") as writer:
        for start in range(0, n, row_group):
            size = min(row_group, n - start)
            rows = base.take(pa.array(rng.integers(0, base.num_rows, size)))
            field = base.schema.field("user_id")  # keeps its nullability: the writer's schema
            ids = pa.array(np.arange(first + start, first + start + size), field.type)
            writer.write_table(rows.set_column(rows.column_names.index("user_id"), field, ids))
    return path


def run(package: str, users: Path, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    shutil.rmtree(out, ignore_errors=True)
    cmd = [
        sys.executable, "-m", "pinrank.cli", "feeds", package, "--users", str(users),
        "--out", str(out), "--k", "50", "--candidates", "400", "--interest-candidates", "100",
        "--batch-users", str(args.batch_users), "--engine", args.engine, "--no-progress",
        "--trusted-key", args.trusted_key,
    ]  # fmt: skip
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if args.workers:
        cmd += ["--workers", str(args.workers)]
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True)
    wall = time.perf_counter() - t0
    summary = json.loads((out / "_SUCCESS.json").read_text())
    return {
        "users": summary["users"],
        "rows": summary["rows"],
        "wall_s": round(wall, 2),
        "job_s": summary["seconds"],
        "scoring_s": summary["scoring_seconds"],
        "feeds_per_s": summary["users_scored_per_s"],
        "peak_rss_mb": summary["peak_rss_mb"],
        "worker_peak_rss_mb": summary.get("worker_peak_rss_mb"),
        "workers": summary["config"].get("workers"),
        "threads": summary["config"].get("threads"),
        "paths": {k: v for k, v in summary["counts"].items() if k.startswith("path.")},
    }


def plot(results: list[dict[str, Any]], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    n = [r["users"] for r in results]
    ax.plot(n, [r["feeds_per_s"] for r in results], "o-", label="feeds / s (scoring)")
    ax.set(xscale="log", xlabel="users", ylabel="feeds / s")
    ax.set_ylim(bottom=0)
    ax2 = ax.twinx()
    ax2.plot(n, [r["peak_rss_mb"] for r in results], "s--", color="tab:red", label="peak RSS")
    ax2.set(ylabel="peak RSS (MB)")
    ax2.set_ylim(bottom=0)
    ax.set_title("pinrank feeds: 50-pin feeds, 500 ranked candidates each")
    fig.legend(loc="lower center", bbox_to_anchor=(0.5, 0.25))
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--package", default="outputs/packages/demo")
    parser.add_argument("--users", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--row-group", type=int, default=10_000)
    parser.add_argument("--batch-users", type=int, default=1024)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--workers", type=int, help="local worker processes (default: CPUs)")
    parser.add_argument("--engine", default="local", choices=["local", "ray"])
    parser.add_argument("--work", default="outputs/bench_feeds", help="scratch folder")
    parser.add_argument("--trusted-key", default="outputs/keys/signing.pub")
    args = parser.parse_args()
    manifest = Path(args.package, "manifest.json")
    if not manifest.exists():
        raise SystemExit(f"no package at {args.package}: run `make demo` first")
    prepared = json.loads(manifest.read_text())["provenance"]["data"]["prepared"]
    base = Prepared.load(prepared).users()
    work = Path(args.work)
    results = []
    for n in args.users:
        users = synthetic_users(base, n, work / f"users_{n}" / "users.parquet", args.row_group)
        r = run(args.package, users, work / f"feeds_{n}", args)
        results.append(r)
        rss = f"{r['peak_rss_mb']:,.0f} MB"
        if r["worker_peak_rss_mb"]:
            rss += f" + {r['workers']} workers of {r['worker_peak_rss_mb']:,.0f} MB"
        print(f"  {n:>9,} users: {r['feeds_per_s']:>8,.0f} feeds/s while scoring, "
              f"{r['wall_s']:.0f} s wall, peak RSS {rss}")  # fmt: skip
        shutil.rmtree(work / f"users_{n}", ignore_errors=True)
    rates = [r["feeds_per_s"] for r in results]
    spread = (max(rates) - min(rates)) / max(rates) if rates else 0.0
    RESULTS.mkdir(parents=True, exist_ok=True)
    result = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "device": "cpu"},
        "engine": args.engine,
        "package": args.package,
        "config": {
            "k": 50,
            "candidates": 400,
            "interest_candidates": 100,
            "batch_users": args.batch_users,
            "row_group": args.row_group,
        },
        "results": results,
        "feeds_per_s_spread": round(spread, 4),
    }
    (RESULTS / "batch_feeds.json").write_text(json.dumps(result, indent=2))
    plot(results, RESULTS / "batch_feeds.png")
    print(f"  feeds/s spread across sizes: {spread:.1%}; wrote {RESULTS / 'batch_feeds.json'}")


if __name__ == "__main__":
    main()
