"""The new-user interest task: which interests to show a user who has just signed up.

The network and its training are the ranker's (:class:`~pinrank.tasks.ranking.RankingModule`: a
wide-and-deep model of P(engaged) with hashed crosses of the sign-up features with the interest,
calibrated on val) on the interest data set (:mod:`pinrank.interests.source`), whose examples are
(user, interest) pairs of each user's earliest window. What this task adds is the question the
sign-up flow asks: for each **cold-start** user (none of their examples was trained on), rank
their segment's candidate interests (:class:`~pinrank.interests.segments.Candidates`, fitted on
the train split) and measure precision@K and recall@K of the interests the user went on to
engage with. Next to the model, in the same run:

- ``random``: the segment's candidates in a seeded random order (AUC: seeded random scores);
- ``popularity``: every interest by how many training users engaged with it (AUC: that count);
- ``segment_popularity``: the segment's candidates in their order, i.e. by how many training
  users *of the segment* engaged (AUC: that count, the global count breaking ties and standing in
  for segments unseen in training).

Metrics go under ``cold/test/candidates/...`` (and ``baseline/<name>/cold/test/...``); the
candidates are saved as ``candidates.parquet`` in the run folder, the comparison as
``interests.png``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from pinrank.data.datamodule import PinrankDataModule
from pinrank.data.io import read_table, write_parquet
from pinrank.evaluation.ranking import metric_keys, ranking_metrics
from pinrank.evaluation.retrieval import hit_matrix, popularity_scores, retrieval_metrics
from pinrank.interests.segments import SEGMENT, Candidates
from pinrank.tasks.ranking import RankingModule

PREFIX = "cold/test"  # the cold-start slice's metric prefix (RankingModule's SPLITS)
CANDIDATES_FILE = "candidates.parquet"


class InterestModule(RankingModule):
    """:class:`RankingModule` on interest examples, with the candidate-ranking report.

    Args:
        segment: the sign-up columns of a segment (the interest source's, recorded for serving).
        candidates_per_segment: interests scored per segment (``Candidates.per_segment``).
        min_segment_users: training users a segment needs for its own candidates.
        seed: of the random baseline.
        pair_batch: (user, candidate) pairs scored per forward pass in the report.
        **kwargs: :class:`RankingModule`'s.
    """

    def __init__(
        self,
        *args: Any,
        segment: Sequence[str] = ("country", "gender"),
        candidates_per_segment: int = 1000,
        min_segment_users: int = 1,
        seed: int = 0,
        pair_batch: int = 65_536,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if candidates_per_segment < 1 or min_segment_users < 1 or pair_batch < 1:
            raise ValueError("candidates_per_segment, min_segment_users, pair_batch must be >= 1")
        self.segment = [str(c) for c in segment]
        self.per_segment, self.min_users = candidates_per_segment, min_segment_users
        self.seed, self.pair_batch = seed, pair_batch
        self.candidates: Candidates | None = None

    def run_fields(self, metrics: dict[str, Any]) -> dict[str, Any]:
        interests = {"segment": list(self.segment), "candidates": CANDIDATES_FILE,
                     "candidates_per_segment": self.per_segment}  # fmt: skip
        return super().run_fields(metrics) | {"kind": "interests", "interests": interests}

    def full_report(
        self,
        dm: PinrankDataModule,
        ks: Sequence[int] = (10,),
        oracle: Any = None,
        out_dir: str | Path | None = None,
    ) -> dict[str, float]:
        """The ranker's report (AUC, log loss, calibration on val, test and cold, with its
        baselines) plus the cold-start users' candidate ranking against random, popularity and
        segment popularity (module docstring)."""
        metrics = super().full_report(dm, ks=(10,), oracle=None, out_dir=out_dir)
        ks = sorted({int(k) for k in ks} | {10})
        users = dm.users.table.select(["user_id", SEGMENT])
        train = read_table(dm.prepared.split("train"), "events", ["user_id", "item_id", "engaged"])
        self.candidates = cand = Candidates.fit(train, users, self.per_segment, self.min_users)
        cold = dm.eval_events("cold", ["user_id", "item_id", "engaged"])
        if cold.num_rows == 0:
            return metrics
        metrics |= self._auc_baselines(dm, train, cold)
        ranked = self._ranked(dm, cold, cand, max(ks))
        for name, (ids, truth) in ranked.items():
            key = PREFIX if name == "model" else f"baseline/{name}/{PREFIX}"
            found = candidate_metrics(ids, truth, ks)
            metrics |= {f"{key}/candidates/{m}": v for m, v in found.items()}
        metrics[f"{PREFIX}/candidates/users"] = float(len(next(iter(ranked.values()))[1]))
        metrics["candidates/segments"] = float(len(cand.segments))
        metrics["candidates/per_segment"] = float(self.per_segment)
        if out_dir is not None:
            out = Path(out_dir)
            write_parquet(cand.to_table(), out / CANDIDATES_FILE)
            save_interest_plot(metrics, out / "interests.png")
        return metrics

    def _auc_baselines(
        self, dm: PinrankDataModule, train: pa.Table, cold: pa.Table
    ) -> dict[str, float]:
        """AUC, log loss... of the popularity baselines and random scores on the cold slice."""
        users, items = cold["user_id"].to_numpy(), cold["item_id"].to_numpy()
        labels = np.asarray(cold["engaged"].to_numpy(zero_copy_only=False), np.float64)
        t_users, t_items = train["user_id"].to_numpy(), train["item_id"].to_numpy()
        t_engaged = np.asarray(train["engaged"].to_numpy(zero_copy_only=False), bool)
        seg_of = _lookup_segment(dm, np.concatenate([t_users, users]))
        glob = popularity_scores(train, items)
        # (segment, interest) as one int64 key: both as codes of their distinct values
        _, seg_code = np.unique(seg_of.astype(str), return_inverse=True)
        item_values, item_code = np.unique(np.concatenate([t_items, items]), return_inverse=True)
        pair = seg_code.astype(np.int64) * len(item_values) + item_code
        t_pair, c_pair = pair[: len(t_users)], pair[len(t_users) :]
        seg = _count(t_pair[t_engaged], c_pair)
        rng = np.random.default_rng(self.seed)
        scores = {
            "random": rng.random(len(labels)),
            "popularity": glob,
            # the segment's count first, the global count breaking ties (below one engagement)
            "segment_popularity": seg + glob / (glob.max() + 1.0),
        }
        out: dict[str, float] = {}
        for name, s in scores.items():
            r = ranking_metrics(users, labels, _unit(s), 10)
            out |= metric_keys(f"baseline/{name}/{PREFIX}", r)
        return out

    @torch.no_grad()
    def _ranked(
        self, dm: PinrankDataModule, cold: pa.Table, cand: Candidates, depth: int
    ) -> dict[str, tuple[np.ndarray, list[np.ndarray]]]:
        """Per ranking (model and baselines): ``[U, depth]`` interest ids of the cold users
        with at least one engaged interest, and each one's engaged interests."""
        engaged = np.asarray(cold["engaged"].to_numpy(zero_copy_only=False), bool)
        pos_users = cold["user_id"].to_numpy()[engaged]
        pos_items = cold["item_id"].to_numpy()[engaged]
        uids = np.unique(pos_users)
        truth = np.split(pos_items[np.argsort(pos_users, kind="stable")],
                         np.cumsum(np.bincount(np.searchsorted(uids, pos_users)))[:-1])  # fmt: skip
        keys = _lookup_segment(dm, uids)
        lists = [cand.for_segment(str(k)) for k in keys]
        rng = np.random.default_rng(self.seed)
        model = self._score_lists(dm, uids, lists, depth)
        out = {
            "model": model,
            "random": _pad_rows([rng.permutation(c)[:depth] for c in lists], depth),
            "popularity": _pad_rows([cand.popular[:depth]] * len(uids), depth),
            "segment_popularity": _pad_rows([c[:depth] for c in lists], depth),
        }
        return {name: (ids, truth) for name, ids in out.items()}

    def _score_lists(
        self, dm: PinrankDataModule, uids: np.ndarray, lists: list[np.ndarray], depth: int
    ) -> np.ndarray:
        """``[U, depth]`` each user's candidates by the model's score (ties: candidate order),
        each user featurized once per run of pairs (:meth:`WideDeep.score_feed`)."""
        assert dm.featurizer is not None
        was_training = self.net.training
        self.net.eval()
        sizes = np.array([len(c) for c in lists])
        owner = np.repeat(np.arange(len(uids)), sizes)
        items = np.concatenate(lists) if lists else np.zeros(0, np.int64)
        logits = np.empty(len(items), np.float64)
        for a in range(0, len(items), self.pair_batch):
            b = min(a + self.pair_batch, len(items))
            users, index = np.unique(owner[a:b], return_inverse=True)  # each user once
            feed = dm.featurizer.feed(
                dm.users.take(uids[users]), dm.items.take(items[a:b]), index.astype(np.int64)
            )
            logits[a:b] = self.net.score_feed(feed.to(self.device)).float().cpu().numpy()
        self.net.train(was_training)
        out = np.full((len(uids), depth), -1, np.int64)
        starts = np.r_[0, np.cumsum(sizes)]
        for u in range(len(uids)):
            s = logits[starts[u] : starts[u + 1]]
            top = np.argsort(-s, kind="stable")[:depth]
            out[u, : len(top)] = lists[u][top]
        return out


def candidate_metrics(
    ids: np.ndarray, truth: list[np.ndarray], ks: Sequence[int]
) -> dict[str, float]:
    """precision@K (hits in the top K / K), recall@K, NDCG@K and hit rate@K per user, averaged.

    Example::

        >>> m = candidate_metrics(np.array([[3, 1, 2]]), [np.array([1, 9])], ks=(2,))
        >>> m["precision@2"], m["recall@2"]
        (0.5, 0.5)
    """
    found = retrieval_metrics(ids, truth, ks)
    hits, _ = hit_matrix(ids, truth)  # [U, depth]: which ranked ids are in the truth
    for k in ks:
        found[f"precision@{k}"] = float(hits[:, :k].sum(axis=1).mean() / k)
    return found


def _lookup_segment(dm: PinrankDataModule, user_ids: np.ndarray) -> np.ndarray:
    """The segment key of each user id (``""`` for an unknown user)."""
    table = dm.users.table
    rows = dm.users.rows(np.asarray(user_ids, np.int64))
    keys = table.column(SEGMENT).to_numpy(zero_copy_only=False)
    return np.where(rows >= 0, keys[np.maximum(rows, 0)], "").astype(object)


def _count(train_keys: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """How often each of ``keys`` occurs in ``train_keys``."""
    values, counts = np.unique(train_keys, return_counts=True)
    if len(values) == 0:
        return np.zeros(len(keys))
    pos = np.minimum(np.searchsorted(values, keys), len(values) - 1)
    return np.where(values[pos] == keys, counts[pos], 0).astype(np.float64)


def _unit(scores: np.ndarray) -> np.ndarray:
    """Scores rescaled into [0, 1] (the order, which AUC reads, unchanged; log loss of a count
    is meaningless either way)."""
    lo, hi = float(np.min(scores)), float(np.max(scores))
    return (scores - lo) / (hi - lo) if hi > lo else np.full(len(scores), 0.5)


def _pad_rows(rows: list[np.ndarray], depth: int) -> np.ndarray:
    out = np.full((len(rows), depth), -1, np.int64)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r[:depth]
    return out


def save_interest_plot(metrics: dict[str, float], path: Path) -> None:
    """Bars: cold-start AUC, precision@10 and recall@10 of the model and each baseline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["model", "segment_popularity", "popularity", "random"]
    panels = [("auc", "AUC (examples)"), ("candidates/precision@10", "precision@10"),
              ("candidates/recall@10", "recall@10")]  # fmt: skip
    fig, axes = plt.subplots(1, len(panels), figsize=(11, 3.2))
    for ax, (metric, title) in zip(axes, panels, strict=True):
        values = [
            metrics.get(f"{PREFIX}/{metric}" if n == "model" else f"baseline/{n}/{PREFIX}/{metric}")
            for n in names
        ]
        ax.bar(range(len(names)), [v if v is not None else 0.0 for v in values],
               color=["C0", "C1", "C2", "C7"])  # fmt: skip
        ax.set_xticks(range(len(names)), [n.replace("_", "\n") for n in names], fontsize=8)
        ax.set_title(f"{title}, cold-start users", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
