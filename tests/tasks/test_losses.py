"""In-batch softmax, logQ correction and accidental hits against hand-worked values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pinrank.tasks.losses import StreamingFrequency, sampled_softmax_loss


def _ce(logits: list[list[float]]) -> float:
    """Mean cross-entropy with row i's target at column i, by hand."""
    return float(
        np.mean([-row[i] + math.log(sum(math.exp(x) for x in row)) for i, row in enumerate(logits)])
    )


U = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
V = torch.tensor([[0.6, 0.8], [0.8, 0.6]])


def test_in_batch_softmax_hand_worked() -> None:
    # logits = U V^T / 0.5 = [[1.2, 1.6], [1.6, 1.2]]
    loss = sampled_softmax_loss(U, V, torch.tensor([10, 11]), temperature=0.5)
    assert loss.item() == pytest.approx(_ce([[1.2, 1.6], [1.6, 1.2]]), abs=1e-6)
    assert loss.item() == pytest.approx(-1.2 + math.log(math.exp(1.2) + math.exp(1.6)), abs=1e-6)


def test_logq_correction_subtracts_log_probability_of_each_candidate() -> None:
    log_q = torch.tensor([math.log(0.5), math.log(0.1)])
    loss = sampled_softmax_loss(U, V, torch.tensor([10, 11]), 0.5, log_q=log_q)
    want = _ce(
        [[1.2 - math.log(0.5), 1.6 - math.log(0.1)], [1.6 - math.log(0.5), 1.2 - math.log(0.1)]]
    )
    assert loss.item() == pytest.approx(want, abs=1e-6)


def test_accidental_hits_are_removed_only_off_the_diagonal() -> None:
    ids = torch.tensor([7, 7])  # the same item twice: each row's other column is its positive too
    with_hits = sampled_softmax_loss(U, V, ids, 0.5, remove_accidental_hits=False)
    removed = sampled_softmax_loss(U, V, ids, 0.5, remove_accidental_hits=True)
    assert with_hits.item() == pytest.approx(_ce([[1.2, 1.6], [1.6, 1.2]]), abs=1e-6)
    assert removed.item() == pytest.approx(0.0, abs=1e-6)  # only the positive is left


def test_mixed_negatives_join_every_row() -> None:
    neg = torch.tensor([[-1.0, 0.0]])
    neg_log_q = torch.tensor([math.log(0.25)])
    loss = sampled_softmax_loss(
        U, V, torch.tensor([10, 11]), 0.5, log_q=torch.zeros(2),
        negatives=neg, negative_ids=torch.tensor([12]), negative_log_q=neg_log_q,
    )  # fmt: skip
    want = _ce([[1.2, 1.6, -2.0 - math.log(0.25)], [1.6, 1.2, 0.0 - math.log(0.25)]])
    assert loss.item() == pytest.approx(want, abs=1e-6)
    with pytest.raises(ValueError, match="negative_ids"):
        sampled_softmax_loss(U, V, torch.tensor([1, 2]), 0.5, negatives=neg)


def test_gradients_flow_to_both_towers() -> None:
    u, v = U.clone().requires_grad_(), V.clone().requires_grad_()
    sampled_softmax_loss(u, v, torch.tensor([1, 2]), 0.1).backward()
    assert u.grad is not None and v.grad is not None and v.grad.abs().sum() > 0


def test_streaming_frequency_converges_to_sampling_probability() -> None:
    rng = np.random.default_rng(0)
    probs = {1: 0.5, 2: 0.1, 3: 0.02}
    f = StreamingFrequency(buckets=1000, alpha=0.01)
    for step in range(1, 20_001):
        batch = [i for i, p in probs.items() if rng.random() < p]
        if batch:
            f.update(torch.tensor(batch), step)
    est = f.log_q(torch.tensor(list(probs))).exp().numpy()
    np.testing.assert_allclose(est, list(probs.values()), rtol=0.25)
    assert est[0] > est[1] > est[2]


def test_streaming_frequency_state_is_checkpointed() -> None:
    f = StreamingFrequency(buckets=10)
    f.update(torch.tensor([3]), 5)
    g = StreamingFrequency(buckets=10)
    g.load_state_dict(f.state_dict())
    assert torch.equal(g.gap, f.gap) and torch.equal(g.last, f.last)
