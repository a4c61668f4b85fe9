"""The feature spec's transforms as torch operations on raw columns, for export to ONNX.

:class:`RawFeatures` computes from the raw input columns (:mod:`pinrank.features.columns`) what
the NumPy featurizer computes from Arrow rows: per sparse feature, padded indices and a mask of
the values kept; per side, the dense float32 matrix. Vocabulary lookups are the one step torch
cannot express on strings: they arrive as inputs ``vocab.{owner}@{column}`` that the exported
graph computes with an ``ai.onnx.ml`` LabelEncoder in front (:mod:`pinrank.export.onnx`).
Everything else (missing values, valid ranges, hashing, bucketize, truncation, crosses, log1p,
clip, standardize) is written here once and held to the featurizer by the parity tests.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pinrank.features.columns import INT_NULL, ColumnSpec
from pinrank.features.spec import HASH_PRIME, Cross, Feature, FeatureSpec
from pinrank.features.state import FeatureState

# indices int64 [B, L], kept bool [B, L] (a mean cross: float32 per-pair weights, 0 = not kept)
Sparse = tuple[torch.Tensor, torch.Tensor]


def vocab_input(f: Feature, column: ColumnSpec) -> str:
    """Name of the LabelEncoder output that ``f`` reads: one per (vocabulary, column)."""
    return f"vocab.{f.shares or f.name}@{column.name}"


def hash_torch(x: torch.Tensor, a: int, b: int, buckets: int) -> torch.Tensor:
    """:func:`pinrank.features.transforms.hash_ids` in torch (int64, no overflow)."""
    return ((x % HASH_PRIME) * a + b) % HASH_PRIME % buckets + 1


class RawFeatures(nn.Module):
    """Raw columns of some sides -> padded sparse indices and dense matrices.

    Args:
        spec / state: the feature spec and its fitted state.
        columns: the input columns of every side this graph reads.
    """

    def __init__(self, spec: FeatureSpec, state: FeatureState, columns: list[ColumnSpec]) -> None:
        super().__init__()
        self.spec, self.state = spec, state
        self.columns = {(c.side, c.column): c for c in columns}
        self.sides = list(dict.fromkeys(c.side for c in columns))

    def vocab_inputs(self) -> dict[str, tuple[Feature, ColumnSpec]]:
        """LabelEncoder outputs the graph needs: name -> (feature, its raw column)."""
        out = {}
        for side in self.sides:
            for f in self.spec.side(side, sparse=True):
                owner = self.state.features[f.shares or f.name]
                if "vocab" in owner:
                    col = self.columns[(side, f.source)]
                    out[vocab_input(f, col)] = (f, col)
        return out

    def sparse(self, x: dict[str, torch.Tensor], side: str) -> dict[str, Sparse]:
        """Padded indices and kept-masks of a side's sparse features."""
        return {f.name: self._categorical(f, x) for f in self.spec.side(side, sparse=True)}

    def dense(self, x: dict[str, torch.Tensor], side: str, rows: torch.Tensor) -> torch.Tensor:
        """float32 [B, D_side]: the side's numeric features in spec order (``rows``: any
        tensor with B rows, for the width-0 case)."""
        feats = self.spec.side(side, sparse=False)
        if not feats:
            return rows.new_zeros(rows.shape[0], 0, dtype=torch.float32)
        return torch.cat([self._numeric(f, x) for f in feats], dim=1).float()

    def crosses(self, by_name: dict[str, Sparse], crosses: list[Cross]) -> dict[str, Sparse]:
        """Hashed crosses of row-aligned sparse features: every kept pair, missing (0) skipped.

        The second element is the kept-mask, or for a ``mean`` cross the float32 weight of each
        pair (1 / the row's kept first-feature values, 0 where not kept), as the featurizer's
        KeyedJaggedTensor weights; the wide part sums the pairs' rows times it."""
        out: dict[str, Sparse] = {}
        for c in crosses:
            ia, ib = by_name[c.features[0]][0], by_name[c.features[1]][0]
            wa, kb = self.left_weights(c, by_name[c.features[0]]), paired(by_name[c.features[1]])
            keep = ((wa > 0)[:, :, None] & kb[:, None, :]).flatten(1)
            idx = self.cross_ids(c, ia[:, :, None], ib[:, None, :]).flatten(1)
            idx = torch.where(keep, idx, torch.zeros_like(idx))
            if c.pooling == "mean":
                out[c.name] = (idx, (wa[:, :, None] * kb[:, None, :].to(wa.dtype)).flatten(1))
            else:
                out[c.name] = (idx, keep)
        return out

    def cross_ids(self, cross: Cross, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
        """Hashed ids of the pairs of the cross's first and second features' indices
        (``left`` and ``right`` broadcast against each other)."""
        st = self.state.crosses[cross.name]
        pair = left * int(st["right_cardinality"]) + right
        return hash_torch(pair, st["a"], st["b"], st["buckets"])

    @staticmethod
    def left_weights(cross: Cross, left: Sparse) -> torch.Tensor:
        """float32 [B, L]: what each value of the cross's first feature weighs in each of its
        pairs: 0 where not paired, else 1, or for a ``mean`` cross 1 / the row's paired values."""
        w = paired(left).to(torch.float32)
        if cross.pooling == "mean":
            w = w / w.sum(dim=1, keepdim=True).clamp(min=1)
        return w

    # ------------------------------------------------------------------------------ sparse

    def _categorical(self, f: Feature, x: dict[str, torch.Tensor]) -> Sparse:
        col = self.columns[(f.side, f.source)]
        st = self.state.features[f.shares or f.name]
        # strings are not torch inputs: only their LabelEncoder indices arrive here
        raw = x[vocab_input(f, col)] if col.kind == "string" else x[col.name]
        if col.kind == "int_list":  # (B, L)
            width = torch.arange(raw.shape[1], device=raw.device)
            present = width[None, :] < x[col.lengths_name][:, None]
        else:
            raw = raw[:, None]  # (B, 1)
            present = torch.ones_like(raw, dtype=torch.bool)
        numeric_raw = col.kind in ("int", "int_list")
        bad = (raw < 0) if numeric_raw else torch.zeros_like(present)
        if f.valid is not None and numeric_raw:
            xd = raw.double()
            bad = bad | (xd < f.valid[0]) | (xd > f.valid[1])
        if "vocab" in st:
            idx = x[vocab_input(f, col)]
            idx = idx if idx.dim() == 2 else idx[:, None]
        elif "hash" in st:
            h = st["hash"]
            idx = hash_torch(raw, h["a"], h["b"], h["buckets"])
        else:
            bounds = torch.tensor(st["boundaries"], dtype=torch.float64, device=raw.device)
            idx = 1 + (raw.double()[..., None] >= bounds).sum(-1)
        idx = torch.where(bad, torch.zeros_like(idx), idx)
        if f.kind == "categorical":  # one index per row, 0 (missing) looked up like any other
            return idx, torch.ones_like(present)
        keep = present & (idx != 0)  # dropped values: null, negative, out of range
        if f.max_len is not None:
            k = keep.long()
            if f.kind == "sequence":  # the last max_len kept values
                after = torch.flip(torch.cumsum(torch.flip(k, [1]), 1), [1]) - k
                keep = keep & (after < f.max_len)
            else:
                keep = keep & (torch.cumsum(k, 1) - k < f.max_len)
        return torch.where(keep, idx, torch.zeros_like(idx)), keep

    # ----------------------------------------------------------------------------- numeric

    def _numeric(self, f: Feature, x: dict[str, torch.Tensor]) -> torch.Tensor:
        col = self.columns[(f.side, f.source)]
        st = self.state.features[f.name]
        raw = x[col.name]
        if col.kind == "int":
            null = raw == INT_NULL
            v = raw.double()[:, None]
            ok = ~null
        else:
            v = raw.double() if col.kind == "vector" else raw.double()[:, None]
            ok = torch.isfinite(v).all(dim=1)
        if f.valid is not None:
            ok = ok & ~((v < f.valid[0]) | (v > f.valid[1])).any(dim=1)
        default = torch.tensor(st["default"], dtype=torch.float64, device=v.device)
        v = torch.where(ok[:, None], v, default[None, :])  # (B, dim)
        for step in f.transforms:
            name, arg = _step(step)
            if name == "log1p":
                v = torch.log1p(torch.where(v < 0, torch.zeros_like(v), v))
            elif name == "clip":
                v = v.clamp(float(arg[0]), float(arg[1]))
            else:
                mean = torch.tensor(st["mean"], dtype=torch.float64, device=v.device)
                std = torch.tensor(st["std"], dtype=torch.float64, device=v.device)
                v = (v - mean) / std
        return v.float()


def _step(step: Any) -> tuple[str, Any]:
    return next(iter(step.items())) if isinstance(step, dict) else (step, None)


def paired(sparse: Sparse) -> torch.Tensor:
    """bool [B, L]: the values a cross pairs (kept and not missing)."""
    idx, keep = sparse
    return keep & (idx != 0)


def pool(weight: torch.Tensor, sparse: Sparse, pooling: str) -> torch.Tensor:
    """[B, D] pooled rows of ``weight`` at the kept indices (an empty bag pools to zeros), as
    torchrec's ``EmbeddingBagCollection`` pools them."""
    idx, keep = sparse
    rows = nn.functional.embedding(idx, weight) * keep[..., None].to(weight.dtype)  # (B, L, D)
    # a wide table (D = 1) is summed along the last axis of [B, L]: ONNX Runtime reduces a
    # middle axis row by row (about 60 ns a row whatever its width: 66 us of the 1.2 ms that
    # ranker_pairs took on 1,000 pairs, per cross), the last axis in one pass (5 us)
    out = rows.flatten(1).sum(dim=1, keepdim=True) if weight.shape[1] == 1 else rows.sum(dim=1)
    if pooling == "mean":
        out = out / keep.sum(dim=1, keepdim=True).clamp(min=1).to(weight.dtype)
    return out
