"""The exported graphs' sparse front end: the trained tables pooled from padded indices.

Training pools a network's tables with torchrec over ``KeyedJaggedTensor``s; an exported graph
receives raw columns, which :class:`~pinrank.export.features.RawFeatures` turns into padded
indices and kept-masks. This module is the only difference: a :data:`~pinrank.models.wide_deep.
Pool` over those padded tensors (:func:`padded_pool`), the wide crosses computed from each pair's
indices (or, for a user feature crossed with a small candidate feature, from a per-user table), and
the parts a graph hands to the next. Everything after the front end is the network's own
:class:`~pinrank.models.wide_deep.RankerArch` (or :meth:`~pinrank.models.towers.Tower.head`),
called unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F

from pinrank.export.features import RawFeatures, Sparse, paired, pool
from pinrank.features.spec import Cross
from pinrank.models.components import SparseArch
from pinrank.models.wide_deep import Part, Pool, WideDeep


def padded_pool(rows: torch.Tensor) -> Pool:
    """The graphs' :data:`Pool`: what ``arch(kjt)`` computes, from a side's padded indices
    (``{feature: (indices, kept)}``) -> [B, sum of widths] in table order (``rows``: any tensor
    with B rows, for the width-0 case)."""

    def pool_arch(arch: SparseArch, feats: dict[str, Sparse]) -> torch.Tensor:
        if not arch.tables:
            return rows.new_zeros(rows.shape[0], 0, dtype=torch.float32)
        return torch.cat(
            [pool(arch.weight(t.feature), feats[t.feature], t.pooling) for t in arch.tables], 1
        )

    return pool_arch


class GraphPart(NamedTuple):
    """One side's :class:`Part` as a graph carries it, with what the pair-wise crosses need."""

    part: Part
    sparse: dict[str, Sparse]  # the features the pair-wise crosses read
    # users: per candidate feature, the summed table of the crosses in ``tabled`` [R, its
    # cardinality] (:func:`table_crosses`)
    tables: dict[str, torch.Tensor]
    tabled: frozenset[str] = frozenset()

    def take(self, index: torch.Tensor | None) -> dict[str, Sparse]:
        """The sparse features' rows ``index`` (all rows when ``None``); the part itself is
        taken by :meth:`RankerArch.combine`, and the tables are left whole
        (:func:`table_sum` gathers only the cells it reads)."""
        if index is None:
            return self.sparse
        return {k: (i[index], m[index]) for k, (i, m) in self.sparse.items()}


# A user bag x candidate feature cross is tabled by matmul when its grid of (left index, right
# index) pairs has at most this many cells (:func:`cross_table`)
PROFILE_GRID = 1 << 16
# ... and a cross is tabled at all only when its candidate feature has at most this many indices
TABLE_WIDTH = 1 << 12


def table_crosses(net: WideDeep, features: RawFeatures) -> list[Cross]:
    """The wide crosses of a user feature with a candidate feature of a small index space,
    which factorise per user.

    Per pair such a cross hashes and looks up every (user value, candidate value) pair: the
    user feature's kept values times the candidate's per candidate. But its sum is linear in
    the user's values, ``sum_a w_a sum_b t[h(a, b)] = sum_b T[b]`` with
    ``T[v] = sum_a w_a t[h(a, v)]`` for every candidate index ``v``, so the user part computes
    ``T`` once per user (:func:`cross_table`), the crosses of one candidate feature summed into
    one table (:func:`user_tables`), and each candidate only gathers that table at its own
    values (:func:`table_sum`). The maths is unchanged (up to the order of float additions).

    Tabled: every cross of a user feature with a candidate feature of at most
    :data:`TABLE_WIDTH` indices, where the user feature is single-valued (one lookup per user
    and candidate index) or a bag whose grid with the candidate feature has at most
    :data:`PROFILE_GRID` cells (a matmul per user)."""
    if not net.tables.cross.tables:
        return []
    spec, state = features.spec, features.state
    out = []
    for c in spec.crosses:
        left, right = spec[c.features[0]], spec[c.features[1]]
        if left.side != "user" or right.side == "user":
            continue
        width = int(state.crosses[c.name]["right_cardinality"])
        grid = state.cardinality(left.shares or left.name) * width
        if width <= TABLE_WIDTH and (left.kind == "categorical" or grid <= PROFILE_GRID):
            out.append(c)
    return out


def cross_table(
    net: WideDeep, features: RawFeatures, cross: Cross, sparse: dict[str, Sparse]
) -> torch.Tensor:
    """[U, right cardinality]: per user and candidate index ``v``, the weighted sum of the
    cross's wide weights over the user's kept values ``a`` of its first feature, each pair
    ``(a, v)`` weighing what :meth:`RawFeatures.crosses` gives it (1, or 1 / the kept values of
    a ``mean`` cross). A single-valued feature looks its pairs up directly; a bag is the user's
    weight per left index times the [left, right] grid of the table's weights at the hashed
    pairs."""
    left = features.spec[cross.features[0]]
    n_right = int(features.state.crosses[cross.name]["right_cardinality"])
    ia = sparse[cross.features[0]][0]
    w = features.left_weights(cross, sparse[cross.features[0]])
    weight = net.tables.cross.weight(cross.name)
    right = torch.arange(n_right, device=ia.device)
    if left.kind == "categorical":  # (U, 1): the user's own pairs, (U, 1, right) lookups
        ids = features.cross_ids(cross, ia[:, :, None], right[None, None, :])
        return (F.embedding(ids, weight)[..., 0] * w[:, :, None]).sum(dim=1)
    n_left = features.state.cardinality(left.shares or left.name)
    profile = torch.zeros(ia.shape[0], n_left, dtype=torch.float32, device=ia.device)
    profile = profile.scatter_add(1, ia, w)  # (U, left): the weight of each left index
    ids = features.cross_ids(cross, torch.arange(n_left, device=ia.device)[:, None], right[None])
    grid = F.embedding(ids, weight)[..., 0]  # (left, right)
    return profile @ grid


def table_groups(crosses: Sequence[Cross]) -> dict[str, list[Cross]]:
    """The tabled crosses by candidate feature, in spec order: each group is one table."""
    groups: dict[str, list[Cross]] = {}
    for c in crosses:
        groups.setdefault(c.features[1], []).append(c)
    return groups


def user_tables(
    net: WideDeep, features: RawFeatures, crosses: Sequence[Cross], sparse: dict[str, Sparse]
) -> dict[str, torch.Tensor]:
    """Per candidate feature, the sum of the ``crosses``' tables (:func:`cross_table`)."""
    out = {}
    for right, group in table_groups(crosses).items():
        tables = [cross_table(net, features, c, sparse) for c in group]
        out[right] = torch.stack(tables).sum(dim=0) if len(tables) > 1 else tables[0]
    return out


def table_sum(table: torch.Tensor, sparse: Sparse, user_index: torch.Tensor | None) -> torch.Tensor:
    """[N] the tabled crosses per candidate: each candidate's user's row of ``table``
    (``[U, R]``, gathered by ``user_index``, or row-aligned when ``None``) summed at its kept
    values."""
    ib, kb = sparse[0], paired(sparse)
    rows = user_index if user_index is not None else torch.arange(ib.shape[0], device=ib.device)
    flat = table.reshape(-1)[rows[:, None] * table.shape[1] + ib]  # (N, L)
    return (flat * kb.to(flat.dtype)).sum(dim=1)


def user_part(
    net: WideDeep,
    features: RawFeatures,
    x: dict[str, torch.Tensor],
    rows: torch.Tensor,
    tabled: Sequence[Cross] = (),
) -> GraphPart:
    """The users' :class:`Part` from raw columns, with their sparse features (for crosses)
    and the tables of the ``tabled`` crosses (:func:`user_tables`)."""
    sparse = features.sparse(x, "user")
    pooled = net.tables.user_side(padded_pool(rows), sparse)
    return GraphPart(
        net.arch.user(pooled, features.dense(x, "user", rows)),
        sparse,
        user_tables(net, features, tabled, sparse),
        frozenset(c.name for c in tabled),
    )


def candidate_part(
    net: WideDeep, features: RawFeatures, x: dict[str, torch.Tensor], rows: torch.Tensor
) -> GraphPart:
    """The candidates' :class:`Part` from raw columns, with their sparse features."""
    items, ctx = features.sparse(x, "item"), features.sparse(x, "context")
    pooled = net.tables.candidate_side(padded_pool(rows), items, ctx)
    dense = features.dense(x, "item", rows), features.dense(x, "context", rows)
    return GraphPart(net.arch.candidates(pooled, *dense), items | ctx, {})


def combine(
    net: WideDeep,
    features: RawFeatures,
    user: GraphPart,
    cand: GraphPart,
    user_index: torch.Tensor | None,
    item_index: torch.Tensor | None = None,
) -> torch.Tensor:
    """[N] logits of pairs (:meth:`RankerArch.combine`), users taken at ``user_index`` and
    candidates at ``item_index`` (row-aligned where ``None``). The crosses ``user.tabled``
    are summed from its tables, the others pair by pair."""
    cand_sparse = cand.take(item_index)
    n = cand.part.wide if item_index is None else item_index  # a tensor of one row per pair
    crosses = torch.zeros_like(n, dtype=torch.float32)
    pairs = [x for x in features.spec.crosses if x.name not in user.tabled]
    if net.tables.cross.tables and pairs:
        sums = features.crosses(user.take(user_index) | cand_sparse, pairs)
        for t in net.tables.cross.tables:
            if t.feature in sums:
                crosses = (
                    crosses
                    + pool(net.tables.cross.weight(t.feature), sums[t.feature], t.pooling)[:, 0]
                )
    for right, table in user.tables.items():
        crosses = crosses + table_sum(table, cand_sparse[right], user_index)
    return net.arch.combine(user.part, cand.part, crosses, user_index, item_index)


def cross_features(
    net: WideDeep, features: RawFeatures, user: bool = True, skip: Sequence[Cross] = ()
) -> list[str]:
    """Features of the user side (or, ``user=False``, of the candidate side) that the wide
    crosses read, but for the crosses in ``skip`` (the tabled crosses a user part carries as
    tables): a part graph hands them on to the graph that pairs users with candidates."""
    if not net.tables.cross.tables:
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
