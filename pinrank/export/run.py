"""A finished training run, loaded back as objects: its network with the best weights, the
prepared data set it trained on, its calibration, metrics and resolved config.

This is where a run directory written by ``train.py`` (``config.json``, ``metrics.json``, the
best checkpoint, ``calibration.json``) becomes library objects; nothing downstream reads the
config. The network is built from the fixed registry of known networks, never instantiated
from the config's names.
"""

from __future__ import annotations

import json
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


@dataclass
class TrainedRun:
    """One training run. ``kind`` is ``retrieval`` (a TwoTower) or ``ranking`` (a WideDeep)."""

    root: Path
    kind: str
    net: nn.Module
    prepared: Prepared
    config: dict[str, Any]
    metrics: dict[str, Any]
    calibration: Calibration | None

    @classmethod
    def load(cls, run_dir: str | Path) -> TrainedRun:
        root = Path(run_dir)
        for name in ("config.json", "metrics.json"):
            if not (root / name).exists():
                raise FileNotFoundError(f"{root} is not a finished training run (no {name})")
        config = json.loads((root / "config.json").read_text())
        metrics = json.loads((root / "metrics.json").read_text())
        prepared = Prepared.load(Path(config["data"]["source"]["root"]) / "prepared")
        net = build_net(config["model"]["net"], prepared.spec(), prepared.state())
        ckpt = metrics.get("train/best_checkpoint") or ""
        if not ckpt or not Path(ckpt).exists():
            raise FileNotFoundError(f"{root}: best checkpoint {ckpt!r} not found")
        state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
        net.load_state_dict({k[len("net.") :]: v for k, v in state.items() if k.startswith("net.")})
        net.eval()
        cal_path = root / "calibration.json"
        calibration = (
            Calibration.from_dict(json.loads(cal_path.read_text())) if cal_path.exists() else None
        )
        kind = "ranking" if hasattr(net, "score_feed") else "retrieval"
        return cls(root, kind, net, prepared, config, metrics, calibration)


def build_net(net_config: dict[str, Any], spec: FeatureSpec, state: FeatureState) -> nn.Module:
    """The network a run's ``model.net`` config describes, sized by the fitted state
    (untrained: load its weights next). Built from the fixed registry of known networks
    (:mod:`pinrank.models.registry`): nothing the config names is imported or called."""
    featurizer = Featurizer(spec, state)
    dense = {s: featurizer.dense_dim(s) for s in SIDES}
    return build_network(net_config, spec, state, dense)
