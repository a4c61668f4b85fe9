"""``pinrank compare``: two model packages on the same hold-out, through the path that serves.

Both packages are loaded as the service loads them (trust policy, every file hashed) and score
the same held-out users with the embedded scorer (:class:`~pinrank.serving.scorer.FeedScorer`)
over one user store, the hold-out's users as of its training data:

- **retrieval**: each user's served feed (``feed_many``: retrieval, ranker, blending,
  diversity), ``recall@K`` and ``ndcg@K`` of the pins the user engaged with in the hold-out
  (per user, over users with at least one engaged pin);
- **ranking**: the calibrated probability of every held-out impression in the context it was
  logged in (surface, position: the package's ``ranker`` graph from raw columns, the user's
  stored row conformed as the service conforms it, the pin's catalogue row): AUC and log loss
  over impressions, on the rows whose pin both catalogues hold (the others are counted).

Every metric is reported for both packages with the difference B - A and its paired bootstrap
interval over users (:mod:`pinrank.lifecycle.bootstrap`), overall and per slice: **new** users
(no training events) vs **warm**, and **popular** pins (the head of the training engagement
counts, ``popular_share`` of the pins) vs **niche** (the rest). The verdict (:func:`verdict`)
follows the thresholds of ``conf/compare.yaml``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pinrank.data.io import read_table
from pinrank.data.prepare import Prepared
from pinrank.lifecycle.bootstrap import Interval, WeightedAUC, interval, user_counts, weighted_mean
from pinrank.serving.signing import Trust

LOWER_IS_BETTER = ("log_loss",)
SLICES = ("all", "new_users", "warm_users", "popular_pins", "niche_pins")


@dataclass
class CompareConfig:
    """How two packages are compared and when B is better (``conf/compare.yaml``)."""

    k: int = 20
    samples: int = 1000
    seed: int = 0
    level: float = 0.95
    popular_share: float = 0.1  # the pins of the most training engagement, as a share of pins
    max_users: int | None = None  # the first users of the hold-out (by id) only
    # metric -> tolerance: B fails when the metric is worse by more than it (in the metric's
    # own units; for log loss, higher is worse), or surely worse (its whole interval)
    guard: dict[str, float] = field(default_factory=lambda: {
        "ranking/auc": 0.005, "ranking/log_loss": 0.01, "retrieval/recall@20": 0.01,
    })  # fmt: skip
    # B must gain at least min_gain on one of these (point estimate; with significant: the
    # interval's worse end above it)
    improve: list[str] = field(default_factory=lambda: ["ranking/auc", "retrieval/recall@20"])
    min_gain: float = 0.0
    significant: bool = False

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> CompareConfig:
        unknown = sorted(set(values) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown compare settings {unknown} (known: "
                             f"{sorted(cls.__dataclass_fields__)})")  # fmt: skip
        return cls(**values)


@dataclass
class Holdout:
    """Held-out impressions and what the slices need; ids as the data's (integers)."""

    name: str
    events: pa.Table  # user_id, item_id, engaged, the context columns
    users: pa.Table  # the users' stored rows (for the scorer's user store)
    user_ids: np.ndarray  # [U] sorted: the bootstrap's units
    new_user: np.ndarray  # [U] bool: no training events
    popular: np.ndarray  # sorted ids of the popular pins

    @classmethod
    def load(cls, folder: str | Path, config: CompareConfig) -> Holdout:
        """A hold-out folder (``pinrank retrain``): ``events``, ``users`` (their stored rows as
        of the hold-out), ``train`` (the training events of that time) and ``holdout.json``."""
        import pyarrow.parquet as pq

        folder = Path(folder)
        meta = json.loads((folder / "holdout.json").read_text())
        tables = {n: pq.read_table(folder / f"{n}.parquet") for n in ("events", "users", "train")}
        return make_holdout(meta["name"], tables["events"], tables["users"], tables["train"],
                            int(meta["items"]), config)  # fmt: skip


def load_holdout(data: str | Path, split: str, config: CompareConfig) -> Holdout:
    """A hold-out: a folder written by ``pinrank retrain`` (``holdout.json``), or the ``split``
    of a prepared data set (``config.max_users``: its first users by id)."""
    if (Path(data) / "holdout.json").is_file():
        return Holdout.load(data, config)
    prepared = Prepared.load(data)
    events = read_table(prepared.split(split), "events")
    train = read_table(prepared.split("train"), "events", columns=["user_id", "item_id",
                                                                    "engaged"])  # fmt: skip
    return make_holdout(f"{prepared.root}:{split}", events, prepared.users(), train,
                        prepared.items().num_rows, config)  # fmt: skip


def make_holdout(name: str, events: pa.Table, users: pa.Table, train: pa.Table, n_items: int,
                 config: CompareConfig) -> Holdout:  # fmt: skip
    """A hold-out of ``events`` (user_id, item_id, engaged and the context columns the ranker
    reads, e.g. surface and position), the users' stored rows and the training events that
    tell new users and popular pins."""
    if not events.num_rows:
        raise ValueError(f"hold-out {name} holds no events")
    missing = sorted({"user_id", "item_id", "engaged"} - set(events.column_names))
    if missing:
        raise ValueError(f"hold-out {name}: its events have no {missing}")
    ids = np.unique(events.column("user_id").to_numpy())
    if config.max_users is not None:
        ids = ids[: config.max_users]
        events = events.filter(pc.is_in(events.column("user_id"), pa.array(ids)))
    seen = np.unique(train.column("user_id").to_numpy())
    engaged = train.filter(train.column("engaged")).column("item_id").to_numpy()
    items, counts = np.unique(engaged, return_counts=True)
    head = max(1, math.ceil(config.popular_share * n_items))
    popular = np.sort(items[np.lexsort((items, -counts))][:head])
    users = users.filter(pc.is_in(users.column("user_id"), pa.array(ids)))
    return Holdout(name, events, users, ids, ~np.isin(ids, seen), popular)


@dataclass
class Scores:
    """One package's answers on a hold-out."""

    version: str
    probability: np.ndarray  # [rows] per impression (NaN: the pin is not in its catalogue)
    hits: np.ndarray  # [U, K] bool: feed position j holds an engaged pin of the user
    hit_popular: np.ndarray  # [U, K] bool: ... and that pin is popular
    engaged: np.ndarray  # [U] engaged pins of the user in the hold-out
    engaged_popular: np.ndarray  # [U] ... of them popular


def score_package(path: str | Path, trust: Trust, holdout: Holdout, k: int,
                  batch: int = 256) -> Scores:  # fmt: skip
    """Score the hold-out with the package at ``path`` through the serving path (module
    docstring)."""
    from pinrank.features.columns import pack
    from pinrank.serving.conform import conform_batch
    from pinrank.serving.package import load_package
    from pinrank.serving.runtime import OnnxBackend
    from pinrank.serving.scorer import FeedScorer
    from pinrank.serving.store import TableStore

    package = load_package(path, trust)
    scorer = FeedScorer(package, TableStore(holdout.users), OnnxBackend(package))
    if scorer.ids.maps("user_id") or scorer.ids.maps("item_id"):
        raise ValueError(f"{path}: compare needs integer user and pin ids (this package maps "
                         "string ids)")  # fmt: skip
    events = holdout.events
    user = events.column("user_id").to_numpy()
    item = events.column("item_id").to_numpy()
    label = events.column("engaged").to_numpy(zero_copy_only=False)
    prob = np.full(len(user), np.nan)
    catalogue_rows = scorer.catalogue.rows(item)
    known = np.flatnonzero(catalogue_rows >= 0)
    stored = holdout.users.column("user_id").to_numpy()
    stored_order = np.argsort(stored, kind="stable")
    columns = package.columns("context")
    for lo in range(0, len(known), batch * 32):
        rows = known[lo : lo + batch * 32]
        at = stored_order[np.searchsorted(stored[stored_order], user[rows])]
        users = scorer.rows.table(holdout.users.take(at))
        context, _ = conform_batch(events.take(rows), columns)
        arrays = users.arrays | scorer.catalogue.inputs(catalogue_rows[rows])
        out = scorer.backend.run("ranker", arrays | pack(context, columns))
        prob[rows] = np.asarray(out["probability"], np.float64)
    order = np.argsort(user, kind="stable")
    starts = np.searchsorted(user[order], holdout.user_ids)
    ends = np.searchsorted(user[order], holdout.user_ids, side="right")
    n = len(holdout.user_ids)
    hits, hit_popular = np.zeros((n, k), bool), np.zeros((n, k), bool)
    engaged, engaged_popular = np.zeros(n), np.zeros(n)
    for lo in range(0, n, batch):
        ids = holdout.user_ids[lo : lo + batch]
        for j, feed in enumerate(scorer.feed_many([int(u) for u in ids], k)):
            b = lo + j
            rows = order[starts[b] : ends[b]]
            truth = np.unique(item[rows][label[rows]])
            engaged[b] = truth.size
            engaged_popular[b] = np.isin(truth, holdout.popular).sum()
            got = np.asarray(feed.item_ids[:k])
            hit = np.isin(got, truth)
            hits[b, : got.size] = hit
            hit_popular[b, : got.size] = hit & np.isin(got, holdout.popular)
    return Scores(package.version, prob, hits, hit_popular, engaged, engaged_popular)


def _retrieval_values(s: Scores, k: int, which: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per user: recall@k and ndcg@k over the ``which`` engaged pins, and whether it counts."""
    hits = {"popular_pins": s.hit_popular, "niche_pins": s.hits & ~s.hit_popular}.get(which, s.hits)
    truth = {"popular_pins": s.engaged_popular,
             "niche_pins": s.engaged - s.engaged_popular}.get(which, s.engaged)  # fmt: skip
    discount = 1 / np.log2(np.arange(2, k + 2))
    ideal = np.array([discount[: int(min(t, k))].sum() for t in truth])
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = hits.sum(axis=1) / truth
        ndcg = (hits * discount).sum(axis=1) / ideal
    return np.nan_to_num(recall), np.nan_to_num(ndcg), truth > 0


@dataclass
class Metric:
    """One metric of one slice: both packages, the difference B - A, its interval."""

    name: str
    slice: str
    a: float
    b: float
    diff: Interval
    units: int  # users (retrieval) or impressions (ranking) it is computed over

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "diff": self.diff.to_dict()}


def compare_scores(holdout: Holdout, a: Scores, b: Scores, config: CompareConfig) -> list[Metric]:
    """Every metric of every slice, with paired bootstrap intervals (module docstring)."""
    return list(_metrics(holdout, a, b, config))


def _metrics(holdout: Holdout, a: Scores, b: Scores, config: CompareConfig) -> Iterator[Metric]:
    user_of_row = np.searchsorted(holdout.user_ids, holdout.events.column("user_id").to_numpy())
    label = holdout.events.column("engaged").to_numpy(zero_copy_only=False).astype(np.float64)
    item = holdout.events.column("item_id").to_numpy()
    both = np.isfinite(a.probability) & np.isfinite(b.probability)
    popular_row = np.isin(item, holdout.popular)
    new_row = holdout.new_user[user_of_row]
    k = config.k
    for name in SLICES:
        # retrieval: per-user values, users of the slice
        user_mask = {"new_users": holdout.new_user, "warm_users": ~holdout.new_user}.get(
            name, np.ones(len(holdout.user_ids), bool)
        )
        ra, na, counted = _retrieval_values(a, k, name)
        rb, nb, _ = _retrieval_values(b, k, name)
        keep = user_mask & counted
        for metric, va, vb in ((f"recall@{k}", ra, rb), (f"ndcg@{k}", na, nb)):
            yield _user_metric(f"retrieval/{metric}", name, va, vb, keep, config)
        # ranking: impressions of the slice that both catalogues hold
        row_mask = both & {"new_users": new_row, "warm_users": ~new_row,
                           "popular_pins": popular_row,
                           "niche_pins": ~popular_row}.get(name, True)  # fmt: skip
        yield from _ranking_metrics(name, label, a.probability, b.probability, row_mask,
                                    user_of_row, len(holdout.user_ids), config)  # fmt: skip


def _user_metric(name: str, slice_: str, va: np.ndarray, vb: np.ndarray, keep: np.ndarray,
                 config: CompareConfig) -> Metric:  # fmt: skip
    w_full = keep.astype(np.float64)
    point_a, point_b = _mean(va, w_full), _mean(vb, w_full)
    sampled = []
    for counts in user_counts(len(va), config.samples, config.seed):
        w = counts * w_full
        sampled.append(weighted_mean(vb - va, w))
    diffs = np.concatenate(sampled) if sampled else np.zeros(0)
    return Metric(name, slice_, point_a, point_b, interval(point_b - point_a, diffs, config.level),
                  int(keep.sum()))  # fmt: skip


def _ranking_metrics(slice_: str, label: np.ndarray, pa_: np.ndarray, pb: np.ndarray,
                     mask: np.ndarray, user_of_row: np.ndarray, users: int,
                     config: CompareConfig) -> Iterator[Metric]:  # fmt: skip
    rows = np.flatnonzero(mask)
    y, sa, sb, u = label[rows], pa_[rows], pb[rows], user_of_row[rows]
    auc_a, auc_b = WeightedAUC(y, sa), WeightedAUC(y, sb)
    loss_a, loss_b = _log_losses(y, sa), _log_losses(y, sb)
    ones = np.ones((1, len(rows)))
    points = {"auc": (auc_a(ones)[0], auc_b(ones)[0]),
              "log_loss": (_mean(loss_a, ones[0]), _mean(loss_b, ones[0]))}  # fmt: skip
    sampled: dict[str, list[np.ndarray]] = {"auc": [], "log_loss": []}
    for counts in user_counts(users, config.samples, config.seed):
        w = counts[:, u]
        sampled["auc"].append(auc_b(w) - auc_a(w))
        sampled["log_loss"].append(weighted_mean(loss_b, w) - weighted_mean(loss_a, w))
    for metric, (va, vb) in points.items():
        diffs = np.concatenate(sampled[metric]) if sampled[metric] else np.zeros(0)
        yield Metric(f"ranking/{metric}", slice_, float(va), float(vb),
                     interval(float(vb - va), diffs, config.level), len(rows))  # fmt: skip


def _log_losses(y: np.ndarray, p: np.ndarray, eps: float = 1e-7) -> np.ndarray:
    p = np.clip(p, eps, 1 - eps)
    return -(y * np.log(p) + (1 - y) * np.log(1 - p))


def _mean(values: np.ndarray, weights: np.ndarray) -> float:
    total = float(weights.sum())
    return float((values * weights).sum() / total) if total else float("nan")


@dataclass
class Verdict:
    """Whether B should replace A, and why (each rule's outcome, in words)."""

    better: bool
    reasons: list[str]


def verdict(metrics: list[Metric], config: CompareConfig) -> Verdict:
    """B is better when no guarded metric (overall) is worse, and one metric of ``improve``
    gains more than ``min_gain`` (with ``significant``: at the worse end of its interval).

    A guarded metric is worse when its difference is worse than ``-tolerance``, or when its
    whole interval lies on the worse side of zero (surely worse, if only a little)."""
    overall = {m.name: m for m in metrics if m.slice == "all"}
    reasons, ok = [], True
    for name, tolerance in config.guard.items():
        m = _named(overall, name)
        sign = -1.0 if name.split("/")[-1] in LOWER_IS_BETTER else 1.0
        gain, best = sign * m.diff.value, max(sign * m.diff.low, sign * m.diff.high)
        text = f"{name}: B - A = {m.diff.value:+.4f} [{m.diff.low:+.4f}, {m.diff.high:+.4f}]"
        if not math.isfinite(gain) or gain < -tolerance:
            ok = False
            reasons.append(f"{text}: worse by more than the tolerance {tolerance}")
        elif best < 0:
            ok = False
            reasons.append(f"{text}: surely worse (the whole interval)")
        else:
            reasons.append(f"{text}: not worse (tolerance {tolerance})")
    gains = []
    for name in config.improve:
        m = _named(overall, name)
        sign = -1.0 if name.split("/")[-1] in LOWER_IS_BETTER else 1.0
        ends = (sign * m.diff.low, sign * m.diff.high)
        gain = min(ends) if config.significant else sign * m.diff.value
        if math.isfinite(gain) and gain > config.min_gain:
            gains.append(f"{name} gains {gain:+.4f}")
    if gains:
        reasons.append("improves: " + "; ".join(gains))
    else:
        ok = False
        what = " at the worse end of its interval" if config.significant else ""
        reasons.append(f"no gain above {config.min_gain}{what} on any of {config.improve}")
    return Verdict(ok, reasons)


def _named(overall: dict[str, Metric], name: str) -> Metric:
    if name not in overall:
        raise ValueError(f"compare config names {name!r}, not a metric (metrics: "
                         f"{sorted(overall)})")  # fmt: skip
    return overall[name]


def write_report(out: str | Path, holdout: Holdout, a: Scores, b: Scores, labels: tuple[str, str],
                 metrics: list[Metric], decision: Verdict,
                 config: CompareConfig) -> Path:  # fmt: skip
    """``compare.json`` and ``compare.png`` (differences with intervals, per slice) in ``out``;
    returns the JSON's path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    report = {
        "holdout": holdout.name,
        "users": len(holdout.user_ids), "impressions": holdout.events.num_rows,
        "a": {"label": labels[0], "version": a.version},
        "b": {"label": labels[1], "version": b.version},
        "config": asdict(config),
        "verdict": {"b_is_better": decision.better, "reasons": decision.reasons},
        "metrics": [m.to_dict() for m in metrics],
    }  # fmt: skip
    path = out / "compare.json"
    path.write_text(json.dumps(report, indent=2))
    _plot(out / "compare.png", metrics, labels)
    return path


def _plot(path: Path, metrics: list[Metric], labels: tuple[str, str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(m.name for m in metrics))
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3.4), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        rows = [m for m in metrics if m.name == name]
        y = np.arange(len(rows))
        value = np.array([m.diff.value for m in rows])
        err = np.array([[m.diff.value - m.diff.low for m in rows],
                        [m.diff.high - m.diff.value for m in rows]])  # fmt: skip
        ax.errorbar(value, y, xerr=np.nan_to_num(err), fmt="o", capsize=3)
        ax.axvline(0, color="grey", lw=0.8)
        ax.set_yticks(y, [m.slice for m in rows])
        ax.invert_yaxis()
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("B - A (95% interval)", fontsize=8)
    fig.suptitle(f"A = {labels[0]}, B = {labels[1]}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def summary(metrics: list[Metric], decision: Verdict, labels: tuple[str, str]) -> str:
    """The report as a text table and the verdict."""
    lines = [f"A = {labels[0]}\nB = {labels[1]}",
             f"{'metric':22} {'slice':13} {'A':>8} {'B':>8} {'B - A':>8}  {'95% interval':>19}"
             f"  {'over':>7}"]  # fmt: skip
    for m in metrics:
        lines.append(f"{m.name:22} {m.slice:13} {m.a:8.4f} {m.b:8.4f} {m.diff.value:+8.4f}  "
                     f"[{m.diff.low:+.4f}, {m.diff.high:+.4f}]  {m.units:7d}")  # fmt: skip
    lines.append(f"verdict: B {'is' if decision.better else 'is not'} better")
    lines += [f"  - {r}" for r in decision.reasons]
    return "\n".join(lines)
