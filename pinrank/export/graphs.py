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
  ``user_index = arange(B)``, so all three compute the same function. One difference: the
  crosses of a user bag with a candidate feature (an interest profile x the pin's interests)
  are summed by ``ranker_user`` into a table over the candidate feature's indices
  (:func:`profile_crosses`) that the pair graphs only gather; the per-pair graph, one user row
  per pair, computes them pair by pair.
- ranker_items + ranker_pairs (the catalogue factorisation, for scoring many feeds):
  ``ranker_items`` computes each candidate's part once ([M] catalogue rows with a context);
  ``ranker_pairs`` takes user parts, item parts, ``user_index`` and ``item_index`` [N] and does
  only the per-pair work (crosses, the MLP above the first layer, the projection product).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pinrank.calibration import EPS, Calibration
from pinrank.export.features import RawFeatures, Sparse, paired, pool
from pinrank.features.columns import ColumnSpec
from pinrank.features.spec import Cross, FeatureSpec
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


class Graph(nn.Module):
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


class TowerGraph(Graph):
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


class Part(NamedTuple):
    """One side's part of the ranker for its rows (users, or candidates: a pin and a context)."""

    first: torch.Tensor  # the side's half of the first layer [R, H]
    proj: torch.Tensor  # its projection [R, K]
    wide: torch.Tensor  # its wide terms [R]
    sparse: dict[str, Sparse]  # the features the pair-wise crosses read
    exam: torch.Tensor | None  # the examination logit [R] (candidates only)
    profiles: dict[str, torch.Tensor]  # profile crosses' tables [R, right cardinality] (users)


@dataclass(frozen=True)
class PartLayout:
    """How a part graph hands a :class:`Part` on (see :class:`_SidePartsGraph`): the prefix of
    its outputs, the features pair-wise crosses read, the profile crosses' tables (name ->
    right cardinality) and whether it carries an examination logit."""

    prefix: str
    crossed: tuple[str, ...]
    profiles: tuple[tuple[str, int], ...]
    exam: bool

    def outputs(self) -> list[str]:
        p = self.prefix
        return [
            f"{p}.first",
            f"{p}.proj",
            f"{p}.wide",
            *([f"{p}.exam"] if self.exam else []),
            *[n for f in self.crossed for n in (f"{p}.{f}.indices", f"{p}.{f}.kept")],
            *[f"{p}.{name}.table" for name, _ in self.profiles],
        ]

    def inputs(self, rows: str, net: WideDeep) -> list[GraphInput]:
        """Inputs carrying the part, in :meth:`outputs` order, with ``rows`` the batch axis."""
        p, hidden, k = self.prefix, net.user_first.out_features, net.user_proj.out_features
        out = [
            GraphInput(f"{p}.first", "float32", (rows, hidden)),
            GraphInput(f"{p}.proj", "float32", (rows, k)),
            GraphInput(f"{p}.wide", "float32", (rows,)),
        ]
        if self.exam:
            out.append(GraphInput(f"{p}.exam", "float32", (rows,)))
        for f in self.crossed:
            out += [
                GraphInput(f"{p}.{f}.indices", "int64", (rows, f"{p}.{f}.width")),
                GraphInput(f"{p}.{f}.kept", "bool", (rows, f"{p}.{f}.width")),
            ]
        out += [GraphInput(f"{p}.{n}.table", "float32", (rows, w)) for n, w in self.profiles]
        return out

    def part(self, x: dict[str, torch.Tensor]) -> Part:
        """The part from a graph's named inputs."""
        p = self.prefix
        return Part(
            x[f"{p}.first"],
            x[f"{p}.proj"],
            x[f"{p}.wide"],
            {f: (x[f"{p}.{f}.indices"], x[f"{p}.{f}.kept"]) for f in self.crossed},
            x[f"{p}.exam"] if self.exam else None,
            {name: x[f"{p}.{name}.table"] for name, _ in self.profiles},
        )

    def flatten(self, part: Part) -> tuple[torch.Tensor, ...]:
        """The part's tensors in :meth:`outputs` order."""
        if self.exam and part.exam is None:
            raise ValueError(f"the {self.prefix} part has no examination logit")
        return (
            part.first,
            part.proj,
            part.wide,
            *([part.exam] if self.exam and part.exam is not None else []),
            *[t for f in self.crossed for t in part.sparse[f]],
            *[part.profiles[name] for name, _ in self.profiles],
        )


# A user bag x candidate feature cross is computed per user (:func:`profile_crosses`) when its
# grid of (left index, right index) pairs has at most this many cells.
PROFILE_GRID = 1 << 16


def profile_crosses(net: WideDeep, features: RawFeatures) -> list[Cross]:
    """The wide crosses of a multi-valued user feature (a bag: an interest profile, a history)
    with a candidate feature of a small index space, which factorise per user.

    Per pair such a cross hashes and looks up every (profile value, candidate value) pair: the
    profile's length times the candidate's per candidate. But its sum is linear in the profile,
    ``sum_a w_a sum_b t[h(a, b)] = sum_b T[b]`` with ``T[v] = sum_a w_a t[h(a, v)]`` for every
    candidate index ``v``, so the user part computes ``T`` once per user (:func:`profile_table`)
    and each candidate only gathers ``T`` at its own values (:func:`profile_sum`). The maths is
    unchanged (up to the order of float additions)."""
    if not net.cross.arch.tables:
        return []
    spec, state = features.spec, features.state
    out = []
    for c in spec.crosses:
        left, right = spec[c.features[0]], spec[c.features[1]]
        if left.side != "user" or right.side == "user" or left.kind == "categorical":
            continue
        grid = state.cardinality(left.shares or left.name) * int(
            state.crosses[c.name]["right_cardinality"]
        )
        if grid <= PROFILE_GRID:
            out.append(c)
    return out


def profile_table(
    net: WideDeep, features: RawFeatures, cross: Cross, sparse: dict[str, Sparse]
) -> torch.Tensor:
    """[U, right cardinality]: per user and candidate index ``v``, the weighted sum of the
    cross's wide weights over the user's kept values ``a`` of its first feature, each pair
    ``(a, v)`` weighing what :meth:`RawFeatures.crosses` gives it (1, or 1 / the kept values of
    a ``mean`` cross). Computed as the user's weight per left index times the [left, right]
    grid of the table's weights at the hashed pairs."""
    left = features.spec[cross.features[0]]
    n_left = features.state.cardinality(left.shares or left.name)
    n_right = int(features.state.crosses[cross.name]["right_cardinality"])
    ia = sparse[cross.features[0]][0]
    w = features.left_weights(cross, sparse[cross.features[0]])
    profile = torch.zeros(ia.shape[0], n_left, dtype=torch.float32, device=ia.device)
    profile = profile.scatter_add(1, ia, w)  # (U, left): the weight of each left index
    ids = features.cross_ids(
        cross,
        torch.arange(n_left, device=ia.device)[:, None],
        torch.arange(n_right, device=ia.device)[None, :],
    )
    grid = F.embedding(ids, net.cross.arch.weight(cross.name))[..., 0]  # (left, right)
    return profile @ grid


def profile_sum(
    table: torch.Tensor, sparse: Sparse, user_index: torch.Tensor | None
) -> torch.Tensor:
    """[N] a profile cross per candidate: each candidate's user's row of ``table`` (``[U, R]``,
    gathered by ``user_index``, or row-aligned when ``None``) summed at its kept values."""
    ib, kb = sparse[0], paired(sparse)
    rows = user_index if user_index is not None else torch.arange(ib.shape[0], device=ib.device)
    flat = table.reshape(-1)[rows[:, None] * table.shape[1] + ib]  # (N, L)
    return (flat * kb.to(flat.dtype)).sum(dim=1)


def user_part(
    net: WideDeep,
    features: RawFeatures,
    x: dict[str, torch.Tensor],
    rows: torch.Tensor,
    profiles: Sequence[Cross] = (),
) -> Part:
    """``WideDeep.user_part`` from raw columns, plus the user's sparse features (for crosses)
    and the tables of the ``profiles`` crosses (:func:`profile_table`)."""
    sparse = features.sparse(x, "user")
    parts = [sparse_arch(net.user_sparse, sparse, rows)]
    if net.cfg.deep:
        parts.append(features.dense(x, "user", rows))
    h = torch.cat(parts, dim=1)  # (U, user width)
    return Part(
        net.user_first(h),
        net.user_proj(h),
        linear1(net.unigrams["user"], sparse, rows),
        sparse,
        None,
        {c.name: profile_table(net, features, c, sparse) for c in profiles},
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
    return Part(net.cand_first(h), net.cand_proj(h), wide, items | ctx, exam, {})


def _gather(part: Part, index: torch.Tensor | None) -> Part:
    """A part's rows ``index`` (all rows, unchanged, when ``None``); profile tables are left
    whole (:func:`profile_sum` gathers only the cells it reads)."""
    if index is None:
        return part
    return part._replace(
        first=part.first[index],
        proj=part.proj[index],
        wide=part.wide[index],
        sparse={k: (i[index], m[index]) for k, (i, m) in part.sparse.items()},
        exam=None if part.exam is None else part.exam[index],
    )


def combine(
    net: WideDeep,
    features: RawFeatures,
    user: Part,
    cand: Part,
    user_index: torch.Tensor | None,
    item_index: torch.Tensor | None = None,
) -> torch.Tensor:
    """``WideDeep.combine``: [N] logits; user parts gathered by ``user_index`` when users are
    shared, candidate parts by ``item_index`` when candidates are (the catalogue's parts). The
    crosses with a table in ``user.profiles`` are summed from it, the others pair by pair."""
    u, c = _gather(user, user_index), _gather(cand, item_index)
    logit = u.wide + c.wide
    pairs = [x for x in features.spec.crosses if x.name not in user.profiles]
    if net.cross.arch.tables and pairs:
        crosses = features.crosses(u.sparse | c.sparse, pairs)
        for t in net.cross.arch.tables:
            if t.feature in crosses:
                w = net.cross.arch.weight(t.feature)
                logit = logit + pool(w, crosses[t.feature], t.pooling)[:, 0]
    for x in features.spec.crosses:
        if x.name in user.profiles:
            logit = logit + profile_sum(user.profiles[x.name], c.sparse[x.features[1]], user_index)
    if net.head is not None:
        logit = logit + net.head(u.first + c.first).squeeze(1)
    if u.proj.shape[1]:
        logit = logit + (u.proj * c.proj).sum(dim=1)
    if c.exam is not None:
        logit = examined_logit(logit, c.exam)
    return logit


def cross_features(
    net: WideDeep, features: RawFeatures, user: bool = True, skip: Sequence[Cross] = ()
) -> list[str]:
    """Features of the user side (or, ``user=False``, of the candidate side) that the wide
    crosses read, but for the crosses in ``skip`` (the profile crosses a user part carries as
    tables): a part graph hands them on to the graph that pairs users with candidates."""
    if not net.cross.arch.tables:
        return []
    users = {f.name for f in features.spec.side("user", sparse=True)}
    skipped = {c.name for c in skip}
    names = [
        n
        for c in features.spec.crosses
        if c.name not in skipped
        for n in c.features
        if (n in users) == user
    ]
    return list(dict.fromkeys(names))


class RankerGraph(Graph):
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


class _SidePartsGraph(Graph):
    """Raw columns of one side [R] -> that side's part of the ranker (``{prefix}.first`` [R, H],
    ``.proj`` [R, K], ``.wide`` [R], on the candidate side of a ranker with an examination tower
    ``.exam`` [R], per feature a pair-wise cross reads ``.{f}.indices`` int64 [R, L] and
    ``.{f}.kept`` bool [R, L], and on the user side per profile cross ``.{cross}.table`` float32
    [R, right cardinality] (:func:`profile_crosses`)): :func:`user_part` for the user side, else
    :func:`candidate_part` over the item and context columns."""

    def __init__(self, features: RawFeatures, net: WideDeep, user: bool) -> None:
        prefix, rows = ("user", "users") if user else ("item", "items")
        cols = [c for c in features.columns.values() if (c.side == "user") == user]
        super().__init__(column_inputs(cols, rows), features)
        self.net, self.user = net, user
        self.profiles = profile_crosses(net, features) if user else []
        self.layout = PartLayout(
            prefix,
            tuple(cross_features(net, features, user=user, skip=self.profiles)),
            tuple(
                (c.name, int(features.state.crosses[c.name]["right_cardinality"]))
                for c in self.profiles
            ),
            _has_exam(net, prefix),
        )
        self.output_names = tuple(self.layout.outputs())

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = self.named(args)
        rows = x[self.torch_inputs[0].name]
        if self.user:
            part = user_part(self.net, self.features, x, rows, self.profiles)
        else:
            part = candidate_part(self.net, self.features, x, rows)
        return self.layout.flatten(part)


def _has_exam(net: WideDeep, prefix: str) -> bool:
    """Whether a part of side ``prefix`` carries an examination logit."""
    return prefix == "item" and net.examination is not None


class RankerUserGraph(_SidePartsGraph):
    """Raw user columns [U] -> each user's part of the ranker, computed once per feed
    (``user.*``, see :class:`_SidePartsGraph`)."""

    def __init__(self, features: RawFeatures, net: WideDeep) -> None:
        super().__init__(features, net, user=True)


class RankerFeedGraph(Graph):
    """Users' parts (from :class:`RankerUserGraph`), ``user_index`` int64 [N] and raw
    candidate columns [N] -> calibrated ``probability`` and ``logit`` [N]."""

    output_names = ("probability", "logit")

    def __init__(
        self, features: RawFeatures, net: WideDeep, calibration: Calibration, user: RankerUserGraph
    ) -> None:
        parts = user.layout.inputs("users", net)
        parts.append(GraphInput("user_index", "int64", ("candidates",)))
        cols = [c for c in features.columns.values() if c.side != "user"]
        super().__init__(parts + column_inputs(cols, "candidates"), features)
        self.net, self.calibration, self.layout = net, calibration, user.layout

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.named(args)
        cand = candidate_part(self.net, self.features, x, x["user_index"])
        logit = combine(self.net, self.features, self.layout.part(x), cand, x["user_index"])
        return calibrate(logit, self.calibration), logit


class RankerItemsGraph(_SidePartsGraph):
    """Raw item and context columns [M] -> each candidate's part, computed once per catalogue
    (and context): ``item.*`` (see :class:`_SidePartsGraph`), ``item.first`` with the layer's
    bias and ``item.wide`` with the global bias."""

    def __init__(self, features: RawFeatures, net: WideDeep) -> None:
        super().__init__(features, net, user=False)


class RankerPairsGraph(Graph):
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
        inputs = user.layout.inputs("users", net) + items.layout.inputs("items", net)
        inputs += [
            GraphInput("user_index", "int64", ("pairs",)),
            GraphInput("item_index", "int64", ("pairs",)),
        ]
        super().__init__(inputs, features)
        self.net, self.calibration = net, calibration
        self.layouts = (user.layout, items.layout)

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.named(args)
        logit = combine(
            self.net,
            self.features,
            self.layouts[0].part(x),
            self.layouts[1].part(x),
            x["user_index"],
            x["item_index"],
        )
        return calibrate(logit, self.calibration), logit


def graphs_for(
    net: nn.Module,
    spec: FeatureSpec,
    state: FeatureState,
    columns: list[ColumnSpec],
    calibration: Calibration | None = None,
) -> dict[str, Graph]:
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
