"""GPU: the per-catalogue ranker and exact top-k retrieval on CUDA, with parity against CPU.

    bash benchmarks/gpu/run.sh                       # on a lent GPU machine (README there)
    python benchmarks/gpu/serving.py --device cpu --batch 4096 --pins 20000 --out /tmp/x

1. ``ranker_pairs`` through the torch backend (the package's own graph modules, weights from
   its safetensors) on ``--device``, in float32 and under bf16 autocast, at ``--batch`` pairs of
   real users' parts (``ranker_user`` on held-out users) and the package's stored item parts:
   candidates/s with the inputs already on the device (CUDA synchronised), and the achieved
   GFLOP/s of its weight matmuls next to the device's measured matmul peak. Parity: the largest
   difference of the probabilities from ONNX Runtime on CPU on the same pairs; float32 must be
   within ``--tol`` (1e-5), bf16's is reported and judged against ``--bf16-tol``.
2. Exact top-k retrieval by matmul over ``--pins`` pins (random unit-norm float32 embeddings of
   ``--dim`` floats, made on the device: nothing to carry), ``--queries`` queries per
   batch: queries/s, and parity with the same search in float64 on CPU for 64 queries (the
   same ids, scores within 1e-4).

Prints each figure and writes ``gpu_serving.json`` to ``--out``; exits 1 when a parity check
fails.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

from ranker_serving import matmul_flops_per_row  # noqa: E402

from pinrank.data.prepare import Prepared  # noqa: E402
from pinrank.export.torch_backend import TorchBackend  # noqa: E402
from pinrank.export.verify import held_out_rows  # noqa: E402
from pinrank.features.columns import pack  # noqa: E402
from pinrank.serving.package import load_package  # noqa: E402
from pinrank.serving.ranking import stored_item_parts  # noqa: E402
from pinrank.serving.runtime import OnnxBackend  # noqa: E402
from pinrank.serving.signing import Trust  # noqa: E402


def timed(fn: Callable[[], Any], device: torch.device, min_seconds: float = 1.0) -> float:
    """Seconds per call, synchronising the device around the timed calls (3 at least)."""
    fn()
    sync(device)
    calls, start = 0, time.perf_counter()
    while calls < 3 or time.perf_counter() - start < min_seconds:
        fn()
        calls += 1
        sync(device)
    return (time.perf_counter() - start) / calls


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(device: torch.device, n: int) -> dict[str, float]:
    """Measured ``[n, n] @ [n, n]`` GFLOP/s on the device: float32 (TF32 off) and bf16."""
    out = {}
    for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        out[name] = 2 * n**3 / timed(lambda a=a, b=b: a @ b, device, 0.5) / 1e9
    return out


def pairs_inputs(package: Any, prepared: Prepared, batch: int, seed: int) -> dict[str, np.ndarray]:
    """``ranker_pairs`` inputs: 256 held-out users' parts (ONNX Runtime's ``ranker_user``), the
    stored item parts, and ``batch`` random (user, pin) pairs."""
    onnx_be = OnnxBackend(package)
    users = held_out_rows(prepared, "test", 256)["user"]
    parts = onnx_be.run("ranker_user", pack(users, package.columns("user")))
    items = stored_item_parts(package, int(package.manifest["catalogue"]["rows"]))
    if items is None:
        raise SystemExit(f"{package.root} stores no item parts (a package without a ranker?)")
    n_items = len(next(iter(items.values())))
    rng = np.random.default_rng(seed)
    return (
        parts
        | {k: np.asarray(v) for k, v in items.items()}
        | {
            "user_index": rng.integers(0, users.num_rows, batch).astype(np.int64),
            "item_index": rng.integers(0, n_items, batch).astype(np.int64),
        }
    )


def ranker(args: argparse.Namespace, device: torch.device, peak: dict[str, float]) -> dict:
    trust = Trust.from_files(args.trusted_key) if args.trusted_key else Trust(allow_unsigned=True)
    package = load_package(args.package, trust)
    prepared = Prepared.load(args.data or package.manifest["provenance"]["data"]["prepared"])
    inputs = pairs_inputs(package, prepared, args.batch, args.seed)
    cpu = OnnxBackend(package).run("ranker_pairs", inputs)["probability"]
    graph = TorchBackend(package, str(device)).graphs["ranker_pairs"]
    on_device = [torch.from_numpy(np.ascontiguousarray(inputs[i.name])).to(device)
                 for i in graph.inputs]  # fmt: skip
    flops = matmul_flops_per_row(package.graph_path("ranker_pairs"))
    out: dict[str, Any] = {"batch": args.batch, "matmul_flops_per_candidate": flops}
    for name, dtype in (("float32", None), ("bfloat16", torch.bfloat16)):

        @torch.no_grad()
        def run(dtype: torch.dtype | None = dtype) -> torch.Tensor:
            with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=bool(dtype)):
                return graph(*on_device)[0]

        seconds = timed(run, device)
        diff = float(np.max(np.abs(run().float().cpu().numpy() - cpu)))
        tol = args.tol if dtype is None else args.bf16_tol
        gflops = args.batch / seconds * flops / 1e9
        out[name] = {
            "candidates_per_s": args.batch / seconds,
            "gflop_per_s": gflops,
            "share_of_peak": gflops / peak[name],
            "max_abs_diff_vs_onnxruntime_cpu": diff,
            "tolerance": tol,
            "parity": diff <= tol,
        }
        print(f"  ranker_pairs {name:<8} batch {args.batch:,}: {args.batch / seconds:14,.0f} "
              f"candidates/s, {gflops:8.1f} GFLOP/s ({gflops / peak[name]:.1%} of peak); "
              f"max |diff| vs ORT CPU {diff:.2e} ({'OK' if diff <= tol else 'FAIL'})")  # fmt: skip
    return out


def topk(args: argparse.Namespace, device: torch.device, dim: int) -> dict[str, Any]:
    gen = torch.Generator(device=device).manual_seed(args.seed)
    pins = torch.randn(args.pins, dim, device=device, generator=gen)
    pins = pins / pins.norm(dim=1, keepdim=True)
    queries = torch.randn(args.queries, dim, device=device, generator=gen)

    @torch.no_grad()
    def search(q: torch.Tensor = queries) -> tuple[torch.Tensor, torch.Tensor]:
        # 1,024 queries at a time: their [1024, pins] float32 scores (4 GB at 1M pins)
        found = [torch.topk(c @ pins.T, args.k, dim=1) for c in q.split(1024)]
        return torch.cat([f.values for f in found]), torch.cat([f.indices for f in found])

    seconds = timed(search, device)
    scores, ids = search(queries[:64])
    ref = queries[:64].double().cpu() @ pins.double().cpu().T
    ref_scores, ref_ids = torch.topk(ref, args.k, dim=1)
    same_ids = bool(torch.equal(ids.cpu(), ref_ids))
    diff = float((scores.double().cpu() - ref_scores).abs().max())
    out = {
        "pins": args.pins,
        "dim": dim,
        "k": args.k,
        "queries_per_batch": args.queries,
        "queries_per_s": args.queries / seconds,
        "same_ids_as_cpu_float64": same_ids,
        "max_abs_score_diff": diff,
        "parity": same_ids and diff <= 1e-4,
    }
    print(f"  exact top-{args.k} over {args.pins:,} pins (dim {dim}), {args.queries:,} queries "
          f"per batch: {out['queries_per_s']:,.0f} queries/s; parity with CPU float64 "
          f"{'OK' if out['parity'] else 'FAIL'} (ids equal {same_ids}, max diff "
          f"{diff:.1e})")  # fmt: skip
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--package", default="outputs/packages/demo")
    ap.add_argument("--data", help="prepared data (default: the package's)")
    ap.add_argument("--trusted-key", nargs="*", help="default: accept the package unsigned")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--batch", type=int, default=65_536)
    ap.add_argument("--pins", type=int, default=1_000_000)
    ap.add_argument("--queries", type=int, default=4_096)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--dim", type=int, default=64, help="retrieval embedding width")
    ap.add_argument("--peak-n", type=int, default=8_192, help="matmul size of the peak")
    ap.add_argument("--tol", type=float, default=1e-5)
    ap.add_argument("--bf16-tol", type=float, default=2e-2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = False  # float32 means float32, parity included
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    print(f"device: {device} ({name}), torch {torch.__version__}")
    peak = matmul_peak(device, args.peak_n)
    print(f"  matmul peak ({args.peak_n}^3): float32 {peak['float32']:,.0f}, bf16 "
          f"{peak['bfloat16']:,.0f} GFLOP/s")  # fmt: skip
    result: dict[str, Any] = {
        "device": {"type": device.type, "name": name, "torch": torch.__version__},
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "matmul_peak_gflop_per_s": peak,
    }
    result["ranker_pairs"] = ranker(args, device, peak)
    result["topk"] = topk(args, device, args.dim)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_serving.json").write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out / 'gpu_serving.json'}")
    r = result["ranker_pairs"]
    if not (r["float32"]["parity"] and r["bfloat16"]["parity"] and result["topk"]["parity"]):
        raise SystemExit("FAILED: a parity check")


if __name__ == "__main__":
    main()
