"""The training job shared by every model: fit, reload the best checkpoint, evaluate, report.

A task's LightningModule provides ``full_report(datamodule, ks, oracle, out_dir) -> dict`` with
flat keys (``test/recall@20``, ``baseline/popularity/test/recall@20``, ...; it may write artefacts
such as plots to ``out_dir``); this module writes them to ``metrics.json`` in the run directory
and returns them; :func:`write_run_record` then writes ``run.json``, what export reads.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint

from pinrank.data.prepare import Prepared
from pinrank.logs import peak_rss_mb
from pinrank.runs import RunRecord, now, relative_to_run


def training_threads(setting: int | str | None, num_workers: int, processes: int = 1) -> int:
    """Intra-op threads of each training process.

    ``auto``: the CPUs left to each process once the DataLoader workers have theirs,
    ``max(1, cpus // processes - num_workers)``. The ranker's and the towers' operators are
    small (a 1024-row batch, 256-wide layers, many embedding bags): on 2 cores with a worker
    featurizing, one thread trains 1.2-1.6x faster than two
    (benchmarks/README.md#training-throughput-train_throughputpy).
    An int sets it; None leaves torch's default.

    Example::

        >>> training_threads("auto", num_workers=2, processes=1) >= 1
        True
        >>> training_threads(3, num_workers=2)
        3
    """
    if setting is None:
        return torch.get_num_threads()
    if setting == "auto":
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        return max(1, (cpus or 1) // max(1, processes) - num_workers)
    if isinstance(setting, bool) or not isinstance(setting, int) or setting < 1:
        raise ValueError(f"threads must be 'auto', null or an int >= 1, got {setting!r}")
    return setting


def fit_and_evaluate(
    trainer: pl.Trainer,
    module: pl.LightningModule,
    datamodule: pl.LightningDataModule,
    out_dir: str | Path,
    ks: Sequence[int] = (10, 20, 50, 100),
    oracle: Any = None,
    extra: dict[str, Any] | None = None,
    threads: int | None = None,
) -> dict[str, float]:
    """Train, then evaluate the best checkpoint (by the checkpoint callback's monitor).

    ``threads``: torch's intra-op threads while fitting (:func:`training_threads`); the
    evaluation after it, with no DataLoader workers left, uses torch's default.
    Returns the metrics on the global-zero process (an empty dict on the others).
    """
    default_threads = torch.get_num_threads()
    torch.set_num_threads(threads or default_threads)
    t0 = time.perf_counter()
    try:
        trainer.fit(module, datamodule=datamodule)
        unshard = getattr(trainer.strategy, "unshard", None)
        if unshard is not None:  # sharded tables (trainer=torchrec_dmp): the whole net on 0
            unshard(module)
    finally:
        torch.set_num_threads(default_threads)
    fit_seconds = time.perf_counter() - t0
    if not trainer.is_global_zero:
        return {}
    best = _best_checkpoint(trainer)
    if best:
        state = torch.load(best, map_location=module.device, weights_only=False)["state_dict"]
        module.load_state_dict(state)
    module.eval()
    report = getattr(module, "full_report", None)
    if report is None:
        raise TypeError(
            f"{type(module).__name__} has no full_report(datamodule, ks, oracle, out_dir)"
        )
    t0 = time.perf_counter()
    metrics: dict[str, Any] = dict(report(datamodule, ks=ks, oracle=oracle, out_dir=out_dir))
    metrics.update(
        {
            "train/epochs": trainer.current_epoch,
            "train/steps": trainer.global_step,
            "train/seconds": round(fit_seconds, 2),
            "report/seconds": round(time.perf_counter() - t0, 2),
            "train/peak_rss_mb": round(peak_rss_mb(), 1),  # the process's, fit and report
            "train/threads": threads or default_threads,
            "train/best_checkpoint": best or "",
            **(extra or {}),
        }
    )
    out = Path(out_dir) / "metrics.json"
    out.write_text(json.dumps(metrics, indent=2, sort_keys=True))
    return metrics


def write_run_record(
    out_dir: str | Path,
    module: pl.LightningModule,
    net: dict[str, Any],
    prepared: Prepared,
    metrics: dict[str, Any],
    command: str = "",
    config: dict[str, Any] | None = None,
) -> RunRecord:
    """Write ``run.json`` (:class:`~pinrank.runs.RunRecord`), the run's one artifact export
    reads: ``module`` gives its kind and what it fitted (``run_fields``), ``net`` the network's
    registry arguments, ``metrics`` the final report (with ``train/best_checkpoint``)."""
    fields = getattr(module, "run_fields", None)
    if fields is None:
        raise TypeError(f"{type(module).__name__} has no run_fields(metrics)")
    checkpoint = metrics.get("train/best_checkpoint") or ""
    if not checkpoint:
        raise RuntimeError("the run saved no best checkpoint: nothing to export")
    record = RunRecord(
        net=net,
        checkpoint=relative_to_run(checkpoint, out_dir),
        prepared=str(prepared.root.resolve()),
        data=prepared.fingerprint(),
        metrics=metrics,
        train_command=command,
        config=config or {},
        created_at=now(),
        **fields(metrics),
    )
    record.write(out_dir)
    return record


def _best_checkpoint(trainer: pl.Trainer) -> str | None:
    for cb in trainer.callbacks:  # type: ignore[attr-defined]
        if isinstance(cb, ModelCheckpoint) and cb.best_model_path:
            return str(cb.best_model_path)
    return None


def _metric_order(name: str) -> tuple[str, int, str]:
    """recall@10 before recall@100: by family, then cut-off as a number."""
    family, _, k = name.partition("@")
    return (family, int(k), "") if k.isdigit() else (family, -1, k)


def summary_table(
    metrics: dict[str, Any], split: str = "test", names: Sequence[str] | None = None
) -> str:
    """The model's metrics on ``split`` next to the baselines and the oracle, as text: the
    metrics ``names`` (a model config's ``summary``) in that order, else every headline metric.

    Example::

        >>> print(summary_table({"test/recall@20": 0.2, "baseline/popularity/test/recall@20": 0.1}))
        metric (test)               model   popularity
        recall@20                  0.2000       0.1000
    """
    prefix = f"{split}/"
    # the headline metrics; sub-groups such as ``test/uncalibrated/...`` stay in metrics.json
    found = [k[len(prefix) :] for k in metrics if k.startswith(prefix)]
    if names is None:
        names = sorted((n for n in found if "/" not in n), key=_metric_order)
    elif missing := [n for n in names if n not in found]:
        raise ValueError(f"summary names {missing}, not among the {split} metrics {sorted(found)}")
    columns = [("model", prefix)]
    # every baseline the report has on this split, in the report's order
    baselines = [
        k.split("/")[1] for k in metrics if k.startswith("baseline/") and f"/{split}/" in k
    ]
    for name in dict.fromkeys(baselines):
        columns.append((name, f"baseline/{name}/{split}/"))
    if any(k.startswith(f"oracle/{split}/") for k in metrics):
        columns.append(("oracle", f"oracle/{split}/"))
    widths = [max(13, len(c) + 2) for c, _ in columns]
    lines = [
        f"{'metric (' + split + ')':<20}"
        + "".join(f"{c:>{w}}" for (c, _), w in zip(columns, widths, strict=True))
    ]
    for name in names:
        cells = [metrics.get(p + name) for _, p in columns]
        lines.append(
            f"{name:<20}"
            + "".join(
                f"{v:>{w}.4f}" if v is not None else f"{'-':>{w}}"
                for v, w in zip(cells, widths, strict=True)
            )
        )
    return "\n".join(lines)
