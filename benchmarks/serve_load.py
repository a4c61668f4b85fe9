"""Benchmark: the feed service under load while its model is reloaded.

    python benchmarks/serve_load.py                  # 32 clients, 60 s, 5 reloads, embedded store
    python benchmarks/serve_load.py --redis          # users from a redis-server started here
    python benchmarks/serve_load.py --batch-max 1 --tag unbatched   # each request scored alone
    python benchmarks/serve_load.py --scoring threads --tag threads  # in the server's threads

Starts ``python -m serve run`` on loopback (one uvicorn process) on a copy of the package,
drives it with wrk (``--clients`` connections, one wrk thread) requesting ``/v1/feed/{id}?k=50``
for random users of the users snapshot (2% unknown ids: cold-start fallbacks) for ``--seconds``,
and meanwhile POSTs ``/admin/reload`` ``--reloads`` times, evenly spaced, alternating between two
versions of the package (copies whose manifests differ, so their versions differ). Errors are
wrk's socket errors, timeouts (10 s) and non-2xx answers; the run fails unless there are none
and every reload succeeded. Writes benchmarks/results/serve_load.json (``--tag``: a suffix).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from pinrank.serving.package import MANIFEST, write_manifest
from pinrank.serving.signing import load_private_key

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def versions(package: Path, work: Path, key: Any) -> list[Path]:
    """Two copies of the package whose manifests differ (a release label), so two versions,
    each re-signed with ``key``."""
    out = []
    for name in ("v1", "v2"):
        shutil.copytree(package, work / name)
        manifest = json.loads((work / name / MANIFEST).read_text())
        manifest["provenance"]["release"] = name
        write_manifest(work / name, manifest, key)
        out.append(work / name)
    return out


def wait_ready(base: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{base}/readyz", timeout=5) as r:
                return dict(json.loads(r.read()))
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit(f"the service at {base} did not become ready") from None
            time.sleep(0.2)


def reload(base: str, token: str, package: Path) -> dict[str, Any]:
    req = urllib.request.Request(
        f"{base}/admin/reload",
        data=json.dumps({"package": str(package)}).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        method="POST",
    )
    t0 = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            status, body = r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        status, body = err.code, json.loads(err.read() or b"{}")
    return {"status": status, "wall_s": round(time.perf_counter() - t0, 3), "answer": body}


def wrk_totals(out: str) -> tuple[dict[str, Any], int, float]:
    """The JSON totals line serve_load.lua prints at the end of a wrk run, the number of errors
    (socket errors, timeouts, non-2xx) and the run's seconds."""
    totals = json.loads([line for line in out.splitlines() if line.startswith('{"requests"')][-1])
    return totals, sum(totals["errors"].values()), totals["duration_us"] / 1e6


def scrape(base: str) -> dict[str, float]:
    """Counters of /metrics by their full name with labels."""
    with urllib.request.urlopen(f"{base}/metrics", timeout=10) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        m = re.match(
            r"^(pinrank_(?:(?:feeds|fallbacks|reloads|requests)_total\{.*\}"
            r"|feed_batch_size_(?:sum|count))) (\S+)$",
            line,
        )
        if m:
            out[m.group(1)] = float(m.group(2))
    return out


def _status_mb(pid: int, field: str) -> float:
    """A process's ``/proc/PID/status`` memory field (VmHWM: peak RSS), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--package", default="outputs/packages/demo")
    parser.add_argument("--users", default="data/demo/users")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--reloads", type=int, default=5)
    parser.add_argument("--k", type=int, default=50)
    parser.add_argument("--redis", action="store_true", help="serve users from redis-server")
    parser.add_argument("--batch-max", type=int, default=32, help="the service's batching (1: off)")
    parser.add_argument("--scoring", choices=["processes", "threads"], default="processes")
    parser.add_argument("--tag", default="", help="suffix of the results file")
    parser.add_argument("--signing-key", default="outputs/keys/signing.key", help="re-signs copies")
    parser.add_argument("--trusted-key", default="outputs/keys/signing.pub")
    args = parser.parse_args()
    for tool in ("wrk", *(["redis-server"] if args.redis else [])):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed (apt-get install {tool.split('-')[0]})")
    if not Path(args.package, MANIFEST).exists():
        raise SystemExit(f"no package at {args.package}: run `make demo` first")
    work = Path(tempfile.mkdtemp(prefix="pinrank-load-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        packages = versions(Path(args.package), work, load_private_key(args.signing_key))
        ids = pq.read_table(args.users, columns=["user_id"]).column("user_id").to_pylist()
        (work / "ids.txt").write_text("\n".join(str(i) for i in ids) + "\n")
        store = ["--users", args.users]
        if args.redis:
            rport = free_port()
            procs.append(subprocess.Popen(
                ["redis-server", "--port", str(rport), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", str(work)], stdout=subprocess.DEVNULL,
            ))  # fmt: skip
            url = f"redis://127.0.0.1:{rport}/0"
            time.sleep(0.5)
            subprocess.run([sys.executable, "-m", "serve", "load-redis", "--users",
                            args.users, "--redis", url], check=True, cwd=ROOT)  # fmt: skip
            store = ["--redis", url]
        port, token = free_port(), secrets.token_hex(16)
        base = f"http://127.0.0.1:{port}"
        server = subprocess.Popen(
            [sys.executable, "-m", "serve", "run", str(packages[0]), *store,
             "--port", str(port), "--batch-max", str(args.batch_max), "--scoring", args.scoring,
             "--trusted-key", args.trusted_key],
            cwd=ROOT, env={**os.environ, "PINRANK_ADMIN_TOKEN": token},
        )  # fmt: skip
        procs.append(server)
        first = wait_ready(base)
        subprocess.run(
            ["wrk", "-t1", "-c8", "-d5s", f"{base}/v1/feed/{ids[0]}?k={args.k}"],
            check=True,
            capture_output=True,
        )  # fmt: skip  (warm-up)
        before = scrape(base)
        reloads: list[dict[str, Any]] = []

        def reloader() -> None:
            gap = args.seconds / (args.reloads + 1)
            for i in range(args.reloads):
                time.sleep(gap)
                reloads.append(reload(base, token, packages[(i + 1) % 2]))

        thread = threading.Thread(target=reloader)
        env = {**os.environ, "PINRANK_IDS_FILE": str(work / "ids.txt"), "PINRANK_K": str(args.k)}
        wrk = subprocess.Popen(
            ["wrk", "-t1", f"-c{args.clients}", f"-d{args.seconds}s", "--timeout", "10s",
             "--latency", "-s", str(Path(__file__).with_suffix(".lua")), base],
            stdout=subprocess.PIPE, text=True, env=env,
        )  # fmt: skip
        thread.start()
        out, _ = wrk.communicate()
        thread.join()
        after = scrape(base)
        last = wait_ready(base)
        server_mb = {k: _status_mb(server.pid, k) for k in ("VmHWM", "VmRSS")}
    finally:
        for p in procs:
            p.terminate()
            p.wait(30)
        shutil.rmtree(work, ignore_errors=True)
    totals, errors, seconds = wrk_totals(out)
    counters = {k: v - before.get(k, 0.0) for k, v in after.items() if v - before.get(k, 0.0)}
    result = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "device": "cpu"},
        "config": vars(args),
        "store": "redis" if args.redis else "embedded (TableStore)",
        "requests": totals["requests"],
        "seconds": round(seconds, 2),
        "requests_per_s": round(totals["requests"] / seconds, 1),
        "latency_ms": {k: round(v / 1e3, 1) for k, v in totals["latency_us"].items()},
        "errors": errors,
        "error_kinds": totals["errors"],
        "reloads": [
            {
                "status": r["status"],
                "wall_s": r["wall_s"],
                "version": r["answer"].get("serving", {}).get("version"),
                "load_s": r["answer"].get("seconds"),
            }
            for r in reloads
        ],
        "versions": [first["model_version"], last["model_version"]],
        "server_peak_rss_mb": server_mb["VmHWM"],
        "server_rss_at_end_mb": server_mb["VmRSS"],
        "counters": counters,
        "mean_feed_batch": round(
            counters.get("pinrank_feed_batch_size_sum", 0.0)
            / max(counters.get("pinrank_feed_batch_size_count", 0.0), 1.0),
            2,
        ),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"serve_load{'_' + args.tag if args.tag else ''}.json"
    path.write_text(json.dumps(result, indent=2))
    lat = result["latency_ms"]
    print(f"  {result['requests']:,} requests in {seconds:.1f} s: {result['requests_per_s']} "
          f"req/s, p50 {lat['p50']} ms, p90 {lat['p90']} ms, p99 {lat['p99']} ms, max "
          f"{lat['max']} ms; errors {errors} {totals['errors']}")  # fmt: skip
    print(f"  server peak RSS {result['server_peak_rss_mb']:,.0f} MB; mean feed batch "
          f"{result['mean_feed_batch']}; reloads: "
          f"{[(r['status'], r['wall_s']) for r in reloads]}; wrote {path}")  # fmt: skip
    ok = errors == 0 and len(reloads) == args.reloads and all(r["status"] == 200 for r in reloads)
    if not ok:
        raise SystemExit("FAILED: errors under load or a reload did not succeed")


if __name__ == "__main__":
    main()
