"""Benchmark: the new-user interest model's quality, over seeds, and the unknown-user feed it
drives, on the cold-start users (PROTOCOL.md's hold-out: no event of theirs was trained on).

    python benchmarks/interests_quality.py --data synthetic_interests --base synthetic
    python benchmarks/interests_quality.py --data ml100k_interests --base ml100k \
        --pin-experiments ml100k_two_tower ml100k_wide_deep

For each seed, ``pinrank train model=interests data=DATA seed=S`` and its report's cold-start
figures: AUC, log loss and precision@10 over each user's labelled interests (seen in the first
window; positive: engaged), and precision@10 / recall@10 of the segment's candidate list, next to
the random, popularity and segment-popularity baselines of the same run. Then the feed: one
package from pin models trained once on ``BASE`` (one epoch each: an unknown user's feed does
not use them) and the seed's interest model; for every cold user with an engaged event, the
unknown user's feed of ``--k`` pins from their sign-up fields (``unknown_user_predicted``)
against the popular-pins fallback (``unknown_user_popular``) and the popular pins of the
interests they follow (``unknown_user_interests``: what a user who states interests gets),
each scored by recall@K and NDCG@K of the user's engaged pins. Means and standard deviations
over the seeds go to benchmarks/results/interests_quality_{DATA}.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
OFFSET = 1 << 40  # cold users asked for under ids the user store does not hold
MODEL_KEYS = {
    "auc": "cold/test/auc",
    "logloss": "cold/test/logloss",
    "precision@10": "cold/test/precision@10",
    "candidates/precision@10": "cold/test/candidates/precision@10",
    "candidates/recall@10": "cold/test/candidates/recall@10",
}
BASELINES = ("random", "popularity", "segment_popularity", "item_rate", "logreg")


def train(args: argparse.Namespace, overrides: list[str], task: str) -> Path:
    """One ``pinrank train`` run; its run folder."""
    runs = args.work / "runs"
    cmd = [sys.executable, "-m", "pinrank.cli", "train", f"task_name={task}",
           f"paths.log_dir={runs}", "trainer.enable_progress_bar=false", *overrides]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    folder = runs / task / "runs"
    return max((p for p in folder.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime)


def quality(run: Path) -> dict[str, float]:
    """The run's cold-start figures: the model's and each baseline's."""
    m = json.loads((run / "metrics.json").read_text())
    out = {f"model/{n}": m[k] for n, k in MODEL_KEYS.items() if k in m}
    for b in BASELINES:
        for n, k in MODEL_KEYS.items():
            key = f"baseline/{b}/{k}"
            if key in m:
                out[f"{b}/{n}"] = m[key]
    return out


def feeds(package: Path, trusted_key: str, k: int) -> dict[str, float]:
    """recall@k and NDCG@k of the cold users' engaged pins: predicted, popular, stated."""
    from pinrank.data.prepare import Prepared
    from pinrank.evaluation.retrieval import retrieval_metrics
    from pinrank.serving.feed import EMPTY
    from pinrank.serving.package import load_package
    from pinrank.serving.scorer import FeedScorer
    from pinrank.serving.signing import Trust, load_public_key
    from pinrank.serving.store import TableStore

    loaded = load_package(package, Trust(keys=(load_public_key(trusted_key),)))
    base = Prepared.load(loaded.manifest["provenance"]["data"]["prepared"])
    users = base.users()
    scorer = FeedScorer(loaded, TableStore(users.slice(0, 0)))
    assert scorer.interest_ranker is not None
    fields = list(scorer.interest_ranker.kinds())
    from pinrank.data.io import read_table

    cold = read_table(base.split("cold"), "events", ["user_id", "item_id", "engaged"])
    engaged = cold.filter(cold["engaged"])
    uids = np.unique(engaged["user_id"].to_numpy())
    truth_u, truth_i = engaged["user_id"].to_numpy(), engaged["item_id"].to_numpy()
    truth = [np.unique(truth_i[truth_u == u]) for u in uids]
    rows = {int(r["user_id"]): r for r in users.to_pylist() if r["user_id"] in set(uids.tolist())}
    ranked: dict[str, list[np.ndarray]] = {"predicted": [], "popular": [], "stated": []}
    paths: dict[str, int] = {}
    for u in uids.tolist():
        row = rows.get(u, {})
        signup = {f: row.get(f) for f in fields if f in row}
        pred = scorer.feed(OFFSET + u, k, signup=signup)
        paths[pred.path] = paths.get(pred.path, 0) + 1
        ranked["predicted"].append(pred.item_ids)
        ranked["popular"].append(scorer.popular.unknown(OFFSET + u, k, EMPTY).item_ids)
        followed = [int(i) for i in (row.get("interests") or []) if i is not None]
        stated = scorer.feed(OFFSET + u, k, interests=followed) if followed else None
        ranked["stated"].append(stated.item_ids if stated is not None else ranked["popular"][-1])
    out: dict[str, float] = {"users": float(len(uids))}
    for name, lists in ranked.items():
        ids = np.full((len(lists), k), -1, np.int64)
        for i, row_ids in enumerate(lists):
            ids[i, : len(row_ids)] = row_ids[:k]
        for key, value in retrieval_metrics(ids, truth, (k,)).items():
            out[f"feed/{name}/{key}"] = value
    out |= {f"paths/{p}": float(n) for p, n in paths.items()}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data", default="synthetic_interests", help="the interest data config")
    ap.add_argument("--base", default="synthetic", help="its base data config (the pin models')")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--k", type=int, default=20, help="feed length scored")
    ap.add_argument("--work", type=Path, default=Path("outputs/interests_quality"))
    ap.add_argument("--signing-key", default="outputs/keys/signing.key")
    ap.add_argument("--trusted-key", default="outputs/keys/signing.pub")
    ap.add_argument("--extra", nargs="*", default=[], help="more train.py overrides")
    ap.add_argument(
        "--pin-experiments",
        nargs=2,
        metavar=("RETRIEVAL", "RANKING"),
        help="experiment configs of the pin models (default: data=BASE's defaults)",
    )
    args = ap.parse_args()
    from pinrank.export.package import build_package
    from pinrank.export.run import TrainedRun
    from pinrank.serving.signing import load_private_key

    args.work = (args.work / args.data).resolve()
    t0 = time.perf_counter()
    models = (["model.module.index=exact"], ["model=wide_deep"])
    if args.pin_experiments:  # e.g. MovieLens: its experiments set the models for its spec
        models = ([f"experiment={args.pin_experiments[0]}", "model.module.index=exact"],
                  [f"experiment={args.pin_experiments[1]}"])  # fmt: skip
    pins = [
        train(args, [f"data={args.base}", *model, "trainer.max_epochs=1"], f"pins_{name}")
        for name, model in zip(("retrieval", "ranking"), models, strict=True)
    ]
    per_seed = []
    for seed in args.seeds:
        run = train(args, ["model=interests", f"data={args.data}", f"seed={seed}", *args.extra],
                    f"interests_seed{seed}")  # fmt: skip
        package = args.work / f"package_seed{seed}"
        runs = [TrainedRun.load(p) for p in pins] + [TrainedRun.load(run)]
        build_package(runs, package, "benchmarks/interests_quality.py", overwrite=True,
                      signing_key=load_private_key(args.signing_key))  # fmt: skip
        found = {
            "seed": seed,
            "run": str(run),
            **quality(run),
            **feeds(package, args.trusted_key, args.k),
        }
        per_seed.append(found)
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in found.items()}))
    keys = [k for k in per_seed[0] if isinstance(per_seed[0][k], float)]
    summary = {
        k: {
            "mean": float(np.mean([s[k] for s in per_seed])),
            "std": float(np.std([s[k] for s in per_seed])),
        }
        for k in keys
    }
    result = {
        "data": args.data, "base": args.base, "seeds": args.seeds, "k": args.k,
        "summary": summary, "per_seed": per_seed, "seconds": round(time.perf_counter() - t0, 1),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": {"platform": platform.platform(), "cpus": len(os.sched_getaffinity(0))},
    }  # fmt: skip
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"interests_quality_{args.data}.json"
    path.write_text(json.dumps(result, indent=2))
    for name in ("model", *BASELINES):
        cells = [f"{m} {summary[f'{name}/{m}']['mean']:.4f}±{summary[f'{name}/{m}']['std']:.4f}"
                 for m in MODEL_KEYS if f"{name}/{m}" in summary]  # fmt: skip
        print(f"{name:>20}: " + ", ".join(cells))
    for name in ("predicted", "popular", "stated"):
        key = f"feed/{name}/recall@{args.k}"
        mean, std = summary[key]["mean"], summary[key]["std"]
        print(f"{'feed ' + name:>20}: recall@{args.k} {mean:.4f}±{std:.4f}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
