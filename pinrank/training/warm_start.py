"""Warm start: a new network begins from a finished run's weights (``train.py init_from=RUN``).

Between two days of retraining the fitted vocabularies change (new pins, new users), so a table
row is the same id only by value, not by index. :func:`warm_start` copies, from the run's
network into the new one:

- every **vocabulary table** row by row *by value*: rows 0 (missing) and 1 (unknown) as they are,
  and each value both vocabularies hold from its old row to its new one; values new to this
  run keep their fresh initialisation;
- every **hashed or bucketed table** (hashed features, crosses, bucketized numbers) whole, when
  its hash constants or boundaries and its shape are unchanged (else left fresh, and reported);
- every other parameter and buffer (dense layers, biases, the examination tower) when the name
  and shape agree.

It returns what it did per table, which ``train.py`` logs and writes to ``metrics.json``
(``warm_start/...``). A run warm-started from a run on the same data begins with exactly that
run's weights (``tests/training/test_warm_start.py``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pinrank.features.spec import FeatureSpec
from pinrank.features.state import FeatureState

log = logging.getLogger("pinrank.train")
SPECIAL_ROWS = 2  # vocabulary indices 0 (missing) and 1 (unknown) come before the values


def warm_start(net: nn.Module, spec: FeatureSpec, state: FeatureState,
               run_dir: str | Path) -> dict[str, Any]:  # fmt: skip
    """Copy the weights of the run at ``run_dir`` into ``net`` (module docstring). Returns
    ``tables`` (name -> how), ``rows_copied``, ``rows_new``, ``parameters`` and ``skipped``."""
    from pinrank.export.run import TrainedRun
    from pinrank.models.components import SparseArch

    old = TrainedRun.load(run_dir)
    old_state = old.prepared.state()
    old_modules = dict(old.net.named_modules())
    report: dict[str, Any] = {"tables": {}, "rows_copied": 0, "rows_new": 0, "parameters": 0,
                              "skipped": []}  # fmt: skip
    tables: set[int] = set()
    with torch.no_grad():
        for path, module in net.named_modules():
            if not isinstance(module, SparseArch):
                continue
            before = old_modules.get(path)
            for t in module.tables:
                new_w = module.weight(t.feature)
                tables.add(id(new_w))
                if not isinstance(before, SparseArch) or t.feature not in {
                    o.feature for o in before.tables
                }:
                    report["skipped"].append(f"{path}.{t.feature}: not in the run")
                    continue
                how = _copy_table(new_w, before.weight(t.feature), t.feature, spec, state,
                                  old_state, report)  # fmt: skip
                report["tables"][f"{path}.{t.feature}" if path else t.feature] = how
        old_params = dict(old.net.named_parameters()) | dict(old.net.named_buffers())
        own = list(net.named_parameters()) + list(net.named_buffers())
        for name, p in own:
            if id(p) in tables:
                continue
            src = old_params.get(name)
            if src is not None and src.shape == p.shape:
                p.copy_(src)
                report["parameters"] += 1
            else:
                report["skipped"].append(f"{name}: {'shape' if src is not None else 'absent'}")
    log.info("[train] warm start from %s: %d tables, %d rows copied, %d new, %d other "
             "parameters, %d skipped", run_dir, len(report["tables"]), report["rows_copied"],
             report["rows_new"], report["parameters"], len(report["skipped"]))  # fmt: skip
    return report


def _copy_table(new_w: torch.Tensor, old_w: torch.Tensor, name: str, spec: FeatureSpec,
                state: FeatureState, old_state: FeatureState,
                report: dict[str, Any]) -> str:  # fmt: skip
    if new_w.shape[1] != old_w.shape[1]:
        report["skipped"].append(f"{name}: width {old_w.shape[1]} -> {new_w.shape[1]}")
        return "fresh (width changed)"
    new_st, old_st = _state_of(name, spec, state), _state_of(name, spec, old_state)
    if new_st is None or old_st is None:
        return _whole(new_w, old_w, name, report)
    if "vocab" in new_st and "vocab" in old_st:
        new_rows, old_rows = _matching_rows(new_st["vocab"], old_st["vocab"])
        new_w[:SPECIAL_ROWS] = old_w[:SPECIAL_ROWS]
        new_w[torch.as_tensor(new_rows)] = old_w[torch.as_tensor(old_rows)]
        report["rows_copied"] += len(new_rows) + SPECIAL_ROWS
        report["rows_new"] += new_w.shape[0] - SPECIAL_ROWS - len(new_rows)
        return f"by value ({len(new_rows)} of {new_w.shape[0] - SPECIAL_ROWS} values)"
    fixed = ("a", "b", "buckets", "boundaries", "right_cardinality")
    if any(new_st.get(k) != old_st.get(k) for k in fixed):
        report["skipped"].append(f"{name}: hash constants or boundaries changed")
        return "fresh (hash or boundaries changed)"
    return _whole(new_w, old_w, name, report)


def _whole(new_w: torch.Tensor, old_w: torch.Tensor, name: str, report: dict[str, Any]) -> str:
    if new_w.shape != old_w.shape:
        report["skipped"].append(f"{name}: shape {tuple(old_w.shape)} -> {tuple(new_w.shape)}")
        return "fresh (shape changed)"
    new_w.copy_(old_w)
    report["rows_copied"] += new_w.shape[0]
    return "whole"


def _state_of(name: str, spec: FeatureSpec, state: FeatureState) -> dict[str, Any] | None:
    """The fitted state a table is sized by: its cross's, or its feature's (a shared
    feature's owner)."""
    if name in state.crosses:
        return state.crosses[name]
    try:
        feature = spec[name]
    except KeyError:
        return None
    return state.features.get(feature.shares or feature.name)


def _matching_rows(new_vocab: Any, old_vocab: Any) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (in the new and the old table) of the values both vocabularies hold."""
    new_values = np.asarray(new_vocab.to_numpy(zero_copy_only=False))
    old_values = np.asarray(old_vocab.to_numpy(zero_copy_only=False))
    _, new_at, old_at = np.intersect1d(new_values, old_values, return_indices=True)
    return new_at.astype(np.int64) + SPECIAL_ROWS, old_at.astype(np.int64) + SPECIAL_ROWS
