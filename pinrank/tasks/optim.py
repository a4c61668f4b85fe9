"""Optimisers of the training tasks, and sparse updates of large embedding tables.

With dense updates (the default), the configured optimiser (Adam) updates every row of every
table at every step: its cost grows with the tables, not with the batch. At 1M pins and 10M
users that was most of a training step (benchmarks/README.md, training throughput).
With ``embedding_updates: sparse`` (the ``torch`` sparse arch), the tables' bags return sparse
gradients and :class:`SparseAdam`-style lazy updates touch only the rows a batch looked up;
every other parameter keeps the configured optimiser. This is torchrec's trade as well (its
fused optimisers update only the looked-up rows); lazy Adam has no weight decay on the tables.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from pinrank.models.components import EmbeddingBags

OptimizerFactory = Callable[[Iterable[Any]], torch.optim.Optimizer]


def sparse_tables(net: nn.Module) -> list[nn.Parameter]:
    """The tables of ``net`` whose bags return sparse gradients (each parameter once: a table
    tied into two bags is one parameter)."""
    seen: dict[int, Any] = {}
    for module in net.modules():
        if isinstance(module, EmbeddingBags):
            for bag in module.bags():
                if bag.sparse:
                    seen.setdefault(id(bag.weight), bag.weight)
    return list(seen.values())


class Combined(torch.optim.Optimizer):
    """Two optimisers stepped as one (Lightning's automatic optimisation takes one):
    ``dense`` for every parameter with a dense gradient, ``sparse`` for the embedding tables.

    Example::

        >>> w, bag = nn.Parameter(torch.ones(2)), nn.EmbeddingBag(10, 2, sparse=True)
        >>> opt = Combined(torch.optim.Adam([w], lr=0.1), torch.optim.SparseAdam([bag.weight]))
        >>> (bag(torch.tensor([[1, 2]])).sum() + w.sum()).backward()
        >>> before = bag.weight.detach().clone()
        >>> _ = opt.step()
        >>> changed = (bag.weight != before).any(dim=1).nonzero().flatten().tolist()
        >>> changed, bool((w < 1).all())  # only the looked-up rows moved
        ([1, 2], True)
    """

    def __init__(self, dense: torch.optim.Optimizer, sparse: torch.optim.Optimizer) -> None:
        self.dense, self.sparse = dense, sparse
        # the base class's view: every group of both (Lightning reads lrs and params there)
        self.param_groups = [*dense.param_groups, *sparse.param_groups]
        self.defaults = dense.defaults
        self.state = dense.state
        self._optimizer_step_pre_hooks: dict[int, Any] = {}
        self._optimizer_step_post_hooks: dict[int, Any] = {}

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.dense.step()
        self.sparse.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.dense.zero_grad(set_to_none)
        self.sparse.zero_grad(set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {"dense": self.dense.state_dict(), "sparse": self.sparse.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.dense.load_state_dict(state_dict["dense"])
        self.sparse.load_state_dict(state_dict["sparse"])

    def __repr__(self) -> str:
        return f"Combined(dense={self.dense!r}, sparse={self.sparse!r})"


def build_optimizer(
    factory: OptimizerFactory, net: nn.Module, groups: list[dict[str, Any]]
) -> torch.optim.Optimizer:
    """The configured optimiser over ``groups`` (``{"params": [...], ...}``), with the tables
    that have sparse gradients moved to a lazy Adam of the same learning rate."""
    # tables updated in the backward pass by a fused optimizer (torchrec's sharded training,
    # pinrank/training/sharded.py) are not this optimiser's
    groups = [
        {**g, "params": [p for p in g["params"] if not hasattr(p, "_in_backward_optimizers")]}
        for g in groups
    ]
    sparse_params = sparse_tables(net)
    tables = {id(p) for p in sparse_params}
    if not tables:
        return factory(groups if len(groups) > 1 else groups[0]["params"])
    dense_groups = [
        {**g, "params": [p for p in g["params"] if id(p) not in tables]} for g in groups
    ]
    dense_groups = [g for g in dense_groups if g["params"]]
    dense = factory(dense_groups if len(dense_groups) > 1 else dense_groups[0]["params"])
    lr = dense.param_groups[0]["lr"]
    betas = dense.defaults.get("betas", (0.9, 0.999))
    eps = dense.defaults.get("eps", 1e-8)
    sparse = torch.optim.SparseAdam(sparse_params, lr=lr, betas=betas, eps=eps)
    return Combined(dense, sparse)
