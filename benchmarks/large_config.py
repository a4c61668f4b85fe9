"""Benchmark: the large configuration end to end, every step timed with its peak RSS.

    python benchmarks/large_config.py                    # data=synthetic_large, one pass each
    python benchmarks/large_config.py --ranker-run outputs/large_ranker/runs/X \\
        --retrieval-run outputs/large/runs/Y            # package the runs already trained

``data=synthetic_large`` is 1,000,000 pins, 10,000,000 users and 50,000,000 impressions from the
embedded generator (conf/data/synthetic_large.yaml). Every step runs in its own process; its wall
seconds and peak RSS (its own and its waited-for children's, from ``wait4``) are printed and
saved:

1. ``data``: the data generated and prepared, or its fingerprint checked when it already is;
2. ``train_ranker`` / ``train_retrieval``: each model for ``--steps`` batches of 1,024, one
   epoch (9,766 batches: one pass over 10M impressions), with the torch sparse arch and sparse
   embedding updates (benchmarks/README.md, training throughput); the ranker's report evaluates
   on 2% of the users (``datamodule.eval_users``) and includes the generator's oracle (its
   P(engaged) per test impression); the retrieval run's evaluates on 0.2% (its exact searches
   over 1M pins cost ~3.5 ms per user) without the oracle (whose ranking scores every
   (user, pin) pair);
3. ``export``: the signed package, verified against the training path (``pinrank export``);
4. ``verify``: ``pinrank verify`` on its own;
5. ``scorer``: load and reload in one process and ``feed(k=50)`` with 500 candidates for
   ``--feeds`` known users (benchmarks/catalogue_scale.py's scorer step);
6. ``feeds``: ``pinrank feeds`` for ``--feed-users`` users (prepared users under fresh ids);
7. ``serve``: benchmarks/serve_load.py against ``python -m serve run`` on the package (the same
   users as the batch feeds in the embedded store), ``--serve-seconds`` of load with reloads.

Writes benchmarks/results/large_config.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from catalogue_scale import (
    ROOT,
    SCORER,
    _cpu,
    _synthetic_users,
    feeds_stage,
    package_bytes,
    stage,
)

RESULTS = ROOT / "benchmarks" / "results"

DATA = """
import json, sys
from hydra import compose, initialize_config_module
from hydra.utils import instantiate
with initialize_config_module("conf", version_base=None):
    cfg = compose("train", overrides=[f"data={sys.argv[1]}"])
prepared = instantiate(cfg.data.source).ensure()
print(json.dumps({"prepared": str(prepared.root),
                  **json.loads((prepared.root / "prepared.json").read_text())}))
"""

TRAIN = [
    "trainer.max_epochs=1",
    "trainer.enable_progress_bar=false",
    "sparse_arch=torch",
    "embedding_updates=sparse",
]

# the retrieval report's exact searches cost ~3.5 ms per user over 1M pins (NumPy, 2 cores):
# 0.2% of the users (about 20,000) in val and test, and 5,000 of them for each popularity-prior
# candidate, keep it to minutes; the oracle's ranking (every user x 1M pins) stays off
RETRIEVAL = [
    "model.module.index=exact",
    "eval_oracle=false",
    "data.datamodule.eval_users=0.002",
    "model.module.tuning_queries=5000",
]


def train(name: str, model: list[str], args: argparse.Namespace, logs: Path) -> dict[str, Any]:
    """One model's training step; its run folder and the summary of its metrics."""
    task = f"large_{name}"
    out = stage(f"train_{name}", [
        sys.executable, "-m", "pinrank.cli", "train", f"task_name={task}", f"data={args.data}",
        *model, *TRAIN, f"trainer.limit_train_batches={args.steps}",
        f"paths.log_dir={args.work / 'runs'}",
    ], logs / f"train_{name}.log")  # fmt: skip
    out["run"] = str(_latest(args.work / "runs" / task))
    return out


def metrics(run: Path) -> dict[str, Any]:
    """The test and cold-start figures of a run's report, with its baselines and oracle."""
    data = json.loads((run / "metrics.json").read_text())
    keep = ("auc", "logloss", "recall@", "ndcg@100", "precision@10", "user_auc", "ece")
    return {
        k: v
        for k, v in data.items()
        if isinstance(v, (int, float))
        and (
            "/test/" in k or "/cold/" in k or k.startswith(("test/", "cold/", "train/", "report/"))
        )
        and any(s in k for s in (*keep, "seconds", "steps", "peak_rss"))
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data", default="synthetic_large", help="a data config name")
    ap.add_argument("--steps", type=int, default=9766, help="training batches per model")
    ap.add_argument("--ranker-run", help="a trained ranking run to package instead of training")
    ap.add_argument("--retrieval-run", help="a trained retrieval run, likewise")
    ap.add_argument("--feeds", type=int, default=300, help="feed() calls timed")
    ap.add_argument("--feed-users", type=int, default=100_000)
    ap.add_argument("--serve-seconds", type=int, default=30)
    ap.add_argument("--serve-reloads", type=int, default=2)
    ap.add_argument("--work", type=Path, default=Path("outputs/large"))
    ap.add_argument("--signing-key", default="outputs/keys/signing.key")
    ap.add_argument("--trusted-key", default="outputs/keys/signing.pub")
    args = ap.parse_args()
    if not Path(args.signing_key).exists():
        raise SystemExit(f"no {args.signing_key}: run `pinrank keygen --out outputs/keys` first")
    args.work = args.work.resolve()
    logs = args.work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    py, pinrank = sys.executable, [sys.executable, "-m", "pinrank.cli"]
    result: dict[str, Any] = {"data": args.data, "steps": args.steps}
    result["data_step"] = stage("data", [py, "-c", DATA, args.data], logs / "data.log")
    prepared = result["data_step"]["result"]["prepared"]
    runs = {}
    for name, given, model in (
        ("ranker", args.ranker_run, ["model=wide_deep"]),
        ("retrieval", args.retrieval_run, RETRIEVAL),
    ):
        if given:
            runs[name] = Path(given).resolve()
            result[f"train_{name}"] = {"run": str(runs[name]), "trained": "before"}
        else:
            result[f"train_{name}"] = train(name, model, args, logs)
            runs[name] = Path(result[f"train_{name}"]["run"])
        result[f"train_{name}"]["metrics"] = metrics(runs[name])
    package = args.work / "package"
    result["export"] = stage("export", [
        *pinrank, "export", f"run_dir=[{runs['retrieval']},{runs['ranker']}]", f"out={package}",
        "overwrite=true", f"signing_key={args.signing_key}",
    ], logs / "export.log")  # fmt: skip
    manifest = json.loads((package / "manifest.json").read_text())
    result["index"] = {k: manifest["index"][k] for k in ("factory", "params", "recall")}
    result["bytes"] = package_bytes(package)
    result["verify"] = stage("verify", [
        *pinrank, "verify", str(package), "--trusted-key", args.trusted_key,
    ], logs / "verify.log")  # fmt: skip
    result["verify"]["line"] = (logs / "verify.log").read_text().strip().splitlines()[-1]
    result["scorer"] = stage("scorer", [py, "-c", SCORER, str(package), args.trusted_key,
                                        str(args.feeds)], logs / "scorer.log")  # fmt: skip
    users = args.work / "feed_users" / "users.parquet"
    _synthetic_users(prepared, args.feed_users, users)
    result["feeds"] = feeds_stage(package, users, args.work / "feeds", args.trusted_key, logs)
    result["serve"] = stage("serve", [
        py, str(ROOT / "benchmarks" / "serve_load.py"), "--package", str(package),
        "--users", str(users), "--seconds", str(args.serve_seconds),
        "--reloads", str(args.serve_reloads), "--clients", "16", "--tag", "large",
        "--signing-key", args.signing_key, "--trusted-key", args.trusted_key,
    ], logs / "serve.log")  # fmt: skip
    result["serve"]["result"] = json.loads((RESULTS / "serve_load_large.json").read_text())
    result |= {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": {"platform": platform.platform(), "processor": _cpu(),
                    "cpus": len(os.sched_getaffinity(0))},
    }  # fmt: skip
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "large_config.json").write_text(json.dumps(result, indent=2))
    print(f"wrote {RESULTS / 'large_config.json'}")


def _latest(folder: Path) -> Path:
    return max((p for p in folder.glob("runs/*") if p.is_dir()), key=lambda p: p.stat().st_mtime)


if __name__ == "__main__":
    main()
