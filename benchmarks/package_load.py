"""Benchmark: what format v3 changes when a package is loaded: the bytes on disk (every tensor
stored once) and the scorer's load (item parts mapped, not computed).

    python benchmarks/package_load.py --package outputs/packages/demo --users data/demo/users

From the package it makes a format-v2-like copy without stored item parts (the scorer then runs
``ranker_items`` over the catalogue at load, as before), then, side by side and ``--repeats``
times each in a fresh process: the package load plus the FeedScorer's construction (seconds),
the process's peak RSS, and one feed. It also reports the package's bytes on disk against the
unique bytes it holds (distinct weight tensors, shared tensors, index, catalogue). Writes
benchmarks/results/package_load.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"

CHILD = """
import json, resource, sys, time
t0 = time.perf_counter()
from pinrank.serving.feed import FeedConfig
from pinrank.serving.package import load_package
from pinrank.serving.runtime import OnnxBackend
from pinrank.serving.scorer import FeedScorer
from pinrank.serving.signing import Trust
from pinrank.serving.store import TableStore
imported = time.perf_counter()
store = TableStore.from_path(sys.argv[2])
package = load_package(sys.argv[1], Trust(allow_unsigned=True))
scorer = FeedScorer(package, store, OnnxBackend(package), FeedConfig())
loaded = time.perf_counter()
feed = scorer.feed(int(store.table.column("user_id")[0].as_py()), 50)
first_feed_ms = (time.perf_counter() - loaded) * 1e3
peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"load_s": loaded - imported, "first_feed_ms": first_feed_ms,
                  "peak_rss_mb": peak_rss_mb, "items": len(feed.items)}))
"""


def without_item_parts(package: Path, out: Path) -> Path:
    """A copy whose manifest stores no item parts (unsigned: the benchmark allows it)."""
    from pinrank.serving.package import MANIFEST, SIGNATURE, write_manifest

    shutil.copytree(package, out)
    manifest = json.loads((out / MANIFEST).read_text())
    manifest.pop("item_parts", None)
    shutil.rmtree(out / "parts", ignore_errors=True)
    (out / SIGNATURE).unlink(missing_ok=True)
    write_manifest(out, manifest)
    return out


def unique_bytes(package: Path) -> dict[str, int]:
    """Bytes on disk against the distinct content the package holds."""
    from pinrank.export.tensors import safetensors_ranges

    manifest = json.loads((package / "manifest.json").read_text())
    total = sum(p.stat().st_size for p in package.rglob("*") if p.is_file())
    tensors: set[bytes] = set()
    for model in manifest["models"].values():
        data = (package / model["weights"]).read_bytes()
        tensors |= {data[s : s + n] for s, n in safetensors_ranges(data).values()}
    shared = manifest.get("tensors", {}).get("shared_bytes", 0)
    parts = sum(p.stat().st_size for p in (package / "parts").rglob("*.bin"))
    other = sum(
        (package / manifest[k]["path"]).stat().st_size
        for k in ("index", "catalogue")
        if k in manifest
    )
    unique = sum(len(t) for t in tensors) + shared + parts + other
    return {"package_bytes": total, "unique_bytes": unique, "ratio_x1000": 1000 * total // unique}


def run(package: Path, users: str) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-c", CHILD, str(package), users],
                          capture_output=True, text=True, check=True)  # fmt: skip
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--package", default="outputs/packages/demo")
    parser.add_argument("--users", default="data/demo/users")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    package = Path(args.package)
    with tempfile.TemporaryDirectory() as tmp:
        computed = without_item_parts(package, Path(tmp) / "computed")
        variants = (("mapped (v3)", package), ("computed at load", computed))
        rows: dict[str, Any] = {name: [] for name, _ in variants}
        for _ in range(args.repeats):  # side by side: the two alternate within each repeat
            for name, path in variants:
                rows[name].append(run(path, args.users))
    sizes = unique_bytes(package)
    manifest = json.loads((package / "manifest.json").read_text())
    result = {
        "package": str(package),
        "catalogue_rows": manifest["catalogue"]["rows"],
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, "
        f"{__import__('os').cpu_count()} cores",
        "sizes": sizes,
        "tensors": manifest.get("tensors"),
        "load": rows,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "package_load.json").write_text(json.dumps(result, indent=2))
    print(f"package {package}: {manifest['catalogue']['rows']:,} pins; "
          f"{sizes['package_bytes'] / 1e6:.1f} MB on disk, {sizes['unique_bytes'] / 1e6:.1f} MB "
          f"unique ({sizes['ratio_x1000'] / 1000:.2f}x)")  # fmt: skip
    for name, runs in rows.items():
        load = sorted(r["load_s"] for r in runs)
        rss = sorted(r["peak_rss_mb"] for r in runs)
        print(f"  {name:<18} load + scorer {load[len(load) // 2]:.2f} s (min {load[0]:.2f}), "
              f"peak RSS {rss[len(rss) // 2]:.0f} MB")  # fmt: skip
    print(f"-> {RESULTS / 'package_load.json'}")


if __name__ == "__main__":
    main()
