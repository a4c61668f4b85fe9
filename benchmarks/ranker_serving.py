"""Benchmark: feed latency of the embedded scorer, and the ranker's throughput per backend.

    python benchmarks/ranker_serving.py                    # the package `make demo` wrote
    python benchmarks/ranker_serving.py --package P --data D --threads 2

1. ``feed(user, k=50)`` with 500 retrieved candidates per feed (user tower -> FAISS -> the ranker
   factorised per feed -> blending -> diversification), for ``--feeds`` distinct known users one
   after another: p50 / p99 / mean latency.
2. The ranker per pair (``ranker``: raw columns in, calibrated probability out) at batch 1 to
   16384: candidates/s through ONNX Runtime and through torch eager running the same graph
   module (the torch backend), the per-feed pair (``ranker_user`` once, ``ranker_feed`` over
   the batch) and the per-catalogue pair (``ranker_pairs`` over the batch, the catalogue's
   ``ranker_items`` parts computed once beforehand, as ``pinrank feeds`` does) through ONNX
   Runtime; with the achieved GFLOP/s of the graph's weight matmuls next to a measured float32
   matmul peak of the same machine.

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
from pinrank.serving.signing import Trust

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
    from pinrank.serving.feed import FeedConfig
    from pinrank.serving.scorer import FeedScorer
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


def matmul_flops_per_row(path: Path) -> float:
    """FLOPs per batch row of a graph's MatMul/Gemm nodes whose weight is an initializer
    (``2 * K * N`` each); elementwise work, lookups and hashing are not counted."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    shapes = {t.name: list(t.dims) for t in model.graph.initializer}
    flops = 0.0
    for node in model.graph.node:
        if node.op_type in ("MatMul", "Gemm") and len(node.input) > 1 and node.input[1] in shapes:
            dims = shapes[node.input[1]]
            if len(dims) == 2:
                flops += 2.0 * dims[0] * dims[1]
    return flops


def matmul_peak(threads: int, n: int = 2048) -> dict[str, float]:
    """Measured float32 matmul GFLOP/s of this machine on ``threads`` threads, ``[n, n] @ [n,
    n]``: torch's and ONNX Runtime's (a one-MatMul graph; its MLAS kernels are what the
    ranker graphs run)."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    peak = {"torch": 2 * n**3 / timed(lambda: a @ b) / 1e9}
    x = helper.make_tensor_value_info("a", TensorProto.FLOAT, [n, n])
    w = helper.make_tensor_value_info("b", TensorProto.FLOAT, [n, n])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [n, n])
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["y"])], "mm", [x, w], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    session = ort.InferenceSession(
        onnx.shape_inference.infer_shapes(model).SerializeToString(),
        opts,
        providers=["CPUExecutionProvider"],
    )
    feed = {"a": a.numpy(), "b": b.numpy()}
    peak["onnxruntime"] = 2 * n**3 / timed(lambda: session.run(None, feed)) / 1e9
    return peak


def ranker_throughput(
    package: Any, tables: dict[str, pa.Table], batches: list[int], threads: int
) -> list[dict[str, Any]]:
    from pinrank.serving.scorer import FeedScorer

    torch.set_num_threads(threads)
    onnx_be, torch_be = OnnxBackend(package, threads=threads), TorchBackend(package, "cpu")
    flops = {g: matmul_flops_per_row(package.graph_path(g)) for g in package.manifest["graphs"]}
    pairs = package.has("ranker_pairs") and package.has("ranker_items")
    item_parts = FeedScorer(package, None, onnx_be).ranker.item_parts if pairs else None
    catalogue = len(next(iter(item_parts.values()))) if item_parts else 0
    out = []
    for b in batches:
        rows = repeat_rows(tables, b)
        arrays: dict[str, Any] = {}
        for side, t in rows.items():
            arrays |= pack(t, package.columns(side))
        user = pack(rows["user"].slice(0, 1), package.columns("user"))
        feed_inputs = arrays | {"user_index": np.zeros(b, np.int64)}
        item_index = np.arange(b, dtype=np.int64) % max(catalogue, 1)

        def per_feed(user: dict = user, feed_inputs: dict = feed_inputs) -> None:
            parts = onnx_be.run("ranker_user", user)
            onnx_be.run("ranker_feed", feed_inputs | parts)

        def per_catalogue(user: dict = user, index: np.ndarray = item_index) -> None:
            parts = onnx_be.run("ranker_user", user)
            ids = {"user_index": np.zeros(len(index), np.int64), "item_index": index}
            onnx_be.run("ranker_pairs", parts | (item_parts or {}) | ids)

        runs = [
            ("onnxruntime", lambda a=arrays: onnx_be.run("ranker", a), flops["ranker"]),
            ("torch eager", lambda a=arrays: torch_be.run("ranker", a), flops["ranker"]),
            ("onnxruntime per feed", per_feed, flops["ranker_feed"] + flops["ranker_user"] / b),
        ]
        if pairs:
            f = flops["ranker_pairs"] + flops["ranker_user"] / b
            runs.append(("onnxruntime per catalogue", per_catalogue, f))
        for name, fn, per_row in runs:
            s = timed(fn)
            gflops = b / s * per_row / 1e9
            out.append(
                {
                    "backend": name,
                    "batch": b,
                    "seconds": s,
                    "candidates_per_s": b / s,
                    "matmul_flops_per_candidate": per_row,
                    "gflop_per_s": gflops,
                }
            )
            print(f"  ranker {name:<26} batch {b:>5}: {b / s:>12,.0f} candidates/s, "
                  f"{gflops:6.2f} GFLOP/s")  # fmt: skip
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
    parser.add_argument("--trusted-key", default="outputs/keys/signing.pub")
    parser.add_argument(
        "--batches", type=int, nargs="+", default=[1, 16, 64, 256, 1024, 4096, 16384]
    )
    args = parser.parse_args()
    if not Path(args.package, "manifest.json").exists():
        raise SystemExit(f"no package at {args.package}: run `make demo` first")
    trust = Trust.from_files([args.trusted_key])
    package, prepared = load_package(args.package, trust), Prepared.load(args.data)
    feed = feed_latency(package, prepared, args.feeds, args.threads)
    print(f"  feed(user, k=50), 500 candidates: p50 {feed['p50_ms']:.1f} ms, "
          f"p99 {feed['p99_ms']:.1f} ms over {feed['feeds']} feeds {feed['paths']}, "
          f"{feed['ranked_per_feed']:.0f} pins ranked per feed")  # fmt: skip
    tables = held_out_rows(prepared, "test", 4096)
    peaks = matmul_peak(args.threads)
    peak = max(peaks.values())
    print(f"  float32 matmul peak (2048^3, {args.threads} threads): "
          f"{', '.join(f'{k} {v:.1f}' for k, v in peaks.items())} GFLOP/s")  # fmt: skip
    throughput = ranker_throughput(package, tables, args.batches, args.threads)
    best = max(
        (r for r in throughput if r["backend"] == "onnxruntime per catalogue"),
        key=lambda r: r["gflop_per_s"],
        default=None,
    )
    if best is not None:
        print(f"  per catalogue at its best batch ({best['batch']}): "
              f"{best['gflop_per_s']:.1f} GFLOP/s, {best['gflop_per_s'] / peak:.0%} of the "
              f"higher matmul peak")  # fmt: skip
    RESULTS.mkdir(parents=True, exist_ok=True)
    result = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "device": "cpu"},
        "threads": args.threads,
        "matmul_peak_gflop_per_s": peak,
        "matmul_peaks_gflop_per_s": peaks,
        "per_catalogue_best": best,
        "per_catalogue_best_share_of_peak": best["gflop_per_s"] / peak if best else None,
        "package": str(args.package),
        "feed": feed,
        "ranker": throughput,
    }
    (RESULTS / "ranker_serving.json").write_text(json.dumps(result, indent=2))
    plot(throughput, RESULTS / "ranker_serving.png")
    print(f"wrote {RESULTS / 'ranker_serving.json'} and ranker_serving.png")


if __name__ == "__main__":
    main()
