"""The trained networks as exportable graphs from raw columns to their final outputs.

Each graph is the trained network with another sparse front end (:mod:`pinrank.export.front`):
its tables are pooled from :class:`~pinrank.export.features.RawFeatures`' padded indices instead
of KeyedJaggedTensors, and everything after that is the network's own module, called unchanged
(the ranker's :class:`~pinrank.models.wide_deep.RankerArch`, a tower's
:meth:`~pinrank.models.towers.Tower.head`): no copy of the maths. Graphs take their inputs
positionally in the order of ``input_names`` (the exporter needs plain tensors) and are built by
:func:`graphs_for`.

- tower: raw columns of one side -> ``embedding`` float32 [B, D] (L2-normalised).
- ranker (per pair): raw user, item and context columns, one row per pair -> ``probability``
  (calibrated) and ``logit``, float32 [B].
- ranker_user + ranker_feed (the per-feed factorisation): ``ranker_user`` computes each user's
  part once ([U] rows); ``ranker_feed`` takes those parts, ``user_index`` int64 [N] and the raw
  candidate columns -> ``probability`` and ``logit`` [N]. The per-pair graph is these two with
  ``user_index = arange(B)``, so all three compute the same function. One difference: the
  crosses of a user feature with a small candidate feature (the gender, an interest profile x
  the pin's interests) are summed by ``ranker_user`` into one table per candidate feature over
  its indices (:func:`~pinrank.export.front.table_crosses`) that the pair graphs only gather;
  the per-pair graph, one user row per pair, computes them pair by pair.
- ranker_items + ranker_pairs (the catalogue factorisation, for scoring many feeds):
  ``ranker_items`` computes each candidate's part once ([M] catalogue rows with a context);
  ``ranker_pairs`` takes user parts, item parts, ``user_index`` and ``item_index`` [N] and does
  only the per-pair work (crosses, the MLP above the first layer, the projection product).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from pinrank.calibration import EPS, Calibration
from pinrank.export.features import RawFeatures
from pinrank.export.front import (
    GraphPart,
    candidate_part,
    combine,
    cross_features,
    padded_pool,
    table_crosses,
    table_groups,
    user_part,
)
from pinrank.features.columns import ColumnSpec
from pinrank.features.spec import FeatureSpec
from pinrank.features.state import FeatureState
from pinrank.models.towers import Tower, TwoTower
from pinrank.models.wide_deep import Part, WideDeep


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
        pooled = padded_pool(rows)(self.tower.sparse, self.features.sparse(x, self.side))
        return self.tower.head(pooled, self.features.dense(x, self.side, rows))


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


@dataclass(frozen=True)
class PartLayout:
    """How a part graph hands a :class:`GraphPart` on: the prefix of its outputs, the features
    pair-wise crosses read, the tables of the tabled crosses (candidate feature -> its
    cardinality), whether it carries an examination logit, and the tabled crosses' names."""

    prefix: str
    crossed: tuple[str, ...]
    tables: tuple[tuple[str, int], ...]
    exam: bool
    tabled: frozenset[str] = frozenset()

    def outputs(self) -> list[str]:
        p = self.prefix
        return [
            f"{p}.first",
            f"{p}.proj",
            f"{p}.wide",
            *([f"{p}.exam"] if self.exam else []),
            *[n for f in self.crossed for n in (f"{p}.{f}.indices", f"{p}.{f}.kept")],
            *[f"{p}.x_{name}.table" for name, _ in self.tables],
        ]

    def inputs(self, rows: str, net: WideDeep) -> list[GraphInput]:
        """Inputs carrying the part, in :meth:`outputs` order, with ``rows`` the batch axis."""
        p, (hidden, k) = self.prefix, net.arch.part_widths
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
        out += [GraphInput(f"{p}.x_{n}.table", "float32", (rows, w)) for n, w in self.tables]
        return out

    def part(self, x: dict[str, torch.Tensor]) -> GraphPart:
        """The part from a graph's named inputs."""
        p = self.prefix
        return GraphPart(
            Part(
                x[f"{p}.first"],
                x[f"{p}.proj"],
                x[f"{p}.wide"],
                x[f"{p}.exam"] if self.exam else None,
            ),
            {f: (x[f"{p}.{f}.indices"], x[f"{p}.{f}.kept"]) for f in self.crossed},
            {name: x[f"{p}.x_{name}.table"] for name, _ in self.tables},
            self.tabled,
        )

    def flatten(self, gp: GraphPart) -> tuple[torch.Tensor, ...]:
        """The part's tensors in :meth:`outputs` order."""
        part = gp.part
        if self.exam and part.exam is None:
            raise ValueError(f"the {self.prefix} part has no examination logit")
        return (
            part.first,
            part.proj,
            part.wide,
            *([part.exam] if self.exam and part.exam is not None else []),
            *[t for f in self.crossed for t in gp.sparse[f]],
            *[gp.tables[name] for name, _ in self.tables],
        )


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
    ``.{f}.kept`` bool [R, L], and on the user side per candidate feature ``f`` of the tabled
    crosses ``.x_{f}.table`` float32 [R, its cardinality] (:func:`table_crosses`)):
    :func:`user_part` for the user side, else
    :func:`candidate_part` over the item and context columns."""

    def __init__(self, features: RawFeatures, net: WideDeep, user: bool) -> None:
        prefix, rows = ("user", "users") if user else ("item", "items")
        cols = [c for c in features.columns.values() if (c.side == "user") == user]
        super().__init__(column_inputs(cols, rows), features)
        self.net, self.user = net, user
        self.tabled = table_crosses(net, features) if user else []
        self.layout = PartLayout(
            prefix,
            tuple(cross_features(net, features, user=user, skip=self.tabled)),
            tuple(
                (right, int(features.state.crosses[group[0].name]["right_cardinality"]))
                for right, group in table_groups(self.tabled).items()
            ),
            _has_exam(net, prefix),
            frozenset(c.name for c in self.tabled),
        )
        self.output_names = tuple(self.layout.outputs())

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = self.named(args)
        rows = x[self.torch_inputs[0].name]
        if self.user:
            part = user_part(self.net, self.features, x, rows, self.tabled)
        else:
            part = candidate_part(self.net, self.features, x, rows)
        return self.layout.flatten(part)


def _has_exam(net: WideDeep, prefix: str) -> bool:
    """Whether a part of side ``prefix`` carries an examination logit."""
    return prefix == "item" and net.arch.examination is not None


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
