"""Benchmark: one's own log at scale, read through a data config and prepared, in bounded memory.

    python benchmarks/own_data_scale.py --users 10000000 --items 1000000 --events 50000000

1. generates synthetic data (or reuses ``--raw``), then writes its events as a foreign CSV log:
   user ids as strings (``ids: map``: the distinct strings of the events and of the users table,
   whose integer ids are read as their decimal strings, numbered in sorted order), millisecond
   times, a 1-5 rating instead of the label, the surface and the position under other names;
   the users and items stay Parquet;
2. runs ``pinrank ingest`` (TableSource: pass 1 over the user ids, pass 2 converting every
   batch) and then ``prepare`` (split, histories, fit), each in its own process, so each stage's
   peak RSS is its own (getrusage of the child).

Numbers go to benchmarks/results/own_data_<events>e.json and are printed. The CSV is written
under --out (deleted afterwards unless --keep).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.dataset as ds

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "conf" / "features" / "synthetic.yaml"


def write_csv_log(raw: Path, out: Path) -> dict[str, float]:
    """The generated events as a CSV log (string user ids, ms times, ratings); seconds, MB."""
    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    dataset = ds.dataset(str(raw / "events"), format="parquet")
    with pacsv.CSVWriter(out / "events.csv", pa.schema([
        ("member", pa.string()), ("pin", pa.int64()), ("at_ms", pa.int64()),
        ("stars", pa.int64()), ("surface", pa.string()), ("slot", pa.int32()),
    ])) as writer:  # fmt: skip
        for i, batch in enumerate(dataset.to_batches(batch_size=1 << 20)):
            engaged = batch.column("engaged").to_numpy(zero_copy_only=False)
            rng = np.random.default_rng(i)
            n = len(engaged)
            stars = np.where(engaged, rng.integers(4, 6, n), rng.integers(1, 4, n))
            writer.write_batch(pa.record_batch([
                pc.cast(batch.column("user_id"), pa.string()),
                batch.column("item_id"),
                pc.multiply(batch.column("ts"), 1000),
                pa.array(stars, pa.int64()),
                batch.column("surface"),
                batch.column("position"),
            ], names=["member", "pin", "at_ms", "stars", "surface", "slot"]))  # fmt: skip
    return {
        "seconds": round(time.perf_counter() - t0, 1),
        "csv_mb": round((out / "events.csv").stat().st_size / 2**20),
    }


def data_config(raw: Path, csv: Path, root: Path) -> Path:
    """The data config of the foreign log (users and items read from the generated Parquet)."""
    text = f"""
source:
  _target_: pinrank.data.sources.TableSource
  root: {root}
  spec: {SPEC}
  label: stars >= 4
  ids: {{user_id: map}}
  tables:
    events:
      path: {csv / "events.csv"}
      format: csv
      columns:
        user_id: member
        item_id: pin
        ts: {{column: at_ms, time: ms}}
        surface: surface
        position: slot
    users:
      path: {raw / "users"}
      columns:
        user_id: user_id
        country: country
        region: region
        location: location
        gender: gender
        age: age
        signup_surface: signup_surface
        signup_ts: signup_ts
        interests: interests
    items:
      path: {raw / "items"}
      columns: {{item_id: item_id, board_id: board_id, creator_id: creator_id,
                 interests: interests, embedding: embedding, quality: quality,
                 created_ts: created_ts}}
"""
    path = csv / "mine.yaml"
    path.write_text(text)
    return path


STAGE = """
import json, resource, sys, time
from pathlib import Path
t0 = time.perf_counter()
stage, config, root = sys.argv[1], sys.argv[2], Path(sys.argv[3])
from pinrank.data.sources import load_source
source = load_source(config)
if stage == "ingest":
    source.ensure_raw()
else:
    from pinrank.data.prepare import prepare
    prepare(root / "raw", root / "prepared", source.spec, source.split, source.history_len)
print(json.dumps({"seconds": round(time.perf_counter() - t0, 1),
                  "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}))
"""


def stage(name: str, config: Path, root: Path) -> dict[str, float]:
    proc = subprocess.run(
        [sys.executable, "-c", STAGE, name, str(config), str(root)],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )  # fmt: skip
    if proc.returncode:
        raise SystemExit(f"{name} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--users", type=int, default=1_000_000)
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--events", type=int, default=5_000_000)
    ap.add_argument("--raw", help="generated raw tables to reuse (default: generate)")
    ap.add_argument("--out", default=None, help="default: a temporary folder")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="pinrank-own-"))
    result: dict[str, object] = {"events": args.events, "users": args.users, "items": args.items}
    raw = Path(args.raw) if args.raw else out / "generated"
    if not args.raw:
        from pinrank.data.synthetic import SyntheticConfig, generate

        t0 = time.perf_counter()
        generate(SyntheticConfig(n_users=args.users, n_items=args.items, n_events=args.events,
                                 n_boards=max(args.items // 10, 100),
                                 n_creators=max(args.items // 50, 50)), raw)  # fmt: skip
        result["generate_seconds"] = round(time.perf_counter() - t0, 1)
    result["csv"] = write_csv_log(raw, out / "csv")
    config = data_config(raw, out / "csv", out / "mine")
    result["ingest"] = stage("ingest", config, out / "mine")
    counts = json.loads((out / "mine" / "raw" / "source.json").read_text())
    result["ingested"] = {"rows": counts["rows"], "skipped": counts["skipped"]}
    result["prepare"] = stage("prepare", config, out / "mine")
    prepared = json.loads((out / "mine" / "prepared" / "prepared.json").read_text())
    result["splits"] = prepared["splits"]
    result["machine"] = f"{platform.machine()}, {len(__import__('os').sched_getaffinity(0))} cores"
    result["benchmark_peak_rss_mb"] = round(
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    path = ROOT / "benchmarks" / "results" / f"own_data_{args.events}e.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    if not args.keep:
        shutil.rmtree(out / "csv", ignore_errors=True)
        shutil.rmtree(out / "mine", ignore_errors=True)
        if not args.raw:
            shutil.rmtree(raw, ignore_errors=True)


if __name__ == "__main__":
    main()
