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

The network is split as torchrec's DLRM is: a **sparse front end** turns sparse inputs into
pooled tensors, and everything after it is :class:`RankerArch`, one module that both training
and every exported graph run unchanged. The front end's parameters are the tables
(:class:`RankerTables`); how they are pooled is a :data:`Pool` the caller supplies: torchrec's
``EmbeddingBagCollection`` over ``KeyedJaggedTensor``s here (:func:`jagged_pool`), padded index
tensors in the exported graphs (:mod:`pinrank.export.front`).

Everything that depends on the user alone (the user half of the first layer, the user's
projection, the user-side unigram terms) is the user :class:`Part`; everything that depends on
the candidate alone is the candidate part; :meth:`RankerArch.combine` adds the pair terms.
:meth:`WideDeep.forward` (one user row per candidate) and :meth:`WideDeep.score_feed` (each user
once) run the same three functions, so they compute the same function.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import nn

from pinrank.features.featurizer import FeatureBatch, FeedBatch
from pinrank.features.jagged import KeyedJaggedTensor
from pinrank.features.spec import FeatureSpec
from pinrank.features.state import FeatureState
from pinrank.models.components import SparseArch, TableSpec, mlp, tables_for, tie_shared

# A sparse front end's pooling: (arch, one side's sparse inputs) -> [rows, arch.output_dim]
Pool = Callable[[SparseArch, Any], torch.Tensor]


class Part(NamedTuple):
    """One side's part of the ranker for its rows (users, or candidates: a pin and a context)."""

    first: torch.Tensor  # the side's half of the first layer [R, H] (candidates: with its bias)
    proj: torch.Tensor  # the side's projection [R, K]
    wide: torch.Tensor  # the side's wide terms [R] (candidates: with the global bias)
    exam: torch.Tensor | None = None  # the examination logit [R] (candidates with the tower)

    def take(self, index: torch.Tensor | None) -> Part:
        """Rows ``index`` of every tensor (all rows, unchanged, when ``None``)."""
        if index is None:
            return self
        exam = None if self.exam is None else self.exam[index]
        return Part(self.first[index], self.proj[index], self.wide[index], exam)


class Pooled(NamedTuple):
    """What a sparse front end hands :class:`RankerArch` for one side's rows."""

    deep: torch.Tensor  # the deep tables pooled [R, W] (candidates: item tables, then context)
    wide: torch.Tensor  # the side's unigram terms summed [R]
    exam: torch.Tensor | None = None  # the examination tower's tables pooled [R, W_exam]


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


def jagged_pool(rows: int, device: torch.device) -> Pool:
    """The training front end's :data:`Pool`: torchrec pools a ``KeyedJaggedTensor`` (an arch
    without tables, or no input, pools to width 0)."""

    def pool(arch: SparseArch, kjt: KeyedJaggedTensor | None) -> torch.Tensor:
        if kjt is None or not arch.tables:
            return torch.zeros(rows, 0, device=device)
        return arch(kjt)

    return pool


def _wide_tables(tables: Sequence[TableSpec], weighted: bool = False) -> SparseArch:
    """1-wide tables of a linear model over sparse ids, starting at zero."""
    arch = SparseArch(tables, init_std=0.0, weighted=weighted)
    for t in arch.tables:
        nn.init.zeros_(arch.weight(t.feature))
    return arch


class RankerTables(nn.Module):
    """The ranker's sparse parameters, which a front end pools (:data:`Pool`).

    ``user`` / ``item`` / ``context``: the deep tables of each side; ``examination``: the
    position-bias tower's tables (over context features); ``cross``: one 1-wide table per cross
    (weighted by the inputs' per-pair weights when the spec has mean crosses); ``unigrams``: per
    side, the 1-wide tables of single features in the wide part.
    """

    def __init__(
        self,
        deep: Mapping[str, Sequence[TableSpec]],
        examination: Sequence[TableSpec],
        crosses: Sequence[TableSpec],
        unigrams: Mapping[str, Sequence[TableSpec]],
        weighted_crosses: bool = False,
    ) -> None:
        super().__init__()
        self.user = SparseArch(deep.get("user", []))
        self.item = SparseArch(deep.get("item", []))
        self.context = SparseArch(deep.get("context", []))
        self.examination = SparseArch(examination)
        self.cross = _wide_tables(crosses, weighted_crosses)
        self.unigrams = nn.ModuleDict(
            {s: _wide_tables(unigrams.get(s, [])) for s in ("user", "item", "context")}
        )

    def unigram(self, side: str) -> SparseArch:
        """The 1-wide tables of one side's single features."""
        arch = self.unigrams[side]
        assert isinstance(arch, SparseArch)
        return arch

    def user_side(self, pool: Pool, sparse: Any) -> Pooled:
        """The users' pooled tables (``sparse``: the user side's inputs to ``pool``)."""
        return Pooled(pool(self.user, sparse), pool(self.unigram("user"), sparse).sum(dim=1))

    def candidate_side(self, pool: Pool, items: Any, context: Any) -> Pooled:
        """The candidates' pooled tables: the item and context sides' inputs to ``pool``."""
        deep = torch.cat([pool(self.item, items), pool(self.context, context)], dim=1)
        wide = pool(self.unigram("item"), items).sum(dim=1)
        wide = wide + pool(self.unigram("context"), context).sum(dim=1)
        return Pooled(deep, wide, pool(self.examination, context))


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


class Examination(nn.Module):
    """The position-bias tower above the front end: its pooled context tables and the columns
    ``dense_index`` of the context side's dense tensor -> the logit ``g`` of P(examined) [N]."""

    def __init__(self, pooled_width: int, dense_index: Sequence[int], hidden: Sequence[int]):
        super().__init__()
        self.dense_index: torch.Tensor
        self.register_buffer(
            "dense_index", torch.tensor(list(dense_index), dtype=torch.long), persistent=False
        )
        self.mlp = mlp([pooled_width + len(dense_index), *hidden, 1])
        last = self.mlp[-1]
        assert isinstance(last, nn.Linear)
        nn.init.constant_(last.bias, 2.0)  # start with most impressions examined

    def forward(self, pooled: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        """[N] logits from the tower's pooled tables [N, W] and the context's dense [N, D]."""
        return self.mlp(torch.cat([pooled, dense[:, self.dense_index]], dim=1)).squeeze(1)


class RankerArch(nn.Module):
    """Everything of the ranker after its sparse front end: the first layer split by side, the
    projections, the examination tower's MLP, the global bias, the head, and how the pair's
    terms combine. Training and every exported graph run this module unchanged.

    Args:
        widths: the pooled widths of the front end: ``user``, ``candidate`` (item and context
            tables) and ``examination``.
        dense_dims: the width of each side's dense tensor.
        cfg: the ranker's shape.
        examination_dense: the context's dense columns that feed only the examination tower.
        examination: whether there is an examination tower.
    """

    def __init__(
        self,
        widths: Mapping[str, int],
        dense_dims: Mapping[str, int],
        cfg: WideDeepConfig,
        examination_dense: Sequence[int] = (),
        examination: bool = False,
    ) -> None:
        super().__init__()
        self.deep = cfg.deep
        taken = set(examination_dense)
        kept = [i for i in range(dense_dims.get("context", 0)) if i not in taken]
        self.context_dense: torch.Tensor | None  # the context's dense columns relevance reads
        self.register_buffer(
            "context_dense", torch.tensor(kept, dtype=torch.long) if taken else None, False
        )
        self.examination = (
            Examination(widths["examination"], examination_dense, cfg.examination_hidden)
            if examination
            else None
        )
        user_dim = widths["user"] + (dense_dims["user"] if cfg.deep else 0)
        cand_dim = widths["candidate"] + (dense_dims["item"] + len(kept) if cfg.deep else 0)
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
        self.bias = nn.Parameter(torch.zeros(()))

    @property
    def part_widths(self) -> tuple[int, int]:
        """The widths of a part's ``first`` (H) and ``proj`` (K) tensors."""
        return self.user_first.out_features, self.user_proj.out_features

    def user(self, pooled: Pooled, dense: torch.Tensor) -> Part:
        """Per user: the user half of the first layer [U, H], the projection [U, K] and the
        user-side wide terms [U]."""
        x = torch.cat([pooled.deep, dense] if self.deep else [pooled.deep], dim=1)
        return Part(self.user_first(x), self.user_proj(x), pooled.wide)

    def candidates(
        self, pooled: Pooled, item_dense: torch.Tensor, context_dense: torch.Tensor
    ) -> Part:
        """Per candidate (pin + context): the candidate half of the first layer with its bias
        [N, H], the projection [N, K], the candidate-side wide terms with the global bias [N],
        and the examination logit [N] (``None`` without that tower)."""
        exam = None
        if self.examination is not None:
            assert pooled.exam is not None
            exam = self.examination(pooled.exam, context_dense)
        if self.context_dense is not None:
            context_dense = context_dense[:, self.context_dense]
        parts = [pooled.deep, item_dense, context_dense] if self.deep else [pooled.deep]
        x = torch.cat(parts, dim=1)
        return Part(self.cand_first(x), self.cand_proj(x), pooled.wide + self.bias, exam)

    def combine(
        self,
        user: Part,
        cand: Part,
        crosses: torch.Tensor,
        user_index: torch.Tensor | None = None,
        item_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """[N] logits of pairs: the user parts taken at ``user_index`` and the candidate parts
        at ``item_index`` (row-aligned where ``None``), plus ``crosses``, the pairs' wide
        crosses summed [N]."""
        u, c = user.take(user_index), cand.take(item_index)
        logit = u.wide + c.wide + crosses
        if self.head is not None:
            logit = logit + self.head(u.first + c.first).squeeze(1)
        if u.proj.shape[1]:
            logit = logit + (u.proj * c.proj).sum(dim=1)
        if c.exam is not None:
            logit = examined_logit(logit, c.exam)
        return logit


class WideDeep(nn.Module):
    """Wide-and-deep ranker; outputs the engagement logit of each (user, candidate) pair: its
    tables (:class:`RankerTables`) pooled by torchrec, then :class:`RankerArch`.

    Build with :meth:`from_spec`. Inputs are :class:`FeatureBatch` (one row per pair, the
    training path) or :class:`FeedBatch` (each user once, the scoring path).
    """

    def __init__(
        self,
        deep: Mapping[str, Sequence[TableSpec]],
        cross_tables: Sequence[TableSpec],
        unigram_tables: Mapping[str, Sequence[TableSpec]],
        dense_dims: dict[str, int],
        cfg: WideDeepConfig,
        examination_tables: Sequence[TableSpec] = (),
        examination_dense: Sequence[int] = (),
        weighted_crosses: bool = False,
    ) -> None:
        super().__init__()
        self.cfg, self.dense_dims = cfg, dense_dims
        self.tables = RankerTables(
            deep if cfg.deep else {},
            examination_tables,
            cross_tables if cfg.wide else [],
            unigram_tables,
            weighted_crosses,
        )
        t = self.tables
        widths = {
            "user": t.user.output_dim,
            "candidate": t.item.output_dim + t.context.output_dim,
            "examination": t.examination.output_dim,
        }
        exam = bool(examination_tables or examination_dense)
        self.arch = RankerArch(widths, dense_dims, cfg, examination_dense, exam)

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
        context_features = {f.name for f in spec.side("context")}
        unknown = [n for n in cfg.examination if n not in context_features]
        if unknown:
            raise ValueError(
                f"examination: {unknown} are not context features of the spec "
                f"(context features: {sorted(context_features)})"
            )
        exam = set(cfg.examination)
        deep = {
            "user": tables_for(spec, state, "user", cfg.embedding_dim, cfg.user_exclude),
            "item": tables_for(spec, state, "item", cfg.embedding_dim, cfg.item_exclude),
            "context": tables_for(spec, state, "context", cfg.embedding_dim, tuple(exam)),
        }
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
            deep,
            crosses,
            unigrams,
            dense_dims,
            cfg,
            exam_tables,
            exam_dense,
            spec.weighted_crosses,
        )
        if cfg.tie_shared and cfg.deep:
            tie_shared(spec, net.tables.user, net.tables.item)
        return net

    def examination_parameters(self) -> Iterator[nn.Parameter]:
        """The position-bias tower's parameters (its tables and its MLP); none without it."""
        if self.arch.examination is not None:
            yield from self.tables.examination.parameters()
            yield from self.arch.examination.parameters()

    # ---------------------------------------------------------- the torchrec front end's parts

    def user_part(self, sparse: KeyedJaggedTensor, dense: torch.Tensor) -> Part:
        """Per user: see :meth:`RankerArch.user`."""
        pooled = self.tables.user_side(jagged_pool(len(dense), dense.device), sparse)
        return self.arch.user(pooled, dense)

    def candidate_part(self, batch: FeatureBatch) -> Part:
        """Per candidate: see :meth:`RankerArch.candidates`."""
        item_dense = batch.dense["item"]
        ctx_dense = batch.dense.get("context", item_dense.new_zeros(len(item_dense), 0))
        pool = jagged_pool(len(item_dense), item_dense.device)
        pooled = self.tables.candidate_side(pool, batch.sparse["item"], batch.sparse.get("context"))
        return self.arch.candidates(pooled, item_dense, ctx_dense)

    def combine(
        self,
        user: Part,
        cand: Part,
        cross: KeyedJaggedTensor | None,
        user_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """[N] logits from the user parts (taken at ``user_index`` when users are shared), the
        candidate parts and the crosses of each pair."""
        pool = jagged_pool(len(cand.wide), cand.wide.device)
        return self.arch.combine(user, cand, pool(self.tables.cross, cross).sum(dim=1), user_index)

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
