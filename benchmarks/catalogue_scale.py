"""Benchmark: the package pipeline at 3k, 100k and 1M pins, each stage timed with its peak RSS.

    python benchmarks/catalogue_scale.py                         # 3k, 100k and 1M pins
    python benchmarks/catalogue_scale.py --pins 100000 --steps 100

For each catalogue size, the same pipeline, every stage in its own process (wall seconds and
that process's peak RSS, workers included, from ``wait4``):

1. ``data``: synthetic data (``--users`` users, ``--events`` impressions, the pins) generated,
   split and the spec fitted (``SyntheticSource.ensure``);
2. ``train_retrieval`` / ``train_ranker``: both models for a fixed ``--steps`` steps (one
   epoch of that many batches; the retrieval run evaluates with exact search and no popularity
   prior sweep, neither run scores the generator's oracle, the ranker has no logistic-regression
   baseline): the package pipeline is measured here, not the models' quality;
3. ``export``: the package, signed and verified against the training path (``pinrank export``;
   the index chosen by catalogue size, its recall@100 against exact search measured);
4. ``scorer``: the package loaded and a ``FeedScorer`` built and probed, twice in one process
   (the second is a reload: the new scorer is built while the old one still serves), then
   ``feed(k=50)`` with 500 candidates for ``--feeds`` known users: p50 / p99; the process's
   RSS after each step, split into private (anonymous) memory and mapped file pages (the item
   parts' memory map: shared by every process serving the package, reclaimable);
5. ``feeds``: ``pinrank feeds`` on ``--feed-users`` users (the prepared users drawn at random
   under fresh ids, row groups of 10,000): feeds/s while scoring.

Also per size: the package's bytes on disk against the unique bytes of its weights (the models'
safetensors and the graphs' shared tensors), item parts and index, and its largest file.
Writes benchmarks/results/catalogue_scale.json and catalogue_scale.png.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SPEC = ROOT / "conf" / "features" / "synthetic.yaml"

DATA = """
import json, sys
from pinrank.data.sources import SyntheticSource
from pinrank.data.synthetic import SyntheticConfig
root, spec, gen = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
prepared = SyntheticSource(root=root, spec=spec, generator=SyntheticConfig(**gen)).ensure()
print(json.dumps(json.loads((prepared.root / "prepared.json").read_text())["splits"]))
"""

SCORER = """
import json, resource, sys, time
import numpy as np
from pinrank.data.prepare import Prepared
from pinrank.serving.feed import FeedConfig
from pinrank.serving.package import load_package
from pinrank.serving.scorer import FeedScorer
from pinrank.serving.signing import Trust
from pinrank.serving.store import TableStore

def rss_mb(field="VmRSS"):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024

def rss():
    return {"rss_mb": round(rss_mb(), 1), "anon_mb": round(rss_mb("RssAnon"), 1),
            "file_mb": round(rss_mb("RssFile"), 1)}

package_dir, key, feeds = sys.argv[1], sys.argv[2], int(sys.argv[3])
trust = Trust.from_files([key])
prepared = Prepared.load(json.loads((__import__("pathlib").Path(package_dir) / "manifest.json")
                         .read_text())["provenance"]["data"]["prepared"])
store = TableStore(prepared.users())
base = rss_mb()
out = {"rss_before_mb": round(base, 1), "rss_before": rss()}
scorers = []
for name in ("load", "reload"):
    t0 = time.perf_counter()
    package = load_package(package_dir, trust)
    scorer = FeedScorer(package, store, config=FeedConfig(candidates=500))
    scorer.probe()
    out[f"{name}_s"] = round(time.perf_counter() - t0, 3)
    out[f"{name}_rss_mb"] = round(rss_mb(), 1)
    out[f"{name}_rss"] = rss()
    scorers.append(scorer)
users = prepared.users().column("user_id").to_numpy()
rng = np.random.default_rng(0)
picked = rng.choice(users, min(feeds, len(users)), replace=False)
scorer.feed(int(picked[0]), k=50)
ms, paths = [], {}
for u in picked:
    t0 = time.perf_counter()
    feed = scorer.feed(int(u), k=50)
    ms.append((time.perf_counter() - t0) * 1e3)
    paths[feed.path] = paths.get(feed.path, 0) + 1
out |= {"feeds": len(ms), "feed_p50_ms": round(float(np.percentile(ms, 50)), 2),
        "feed_p99_ms": round(float(np.percentile(ms, 99)), 2), "paths": paths,
        "rss_after_feeds_mb": round(rss_mb(), 1), "rss_after_feeds": rss()}
print(json.dumps(out))
"""


def stage(name: str, cmd: list[str], log: Path) -> dict[str, Any]:
    """Run ``cmd`` (output to ``log``); its wall seconds, peak RSS (its own and its waited-for
    children's, from ``wait4``) and its last stdout line when that is JSON."""
    t0 = time.perf_counter()
    with log.open("w") as fh:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    code = os.waitstatus_to_exitcode(status)
    if code:
        raise SystemExit(f"{name} failed ({code}); see {log}:\n{log.read_text()[-3000:]}")
    lines = log.read_text().strip().splitlines()
    out: dict[str, Any] = {"seconds": round(wall, 1), "peak_rss_mb": round(usage.ru_maxrss / 1024)}
    with contextlib.suppress(json.JSONDecodeError):
        out["result"] = json.loads(lines[-1]) if lines else None
    print(f"    {name:<16} {wall:8.1f} s  peak RSS {usage.ru_maxrss / 1024:8,.0f} MB", flush=True)
    return out


def package_bytes(root: Path) -> dict[str, Any]:
    """Bytes on disk by top folder, the unique bytes of weights, item parts and index, the
    largest file."""
    by: dict[str, int] = {}
    largest = ("", 0)
    for p in root.rglob("*"):
        if p.is_file():
            size = p.stat().st_size
            top = p.relative_to(root).parts[0] if len(p.relative_to(root).parts) > 1 else "."
            by[top] = by.get(top, 0) + size
            largest = max(largest, (str(p.relative_to(root)), size), key=lambda x: x[1])
    manifest = json.loads((root / "manifest.json").read_text())
    shared = (manifest.get("tensors") or {}).get("path")
    unique = by.get("weights", 0) + by.get("parts", 0) + by.get("index", 0)
    unique += (root / shared).stat().st_size if shared else 0
    total = sum(by.values())
    return {
        "total": total,
        "by_folder": by,
        "unique_weights_parts_index": unique,
        "ratio": round(total / unique, 3) if unique else None,
        "largest_file": {"path": largest[0], "bytes": largest[1]},
    }


def run_size(pins: int, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    root = work / f"pins_{pins}"
    logs = root / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    gen = {
        "n_users": args.users,
        "n_items": pins,
        "n_events": args.events,
        "n_boards": max(pins // 10, 100),
        "n_creators": max(pins // 50, 50),
        "seed": 0,
    }
    py, pinrank = sys.executable, [sys.executable, "-m", "pinrank.cli"]
    data = root / "data"
    result: dict[str, Any] = {"pins": pins, "generator": gen, "steps": args.steps}
    print(f"  {pins:,} pins", flush=True)
    result["data"] = stage("data", [py, "-c", DATA, str(data), str(SPEC), json.dumps(gen)],
                           logs / "data.log")  # fmt: skip
    common = [f"data.source.root={data}"] + [
        f"++data.source.generator.{k}={v}" for k, v in gen.items()
    ]
    short = [
        f"++trainer.limit_train_batches={args.steps}",
        "trainer.max_epochs=1",
        "trainer.enable_progress_bar=false",
        "eval_oracle=false",
        f"paths.log_dir={root / 'runs'}",
    ]
    result["train_retrieval"] = stage("train_retrieval", [
        *pinrank, "train", f"task_name=cs_{pins}", *common, *short,
        "model.module.index=exact", "model.module.popularity_bias=[0.0]",
    ], logs / "train_retrieval.log")  # fmt: skip
    result["train_ranker"] = stage("train_ranker", [
        *pinrank, "train", f"task_name=cs_{pins}_ranker", "model=wide_deep", *common, *short,
        "model.module.logreg_grid=[]",
    ], logs / "train_ranker.log")  # fmt: skip
    runs = [_latest(root / "runs" / t) for t in (f"cs_{pins}", f"cs_{pins}_ranker")]
    package = root / "package"
    result["export"] = stage("export", [
        *pinrank, "export", f"run_dir=[{runs[0]},{runs[1]}]", f"out={package}",
        "overwrite=true", f"signing_key={args.signing_key}",
    ], logs / "export.log")  # fmt: skip
    for line in (logs / "export.log").read_text().splitlines():
        if line.startswith("[export]") and line.rstrip().endswith("s)") and "version" in line:
            result["export"]["build_seconds"] = float(line.rsplit("(", 1)[1].rstrip("s)"))
        if line.startswith("OK: max abs diff") or line.startswith("FAIL"):
            result["export"]["verify"] = line.strip()
    manifest = json.loads((package / "manifest.json").read_text())
    result["index"] = {
        k: manifest["index"][k] for k in ("factory", "params", "chosen_by", "recall")
    }
    result["bytes"] = package_bytes(package)
    result["scorer"] = stage("scorer", [py, "-c", SCORER, str(package), args.trusted_key,
                                        str(args.feeds)], logs / "scorer.log")  # fmt: skip
    users = root / "feed_users" / "users.parquet"
    _synthetic_users(manifest["provenance"]["data"]["prepared"], args.feed_users, users)
    result["feeds"] = feeds_stage(package, users, root / "feeds", args.trusted_key, logs)
    shutil.rmtree(users.parent, ignore_errors=True)
    return result


def feeds_stage(package: Path, users: Path, out: Path, trusted_key: str, logs: Path) -> dict:
    """``pinrank feeds`` (50-pin feeds from 400 retrieved and 100 interest candidates) for
    ``users`` as a timed stage, with its rate and workers; its output is removed after."""
    shutil.rmtree(out, ignore_errors=True)
    result = stage("feeds", [
        sys.executable, "-m", "pinrank.cli", "feeds", str(package), "--users", str(users),
        "--out", str(out), "--k", "50", "--candidates", "400", "--interest-candidates", "100",
        "--no-progress", "--trusted-key", trusted_key,
    ], logs / "feeds.log")  # fmt: skip
    summary = json.loads((out / "_SUCCESS.json").read_text())
    result |= {
        "users": summary["users"],
        "feeds_per_s": summary["users_scored_per_s"],
        "worker_peak_rss_mb": summary.get("worker_peak_rss_mb"),
        "workers": summary["config"]["workers"],
    }
    shutil.rmtree(out, ignore_errors=True)
    return result


def _latest(folder: Path) -> Path:
    return max((p for p in folder.glob("runs/*") if p.is_dir()), key=lambda p: p.stat().st_mtime)


def _synthetic_users(prepared: str, n: int, path: Path) -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from batch_feeds import synthetic_users

    from pinrank.data.prepare import Prepared

    synthetic_users(Prepared.load(prepared).users(), n, path, 10_000)


def plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pins = [r["pins"] for r in results]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    axes[0].plot(pins, [r["scorer"]["result"]["load_s"] for r in results], "o-", label="load")
    axes[0].plot(pins, [r["scorer"]["result"]["reload_s"] for r in results], "s--", label="reload")
    axes[0].plot(pins, [r["export"]["seconds"] for r in results], "^-", label="export + verify")
    axes[0].set(xscale="log", yscale="log", xlabel="pins", ylabel="seconds", title="time")
    axes[0].legend()
    axes[1].plot(pins, [r["scorer"]["result"]["feed_p50_ms"] for r in results], "o-", label="p50")
    axes[1].plot(pins, [r["scorer"]["result"]["feed_p99_ms"] for r in results], "s--", label="p99")
    axes[1].set(xscale="log", xlabel="pins", ylabel="ms", title="feed(k=50), 500 candidates")
    axes[1].set_ylim(bottom=0)
    axes[1].legend()
    axes[2].plot(pins, [r["feeds"]["feeds_per_s"] for r in results], "o-")
    axes[2].set(xscale="log", xlabel="pins", ylabel="feeds / s", title="batch feeds")
    axes[2].set_ylim(bottom=0)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--pins", type=int, nargs="+", default=[3_000, 100_000, 1_000_000])
    ap.add_argument("--users", type=int, default=20_000)
    ap.add_argument("--events", type=int, default=500_000)
    ap.add_argument("--steps", type=int, default=200, help="training batches per model")
    ap.add_argument("--feeds", type=int, default=300, help="feed() calls timed")
    ap.add_argument("--feed-users", type=int, default=100_000, help="batch feeds users")
    ap.add_argument("--work", default="outputs/catalogue_scale")
    ap.add_argument("--signing-key", default="outputs/keys/signing.key")
    ap.add_argument("--trusted-key", default="outputs/keys/signing.pub")
    ap.add_argument("--keep", action="store_true", help="keep the data, runs and packages")
    ap.add_argument(
        "--fresh", action="store_true", help="drop the sizes not measured now from the results"
    )
    args = ap.parse_args()
    if not Path(args.signing_key).exists():
        raise SystemExit(f"no {args.signing_key}: run `pinrank keygen --out outputs/keys` first")
    work = Path(args.work).resolve()
    results = []
    for pins in args.pins:
        results.append(run_size(pins, args, work))
        if not args.keep:
            for sub in ("data", "runs", "package"):
                shutil.rmtree(work / f"pins_{pins}" / sub, ignore_errors=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "catalogue_scale.json"
    machine = {
        "platform": platform.platform(),
        "processor": _cpu(),
        "cpus": len(os.sched_getaffinity(0)),
    }
    for r in results:
        r |= {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine}
    # sizes measured now replace their earlier entries; the others are kept (with their dates)
    kept = json.loads(path.read_text())["results"] if path.exists() and not args.fresh else []
    merged = sorted(
        [r for r in kept if r["pins"] not in args.pins] + results, key=lambda r: r["pins"]
    )
    path.write_text(json.dumps({"results": merged}, indent=2))
    plot(merged, RESULTS / "catalogue_scale.png")
    print(f"wrote {RESULTS / 'catalogue_scale.json'} and catalogue_scale.png")


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


if __name__ == "__main__":
    main()
