"""The training command, ``pinrank train`` / ``python train.py``: a Hydra app over the shipped
configs (``pkg://pinrank.conf``).

It builds the objects the config names and hands them to the library; no library code sees the
config. Writes ``metrics.json``, checkpoints and CSV logs in the run directory, and last
``run.json`` (:mod:`pinrank.runs`), the one file export reads.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from pinrank import logs
from pinrank.resources import CONF_SEARCH_PATH

log = logging.getLogger("pinrank.train")


def _quiet_warnings() -> None:
    # Our streams split row groups between workers, so their __len__ is exact; Lightning cannot
    # know.
    warnings.filterwarnings("ignore", message=".*IterableDataset.*has `__len__` defined.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*is deprecated.*")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")


def apply_runtime(cfg: DictConfig) -> str:
    """The process-wide settings of a training config: the sparse arch (returns the one taken;
    ``auto``: torchrec under ``trainer=torchrec_dmp``, which shards its collections, else the
    torch backend, whose bags train faster unsharded), sparse or dense embedding updates
    (``auto``: sparse with the torch backend), and denormals flushed to zero."""
    import torch

    from pinrank.models.components import set_embedding_updates, set_sparse_backend

    sparse_arch = cfg.get("sparse_arch", "auto")
    if sparse_arch == "auto":  # torchrec's collections where they are sharded, else plain bags
        strategy = OmegaConf.select(cfg, "trainer.strategy._target_", default="") or ""
        sharded = strategy.endswith("TorchrecShardedStrategy")
        sparse_arch = "torchrec" if sharded else "torch"
    sparse_arch = set_sparse_backend(sparse_arch)
    updates = cfg.get("embedding_updates", "auto")
    if updates == "auto":  # the torch backend's lazy updates; torchrec's fused optimizers
        updates = "sparse" if sparse_arch == "torch" else "dense"
    set_embedding_updates(updates)
    torch.set_flush_denormal(bool(cfg.get("flush_denormal", True)))
    return sparse_arch


def _train(cfg: DictConfig) -> float | None:
    import pytorch_lightning as pl
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import instantiate
    from pytorch_lightning.accelerators import CPUAccelerator

    from pinrank.lifecycle.tracking import finish_run
    from pinrank.models.components import embedding_updates
    from pinrank.training import (
        fit_and_evaluate,
        summary_table,
        training_threads,
        write_run_record,
    )

    logs.setup()
    _quiet_warnings()
    sparse_arch = apply_runtime(cfg)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    source = instantiate(cfg.data.source)
    prepared = source.ensure()
    # the model says how its data must be streamed (positives, crosses, negatives, ...)
    dm = instantiate(
        cfg.data.datamodule, data_dir=str(prepared.root), **cfg.model.get("datamodule", {})
    )
    net = instantiate(cfg.model.net)(spec=dm.spec, state=dm.state, dense_dims=dm.dense_dims())
    started: dict[str, Any] = {}
    if cfg.get("init_from"):
        from pinrank.training.warm_start import warm_start

        done = warm_start(net, dm.spec, dm.state, cfg.init_from)
        started = {"warm_start/run": str(cfg.init_from),
                   "warm_start/rows_copied": done["rows_copied"],
                   "warm_start/rows_new": done["rows_new"],
                   "warm_start/parameters": done["parameters"],
                   "warm_start/skipped": len(done["skipped"])}  # fmt: skip
    module = instantiate(cfg.model.module)(net=net)
    trainer = instantiate(
        cfg.trainer,
        callbacks=list(instantiate(cfg.callbacks).values()),
        logger=list(instantiate(cfg.logger).values()),
    )
    out_dir = cfg.paths.output_dir
    on_cpu = isinstance(trainer.accelerator, CPUAccelerator)
    processes = trainer.num_devices if on_cpu else 1  # processes on this machine's CPUs
    threads = training_threads(cfg.get("threads", "auto"), dm.num_workers, processes)
    config = OmegaConf.to_container(cfg, resolve=True)
    log.info(f"[train] {type(module.net).__name__} on {prepared.root}, "
             f"{trainer.max_epochs} epochs -> {out_dir}")  # fmt: skip
    metrics = fit_and_evaluate(
        trainer, module, dm, out_dir, ks=list(cfg.eval_ks),
        oracle=source.oracle() if cfg.get("eval_oracle", True) else None,
        extra={"config/seed": cfg.seed, "train/world_size": trainer.world_size,
               "train/sparse_arch": sparse_arch,
               "train/embedding_updates": embedding_updates(),
               "train/flush_denormal": bool(cfg.get("flush_denormal", True)), **started},
        threads=threads,
    )  # fmt: skip
    if trainer.is_global_zero:
        Path(out_dir, "config.json").write_text(json.dumps(config, indent=2))
        command = " ".join(["python train.py", *HydraConfig.get().overrides.task])
        net = OmegaConf.to_container(cfg.model.net, resolve=True)
        write_run_record(out_dir, module, net, prepared, metrics, command, config)  # type: ignore[arg-type]
        finish_run(trainer.loggers, out_dir, metrics, config, trainer.global_step)  # type: ignore[arg-type]
        print(
            summary_table(metrics, cfg.model.get("summary_split", "test"), cfg.model.get("summary"))
        )
        print(
            f"fit {metrics['train/seconds']:.1f}s ({metrics['train/steps']} steps), report "
            f"{metrics['report/seconds']:.1f}s, peak RSS {metrics['train/peak_rss_mb']:,.0f} MB"
        )
        print(f"run.json: {Path(out_dir, 'run.json')}")
    value = metrics.get(cfg.model.monitor.replace("val/", "test/"))
    return float(value) if value is not None else None


main = hydra.main(version_base="1.3", config_path=CONF_SEARCH_PATH, config_name="train")(_train)

if __name__ == "__main__":  # the other processes of a multi-process trainer (pinrank.cli)
    main()
