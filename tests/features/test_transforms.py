"""NumPy transforms against pure-Python references and hand-worked values."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pyarrow as pa
import pytest

from pinrank.features.spec import HASH_PRIME
from pinrank.features.transforms import (
    OOV,
    VocabLookup,
    bucketize,
    hash_ids,
    hash_params,
    jagged_product,
    truncate,
)


def test_hash_matches_big_integer_reference_without_overflow() -> None:
    rng = np.random.default_rng(0)
    x = np.concatenate(
        [rng.integers(-(2**63), 2**63 - 1, 2000, dtype=np.int64), [0, -1, 2**63 - 1, -(2**63)]]
    )
    a, b = hash_params("user_id")
    assert 1 <= a < HASH_PRIME and 1 <= b < HASH_PRIME
    got = hash_ids(x, a, b, 1009)
    want = [((int(v) % HASH_PRIME) * a + b) % HASH_PRIME % 1009 + 1 for v in x]
    assert got.tolist() == want
    assert got.min() >= 1 and got.max() <= 1009


def test_hash_params_are_stable_and_differ_by_name() -> None:
    assert hash_params("a") == hash_params("a") != hash_params("b")


def test_hash_spreads_ids_over_buckets() -> None:
    counts = np.bincount(hash_ids(np.arange(100_000), *hash_params("x"), 100))[1:]
    assert counts.min() > 850 and counts.max() < 1150


def test_bucketize_is_a_count_of_boundaries_at_or_below() -> None:
    bounds = np.array([18.0, 25.0, 35.0])
    x = np.array([-5, 17.9, 18, 24, 25, 35, 90])
    want = [1 + sum(v >= b for b in bounds) for v in x]
    assert bucketize(x, bounds).tolist() == want == [1, 1, 2, 2, 3, 4, 4]


@pytest.mark.parametrize("values", [["F", "M", "U"], [30, 10, 20]])
def test_vocab_lookup_index_layout(values: list) -> None:
    look = VocabLookup(values)
    probe = pa.array([values[2], values[0], "zz" if isinstance(values[0], str) else 99])
    assert look(probe).tolist() == [4, 2, OOV]


@pytest.mark.parametrize("spread", [1, 50])  # compact ids (a table) and sparse ones (a search)
def test_vocab_lookup_of_ints_is_the_binary_search(spread: int) -> None:
    rng = np.random.default_rng(spread)
    vocab = rng.choice(spread * 3000, 3000, replace=False).astype(np.int64)
    look = VocabLookup(pa.array(vocab))
    asked = np.concatenate([vocab, rng.integers(-5, spread * 3600, 5000), [-(2**62), 2**62]])
    order = np.argsort(vocab, kind="stable")
    pos = np.minimum(np.searchsorted(vocab[order], asked), len(vocab) - 1)
    want = np.where(vocab[order][pos] == asked, order[pos] + 2, OOV)
    assert look(pa.array(asked)).tolist() == want.tolist()
    assert (look.index.dense is not None) == (spread == 1)


def test_jagged_product_matches_python_reference() -> None:
    rng = np.random.default_rng(1)
    rows = 50
    la, lb = rng.integers(0, 4, rows), rng.integers(0, 4, rows)
    va, vb = rng.integers(0, 6, la.sum()), rng.integers(0, 6, lb.sum())
    pl, pr, n = jagged_product((va, la.astype(np.int32)), (vb, lb.astype(np.int32)))
    oa, ob = np.r_[0, np.cumsum(la)], np.r_[0, np.cumsum(lb)]
    want_pairs, want_len = [], []
    for r in range(rows):
        pairs = [(x, y) for x in va[oa[r] : oa[r + 1]] if x for y in vb[ob[r] : ob[r + 1]] if y]
        want_pairs += pairs
        want_len.append(len(pairs))
    assert list(zip(pl.tolist(), pr.tolist(), strict=True)) == want_pairs
    assert n.tolist() == want_len


def test_truncate_keeps_last_for_sequences_and_first_for_bags() -> None:
    j = (np.array([1, 2, 3, 4, 5, 6]), np.array([4, 0, 2], np.int32))
    c: Counter = Counter()
    v, n = truncate(j, 2, keep_last=True, counts=c, name="h")
    assert v.tolist() == [3, 4, 5, 6] and n.tolist() == [2, 0, 2]
    v, n = truncate(j, 2, keep_last=False, counts=c, name="h")
    assert v.tolist() == [1, 2, 5, 6]
    assert c[("h", "truncated")] == 2
