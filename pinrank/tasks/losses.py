"""Retrieval losses: in-batch sampled softmax with logQ correction (Yi et al., RecSys 2019).

With in-batch negatives, popular items appear as negatives far more often than a full softmax
would weigh them, so the model learns to push popular items down. Subtracting ``log q(item)``
(the item's sampling probability) from each logit removes that bias. ``q`` is estimated from the
stream of training batches by :class:`StreamingFrequency`, as in the paper (Algorithm 2).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class StreamingFrequency(nn.Module):
    """Streaming estimate of how often each item is sampled into a batch.

    For each hashed item, ``last[h]`` is the step it was last seen and ``gap[h]`` a moving
    average of the steps between sightings: ``gap <- (1 - alpha) gap + alpha (t - last)``.
    The per-batch sampling probability is ``1 / gap``. Buffers are saved in checkpoints.

    Example::

        >>> f = StreamingFrequency(buckets=100, alpha=0.5)
        >>> for step in range(1, 9):
        ...     f.update(torch.tensor([1, 1, 2] if step % 2 == 0 else [1]), step)
        >>> [round(float(p), 2) for p in f.log_q(torch.tensor([1, 2])).exp()]
        [1.0, 0.5]
    """

    last: torch.Tensor  # (buckets,) float64 step of the last sighting
    gap: torch.Tensor  # (buckets,) float64 average steps between sightings
    seen: torch.Tensor  # (buckets,) bool

    def __init__(self, buckets: int = 1 << 20, alpha: float = 0.01) -> None:
        super().__init__()
        self.buckets, self.alpha = buckets, alpha
        self.register_buffer("last", torch.zeros(buckets, dtype=torch.float64))
        self.register_buffer("gap", torch.ones(buckets, dtype=torch.float64))
        self.register_buffer("seen", torch.zeros(buckets, dtype=torch.bool))

    def _hash(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.remainder(ids, self.buckets)

    @torch.no_grad()
    def update(self, ids: torch.Tensor, step: int) -> None:
        """Record the items of the batch at ``step`` (duplicates count once)."""
        h = torch.unique(self._hash(ids))
        delta = step - self.last[h]
        # the first sighting has no gap yet: start the average at the steps seen so far
        new_gap = torch.where(
            self.seen[h], (1 - self.alpha) * self.gap[h] + self.alpha * delta, delta
        )
        self.gap[h] = new_gap.clamp_min(1.0)
        self.last[h] = float(step)
        self.seen[h] = True

    def log_q(self, ids: torch.Tensor) -> torch.Tensor:
        """[N] float32 log of the estimated per-batch sampling probability of ``ids``."""
        return (-torch.log(self.gap[self._hash(ids)])).float()


def sampled_softmax_loss(
    user: torch.Tensor,
    item: torch.Tensor,
    item_ids: torch.Tensor,
    temperature: float,
    log_q: torch.Tensor | None = None,
    negatives: torch.Tensor | None = None,
    negative_ids: torch.Tensor | None = None,
    negative_log_q: torch.Tensor | None = None,
    remove_accidental_hits: bool = True,
) -> torch.Tensor:
    """Softmax over the batch's items (plus optional extra negatives); row ``i``'s positive is
    item ``i``.

    Args:
        user: [B, D] user embeddings.
        item: [B, D] embeddings of each user's positive item.
        item_ids: [B] ids of those items.
        temperature: logits are ``u . v / temperature``.
        log_q: [B] log sampling probability of each in-batch item (None: no correction).
        negatives: [M, D] embeddings of extra negatives (e.g. uniformly sampled: mixed negatives).
        negative_ids / negative_log_q: [M] their ids and log sampling probabilities.
        remove_accidental_hits: mask candidates that are the row's own positive item (a popular
            item twice in one batch must not be its own negative).

    Returns:
        The mean cross-entropy, a scalar.
    """
    cands, cand_ids, cand_log_q = item, item_ids, log_q
    if negatives is not None:
        if negative_ids is None:
            raise ValueError("negatives need negative_ids")
        cands = torch.cat([item, negatives])
        cand_ids = torch.cat([item_ids, negative_ids])
        if log_q is not None:
            if negative_log_q is None:
                raise ValueError("with log_q, negatives need negative_log_q")
            cand_log_q = torch.cat([log_q, negative_log_q])
    logits = user @ cands.T / temperature  # (B, B + M)
    if cand_log_q is not None:
        logits = logits - cand_log_q[None, :]
    target = torch.arange(len(user), device=user.device)
    if remove_accidental_hits:
        hit = item_ids[:, None] == cand_ids[None, :]  # (B, B + M)
        hit[target, target] = False
        logits = logits.masked_fill(hit, torch.finfo(logits.dtype).min)
    return F.cross_entropy(logits, target)
