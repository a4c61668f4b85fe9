"""A finished training run, loaded back as objects from its ``run.json`` alone
(:class:`~pinrank.runs.RunRecord`): its network with the best weights, the prepared data set it
trained on, its calibration and metrics.

Nothing else of the run directory is read (no ``metrics.json``, no Hydra files, no resolved
config), and the network is built from the fixed registry of known networks, never
instantiated from names in a file. The prepared data must still be the data the run trained on
(its fingerprint is checked).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pinrank.calibration import Calibration
from pinrank.data.prepare import Prepared
from pinrank.features.featurizer import Featurizer
from pinrank.features.spec import SIDES, FeatureSpec
from pinrank.features.state import FeatureState
from pinrank.models.registry import build_network
from pinrank.runs import RunError, RunRecord


@dataclass
class TrainedRun:
    """One training run. ``kind`` is ``retrieval`` (a TwoTower) or ``ranking`` (a WideDeep)."""

    root: Path
    record: RunRecord
    net: nn.Module
    prepared: Prepared

    @property
    def kind(self) -> str:
        return self.record.kind

    @property
    def metrics(self) -> dict[str, Any]:
        return self.record.metrics

    @property
    def calibration(self) -> Calibration | None:
        c = self.record.calibration
        return Calibration.from_dict(c) if c is not None else None

    @classmethod
    def load(cls, run_dir: str | Path) -> TrainedRun:
        root = Path(run_dir)
        record = RunRecord.read(root)
        prepared = Prepared.load(Path(record.prepared))
        if prepared.fingerprint() != record.data:
            raise RunError(
                f"{root}: the prepared data at {record.prepared} changed since this run trained "
                "(its fingerprint differs from run.json's): prepare it again or retrain"
            )
        net = build_net(record.net, prepared.spec(), prepared.state())
        ckpt = record.checkpoint_path(root)
        if not ckpt.is_file():
            raise FileNotFoundError(f"{root}: best checkpoint {str(ckpt)!r} not found")
        state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
        net.load_state_dict({k[len("net.") :]: v for k, v in state.items() if k.startswith("net.")})
        net.eval()
        return cls(root, record, net, prepared)


def build_net(net_config: dict[str, Any], spec: FeatureSpec, state: FeatureState) -> nn.Module:
    """The network a run's ``model.net`` config describes, sized by the fitted state
    (untrained: load its weights next). Built from the fixed registry of known networks
    (:mod:`pinrank.models.registry`): nothing the config names is imported or called."""
    featurizer = Featurizer(spec, state)
    dense = {s: featurizer.dense_dim(s) for s in SIDES}
    return build_network(net_config, spec, state, dense)
