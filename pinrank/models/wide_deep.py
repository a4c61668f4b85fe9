"""The wide-and-deep user-cross-interest ranker, factorised per feed.

For a user ``u`` and a candidate ``c`` (a pin and the context of its impression) the logit is

    z(u, c) = wide(u, c) + deep(u, c) + <p_u, p_c>

- **wide**: a linear model over hashed crosses of user features with pin interests (every cross of
  the feature spec), plus optional "unigram" terms of single sparse features (e.g. a per-user and
  a per-pin bias). One 1-wide torchrec table per cross or feature, summed.
- **deep**: pooled embeddings (torchrec ``EmbeddingBagCollection``) and dense features of each
  side, then an MLP. Its first layer is split by side, ``W x = W_u x_u + W_c x_c``, so the user
  half is computed once per user.
- **interaction** (optional, ``interaction_dim > 0``): the dot product of a user projection and a
  candidate projection, a factorisation-machine style term the MLP would need many units for.
- **examination** (optional, ``examination``: context features such as the feed position): a
  position-bias tower ``g(c)`` as in PAL (Guo et al., RecSys 2019). Those features leave the
  network above and the engagement probability factorises as
  ``P(engaged) = P(examined | position) * P(engaged | examined) = sigmoid(g) * sigmoid(z)``;
  the output is that product's logit (:func:`examined_logit`), so the loss, the calibration and
  every consumer of logits are unchanged. With the position fixed (scoring a feed before it is
  shown) the output is monotone in the relevance ``z``.

Everything that depends on the user alone (the user half of the first layer, the user's
projection, the user-side unigram terms) is :meth:`WideDeep.user_part`; everything that depends
on the candidate alone is :meth:`WideDeep.candidate_part`; :meth:`WideDeep.combine` adds the pair
terms. :meth:`WideDeep.forward` (one user row per candidate) and :meth:`WideDeep.score_feed` (each
user once) run the same three functions, so they compute the same function.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from pinrank.features.featurizer import FeatureBatch, FeedBatch
from pinrank.features.spec import FeatureSpec
from pinrank.features.state import FeatureState
from pinrank.models.components import SparseArch, TableSpec, mlp, tables_for, tie_shared

UserPart = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # first [U,H], proj [U,K], wide [U]
# the same for candidates, plus the examination logit [N] (None without an examination tower)
CandidatePart = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]


@dataclass(frozen=True)
class WideDeepConfig:
    """Shape of the ranker.

    Attributes:
        hidden: widths of the deep MLP's hidden layers (the first is the split layer).
        dropout: dropout after each hidden layer.
        embedding_dim: one width for every deep table (``None``: each feature's own).
        user_exclude / item_exclude: sparse features the deep part leaves out.
        wide: include the hashed crosses of the spec.
        wide_unigrams: sparse features that also get a 1-wide weight per value in the wide part.
        interaction_dim: width of the user / candidate projections whose dot product is added
            (0: none).
        tie_shared: user features that share an item feature's vocabulary (the history) look
            up the item table itself.
        deep: include the deep part (``False`` with ``wide`` gives a logistic regression).
        examination: context features (e.g. ``position``) that feed only the position-bias
            tower, whose ``sigmoid`` multiplies the relevance probability (empty: no tower).
        examination_hidden: hidden widths of that tower's MLP.
    """

    hidden: tuple[int, ...] = (256, 128)
    dropout: float = 0.1
    embedding_dim: int | None = None
    user_exclude: tuple[str, ...] = ()
    item_exclude: tuple[str, ...] = ()
    wide: bool = True
    wide_unigrams: tuple[str, ...] = ()
    interaction_dim: int = 0
    tie_shared: bool = True
    deep: bool = True
    examination: tuple[str, ...] = ()
    examination_hidden: tuple[int, ...] = (16,)


def _log_sigmoid(x: torch.Tensor) -> torch.Tensor:
    """``log(sigmoid(x))`` from ops every ONNX runtime has, stable for any ``x``."""
    return torch.clamp(x, max=0.0) - torch.log(1.0 + torch.exp(-torch.abs(x)))


def examined_logit(relevance: torch.Tensor, examination: torch.Tensor) -> torch.Tensor:
    """The logit of ``sigmoid(relevance) * sigmoid(examination)``, computed in log space:
    ``log p - log(1 - p)`` with ``1 - p = sigmoid(-z) + sigmoid(z) * sigmoid(-g)``.

    Example::

        >>> z, g = torch.tensor([0.3, -2.0, 8.0]), torch.tensor([1.0, 0.5, -3.0])
        >>> p = torch.sigmoid(z) * torch.sigmoid(g)
        >>> torch.allclose(examined_logit(z, g), torch.log(p / (1 - p)), atol=1e-5)
        True
    """
    relevant = _log_sigmoid(relevance)
    log_p = relevant + _log_sigmoid(examination)
    a = _log_sigmoid(-relevance)
    b = relevant + _log_sigmoid(-examination)
    log_q = torch.maximum(a, b) + torch.log(1.0 + torch.exp(-torch.abs(a - b)))
    return log_p - log_q


class Examination(nn.Module):
    """The position-bias tower: the impression's context features -> the logit ``g`` of
    P(examined) [N]. Its sparse features have their own tables; its dense inputs are the columns
    ``dense_index`` of the context side's dense tensor."""

    def __init__(
        self, tables: Sequence[TableSpec], dense_index: Sequence[int], hidden: Sequence[int]
    ) -> None:
        super().__init__()
        self.sparse = SparseArch(tables)
        self.dense_index: torch.Tensor
        self.register_buffer(
            "dense_index", torch.tensor(list(dense_index), dtype=torch.long), persistent=False
        )
        self.mlp = mlp([self.sparse.output_dim + len(dense_index), *hidden, 1])
        last = self.mlp[-1]
        assert isinstance(last, nn.Linear)
        nn.init.constant_(last.bias, 2.0)  # start with most impressions examined

    def forward(self, pooled: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        """[N] logits from the tower's pooled sparse features [N, W] and the side's dense [N, D]."""
        return self.mlp(torch.cat([pooled, dense[:, self.dense_index]], dim=1)).squeeze(1)


def _linear(n_in: int, n_out: int, bias: bool = True) -> nn.Linear:
    """``nn.Linear`` that may be empty (a part switched off) without an init warning."""
    if n_in and n_out:
        return nn.Linear(n_in, n_out, bias=bias)
    layer = nn.Linear(1, 1, bias=bias)
    layer.in_features, layer.out_features = n_in, n_out
    layer.weight = nn.Parameter(torch.zeros(n_out, n_in))
    if bias:
        layer.bias = nn.Parameter(torch.zeros(n_out))
    return layer


class _Linear1(nn.Module):
    """A sum of 1-wide embedding bags: a linear model over sparse ids -> [B]."""

    def __init__(self, tables: Sequence[TableSpec], weighted: bool = False) -> None:
        super().__init__()
        self.arch = SparseArch(tables, init_std=0.0, weighted=weighted)
        for t in self.arch.tables:
            nn.init.zeros_(self.arch.weight(t.feature))

    def forward(
        self, kjt: KeyedJaggedTensor | None, rows: int, device: torch.device
    ) -> torch.Tensor:
        if kjt is None or not self.arch.tables:
            return torch.zeros(rows, device=device)
        return self.arch(kjt).sum(dim=1)


def _pooled(
    arch: SparseArch, kjt: KeyedJaggedTensor | None, rows: int, device: torch.device
) -> torch.Tensor:
    """``arch(kjt)`` [rows, W]; width 0 without tables or features."""
    if kjt is None or not arch.tables:
        return torch.zeros(rows, 0, device=device)
    return arch(kjt)


class WideDeep(nn.Module):
    """Wide-and-deep ranker; outputs the engagement logit of each (user, candidate) pair.

    Build with :meth:`from_spec`. Inputs are :class:`FeatureBatch` (one row per pair, the
    training path) or :class:`FeedBatch` (each user once, the scoring path).
    """

    def __init__(
        self,
        user_tables: Sequence[TableSpec],
        item_tables: Sequence[TableSpec],
        context_tables: Sequence[TableSpec],
        cross_tables: Sequence[TableSpec],
        unigram_tables: Mapping[str, Sequence[TableSpec]],
        dense_dims: dict[str, int],
        cfg: WideDeepConfig,
        examination_tables: Sequence[TableSpec] = (),
        examination_dense: Sequence[int] = (),
        weighted_crosses: bool = False,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.user_sparse = SparseArch(user_tables if cfg.deep else [])
        self.item_sparse = SparseArch(item_tables if cfg.deep else [])
        self.context_sparse = SparseArch(context_tables if cfg.deep else [])
        self.dense_dims = dense_dims
        # the context's dense columns the relevance network reads (all but the examination's)
        taken = set(examination_dense)
        kept = [i for i in range(dense_dims["context"]) if i not in taken]
        self.context_dense: torch.Tensor | None
        self.register_buffer(
            "context_dense", torch.tensor(kept, dtype=torch.long) if taken else None, False
        )
        self.examination = (
            Examination(examination_tables, examination_dense, cfg.examination_hidden)
            if examination_tables or examination_dense
            else None
        )
        user_dim = self.user_sparse.output_dim + (dense_dims["user"] if cfg.deep else 0)
        cand_dim = (
            self.item_sparse.output_dim
            + self.context_sparse.output_dim
            + (dense_dims["item"] + len(kept) if cfg.deep else 0)
        )
        first = cfg.hidden[0] if cfg.deep and cfg.hidden else 0
        self.user_first = _linear(user_dim, first, bias=False)
        self.cand_first = _linear(cand_dim, first)
        tail = [first, *cfg.hidden[1:], 1] if first else []
        self.head = (
            nn.Sequential(nn.ReLU(), nn.Dropout(cfg.dropout), mlp(tail, cfg.dropout))
            if first
            else None
        )
        k = cfg.interaction_dim if cfg.deep else 0
        self.user_proj = _linear(user_dim, k)
        self.cand_proj = _linear(cand_dim, k)
        self.cross = _Linear1(cross_tables if cfg.wide else [], weighted_crosses)
        self.unigrams = nn.ModuleDict(
            {side: _Linear1(unigram_tables.get(side, [])) for side in ("user", "item", "context")}
        )
        self.bias = nn.Parameter(torch.zeros(()))

    @classmethod
    def from_spec(
        cls,
        spec: FeatureSpec,
        state: FeatureState,
        dense_dims: dict[str, int],
        cfg: WideDeepConfig | None = None,
    ) -> WideDeep:
        """Size every table from the fitted state; ``dense_dims`` per side."""
        cfg = cfg or WideDeepConfig()
        user = tables_for(spec, state, "user", cfg.embedding_dim, cfg.user_exclude)
        item = tables_for(spec, state, "item", cfg.embedding_dim, cfg.item_exclude)
        context_features = {f.name for f in spec.side("context")}
        unknown = [n for n in cfg.examination if n not in context_features]
        if unknown:
            raise ValueError(
                f"examination: {unknown} are not context features of the spec "
                f"(context features: {sorted(context_features)})"
            )
        exam = set(cfg.examination)
        context = tables_for(spec, state, "context", cfg.embedding_dim, tuple(exam))
        exam_tables = [
            t for t in tables_for(spec, state, "context", cfg.embedding_dim) if t.feature in exam
        ]
        slices = spec.dense_slices("context")
        exam_dense = [i for n, c in slices.items() if n in exam for i in range(c.start, c.stop)]
        crosses = [TableSpec(c.name, state.cardinality(c.name), 1, "sum") for c in spec.crosses]
        unigrams: dict[str, list[TableSpec]] = {}
        for name in cfg.wide_unigrams:
            f = spec[name]
            if not f.is_sparse:
                raise ValueError(f"wide_unigrams: {name!r} is not a sparse feature")
            unigrams.setdefault(f.side, []).append(
                TableSpec(name, state.cardinality(name), 1, f.pooling)
            )
        net = cls(
            user,
            item,
            context,
            crosses,
            unigrams,
            dense_dims,
            cfg,
            exam_tables,
            exam_dense,
            spec.weighted_crosses,
        )
        if cfg.tie_shared and cfg.deep:
            tie_shared(spec, net.user_sparse, net.item_sparse)
        return net

    # ------------------------------------------------------------------------- the three parts

    def user_part(self, sparse: KeyedJaggedTensor, dense: torch.Tensor) -> UserPart:
        """Per user: the user half of the first layer [U, H], the projection [U, K] and the
        user-side wide terms [U]."""
        x = self._inputs([(self.user_sparse, sparse)], [dense])
        return (
            self.user_first(x),
            self.user_proj(x),
            self.unigrams["user"](sparse, len(dense), dense.device),
        )

    def candidate_part(self, batch: FeatureBatch) -> CandidatePart:
        """Per candidate (pin + context): the candidate half of the first layer with its bias
        [N, H], the projection [N, K], the candidate-side wide terms with the bias [N], and the
        examination logit [N] (``None`` without that tower)."""
        item_dense = batch.dense["item"]
        ctx_sparse = batch.sparse.get("context")
        ctx_dense = batch.dense.get("context", item_dense.new_zeros(len(item_dense), 0))
        exam = None
        if self.examination is not None:
            pooled = _pooled(self.examination.sparse, ctx_sparse, len(ctx_dense), ctx_dense.device)
            exam = self.examination(pooled, ctx_dense)
        if self.context_dense is not None:
            ctx_dense = ctx_dense[:, self.context_dense]
        x = self._inputs(
            [(self.item_sparse, batch.sparse["item"]), (self.context_sparse, ctx_sparse)],
            [item_dense, ctx_dense],
        )
        rows, dev = len(item_dense), item_dense.device
        wide = (
            self.unigrams["item"](batch.sparse["item"], rows, dev)
            + self.unigrams["context"](ctx_sparse, rows, dev)
            + self.bias
        )
        return self.cand_first(x), self.cand_proj(x), wide, exam

    def combine(
        self,
        user: UserPart,
        cand: CandidatePart,
        cross: KeyedJaggedTensor | None,
        user_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """[N] logits from the user parts (gathered by ``user_index`` when users are shared),
        the candidate parts and the crosses of each pair."""
        u_first, u_proj, u_wide = user
        if user_index is not None:
            u_first, u_proj, u_wide = u_first[user_index], u_proj[user_index], u_wide[user_index]
        c_first, c_proj, c_wide, c_exam = cand
        logit = u_wide + c_wide + self.cross(cross, len(c_wide), c_wide.device)
        if self.head is not None:
            logit = logit + self.head(u_first + c_first).squeeze(1)
        if u_proj.shape[1]:
            logit = logit + (u_proj * c_proj).sum(dim=1)
        if c_exam is not None:
            logit = examined_logit(logit, c_exam)
        return logit

    # ---------------------------------------------------------------------------- entry points

    def forward(self, batch: FeatureBatch) -> torch.Tensor:
        """[B] logits of the batch's (user, candidate) pairs, one user row per pair."""
        user = self.user_part(batch.sparse["user"], batch.dense["user"])
        return self.combine(user, self.candidate_part(batch), batch.sparse.get("cross"))

    def score_feed(self, feed: FeedBatch) -> torch.Tensor:
        """[N] logits of every candidate of every feed, each user's part computed once."""
        user = self.user_part(feed.users.sparse["user"], feed.users.dense["user"])
        cand = self.candidate_part(feed.candidates)
        return self.combine(user, cand, feed.candidates.sparse.get("cross"), feed.user_index)

    def _inputs(
        self,
        sparse: Sequence[tuple[SparseArch, KeyedJaggedTensor | None]],
        dense: Sequence[torch.Tensor],
    ) -> torch.Tensor:
        rows, dev = len(dense[0]), dense[0].device
        parts = [_pooled(arch, kjt, rows, dev) for arch, kjt in sparse]
        if self.cfg.deep:
            parts.extend(dense)
        return torch.cat(parts, dim=1)
