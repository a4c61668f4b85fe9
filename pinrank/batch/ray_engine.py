"""The ``ray`` engine of :func:`pinrank.batch.feeds.run_feeds`: Ray Data maps the local
engine's unit function over the units with a pool of actors, each loading the package once.

Every actor commits its units exactly as the local engine does (same files, same records, same
bytes), so the two engines' outputs are equal and a job may resume under either. CPUs and GPUs
per actor come from ``ray_options``; ``address`` joins an existing cluster (every node must see
the package, the input and the output folder, e.g. on a shared file system).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from pinrank.batch.feeds import FeedsJobError, JobConfig, Unit, make_scorer, score_unit
from pinrank.serving.package import load_package

log = logging.getLogger(__name__)
OPTIONS = ("actors", "cpus_per_actor", "gpus_per_actor", "address")


class UnitWriter:
    """A Ray actor: loads the package once, then scores and commits the units it is given."""

    def __init__(self, package: str, out: str, config: dict[str, Any]) -> None:
        self.config = JobConfig.from_dict(config)
        self.scorer = make_scorer(load_package(package), self.config)
        self.out = Path(out)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        records = [
            score_unit(self.scorer, Unit(**json.loads(u)), self.out, self.config)
            for u in batch["unit"]
        ]
        return {"record": np.array([json.dumps(r) for r in records], dtype=object)}


def run_units(
    package: str | Path, units: list[Unit], out: Path, config: JobConfig, options: dict[str, Any]
) -> Iterator[dict[str, Any]]:
    """Score ``units`` on Ray; yields each unit's record as it is committed."""
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ValueError(f"unknown ray options {unknown}; expected some of {OPTIONS}")
    if not units:
        return
    try:
        import ray
    except ImportError as err:  # pragma: no cover - ray is in the pinned stack
        raise FeedsJobError("engine=ray needs the ray package (pip install 'ray[data]')") from err
    actors = int(options.get("actors", 2))
    cpus, gpus = float(options.get("cpus_per_actor", 1)), float(options.get("gpus_per_actor", 0))
    if actors < 1 or cpus <= 0 or gpus < 0:
        raise ValueError(f"ray options need actors >= 1, cpus_per_actor > 0: {options}")
    if not ray.is_initialized():
        ray.init(
            address=options.get("address"),
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
        )
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    actor_config = config.to_dict()
    if config.threads is None and config.backend == "onnx":
        actor_config["threads"] = max(int(cpus), 1)  # one actor, its share of the cores
    items = [{"unit": json.dumps(asdict(u))} for u in units]
    ds = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
        UnitWriter,
        fn_constructor_kwargs={"package": str(package), "out": str(out), "config": actor_config},
        batch_size=1,
        batch_format="numpy",
        concurrency=min(actors, len(units)),
        num_cpus=cpus,
        num_gpus=gpus or None,
    )
    for row in ds.iter_rows():
        yield json.loads(row["record"])
