"""The retrieval task: trains a :class:`~pinrank.models.towers.TwoTower` and evaluates it.

The LightningModule owns the loss (in-batch softmax, logQ correction, optional mixed negatives,
accidental-hit removal), the optimiser and the metrics; the network knows nothing of them.
Evaluation follows ``docs/evaluation.md``: every item the user has no train event with is ranked,
and the truth is the user's engaged items of the split.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch

from pinrank.data.datamodule import PinrankDataModule
from pinrank.data.io import read_table
from pinrank.evaluation.retrieval import (
    RetrievalTask,
    baseline_metrics,
    retrieval_metrics,
    retrieval_task,
)
from pinrank.features.featurizer import FeatureBatch
from pinrank.models.towers import TwoTower
from pinrank.retrieval import build_topk, recall_vs_exact
from pinrank.retrieval.bias import impression_counts, item_vectors, query_vectors
from pinrank.runs import RetrievalSettings
from pinrank.tasks.losses import StreamingFrequency, sampled_softmax_loss
from pinrank.tasks.optim import build_optimizer

OptimizerFactory = Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer]
EVENT_COLUMNS = ["user_id", "item_id", "ts", "engaged"]
POPULARITY_BIAS_KEY = "retrieval/popularity_bias"  # the metric holding the beta chosen on val


class RetrievalModule(pl.LightningModule):
    """Lightning wrapper of a two-tower network.

    Args:
        net: the two-tower network.
        optimizer: a partial optimiser, completed with the parameters (Hydra ``_partial_``).
        logq: subtract the log sampling probability from every logit.
        remove_accidental_hits: never use a row's own positive item as its negative.
        mixed_negatives: uniformly sampled catalogue items added as negatives to every row
            (``-1``: the whole catalogue, i.e. a full softmax; for small catalogues).
        freq_buckets / freq_alpha: the streaming frequency estimator.
        monitor_k: K of the ``val/recall@K`` computed at each validation epoch.
        index: top-K implementation for evaluation (``exact`` or a FAISS factory string).
        index_params: its search parameters (``nprobe``, ``ef_search``, ``train_size``).
        popularity_bias: the grid of ``beta`` for the popularity prior added back at retrieval
            (:mod:`pinrank.retrieval.bias`); the report picks the value with the best val
            recall@``monitor_k`` and applies it to test. ``(0.0,)``: the towers alone.
        tuning_queries: at most this many val users (a seeded sample) score each ``beta``: one
            exact search per grid value over every val user dominated the report at 1M pins.
    """

    def __init__(
        self,
        net: TwoTower,
        optimizer: OptimizerFactory,
        logq: bool = True,
        remove_accidental_hits: bool = True,
        mixed_negatives: int = 0,
        freq_buckets: int = 1 << 20,
        freq_alpha: float = 0.01,
        monitor_k: int = 20,
        index: str = "exact",
        index_params: dict[str, Any] | None = None,
        popularity_bias: Sequence[float] = (0.0,),
        tuning_queries: int = 20_000,
    ) -> None:
        super().__init__()
        self.net, self.optimizer_factory = net, optimizer
        self.logq, self.remove_accidental_hits = logq, remove_accidental_hits
        self.mixed_negatives, self.monitor_k, self.index = mixed_negatives, monitor_k, index
        self.index_params = dict(index_params or {})
        self.popularity_bias = tuple(float(b) for b in popularity_bias) or (0.0,)
        if any(b < 0 for b in self.popularity_bias):
            raise ValueError(f"popularity_bias values must be >= 0, got {self.popularity_bias}")
        if tuning_queries < 1:
            raise ValueError(f"tuning_queries must be >= 1, got {tuning_queries}")
        self.tuning_queries = int(tuning_queries)
        self.frequency = StreamingFrequency(freq_buckets, freq_alpha)
        self._tasks: dict[str, RetrievalTask] = {}
        self.save_hyperparameters(ignore=["net", "optimizer"])

    # ----------------------------------------------------------------------------- training

    def _negatives(self, dm: PinrankDataModule) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Uniform catalogue samples: embeddings [M, D], ids [M], log q [M] (= log M / N).

        ``mixed_negatives = -1`` uses the whole catalogue once (log q = 0): a full softmax.
        """
        catalogue = dm.catalogue()
        if self.mixed_negatives < 0:
            ids, log_q_value = catalogue, 0.0
        else:
            # torch's global generator: seeded per run (and per rank) by seed_everything
            ids = catalogue[torch.randint(len(catalogue), (self.mixed_negatives,)).numpy()]
            log_q_value = math.log(self.mixed_negatives / len(catalogue))
        emb = self.net.item_embedding(dm.catalogue_features(ids).to(self.device))
        log_q = torch.full((len(ids),), log_q_value, device=self.device)
        return emb, torch.from_numpy(ids).to(self.device), log_q

    def loss(self, batch: FeatureBatch, train: bool) -> torch.Tensor:
        assert batch.item_ids is not None
        user, item = self.net.user_embedding(batch), self.net.item_embedding(batch)
        log_q = None
        if self.logq:
            if train:
                self.frequency.update(batch.item_ids, self.global_step + 1)
            log_q = self.frequency.log_q(batch.item_ids)
        neg = neg_ids = neg_log_q = None
        if train and self.mixed_negatives:
            neg, neg_ids, neg_log_q = self._negatives(PinrankDataModule.of(self.trainer))
        return sampled_softmax_loss(
            user, item, batch.item_ids, self.net.temperature, log_q,
            neg, neg_ids, neg_log_q, self.remove_accidental_hits,
        )  # fmt: skip

    def training_step(self, batch: FeatureBatch, batch_idx: int) -> torch.Tensor:
        loss = self.loss(batch, train=True)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch))
        return loss

    def validation_step(self, batch: FeatureBatch, batch_idx: int) -> None:
        assert batch.labels is not None
        keep = torch.nonzero(batch.labels > 0).squeeze(1)
        if len(keep) > 1:
            loss = self.loss(batch.select(keep), train=False)
            self.log("val/loss", loss, batch_size=len(keep), sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        metrics = self.evaluate(PinrankDataModule.of(self.trainer), "val", ks=(self.monitor_k,))
        self.log_dict(metrics, prog_bar=True, sync_dist=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return build_optimizer(self.optimizer_factory, self.net, [{"params": self.parameters()}])

    # --------------------------------------------------------------------------- evaluation

    def task(self, dm: PinrankDataModule, split: str) -> RetrievalTask:
        """The protocol's task of a split: users with engaged events there, their train items."""
        if split not in self._tasks:
            train = read_table(dm.prepared.split("train"), "events", EVENT_COLUMNS)
            events = dm.eval_events(split, EVENT_COLUMNS)
            self._tasks[split] = retrieval_task(train, events, dm.catalogue())
        return self._tasks[split]

    @torch.no_grad()
    def embed(
        self, dm: PinrankDataModule, side: str, ids: np.ndarray, chunk: int = 8192
    ) -> np.ndarray:
        """[N, D] float32 embeddings of users or items by id, in eval mode."""
        was_training = self.net.training
        self.net.eval()
        tower = self.net.user_embedding if side == "user" else self.net.item_embedding
        out = [
            tower(dm.featurize_entities(side, ids[i : i + chunk]).to(self.device))
            .float()
            .cpu()
            .numpy()
            for i in range(0, len(ids), chunk)
        ]
        self.net.train(was_training)
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)

    def evaluate(
        self,
        dm: PinrankDataModule,
        split: str,
        ks: Sequence[int] = (10, 20, 50, 100),
        index: str | None = None,
    ) -> dict[str, float]:
        """``{split}/recall@K``, ``ndcg@K``, ``hit_rate@K`` of the model under the protocol."""
        task = self.task(dm, split)
        ids = self._search(dm, task, max(ks), [index])[0]
        return {f"{split}/{k}": v for k, v in retrieval_metrics(ids, task.truth, ks).items()}

    def run_fields(self, metrics: dict[str, Any]) -> dict[str, Any]:
        """This run's part of ``run.json`` (:class:`~pinrank.runs.RunRecord`): the index export
        builds and the popularity prior ``full_report`` chose on val."""
        index = "Flat" if self.index in ("exact", "bruteforce") else self.index
        bias = float(metrics.get(POPULARITY_BIAS_KEY, 0.0))
        return {"kind": "retrieval", "retrieval": RetrievalSettings(index, self.index_params, bias)}

    def full_report(
        self,
        dm: PinrankDataModule,
        ks: Sequence[int] = (10, 20, 50, 100),
        oracle: Any = None,
        out_dir: Any = None,
    ) -> dict[str, float]:
        """Everything for ``metrics.json``: model on val and test, baselines on the same tasks,
        the configured index against exact search on test, and the oracle where the data has
        one. The popularity prior's ``beta`` is chosen on val (``retrieval/popularity_bias``;
        each candidate's val recall under ``tuning/``). (``out_dir``: part of the report
        contract; this report writes no artefacts.)"""
        metrics: dict[str, float] = {}
        train = read_table(dm.prepared.split("train"), "events", EVENT_COLUMNS)
        k = max(ks)
        # train impressions per catalogue item (every task ranks dm.catalogue()): the prior
        counts = impression_counts(train.column("item_id").to_numpy(), dm.catalogue())
        beta = self._choose_bias(dm, self.task(dm, "val"), counts, metrics)
        for split in ("val", "test"):
            task = self.task(dm, split)
            # one embedding pass per split: exact top-k for the metrics and, on test, the
            # configured index's top-k to compare with it
            indexes: list[str | None] = ["exact", None] if split == "test" else ["exact"]
            found = self._search(dm, task, k, indexes, beta, counts)
            for key, value in retrieval_metrics(found[0], task.truth, ks).items():
                metrics[f"{split}/{key}"] = value
            if split == "test":
                metrics[f"index/recall@{k}_vs_exact"] = recall_vs_exact(found[1], found[0])
            for key, value in baseline_metrics(task, train, ks).items():
                name, metric = key.split("/", 1)
                metrics[f"baseline/{name}/{split}/{metric}"] = value
            if oracle is not None:
                ids = oracle_ranking(oracle, task, k)
                for key, value in retrieval_metrics(ids, task.truth, ks).items():
                    metrics[f"oracle/{split}/{key}"] = value
        return metrics

    def _choose_bias(
        self, dm: PinrankDataModule, task: RetrievalTask, counts: np.ndarray, out: dict
    ) -> float:
        """The grid's ``beta`` with the best val recall@``monitor_k`` (the smaller on ties)."""
        if self.popularity_bias == (0.0,):
            out[POPULARITY_BIAS_KEY] = 0.0
            return 0.0
        if task.num_queries > self.tuning_queries:  # a seeded sample of the val users
            keep = np.sort(np.random.default_rng(0).choice(task.num_queries, self.tuning_queries,
                                                           replace=False))  # fmt: skip
            task = RetrievalTask(
                task.users[keep],
                [task.truth[i] for i in keep],
                [task.exclude[i] for i in keep],
                task.catalogue,
            )
        out["tuning/queries"] = task.num_queries
        items, users = self._embedded(dm, task)
        biased = item_vectors(items, counts)  # the same for every beta
        k, best = self.monitor_k, (-1.0, 0.0)
        for beta in sorted(set(self.popularity_bias)):
            ids = self._top(biased if beta else items, users, task, k, "exact", beta)
            recall = retrieval_metrics(ids, task.truth, (k,))[f"recall@{k}"]
            out[f"tuning/popularity_bias/{beta:g}/val/recall@{k}"] = recall
            best = max(best, (recall, -beta))
        out["retrieval/popularity_bias"] = -best[1]
        return -best[1]

    def _embedded(self, dm: PinrankDataModule, task: RetrievalTask) -> tuple[np.ndarray, ...]:
        """``[N, D]`` catalogue and ``[Q, D]`` user embeddings of a task."""
        return self.embed(dm, "item", task.catalogue), self.embed(dm, "user", task.users)

    def _top(
        self,
        items: np.ndarray,
        users: np.ndarray,
        task: RetrievalTask,
        k: int,
        index: str | None,
        beta: float = 0.0,
    ) -> np.ndarray:
        """``[Q, k]`` ids: top-k of ``<u, v> / T + beta * log(1 + n)`` (``beta = 0``: the
        towers' inner product alone; otherwise ``items`` are :func:`item_vectors`), the user's
        train items excluded."""
        if beta:
            users = query_vectors(users, self.net.temperature, beta)
        topk = self._topk(index).index(items, task.catalogue)
        return topk.search(users, k, exclude=task.exclude)[1]

    def _search(
        self,
        dm: PinrankDataModule,
        task: RetrievalTask,
        k: int,
        indexes: Sequence[str | None],
        beta: float = 0.0,
        counts: np.ndarray | None = None,
    ) -> list[np.ndarray]:
        """Top-k ids of the task's users with each of ``indexes`` (``None``: the configured
        one), embedding the users and the catalogue once."""
        items, users = self._embedded(dm, task)
        if beta:
            assert counts is not None
            items = item_vectors(items, counts)
        names = [self._topk(i).description for i in indexes]
        found: dict[str, np.ndarray] = {}  # an index named twice (the configured one is exact)
        for i, name in zip(indexes, names, strict=True):
            if name not in found:
                found[name] = self._top(items, users, task, k, i, beta)
        return [found[name] for name in names]

    def _topk(self, index: str | None = None) -> Any:
        """The configured top-K implementation (or ``index`` with default parameters)."""
        if index is not None and index != self.index:
            return build_topk(index)
        return build_topk(self.index, **self.index_params)


def oracle_ranking(oracle: Any, task: RetrievalTask, k: int, pairs: int = 1 << 22) -> np.ndarray:
    """[Q, k] the oracle's best non-excluded items per user (the best achievable ranking).

    Users are scored in chunks of at most ``pairs`` (user, item) scores, so memory does not grow
    with users x catalogue; each user's top k is selected in O(N) (ties broken by catalogue
    order, as a stable full sort would)."""
    out = np.full((len(task.users), k), -1, np.int64)
    chunk = max(1, min(256, pairs // max(len(task.catalogue), 1)))
    for start in range(0, len(task.users), chunk):
        users = task.users[start : start + chunk]
        scores = oracle.retrieval_scores(users, task.catalogue)  # (U, N)
        for row, user_idx in enumerate(range(start, start + len(users))):
            s = -scores[row]  # ascending is best first
            s[np.isin(task.catalogue, task.exclude[user_idx])] = np.inf
            top = _smallest(s, k)
            top = top[np.isfinite(s[top])]
            out[user_idx, : len(top)] = task.catalogue[top]
    return out


def _smallest(s: np.ndarray, k: int) -> np.ndarray:
    """The indices of the ``k`` smallest values, ordered as ``np.argsort(s, kind="stable")[:k]``
    orders them, without sorting all of ``s``."""
    if len(s) > k:
        kth = np.partition(s, k - 1)[k - 1]
        candidates = np.flatnonzero(s <= kth)  # every tie of the k-th value, in index order
    else:
        candidates = np.arange(len(s))
    return candidates[np.argsort(s[candidates], kind="stable")][:k]


__all__ = ["RetrievalModule", "oracle_ranking"]
