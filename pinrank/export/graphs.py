"""The trained networks as exportable graphs from raw columns to their final outputs.

Each graph shares the trained network's parameters and layers (no copy of the maths): the
sparse archs' tables are pooled from :class:`~pinrank.export.features.RawFeatures`' padded
indices instead of KeyedJaggedTensors, and the MLPs, projections and biases are the network's own
modules. Graphs take their inputs positionally in the order of ``input_names`` (the exporter
needs plain tensors) and are built by :func:`graphs_for`.

- tower: raw columns of one side -> ``embedding`` float32 [B, D] (L2-normalised).
- ranker (per pair): raw user, item and context columns, one row per pair -> ``probability``
  (calibrated) and ``logit``, float32 [B].
- ranker_user + ranker_feed (the per-feed factorisation): ``ranker_user`` computes each user's
  part once ([U] rows); ``ranker_feed`` takes those parts, ``user_index`` int64 [N] and the raw
  candidate columns -> ``probability`` and ``logit`` [N]. The per-pair graph is these two with
  ``user_index = arange(B)``, so all three compute the same function.
- ranker_items + ranker_pairs (the catalogue factorisation, for scoring many feeds):
  ``ranker_items`` computes each candidate's part once ([M] catalogue rows with a context);
  ``ranker_pairs`` takes user parts, item parts, ``user_index`` and ``item_index`` [N] and does
  only the per-pair work (crosses, the MLP above the first layer, the projection product).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pinrank.calibration import EPS, Calibration
from pinrank.export.features import RawFeatures, Sparse, pool
from pinrank.features.columns import ColumnSpec
from pinrank.features.spec import FeatureSpec
from pinrank.features.state import FeatureState
from pinrank.models.components import SparseArch
from pinrank.models.towers import Tower, TwoTower
from pinrank.models.wide_deep import WideDeep, examined_logit


@dataclass(frozen=True)
class GraphInput:
    """One input of a graph: its name, ONNX element type, and per axis a size or a symbol."""

    name: str
    dtype: str  # int64 | float64 | float32 | string | bool
    shape: tuple[int | str, ...]

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


def column_inputs(columns: list[ColumnSpec], rows: str) -> list[GraphInput]:
    """Graph inputs of raw columns, with ``rows`` as the symbol of the batch axis."""
    dtypes = {"int": "int64", "float": "float64", "string": "string", "int_list": "int64"}
    out = []
    for c in columns:
        if c.kind == "vector":
            out.append(GraphInput(c.name, "float64", (rows, c.dim)))
        elif c.kind == "int_list":
            out.append(GraphInput(c.name, "int64", (rows, f"{c.name}.width")))
            out.append(GraphInput(c.lengths_name, "int64", (rows,)))
        else:
            out.append(GraphInput(c.name, dtypes[c.kind], (rows,)))
    return out


def sparse_arch(arch: SparseArch, feats: dict[str, Sparse], rows: torch.Tensor) -> torch.Tensor:
    """What ``arch(kjt)`` computes, from padded indices: [B, sum of widths] in table order."""
    if not arch.tables:
        return rows.new_zeros(rows.shape[0], 0, dtype=torch.float32)
    return torch.cat(
        [pool(arch.weight(t.feature), feats[t.feature], t.pooling) for t in arch.tables], 1
    )


def linear1(module: nn.Module, feats: dict[str, Sparse], rows: torch.Tensor) -> torch.Tensor:
    """A sum of 1-wide tables (the wide part's ``_Linear1``, its ``arch``) -> [B]."""
    arch = getattr(module, "arch", module)
    if not isinstance(arch, SparseArch):
        raise TypeError(f"expected a 1-wide SparseArch, got {type(arch).__name__}")
    return sparse_arch(arch, feats, rows).sum(dim=1)


class _Graph(nn.Module):
    """Positional tensor inputs -> a dict by name (string inputs are not torch inputs)."""

    output_names: tuple[str, ...] = ()

    def __init__(self, inputs: list[GraphInput], features: RawFeatures) -> None:
        super().__init__()
        self.inputs, self.features = inputs, features
        vocab = features.vocab_inputs()
        self.vocab = vocab
        # what torch receives: raw non-string columns, then the LabelEncoder outputs
        self.torch_inputs = [i for i in inputs if i.dtype != "string"] + [
            GraphInput(name, "int64", self._vocab_shape(col.name))
            for name, (_, col) in vocab.items()
        ]

    def _vocab_shape(self, column: str) -> tuple[int | str, ...]:
        return next(i.shape for i in self.inputs if i.name == column)

    def named(self, args: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
        return dict(zip([i.name for i in self.torch_inputs], args, strict=True))


class TowerGraph(_Graph):
    """Raw columns of one side -> the tower's normalised embedding [B, D]."""

    output_names = ("embedding",)

    def __init__(self, features: RawFeatures, tower: Tower, side: str) -> None:
        cols = [c for c in features.columns.values() if c.side == side]
        super().__init__(column_inputs(cols, "batch"), features)
        self.tower, self.side = tower, side

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        x = self.named(args)
        rows = x[self.torch_inputs[0].name]
        h = torch.cat(
            [
                sparse_arch(self.tower.sparse, self.features.sparse(x, self.side), rows),
                self.features.dense(x, self.side, rows),
            ],
            dim=1,
        )  # (B, sum widths + dense)
        return F.normalize(self.tower.mlp(h), dim=1)


def calibrate(logit: torch.Tensor, cal: Calibration) -> torch.Tensor:
    """:class:`~pinrank.calibration.Calibration` in torch: float64 maths, float32 out."""
    z = logit.double()
    if cal.method == "platt":
        p = torch.sigmoid(cal.params["a"] * z + cal.params["b"])
    elif cal.method == "isotonic":  # np.interp as a sum of clamped linear pieces
        xs, ys = np.asarray(cal.params["x"], np.float64), np.asarray(cal.params["y"], np.float64)
        dx, dy = np.diff(xs), np.diff(ys)
        keep = dx > 0
        x0 = torch.tensor(xs[:-1][keep], device=z.device)
        width = torch.tensor(dx[keep], device=z.device)
        slope = torch.tensor(dy[keep] / dx[keep], device=z.device)
        p = float(ys[0]) + (torch.minimum(torch.clamp(z[:, None] - x0, min=0), width) * slope).sum(
            1
        )
    else:
        p = torch.sigmoid(z)
    return p.clamp(EPS, 1 - EPS).float()


# ------------------------------------------------------------------------------------ ranker

# first, proj, wide, the sparse features crosses read, the examination logit (candidates only)
Part = tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, Sparse], torch.Tensor | None]


def user_part(
    net: WideDeep, features: RawFeatures, x: dict[str, torch.Tensor], rows: torch.Tensor
) -> Part:
    """``WideDeep.user_part`` from raw columns, plus the user's sparse features (for crosses)."""
    sparse = features.sparse(x, "user")
    parts = [sparse_arch(net.user_sparse, sparse, rows)]
    if net.cfg.deep:
        parts.append(features.dense(x, "user", rows))
    h = torch.cat(parts, dim=1)  # (U, user width)
    return (
        net.user_first(h),
        net.user_proj(h),
        linear1(net.unigrams["user"], sparse, rows),
        sparse,
        None,
    )


def candidate_part(
    net: WideDeep, features: RawFeatures, x: dict[str, torch.Tensor], rows: torch.Tensor
) -> Part:
    """``WideDeep.candidate_part`` from raw columns, plus the candidates' sparse features."""
    items, ctx = features.sparse(x, "item"), features.sparse(x, "context")
    ctx_dense = features.dense(x, "context", rows)
    exam = None
    if net.examination is not None:
        exam = net.examination(sparse_arch(net.examination.sparse, ctx, rows), ctx_dense)
    if net.context_dense is not None:
        ctx_dense = ctx_dense[:, net.context_dense]
    parts = [sparse_arch(net.item_sparse, items, rows), sparse_arch(net.context_sparse, ctx, rows)]
    if net.cfg.deep:
        parts += [features.dense(x, "item", rows), ctx_dense]
    h = torch.cat(parts, dim=1)  # (N, candidate width)
    wide = (
        linear1(net.unigrams["item"], items, rows)
        + linear1(net.unigrams["context"], ctx, rows)
        + net.bias
    )
    return net.cand_first(h), net.cand_proj(h), wide, items | ctx, exam


def _gather(part: Part, index: torch.Tensor | None) -> Part:
    """A part's rows ``index`` (all rows, unchanged, when ``None``)."""
    if index is None:
        return part
    first, proj, wide, sparse, exam = part
    taken = {k: (i[index], m[index]) for k, (i, m) in sparse.items()}
    return first[index], proj[index], wide[index], taken, None if exam is None else exam[index]


def combine(
    net: WideDeep,
    features: RawFeatures,
    user: Part,
    cand: Part,
    user_index: torch.Tensor | None,
    item_index: torch.Tensor | None = None,
) -> torch.Tensor:
    """``WideDeep.combine``: [N] logits; user parts gathered by ``user_index`` when users are
    shared, candidate parts by ``item_index`` when candidates are (the catalogue's parts)."""
    u_first, u_proj, u_wide, u_sparse, _ = _gather(user, user_index)
    c_first, c_proj, c_wide, c_sparse, c_exam = _gather(cand, item_index)
    logit = u_wide + c_wide
    if net.cross.arch.tables:
        crosses = features.crosses(u_sparse | c_sparse, list(features.spec.crosses))
        logit = logit + linear1(net.cross, crosses, c_wide)
    if net.head is not None:
        logit = logit + net.head(u_first + c_first).squeeze(1)
    if u_proj.shape[1]:
        logit = logit + (u_proj * c_proj).sum(dim=1)
    if c_exam is not None:
        logit = examined_logit(logit, c_exam)
    return logit


def cross_features(net: WideDeep, features: RawFeatures, user: bool = True) -> list[str]:
    """Features of the user side (or, ``user=False``, of the candidate side) that the wide
    crosses read: a part graph hands them on to the graph that pairs users with candidates."""
    if not net.cross.arch.tables:
        return []
    users = {f.name for f in features.spec.side("user", sparse=True)}
    names = [n for c in features.spec.crosses for n in c.features if (n in users) == user]
    return list(dict.fromkeys(names))


class RankerGraph(_Graph):
    """Raw user, item and context columns (one row per pair) -> calibrated ``probability`` and
    ``logit`` [B]."""

    output_names = ("probability", "logit")

    def __init__(self, features: RawFeatures, net: WideDeep, calibration: Calibration) -> None:
        super().__init__(column_inputs(list(features.columns.values()), "batch"), features)
        self.net, self.calibration = net, calibration

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.named(args)
        rows = x[self.torch_inputs[0].name]
        logit = combine(
            self.net,
            self.features,
            user_part(self.net, self.features, x, rows),
            candidate_part(self.net, self.features, x, rows),
            None,
        )
        return calibrate(logit, self.calibration), logit


class _SidePartsGraph(_Graph):
    """Raw columns of one side [R] -> that side's part of the ranker (``{prefix}.first`` [R, H],
    ``.proj`` [R, K], ``.wide`` [R], on the candidate side of a ranker with an examination tower
    ``.exam`` [R], and per feature a cross reads ``.{f}.indices`` int64 [R, L] and ``.{f}.kept``
    bool [R, L]): :func:`user_part` for the user side, else :func:`candidate_part` over the item
    and context columns."""

    def __init__(self, features: RawFeatures, net: WideDeep, user: bool) -> None:
        prefix, rows = ("user", "users") if user else ("item", "items")
        cols = [c for c in features.columns.values() if (c.side == "user") == user]
        super().__init__(column_inputs(cols, rows), features)
        self.net, self.user = net, user
        self.cross_features = cross_features(net, features, user=user)
        crossed = [
            n for f in self.cross_features for n in (f"{prefix}.{f}.indices", f"{prefix}.{f}.kept")
        ]
        exam = [f"{prefix}.exam"] if _has_exam(net, prefix) else []
        self.output_names = (f"{prefix}.first", f"{prefix}.proj", f"{prefix}.wide", *exam, *crossed)

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = self.named(args)
        part = user_part if self.user else candidate_part
        rows = x[self.torch_inputs[0].name]
        first, proj, wide, sparse, exam = part(self.net, self.features, x, rows)
        exams = [] if exam is None else [exam]
        return (first, proj, wide, *exams, *[t for f in self.cross_features for t in sparse[f]])


def _has_exam(net: WideDeep, prefix: str) -> bool:
    """Whether a part of side ``prefix`` carries an examination logit."""
    return prefix == "item" and net.examination is not None


class RankerUserGraph(_SidePartsGraph):
    """Raw user columns [U] -> each user's part of the ranker, computed once per feed
    (``user.*``, see :class:`_SidePartsGraph`)."""

    def __init__(self, features: RawFeatures, net: WideDeep) -> None:
        super().__init__(features, net, user=True)


class RankerFeedGraph(_Graph):
    """Users' parts (from :class:`RankerUserGraph`), ``user_index`` int64 [N] and raw
    candidate columns [N] -> calibrated ``probability`` and ``logit`` [N]."""

    output_names = ("probability", "logit")

    def __init__(
        self, features: RawFeatures, net: WideDeep, calibration: Calibration, user: RankerUserGraph
    ) -> None:
        parts = _part_inputs("user", "users", net, user.cross_features)
        parts.append(GraphInput("user_index", "int64", ("candidates",)))
        cols = [c for c in features.columns.values() if c.side != "user"]
        super().__init__(parts + column_inputs(cols, "candidates"), features)
        self.net, self.calibration = net, calibration
        self.cross_features = user.cross_features

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.named(args)
        sparse = {f: (x[f"user.{f}.indices"], x[f"user.{f}.kept"]) for f in self.cross_features}
        user = (x["user.first"], x["user.proj"], x["user.wide"], sparse, None)
        cand = candidate_part(self.net, self.features, x, x["user_index"])
        logit = combine(self.net, self.features, user, cand, x["user_index"])
        return calibrate(logit, self.calibration), logit


def _part_inputs(prefix: str, rows: str, net: WideDeep, crossed: list[str]) -> list[GraphInput]:
    """Inputs carrying a part (``{prefix}.first``, ``.proj``, ``.wide``, ``.exam`` where the
    part has one, and crossed features)."""
    hidden, k = net.user_first.out_features, net.user_proj.out_features
    out = [
        GraphInput(f"{prefix}.first", "float32", (rows, hidden)),
        GraphInput(f"{prefix}.proj", "float32", (rows, k)),
        GraphInput(f"{prefix}.wide", "float32", (rows,)),
    ]
    if _has_exam(net, prefix):
        out.append(GraphInput(f"{prefix}.exam", "float32", (rows,)))
    for f in crossed:
        out += [
            GraphInput(f"{prefix}.{f}.indices", "int64", (rows, f"{prefix}.{f}.width")),
            GraphInput(f"{prefix}.{f}.kept", "bool", (rows, f"{prefix}.{f}.width")),
        ]
    return out


class RankerItemsGraph(_SidePartsGraph):
    """Raw item and context columns [M] -> each candidate's part, computed once per catalogue
    (and context): ``item.*`` (see :class:`_SidePartsGraph`), ``item.first`` with the layer's
    bias and ``item.wide`` with the global bias."""

    def __init__(self, features: RawFeatures, net: WideDeep) -> None:
        super().__init__(features, net, user=False)


class RankerPairsGraph(_Graph):
    """Users' parts (:class:`RankerUserGraph`) and candidates' parts (:class:`RankerItemsGraph`)
    with ``user_index`` and ``item_index`` int64 [N] -> calibrated ``probability`` and ``logit``
    [N]: per pair only the crosses, the MLP above the first layer and the projection product."""

    output_names = ("probability", "logit")

    def __init__(
        self,
        features: RawFeatures,
        net: WideDeep,
        calibration: Calibration,
        user: RankerUserGraph,
        items: RankerItemsGraph,
    ) -> None:
        inputs = _part_inputs("user", "users", net, user.cross_features)
        inputs += _part_inputs("item", "items", net, items.cross_features)
        inputs += [
            GraphInput("user_index", "int64", ("pairs",)),
            GraphInput("item_index", "int64", ("pairs",)),
        ]
        super().__init__(inputs, features)
        self.net, self.calibration = net, calibration
        self.user_crossed, self.item_crossed = user.cross_features, items.cross_features

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.named(args)
        parts = []
        for prefix, crossed in (("user", self.user_crossed), ("item", self.item_crossed)):
            sparse = {f: (x[f"{prefix}.{f}.indices"], x[f"{prefix}.{f}.kept"]) for f in crossed}
            exam = x[f"{prefix}.exam"] if _has_exam(self.net, prefix) else None
            first, proj, wide = (x[f"{prefix}.{n}"] for n in ("first", "proj", "wide"))
            parts.append((first, proj, wide, sparse, exam))
        logit = combine(
            self.net, self.features, parts[0], parts[1], x["user_index"], x["item_index"]
        )
        return calibrate(logit, self.calibration), logit


def graphs_for(
    net: nn.Module,
    spec: FeatureSpec,
    state: FeatureState,
    columns: list[ColumnSpec],
    calibration: Calibration | None = None,
) -> dict[str, _Graph]:
    """Every graph of a trained network by package name: the towers of a ``TwoTower``; the
    ranker per pair, ``ranker_user`` and ``ranker_feed`` of a ``WideDeep`` (which needs its
    ``calibration``)."""
    cols = {s: [c for c in columns if c.side == s] for s in ("user", "item", "context")}
    if isinstance(net, TwoTower):
        return {
            f"{side}_tower": TowerGraph(RawFeatures(spec, state, cols[side]), tower, side)
            for side, tower in (("user", net.user_tower), ("item", net.item_tower))
        }
    if not isinstance(net, WideDeep):
        raise TypeError(f"no graphs for a {type(net).__name__}")
    if calibration is None:
        raise ValueError("a ranker is exported with its calibration")
    user = RankerUserGraph(RawFeatures(spec, state, cols["user"]), net)
    candidates = cols["item"] + cols["context"]
    items = RankerItemsGraph(RawFeatures(spec, state, candidates), net)
    return {  # in export order: a part graph before the graphs that take its outputs
        "ranker": RankerGraph(RawFeatures(spec, state, columns), net, calibration),
        "ranker_user": user,
        "ranker_feed": RankerFeedGraph(
            RawFeatures(spec, state, candidates), net, calibration, user
        ),
        "ranker_items": items,
        "ranker_pairs": RankerPairsGraph(
            RawFeatures(spec, state, []), net, calibration, user, items
        ),
    }
