"""Benchmark: training throughput (impressions/s) of each model, split into phases.

    python benchmarks/train_throughput.py                      # the embedded default's data
    python benchmarks/train_throughput.py --data synthetic_large --batches 300

Each (model, mode) runs in its own process, with the same configs ``pinrank train`` composes
(``model=two_tower`` / ``model=wide_deep``, ``data=DATA``: a data config, prepared on first use
as training would), and trains one epoch
(or ``--batches`` batches) with validation and checkpoints off:

- ``phases``: ``num_workers=0``, so every phase runs in the one process and is timed: reading
  the Parquet row groups, featurizing (joining events with users and pins, leave-target-out,
  the per-row transforms and the featurizer), moving the batch to the device, forward (the
  training step: the network and the loss, sampled negatives included), backward, and the
  optimizer step (with Lightning's bookkeeping around it).
- ``pipeline``: the data config's ``num_workers`` (featurizing in DataLoader workers while the
  main process trains), as ``pinrank train`` runs: impressions/s of the epoch and nothing else.

Impressions/s counts the batch rows the model trains on (the train split's impressions; sampled
"no event" negatives are not counted). Peak RSS is the process's (and its workers') maximum.
Adds its results to benchmarks/results/train_throughput.json under ``--label`` and plots every
set's phases in train_throughput.png.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"
ROOT = Path(__file__).resolve().parents[1]
PHASES = ["read", "featurize", "to_device", "forward", "backward", "optimizer", "other"]


def _timed(table: dict[str, float], key: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            table[key] += time.perf_counter() - t0

    return wrapper


def one(model: str, data: str, mode: str, batches: int | None, overrides: list[str]) -> dict:
    """Train ``model`` for one epoch (or ``batches``) in this process and time it."""
    import pytorch_lightning as pl
    import torch
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from pinrank.data.datamodule import EventStream
    from pinrank.models.components import embedding_updates
    from pinrank.resources import conf_dir, register_resolvers
    from pinrank.training import training_threads
    from pinrank.training.main import _quiet_warnings, apply_runtime

    _quiet_warnings()
    register_resolvers()
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        cfg = compose("train", overrides=[f"model={model}", f"data={data}", *overrides])
    sparse_arch = apply_runtime(cfg)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    prepared = instantiate(cfg.data.source).ensure()
    dm_args = dict(cfg.model.get("datamodule", {}))
    if mode == "phases":
        dm_args["num_workers"] = 0
    dm = instantiate(cfg.data.datamodule, data_dir=str(prepared.root), **dm_args)
    torch.set_num_threads(training_threads(cfg.get("threads", "auto"), dm.num_workers))
    net = instantiate(cfg.model.net)(spec=dm.spec, state=dm.state, dense_dims=dm.dense_dims())
    module = instantiate(cfg.model.module)(net=net)
    seconds: dict[str, float] = defaultdict(float)
    if mode == "phases":  # the data side runs in this process: time it where it runs
        EventStream._read = _timed(seconds, "read", EventStream._read)  # type: ignore[method-assign]
        EventStream.featurize = _timed(seconds, "featurize", EventStream.featurize)  # type: ignore[method-assign]
        module.transfer_batch_to_device = _timed(  # type: ignore[method-assign]
            seconds, "to_device", module.transfer_batch_to_device
        )

    class Phases(pl.Callback):
        """Wall time between Lightning's hooks: forward = batch start -> before backward, ..."""

        def __init__(self) -> None:
            self.mark = 0.0
            self.rows = 0

        def _lap(self, key: str) -> None:
            now = time.perf_counter()
            seconds[key] += now - self.mark
            self.mark = now

        def on_train_epoch_start(self, *args: Any) -> None:
            self.start = self.mark = time.perf_counter()

        def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, i: int) -> None:
            self._lap("waiting")  # read + featurize + to device (timed inside) + the loader
            self.rows += len(batch)

        def on_before_backward(self, *args: Any) -> None:
            self._lap("forward")

        def on_after_backward(self, *args: Any) -> None:
            self._lap("backward")

        def on_train_batch_end(self, *args: Any) -> None:
            self._lap("optimizer")

        def on_train_epoch_end(self, *args: Any) -> None:
            self.seconds = time.perf_counter() - self.start

    phases = Phases()
    trainer = pl.Trainer(
        accelerator=cfg.trainer.accelerator,  # trainer=gpu: CUDA with its precision (bf16-mixed)
        precision=cfg.trainer.get("precision", "32-true"),
        devices=1,
        max_epochs=1,
        limit_train_batches=batches or 1.0,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[phases],
    )
    trainer.fit(module, datamodule=dm)
    total = phases.seconds
    split = {k: round(seconds[k], 3) for k in PHASES if k in seconds}
    if mode == "phases":  # waiting = read + featurize + to device + the loader's own time
        timed = sum(seconds[k] for k in PHASES if k != "other")
        split["other"] = round(max(0.0, total - timed), 3)
    else:  # the main process waiting for its workers' batches
        split["waiting"] = round(seconds["waiting"], 3)
    self_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    workers_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {
        "model": model,
        "mode": mode,
        "accelerator": cfg.trainer.accelerator,
        "device": torch.cuda.get_device_name() if cfg.trainer.accelerator == "gpu" else "cpu",
        "precision": str(cfg.trainer.get("precision", "32-true")),
        "num_workers": dm.num_workers,
        "threads": torch.get_num_threads(),
        "sparse_arch": sparse_arch,
        "embedding_updates": embedding_updates(),
        "batch_size": dm.batch_size,
        "impressions": phases.rows,
        "seconds": round(total, 3),
        "impressions_per_s": round(phases.rows / total, 1),
        "phases_s": split,
        "peak_rss_mb": round(self_rss),
        "worker_peak_rss_mb": round(workers_rss) if dm.num_workers else None,
    }


def plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    phased = [r for r in results if r["mode"] == "phases"]
    fig, ax = plt.subplots(figsize=(8, 1.6 + 0.6 * len(phased)))
    for i, r in enumerate(phased):
        left = 0.0
        per = {k: 1e6 * v / r["impressions"] for k, v in r["phases_s"].items()}  # us / impression
        for j, k in enumerate(PHASES):
            if k in per:
                ax.barh(i, per[k], left=left, color=f"C{j}", label=k if i == 0 else None)
                left += per[k]
    ax.set_yticks(range(len(phased)), [f"{r['model']}, {r['data']}" for r in phased])
    ax.set(xlabel="microseconds per impression (one process, num_workers=0)")
    ax.set_title("training time per impression, by phase")
    ax.legend(fontsize=7, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.18))
    fig.savefig(path, dpi=120, bbox_inches="tight")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", nargs="+", default=["synthetic"], help="data configs")
    parser.add_argument("--models", nargs="+", default=["two_tower", "wide_deep"])
    parser.add_argument("--modes", nargs="+", default=["phases", "pipeline"])
    parser.add_argument("--batches", type=int, help="train batches per run (default: an epoch)")
    parser.add_argument("--label", default="", help="names this set of results in the JSON "
                        "(a set of the same label is replaced)")  # fmt: skip
    parser.add_argument(
        "--set",
        dest="overrides",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="extra Hydra overrides, e.g. data.datamodule.num_workers=1",
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder of the JSON and PNG")
    parser.add_argument("--one", nargs=3, metavar=("MODEL", "DATA", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print("RESULT " + json.dumps(one(*args.one, args.batches, args.overrides)))
        return
    results = []
    for data in args.data:
        for model in args.models:
            for mode in args.modes:
                cmd = [sys.executable, __file__, "--one", model, data, mode, "--set"]
                cmd += args.overrides
                if args.batches:
                    cmd += ["--batches", str(args.batches)]
                out = subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True)
                line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")][-1]
                r = json.loads(line[len("RESULT ") :]) | {"data": data}
                results.append(r)
                per = ", ".join(f"{k} {v:.1f}" for k, v in r["phases_s"].items())
                rate, rss = r["impressions_per_s"], r["peak_rss_mb"]
                print(f"{model:>10} {data} {mode:>8} (workers {r['num_workers']}): "
                      f"{rate:>8,.0f} impressions/s, {r['impressions']:,} in "
                      f"{r['seconds']:.1f} s, peak RSS {rss:,} MB  [{per}]")  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "train_throughput.json"
    # one file, a set of results per label: earlier sets (other data, other settings) stay
    saved = json.loads(path.read_text()) if path.exists() else {}
    sets = saved.get("sets", {}) if isinstance(saved.get("sets"), dict) else {}
    sets[args.label or "default"] = {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "device": results[0]["device"] if results else "cpu",
        },
        "date": time.strftime("%Y-%m-%d"),
        "overrides": args.overrides,
        "batches": args.batches,
        "results": results,
    }
    path.write_text(json.dumps({"sets": sets}, indent=2))
    plot([r | {"data": label} for label, v in sets.items() for r in v["results"]],
         args.out / "train_throughput.png")  # fmt: skip
    print(f"wrote {path} and .png")


if __name__ == "__main__":
    main()
