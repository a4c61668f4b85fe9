"""Benchmark: feed latency of the embedded scorer, and the ranker's throughput per backend.

    python benchmarks/ranker_serving.py                    # the package `make demo` wrote
    python benchmarks/ranker_serving.py --package P --data D --threads 2

1. ``feed(user, k=50)`` with 500 retrieved candidates per feed (user tower -> FAISS -> the ranker
   factorised per feed -> blending -> diversification), for ``--feeds`` distinct known users one
   after another: p50 / p99 / mean latency.
2. The ranker per pair (``ranker``: raw columns in, calibrated probability out) at batch 1, 64
   and 4096: candidates/s through ONNX Runtime and through torch eager running the same graph
   module (the torch backend), and the per-feed pair (``ranker_user`` once, ``ranker_feed`` over
   the batch) through ONNX Runtime.

Both run on ``--threads`` intra-op threads (2 = this machine's cores). Writes
benchmarks/results/ranker_serving.json and ranker_serving.png.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pyarrow as pa
import torch

from pinrank.data.prepare import Prepared
from pinrank.export.torch_backend import TorchBackend
from pinrank.export.verify import held_out_rows
from pinrank.features.columns import pack
from pinrank.serving.package import load_package
from pinrank.serving.runtime import OnnxBackend

matplotlib.use("Agg")
import matplotlib.pyplot as plt

RESULTS = Path(__file__).parent / "results"


def timed(fn: Callable[[], Any], min_seconds: float = 1.0, min_calls: int = 3) -> float:
    """Seconds per call: repeated until ``min_seconds`` and ``min_calls`` have passed."""
    fn()  # warm-up (sessions, allocations)
    calls, start = 0, time.perf_counter()
    while calls < min_calls or time.perf_counter() - start < min_seconds:
        fn()
        calls += 1
    return (time.perf_counter() - start) / calls


def repeat_rows(tables: dict[str, pa.Table], n: int) -> dict[str, pa.Table]:
    idx = pa.array(np.arange(n) % tables["context"].num_rows)
    return {side: t.take(idx) for side, t in tables.items()}


def feed_latency(package: Any, prepared: Prepared, feeds: int, threads: int) -> dict[str, Any]:
    from pinrank.serving.scorer import FeedConfig, FeedScorer
    from pinrank.serving.store import TableStore

    scorer = FeedScorer(
        package,
        TableStore(prepared.users()),
        OnnxBackend(package, threads=threads),
        FeedConfig(candidates=500),
    )
    test_users = held_out_rows(prepared, "test", 20000)["user"].column("user_id").to_numpy()
    users = np.unique(test_users)[:feeds]
    scorer.feed(int(users[0]), k=50)  # warm-up: sessions are created on first use
    seconds, paths, ranked = [], [], []
    for u in users:
        t0 = time.perf_counter()
        feed = scorer.feed(int(u), k=50)
        seconds.append(time.perf_counter() - t0)
        paths.append(feed.path)
        ranked.append(sum(v for n, v in feed.counts.items() if n.startswith("candidates.")))
    ms = np.asarray(seconds) * 1e3
    return {
        "feeds": len(users),
        "k": 50,
        "candidates": 500,
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": float(ms.mean()),
        "ranked_per_feed": float(np.mean(ranked)),
        "paths": {p: paths.count(p) for p in sorted(set(paths))},
    }


def ranker_throughput(
    package: Any, tables: dict[str, pa.Table], batches: list[int], threads: int
) -> list[dict[str, Any]]:
    torch.set_num_threads(threads)
    onnx_be, torch_be = OnnxBackend(package, threads=threads), TorchBackend(package, "cpu")
    out = []
    for b in batches:
        rows = repeat_rows(tables, b)
        arrays: dict[str, Any] = {}
        for side, t in rows.items():
            arrays |= pack(t, package.columns(side))
        user = pack(rows["user"].slice(0, 1), package.columns("user"))
        feed_inputs = arrays | {"user_index": np.zeros(b, np.int64)}

        def per_feed(user: dict = user, feed_inputs: dict = feed_inputs) -> None:
            parts = onnx_be.run("ranker_user", user)
            onnx_be.run("ranker_feed", feed_inputs | parts)

        for name, fn in (
            ("onnxruntime", lambda a=arrays: onnx_be.run("ranker", a)),
            ("torch eager", lambda a=arrays: torch_be.run("ranker", a)),
            ("onnxruntime per feed", per_feed),
        ):
            s = timed(fn)
            out.append({"backend": name, "batch": b, "seconds": s, "candidates_per_s": b / s})
            print(f"  ranker {name:<22} batch {b:>5}: {b / s:>12,.0f} candidates/s")
    return out


def plot(results: list[dict[str, Any]], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    for name in dict.fromkeys(r["backend"] for r in results):
        rows = [r for r in results if r["backend"] == name]
        ax.plot([r["batch"] for r in rows], [r["candidates_per_s"] for r in rows], "o-", label=name)
    ax.set(xscale="log", yscale="log", xlabel="batch (candidates)", ylabel="candidates / s")
    ax.set_title("ranker throughput, raw columns to calibrated probability")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--package", default="outputs/packages/demo")
    parser.add_argument("--data", default="data/demo/prepared")
    parser.add_argument("--feeds", type=int, default=300)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64, 4096])
    args = parser.parse_args()
    if not Path(args.package, "manifest.json").exists():
        raise SystemExit(f"no package at {args.package}: run `make demo` first")
    package, prepared = load_package(args.package), Prepared.load(args.data)
    feed = feed_latency(package, prepared, args.feeds, args.threads)
    print(f"  feed(user, k=50), 500 candidates: p50 {feed['p50_ms']:.1f} ms, "
          f"p99 {feed['p99_ms']:.1f} ms over {feed['feeds']} feeds {feed['paths']}, "
          f"{feed['ranked_per_feed']:.0f} pins ranked per feed")  # fmt: skip
    tables = held_out_rows(prepared, "test", 4096)
    throughput = ranker_throughput(package, tables, args.batches, args.threads)
    RESULTS.mkdir(parents=True, exist_ok=True)
    result = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "device": "cpu"},
        "threads": args.threads,
        "package": str(args.package),
        "feed": feed,
        "ranker": throughput,
    }
    (RESULTS / "ranker_serving.json").write_text(json.dumps(result, indent=2))
    plot(throughput, RESULTS / "ranker_serving.png")
    print(f"wrote {RESULTS / 'ranker_serving.json'} and ranker_serving.png")


if __name__ == "__main__":
    main()
