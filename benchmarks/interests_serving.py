"""Benchmark: ``GET /v1/interests`` under concurrent load.

    python benchmarks/interests_serving.py --package outputs/packages/interests_20k \\
        --users data/synthetic_interests_20k/raw/users

Starts ``python -m serve run`` on loopback (one uvicorn process) on the package (which must have
an interest section), writes one request per user of ``--users`` (its sign-up fields: the
interest model's fields the users table has, e.g. ``/v1/interests?k=10&country=US&gender=F&age=31``;
null fields left out) and drives the service with wrk (``--clients`` connections, one thread)
for ``--seconds`` after a 5 s warm-up. Every request scores its segment's candidates (about
1,000) with the interest model. Fails on any error or non-2xx answer. Records the latency
percentiles, requests/s, the section's interests and candidates per segment, the server's peak
RSS and the machine in benchmarks/results/interests_serving.json (``--tag``: a suffix).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import shutil
import subprocess
import sys
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from pinrank.serving.package import MANIFEST

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_load import RESULTS, ROOT, _status_mb, free_port, wait_ready, wrk_totals


def request_paths(package: Path, users: str, k: int, limit: int) -> list[str]:
    """One ``/v1/interests`` path per user (at most ``limit``), from its sign-up fields."""
    manifest = json.loads((package / MANIFEST).read_text())
    section = manifest.get("interests")
    if not isinstance(section, dict):
        raise SystemExit(f"{package} has no interest model (no interests section)")
    kinds = {c["column"]: c["kind"] for c in section["columns"] if c["side"] == "user"}
    kinds |= {c: "string" for c in section["candidates"]["segment"]}
    kinds.pop("segment", None)
    table = pq.read_table(users)
    fields = [f for f in sorted(kinds) if f in table.column_names]
    rows = table.select(fields).slice(0, limit).to_pylist()
    paths = []
    for row in rows:
        params: list[tuple[str, Any]] = [("k", k)]
        for name in fields:
            value = row[name]
            if value is None:
                continue
            if isinstance(value, list):
                params += [(name, v) for v in value if v is not None]
            elif (kinds[name] == "int" and isinstance(value, int)) or kinds[name] == "string":
                params.append((name, value))
        paths.append("/v1/interests?" + urllib.parse.urlencode(params))
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--package", required=True)
    parser.add_argument("--users", required=True, help="a users table (Parquet) with sign-ups")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=int, default=30)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--requests", type=int, default=20_000, help="distinct request paths")
    parser.add_argument("--tag", default="")
    parser.add_argument("--trusted-key", default="outputs/keys/signing.pub")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (make system)")
    package = Path(args.package)
    work = Path(tempfile.mkdtemp(prefix="pinrank-interests-"))
    paths = request_paths(package, args.users, args.k, args.requests)
    (work / "paths.txt").write_text("\n".join(paths) + "\n")
    port, token = free_port(), secrets.token_hex(16)
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "serve", "run", str(package), "--users", args.users,
         "--port", str(port), "--trusted-key", args.trusted_key],
        cwd=ROOT, env={**os.environ, "PINRANK_ADMIN_TOKEN": token},
    )  # fmt: skip
    try:
        ready = wait_ready(base)
        with urllib.request.urlopen(base + paths[0], timeout=30) as r:
            sample = json.loads(r.read())
        env = {**os.environ, "PINRANK_PATHS_FILE": str(work / "paths.txt")}
        script = str(Path(__file__).with_name("serve_load.lua"))
        subprocess.run(
            ["wrk", "-t1", "-c8", "-d5s", "-s", script, base],
            check=True,
            capture_output=True,
            env=env,
        )  # fmt: skip  (warm-up)
        out = subprocess.run(
            ["wrk", "-t1", f"-c{args.clients}", f"-d{args.seconds}s", "--timeout", "10s",
             "--latency", "-s", script, base],
            check=True, capture_output=True, text=True, env=env,
        ).stdout  # fmt: skip
        server_mb = {k: _status_mb(server.pid, k) for k in ("VmHWM", "VmRSS")}
    finally:
        server.terminate()
        server.wait(30)
        shutil.rmtree(work, ignore_errors=True)
    totals, errors, seconds = wrk_totals(out)
    section = json.loads((package / MANIFEST).read_text())["interests"]
    result = {
        "machine": {
            "platform": platform.platform(),
            "cpus": len(os.sched_getaffinity(0)),
            "device": "cpu",
        },
        "config": vars(args),
        "model_version": ready["model_version"],
        "interests": section["catalogue"]["rows"],
        "segments": section["candidates"]["segments"],
        "candidates_per_request": sample["candidates"],
        "requests": totals["requests"],
        "seconds": round(seconds, 2),
        "requests_per_s": round(totals["requests"] / seconds, 1),
        "latency_ms": {k: round(v / 1e3, 2) for k, v in totals["latency_us"].items()},
        "errors": errors,
        "error_kinds": totals["errors"],
        "server_peak_rss_mb": server_mb["VmHWM"],
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"interests_serving{'_' + args.tag if args.tag else ''}.json"
    path.write_text(json.dumps(result, indent=2))
    lat = result["latency_ms"]
    print(f"  {result['interests']:,} interests, {result['candidates_per_request']} candidates "
          f"per request, {args.clients} clients: {result['requests']:,} requests in "
          f"{seconds:.1f} s ({result['requests_per_s']} req/s), p50 {lat['p50']} ms, p90 "
          f"{lat['p90']} ms, p99 {lat['p99']} ms; errors {errors}; wrote {path}")  # fmt: skip
    if errors:
        raise SystemExit("FAILED: errors under load")


if __name__ == "__main__":
    main()
