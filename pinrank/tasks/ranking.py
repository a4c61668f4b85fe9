"""The ranking task: trains a :class:`~pinrank.models.wide_deep.WideDeep` ranker, calibrates and
evaluates it.

The LightningModule owns the loss (binary cross-entropy on engaged vs seen-but-not-engaged), the
optimiser and the metrics. After training, :meth:`RankingModule.full_report` scores val, test and
the cold-start slice, fits the calibration on val, and reports as ``docs/evaluation.md``
describes, next to the baselines (item engagement rate, user + item rate, logistic regression on
the same crosses) and, on synthetic data, the oracle.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from pinrank.calibration import METHODS, Calibration, fit_calibration, sigmoid
from pinrank.data.datamodule import PinrankDataModule
from pinrank.data.io import read_table
from pinrank.evaluation.logreg import SparseRows, cross_rows, fit_logreg_on_val
from pinrank.evaluation.ranking import (
    auc,
    log_loss,
    lookup_rate,
    metric_keys,
    ranking_metrics,
    rate_table,
    save_plots,
)
from pinrank.features.featurizer import FeatureBatch
from pinrank.models.wide_deep import WideDeep
from pinrank.tasks.optim import build_optimizer

# completed with the parameters, or with parameter groups (dicts of params and options)
OptimizerFactory = Callable[[Iterable[Any]], torch.optim.Optimizer]
SPLITS = {"val": "val", "test": "test", "cold": "cold/test"}  # split -> metric prefix
# validation events with every user shown as new: the cold-start slice's tuning signal
NEW_USERS_VAL = "val/as_new_users"


@dataclass
class Predictions:
    """One split's events in stream order: raw ids, labels, the model's logits, and the wide
    crosses as a design matrix (for the logistic-regression baseline; None without crosses)."""

    users: np.ndarray
    items: np.ndarray
    labels: np.ndarray
    logits: np.ndarray
    crosses: SparseRows | None = None


class RankingModule(pl.LightningModule):
    """Lightning wrapper of the wide-and-deep ranker.

    Args:
        net: the ranker.
        optimizer: a partial optimiser, completed with the parameters (Hydra ``_partial_``).
        calibration: ``platt``, ``isotonic`` or ``identity``; fitted on val after training.
        pos_weight: weight of positive examples in the loss (1 = plain log loss).
        logreg_grid: L2 strengths tried for the logistic-regression baseline (chosen on val);
            empty: no such baseline (the demo's quick run).
        examination_lr: learning-rate multiplier of the position-bias tower (a few parameters
            that must settle within the one or two epochs before the rest overfits).
    """

    def __init__(
        self,
        net: WideDeep,
        optimizer: OptimizerFactory,
        calibration: str = "platt",
        pos_weight: float = 1.0,
        logreg_grid: Sequence[float] = (1e-6, 1e-5, 1e-4, 1e-3),
        examination_lr: float = 1.0,
    ) -> None:
        super().__init__()
        if calibration not in METHODS:
            raise ValueError(f"calibration {calibration!r}: expected one of {METHODS}")
        self.net, self.optimizer_factory = net, optimizer
        self.calibration_method, self.pos_weight = calibration, pos_weight
        self.logreg_grid = tuple(logreg_grid)
        if examination_lr <= 0:
            raise ValueError(f"examination_lr must be > 0, got {examination_lr}")
        self.examination_lr = examination_lr
        self.calibration = Calibration()
        self._val_outputs: list[torch.Tensor] = []  # [2, B] (logits, labels) per val batch

    # ------------------------------------------------------------------------------ training

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        weight = None
        if self.pos_weight != 1.0:
            weight = torch.where(labels > 0, self.pos_weight, 1.0)
        return F.binary_cross_entropy_with_logits(logits, labels, weight=weight)

    def training_step(self, batch: FeatureBatch, batch_idx: int) -> torch.Tensor:
        assert batch.labels is not None
        loss = self.loss(self.net(batch), batch.labels)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch))
        return loss

    def validation_step(self, batch: FeatureBatch, batch_idx: int) -> None:
        assert batch.labels is not None
        logits = self.net(batch)
        self.log("val/loss", self.loss(logits, batch.labels), batch_size=len(batch), sync_dist=True)
        self._val_outputs.append(torch.stack([logits.detach().float(), batch.labels.float()]))

    def on_validation_epoch_end(self) -> None:
        """val AUC and log loss over every val event of the epoch (gathered from all ranks:
        each rank streams an equal share, so the tensors have the same shape)."""
        outputs, self._val_outputs = self._val_outputs, []
        if self.trainer.sanity_checking or not outputs:
            return
        both = torch.cat(outputs, dim=1)  # (2, N)
        if self.trainer.world_size > 1:
            gathered = self.all_gather(both)  # (world, 2, N)
            assert isinstance(gathered, torch.Tensor)
            both = gathered.transpose(0, 1).reshape(2, -1)
        logits, labels = both.cpu().double().numpy()
        metrics = {"val/auc": auc(labels, logits), "val/logloss": log_loss(labels, sigmoid(logits))}
        self.log_dict(metrics, prog_bar=True)  # the same on every rank

    def configure_optimizers(self) -> torch.optim.Optimizer:
        tower = list(self.net.examination_parameters())
        if not tower or self.examination_lr == 1.0:
            return build_optimizer(
                self.optimizer_factory, self.net, [{"params": self.parameters()}]
            )
        own = {id(p) for p in tower}
        rest = [p for p in self.parameters() if id(p) not in own]
        groups: list[dict[str, Any]] = [{"params": rest}, {"params": tower, "examination": True}]
        optimizer = build_optimizer(self.optimizer_factory, self.net, groups)
        for group in optimizer.param_groups:
            if group.get("examination"):
                group["lr"] *= self.examination_lr  # every group starts at the default lr
        return optimizer

    # ---------------------------------------------------------------------------- evaluation

    @torch.no_grad()
    def predict(self, dm: PinrankDataModule, split: str, as_new_users: bool = False) -> Predictions:
        """Logits of every event of a split, in eval mode, in the stream's order (with
        ``as_new_users``, each user scored as a new user: no id, no history)."""
        was_training = self.net.training
        self.net.eval()
        users, items, labels, logits, crosses = [], [], [], [], []
        for batch in dm.stream(split, as_new_users=as_new_users):
            assert batch.user_ids is not None and batch.item_ids is not None
            assert batch.labels is not None
            logits.append(self.net(batch.to(self.device)).float().cpu().numpy())
            users.append(batch.user_ids.numpy())
            items.append(batch.item_ids.numpy())
            labels.append(batch.labels.numpy())
            if "cross" in batch.sparse:
                crosses.append((batch.sparse["cross"], labels[-1]))
        self.net.train(was_training)

        def cat(parts: list[np.ndarray], dtype: Any) -> np.ndarray:
            return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)

        return Predictions(
            cat(users, np.int64),
            cat(items, np.int64),
            cat(labels, np.float64),
            cat(logits, np.float64),
            cross_rows(crosses, _cross_cardinalities(dm)) if crosses else None,
        )

    def run_fields(self, metrics: dict[str, Any]) -> dict[str, Any]:
        """This run's part of ``run.json``: the calibration ``full_report`` fitted on val."""
        return {"kind": "ranking", "calibration": self.calibration.to_dict()}

    def full_report(
        self,
        dm: PinrankDataModule,
        ks: Sequence[int] = (10,),
        oracle: Any = None,
        out_dir: str | Path | None = None,
    ) -> dict[str, float]:
        """Everything for ``metrics.json``: the calibrated model (and before calibration) on val,
        test and the cold-start slice, the baselines on the same events, and the oracle where
        the data has one. Writes ``calibration.json`` and the plots to ``out_dir``."""
        k = 10 if 10 in ks else min(ks)
        preds = {split: self.predict(dm, split) for split in SPLITS}
        new_users_val = self.predict(dm, "val", as_new_users=True)
        self.calibration = fit_calibration(
            preds["val"].logits, preds["val"].labels, self.calibration_method
        )
        train = read_table(dm.prepared.split("train"), "events", ["user_id", "item_id", "engaged"])
        item_rate, user_rate = rate_table(train, "item_id"), rate_table(train, "user_id")
        logreg = self._logreg(dm, preds)
        metrics: dict[str, float] = {"calibration/method_" + self.calibration.method: 1.0}
        if self.calibration.method == "platt":
            metrics |= {f"calibration/{n}": float(v) for n, v in self.calibration.params.items()}
        curves: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for split, prefix in SPLITS.items():
            p = preds[split]
            if not len(p.labels):
                continue
            item_scores = lookup_rate(item_rate, p.items)
            scores = {
                prefix: self.calibration(p.logits),
                f"{prefix}/uncalibrated": sigmoid(p.logits),
                f"baseline/item_rate/{prefix}": item_scores,
                f"baseline/user_item_rate/{prefix}": 0.5
                * (item_scores + lookup_rate(user_rate, p.users)),
            }
            if logreg is not None:
                scores[f"baseline/logreg/{prefix}"] = sigmoid(logreg[split])
            if oracle is not None:
                scores[f"oracle/{prefix}"] = self._oracle_scores(oracle, dm, split, p)
            for key, probs in scores.items():
                metrics |= metric_keys(key, ranking_metrics(p.users, p.labels, probs, k))
            if split == "test":
                curves = {
                    "model, uncalibrated": (p.labels, scores[f"{prefix}/uncalibrated"]),
                    f"model, {self.calibration.method}": (p.labels, scores[prefix]),
                    "item rate": (p.labels, scores[f"baseline/item_rate/{prefix}"]),
                }
                if logreg is not None:
                    curves["logreg on crosses"] = (p.labels, scores[f"baseline/logreg/{prefix}"])
        p = new_users_val
        for key, probs in (
            (NEW_USERS_VAL, self.calibration(p.logits)),
            (f"baseline/item_rate/{NEW_USERS_VAL}", lookup_rate(item_rate, p.items)),
        ):
            metrics |= metric_keys(key, ranking_metrics(p.users, p.labels, probs, k))
        if out_dir is not None:
            out = Path(out_dir)
            out.mkdir(parents=True, exist_ok=True)
            (out / "calibration.json").write_text(json.dumps(self.calibration.to_dict(), indent=2))
            if curves:
                save_plots(out, curves, "test events")
        return metrics

    def _logreg(
        self, dm: PinrankDataModule, preds: dict[str, Predictions]
    ) -> dict[str, np.ndarray] | None:
        """Logits of the logistic-regression baseline on every split (None without crosses):
        fitted on the train split's crosses of the users evaluation samples (every user unless
        ``datamodule.eval_users`` is set: 2% of 10M users' train events instead of 28M rows
        held at once), its L2 chosen on val."""
        rows = {split: r for split in SPLITS if (r := preds[split].crosses) is not None}
        if len(rows) < len(SPLITS) or not self.logreg_grid:  # no crosses, or turned off
            return None
        train = cross_rows(
            (
                (b.sparse["cross"], b.labels.numpy())
                for b in dm.stream("train", user_fraction=dm.eval_users)
                if b.labels is not None
            ),
            _cross_cardinalities(dm),
        )
        model, _ = fit_logreg_on_val(train, rows["val"], self.logreg_grid)
        return {split: model.logits(r) for split, r in rows.items()}

    @staticmethod
    def _oracle_scores(
        oracle: Any, dm: PinrankDataModule, split: str, p: Predictions
    ) -> np.ndarray:
        """The oracle's P(engaged) of each event, with the impression's position."""
        cols = ["user_id", "item_id", "position"]
        events = dm.eval_events(split, cols)
        users, items = events["user_id"].to_numpy(), events["item_id"].to_numpy()
        if not (np.array_equal(users, p.users) and np.array_equal(items, p.items)):
            raise RuntimeError(f"{split}: stream order differs from the events table")
        positions = events["position"].to_numpy(zero_copy_only=False).astype(np.float64)
        return np.asarray(oracle.score(users, items, positions), np.float64)


def _cross_cardinalities(dm: PinrankDataModule) -> list[int]:
    """Column-block sizes of the cross design matrix, in the featurizer's key order."""
    return [dm.state.cardinality(c.name) for c in dm.spec.crosses]


__all__ = ["Predictions", "RankingModule"]
