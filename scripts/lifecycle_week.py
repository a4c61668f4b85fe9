"""The simulated week (``make lifecycle``): daily retrains against a running service.

    python scripts/lifecycle_week.py [--config conf/lifecycle/week.yaml] [--clients 4]

Day 0 trains and registers the first models (production). A feed service then starts on the
registry's ``production`` alias (``pinrank serve run registry:production``, polling every 2 s)
while ``--clients`` clients request feeds of the hold-out's users (each at most 20 a second, until
the week ends). Days 1 to 5 each retrain (``pinrank retrain --day d``); after a promotion the
script waits until the service serves the new version. Prints and writes (``<work>/week.json``,
``<work>/week.md``) per day the candidate's and production's hold-out metrics and the decision,
the requests served and failed, and the registry's history plot (``<work>/history.png``).
Resumable: days already done are skipped (their rows are read back).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pinrank.lifecycle.history import history_rows, plot_history  # noqa: E402
from pinrank.lifecycle.retrain import LifecycleConfig, Retrain  # noqa: E402

METRICS = ("ranking/auc", "retrieval/recall@20")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(url: str, timeout: float = 10) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, {}
    except OSError:
        return 0, {}


class Load:
    """Clients requesting feeds until stopped; counts answers by status and model version."""

    def __init__(self, base: str, users: list[int], clients: int) -> None:
        self.base, self.users, self.stop = base, users, threading.Event()
        self.lock, self.status, self.versions = threading.Lock(), {}, {}
        self.threads = [threading.Thread(target=self.run, args=(i,)) for i in range(clients)]

    def run(self, seed: int) -> None:
        import random

        rng = random.Random(seed)
        while not self.stop.is_set():
            status, body = get(f"{self.base}/v1/feed/{rng.choice(self.users)}?k=20")
            with self.lock:
                self.status[status] = self.status.get(status, 0) + 1
                v = body.get("model_version")
                self.versions[v] = self.versions.get(v, 0) + 1
            time.sleep(0.05)

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(60)


def row(day: int, state: dict) -> dict:
    decision = state["evaluate"]
    out = {"day": day, "candidate": decision["candidate"],
           "production_before": decision["production_before"],
           "promoted": decision["promoted"], "reasons": decision["reasons"]}  # fmt: skip
    for m in METRICS:
        values = decision["metrics"].get(m)
        if values:
            out[m] = {"candidate": values["candidate"], "production": values["production"],
                      "diff": values["diff"]}  # fmt: skip
    out["seconds"] = round(sum(s.get("seconds", 0) for s in state.values()), 1)
    return out


def markdown(rows: list[dict], load: dict) -> str:
    lines = ["| day | candidate | production before | AUC cand. / prod. (B - A, 95%) | "
             "recall@20 cand. / prod. (B - A, 95%) | decision | retrain time |",
             "|---:|---:|---:|---|---|---|---:|"]  # fmt: skip
    for r in rows:
        cells = []
        for m in METRICS:
            v = r.get(m)
            cells.append("-" if not v else
                         f"{v['candidate']:.4f} / {v['production']:.4f} ({v['diff']['value']:+.4f}"
                         f" [{v['diff']['low']:+.4f}, {v['diff']['high']:+.4f}])")  # fmt: skip
        prod = f"v{r['production_before']}" if r["production_before"] else "-"
        decision = "promoted" if r["promoted"] else "kept production"
        lines.append(f"| {r['day']} | v{r['candidate']} | {prod} | {cells[0]} | {cells[1]} | "
                     f"{decision} | {r['seconds']:.0f} s |")  # fmt: skip
    lines.append("")
    lines.append(f"Service during days 1-{len(rows) - 1}: {load['requests']:,} feed requests, "
                 f"{load['failed']} failed; versions served: {load['versions']}.")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=str(ROOT / "conf" / "lifecycle" / "week.yaml"))
    parser.add_argument("--clients", type=int, default=4)
    args = parser.parse_args()
    os.chdir(ROOT)
    config = LifecycleConfig.load(args.config)
    subprocess.run([sys.executable, "-m", "pinrank.cli", "keygen", "--out",
                    str(Path(config.signing_key).parent), "--if-missing"], check=True)  # fmt: skip
    retrain = Retrain(config)
    rows = [row(0, retrain.run_day(0))]
    users = retrain.work / "service_users.parquet"
    if not users.exists():
        import pyarrow.parquet as pq

        from pinrank.data.prepare import Prepared

        pq.write_table(Prepared.load(retrain.prepared(0)).users(), users)
    held = json.loads((retrain.work / "holdout" / "holdout.json").read_text())
    import pyarrow.parquet as pq

    ids = sorted(set(pq.read_table(retrain.work / "holdout" / "events.parquet",
                                   columns=["user_id"]).column("user_id").to_pylist()))  # fmt: skip
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = (retrain.work / "service.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "pinrank.cli", "serve", "run", "registry:production",
         "--tracking-uri", config.tracking_uri or "", "--registry-cache",
         str(retrain.work / "service_cache"), "--registry-poll-s", "2", "--users", str(users),
         "--port", str(port), "--trusted-key", config.trusted_key],
        stdout=log, stderr=log,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while get(f"{base}/readyz")[0] != 200:
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the service did not start: {retrain.work / 'service.log'}")
            time.sleep(0.5)
        print(f"[week] service on {base} follows production; hold-out {held['name']}")
        with Load(base, ids, args.clients) as load:
            for day in range(1, config.days + 1):
                state = retrain.run_day(day)
                rows.append(row(day, state))
                if state["evaluate"]["promoted"]:
                    want = state["register"]["package_version"]
                    until = time.monotonic() + 120
                    while get(f"{base}/readyz")[1].get("model_version") != want:
                        if time.monotonic() > until:
                            raise SystemExit(f"the service did not follow v{want}")
                        time.sleep(0.5)
                print(markdown(rows, {"requests": 0, "failed": 0, "versions": {}}).splitlines()[-3])
        counts = {"requests": sum(load.status.values()),
                  "failed": sum(n for s, n in load.status.items() if s != 200),
                  "versions": {k: v for k, v in load.versions.items() if k}}  # fmt: skip
    finally:
        server.terminate()
        server.wait(60)
        log.close()
    table = markdown(rows, counts)
    plot = plot_history(history_rows(retrain.registry()), retrain.work / "history.png")
    (retrain.work / "week.json").write_text(json.dumps({"days": rows, "service": counts},
                                                       indent=2))  # fmt: skip
    (retrain.work / "week.md").write_text(table + "\n")
    print(table)
    print(f"[week] wrote {retrain.work / 'week.json'}, {retrain.work / 'week.md'} and {plot}")
    if counts["failed"]:
        raise SystemExit(f"{counts['failed']} feed requests failed")


if __name__ == "__main__":
    main()
