"""The feed service under overload and slow clients: admission control and connection timeouts.

    .venv/bin/python benchmarks/serve_overload.py --package outputs/packages/demo \\
        --users data/demo/users --clients 128 --seconds 60

Starts ``python -m serve run`` on loopback (one uvicorn process, the default admission
settings unless given; ``--scoring threads`` scores in threads of that process instead of the
default worker processes, and writes ``serve_overload_threads.json``) and drives it from this
process with ``--clients`` keep-alive HTTP/1.1
connections, each asking for feeds of random known users back to back for ``--seconds``, while
a prober asks ``/healthz`` ten times a second. The client is a minimal asyncio HTTP/1.1 reader
(no HTTP library), so that it takes as little of the 2 cores as it can. Reports, separately for
admitted requests (200) and shed ones (503, each checked for ``Retry-After``), the count and the
latency percentiles, any other status, the health probe's percentiles, and the service's own
``pinrank_shed_total`` against the 503s counted here. Then it opens ``--half-open`` connections
that send an incomplete request head and records when the server closes each (against the
``--header-timeout-s`` it was started with). Prints a table and writes
``benchmarks/results/serve_overload.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from serve_load import free_port, wait_ready  # benchmarks/ is this script's folder

ROOT = Path(__file__).resolve().parents[1]


async def request(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str
) -> tuple[int, dict[str, str]]:
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
    await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers


async def client(
    port: int, ids: list[int], k: int, until: float, out: list[tuple[int, float, bool]]
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    rng = random.Random(len(out))
    try:
        while time.monotonic() < until:
            t0 = time.perf_counter()
            try:
                status, headers = await request(reader, writer, f"/v1/feed/{rng.choice(ids)}?k={k}")
            except (asyncio.IncompleteReadError, ConnectionError):
                out.append((-1, time.perf_counter() - t0, False))
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                continue
            out.append((status, time.perf_counter() - t0, headers.get("retry-after") == "1"))
            if headers.get("connection", "").lower() == "close":
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
    finally:
        writer.close()


PROBER = """
import socket, sys, time
port, seconds = int(sys.argv[1]), float(sys.argv[2])
s = socket.create_connection(("127.0.0.1", port))
until, out = time.monotonic() + seconds, []
while time.monotonic() < until:
    t0 = time.perf_counter()
    s.sendall(b"GET /healthz HTTP/1.1\\r\\nHost: 127.0.0.1\\r\\n\\r\\n")
    data = b""
    while b"\\r\\n\\r\\n" not in data or not data.endswith(b"}"):
        data += s.recv(4096)
    out.append(time.perf_counter() - t0 if data.startswith(b"HTTP/1.1 200") else float("inf"))
    time.sleep(0.1)
print(" ".join(f"{x:.6f}" for x in out))
"""


async def load(port: int, ids: list[int], args: argparse.Namespace) -> dict[str, Any]:
    """The clients in this process; the health prober in a process of its own, as a load
    balancer's would be (its latency is not this process's event-loop lag)."""
    until = time.monotonic() + args.seconds
    results: list[tuple[int, float, bool]] = []
    probe = subprocess.Popen(
        [sys.executable, "-c", PROBER, str(port), str(args.seconds)], stdout=subprocess.PIPE
    )
    await asyncio.gather(*(client(port, ids, args.k, until, results) for _ in range(args.clients)))
    stdout, _ = probe.communicate(timeout=60)
    health = [float(x) for x in stdout.split()]
    status = np.array([r[0] for r in results])
    latency = np.array([r[1] for r in results])
    ok, shed = status == 200, status == 503

    def pct(x: np.ndarray) -> dict[str, float]:
        if not x.size:
            return {}
        return {f"p{q}_ms": round(float(np.percentile(x, q)) * 1e3, 1) for q in (50, 90, 99)}

    return {
        "requests": int(status.size),
        "admitted": int(ok.sum()),
        "admitted_per_s": round(float(ok.sum()) / args.seconds, 1),
        "admitted_latency": pct(latency[ok]),
        "shed_503": int(shed.sum()),
        "shed_with_retry_after": int(sum(r[2] for r in results if r[0] == 503)),
        "shed_latency": pct(latency[shed]),
        "other_status": {
            str(s): int((status == s).sum()) for s in set(status.tolist()) - {200, 503}
        },
        "healthz": pct(np.array(health)) | {"probes": len(health)},
    }


def half_open(port: int, n: int, wait_s: float) -> dict[str, Any]:
    """``n`` connections that send an incomplete request head; seconds until each is closed."""
    socks, t0 = [], time.monotonic()
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        socks.append(s)
    closed_at = []
    for s in socks:
        s.settimeout(max(wait_s - (time.monotonic() - t0), 0.05))
        try:
            if s.recv(1024) == b"":
                closed_at.append(time.monotonic() - t0)
        except (TimeoutError, ConnectionResetError):
            pass
        s.close()
    return {
        "connections": n,
        "closed_by_server": len(closed_at),
        "last_closed_after_s": round(max(closed_at), 2) if closed_at else None,
    }


def metric(base: str, name: str) -> float:
    with urllib.request.urlopen(f"{base}/metrics", timeout=10) as r:
        text = r.read().decode()
    return sum(float(ln.split()[-1]) for ln in text.splitlines() if ln.startswith(name + "{"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--package", default="outputs/packages/demo")
    parser.add_argument("--users", default="data/demo/users")
    parser.add_argument("--trusted-key", default="outputs/keys/signing.pub")
    parser.add_argument("--clients", type=int, default=128)
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--k", type=int, default=50)
    parser.add_argument("--max-queue", type=int, default=64)
    parser.add_argument("--queue-deadline-ms", type=float, default=500)
    parser.add_argument("--header-timeout-s", type=float, default=5.0)
    parser.add_argument("--batch-workers", type=int, default=2)
    parser.add_argument("--scoring", choices=["processes", "threads"], default="processes")
    parser.add_argument("--half-open", type=int, default=200)
    args = parser.parse_args()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "serve", "run", args.package, "--users", args.users,
         "--port", str(port), "--trusted-key", args.trusted_key,
         "--max-queue", str(args.max_queue), "--queue-deadline-ms", str(args.queue_deadline_ms),
         "--header-timeout-s", str(args.header_timeout_s),
         "--batch-workers", str(args.batch_workers), "--scoring", args.scoring],
        cwd=ROOT, env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )  # fmt: skip
    try:
        wait_ready(base)
        ids = pq.read_table(args.users, columns=["user_id"]).column("user_id").to_pylist()
        result = asyncio.run(load(port, ids, args))
        result["service_shed_total"] = metric(base, "pinrank_shed_total")
        result["half_open"] = half_open(port, args.half_open, args.header_timeout_s + 3)
        result["half_open"]["header_timeout_s"] = args.header_timeout_s
    finally:
        server.terminate()
        server.wait(timeout=30)
    result |= {
        "config": vars(args),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
        "date": time.strftime("%Y-%m-%d"),
    }
    suffix = "" if args.scoring == "processes" else f"_{args.scoring}"
    out = ROOT / "benchmarks" / "results" / f"serve_overload{suffix}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    a, s, h = result["admitted_latency"], result["shed_latency"], result["healthz"]
    print(f"{args.clients} clients x {args.seconds} s: {result['requests']} requests")
    print(f"  admitted (200): {result['admitted']} ({result['admitted_per_s']}/s) "
          f"p50 {a.get('p50_ms')} p90 {a.get('p90_ms')} p99 {a.get('p99_ms')} ms")  # fmt: skip
    print(f"  shed (503): {result['shed_503']}, with Retry-After "
          f"{result['shed_with_retry_after']}, p50 {s.get('p50_ms')} p99 {s.get('p99_ms')} ms; "
          f"service counted {result['service_shed_total']:.0f}")  # fmt: skip
    print(f"  other statuses: {result['other_status'] or 'none'}")
    print(f"  /healthz: p50 {h.get('p50_ms')} p99 {h.get('p99_ms')} ms over {h['probes']} probes")
    ho = result["half_open"]
    print(f"  half-open: {ho['closed_by_server']}/{ho['connections']} closed by the server, "
          f"last after {ho['last_closed_after_s']} s (header timeout "
          f"{args.header_timeout_s} s)")  # fmt: skip
    print(f"-> {out}")


if __name__ == "__main__":
    main()
