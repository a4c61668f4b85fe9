"""Feature transforms in NumPy over Arrow columns: the reference that the ONNX graphs reproduce.

Sparse features come out as jagged arrays ``(values, lengths)``: ``values`` int64 [nnz],
``lengths`` int32 [rows]. Dense features come out as float32 [rows, dim]. Nothing here imports
torch, so the serving side can use it too. Every replaced value is counted in a :class:`Counts`
under ``(feature, reason)`` with reason one of :data:`REASONS`.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pinrank.features.ids import IdIndex
from pinrank.features.spec import HASH_PRIME

REASONS = ("null", "nan", "negative", "out_of_range", "oov", "malformed", "truncated")
MISSING, OOV = 0, 1  # index layout of categorical features (see spec docstring)

Counts = Counter  # Counter[tuple[str, str]]: (feature, reason) -> count
Jagged = tuple[np.ndarray, np.ndarray]  # (values int64 [nnz], lengths int32 [rows])


def hash_ids(x: np.ndarray, a: int, b: int, buckets: int) -> np.ndarray:
    """Hash int64 ids into ``1..buckets`` with ``((x mod P) * a + b) mod P mod buckets + 1``.

    ``P = 2^31 - 1`` and ``a, b < P``, so every intermediate stays below ``2^62``: the same
    arithmetic runs in int64 ONNX ``Mod``/``Mul``/``Add`` without overflow. ``mod`` follows the
    sign of the divisor (NumPy, Python and ONNX ``Mod`` with ``fmod=0`` agree), so negative ids
    hash too.

    Example::

        >>> hash_ids(np.array([0, 1, -1, 2**62]), a=48271, b=11, buckets=10).tolist()
        [2, 3, 8, 3]
    """
    h = ((x.astype(np.int64) % HASH_PRIME) * np.int64(a) + np.int64(b)) % HASH_PRIME
    return h % np.int64(buckets) + 1


def hash_params(name: str) -> tuple[int, int]:
    """Deterministic per-feature hash multipliers ``(a, b)``, both in ``[1, P)``."""
    rng = np.random.default_rng(list(name.encode()))
    a, b = rng.integers(1, HASH_PRIME, 2)
    return int(a), int(b)


def bucketize(x: np.ndarray, boundaries: np.ndarray) -> np.ndarray:
    """Bucket ``1 + #{boundaries <= x}``: a sum of comparisons, as the ONNX graph computes it.

    Example::

        >>> bucketize(np.array([10.0, 18.0, 30.0, 99.0]), np.array([18.0, 25.0, 65.0])).tolist()
        [1, 2, 3, 4]
    """
    return 1 + np.searchsorted(boundaries, x, side="right").astype(np.int64)


class VocabLookup:
    """Maps raw values to vocabulary indices: ``2 + rank`` when known, :data:`OOV` otherwise.

    ``values``: the vocabulary in index order, an Arrow array (int64 or string) or a list."""

    def __init__(self, values: pa.Array | list) -> None:
        arr = values if isinstance(values, pa.Array) else vocab_array(values)
        self.size = len(arr)
        self.is_string = pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)
        if self.is_string:
            self.value_set = arr.cast(pa.string())
            self.has_empty = bool(pc.any(pc.equal(self.value_set, "")).as_py())
        else:
            self.index = IdIndex(np.asarray(arr.to_numpy(zero_copy_only=False), np.int64))
            self.has_empty = False

    def __call__(self, arr: pa.Array) -> np.ndarray:
        """Indices for a null-free array of values."""
        if self.is_string:
            idx = pc.index_in(arr.cast(pa.string()), value_set=self.value_set)
            return pc.fill_null(pc.add(idx, 2), OOV).to_numpy().astype(np.int64)
        rank = self.index(np.asarray(arr.to_numpy(zero_copy_only=False), dtype=np.int64))
        return np.where(rank >= 0, rank + 2, OOV)


def vocab_array(values: list) -> pa.Array:
    """A vocabulary's values (all strings or all ints) as an Arrow string or int64 array; an
    empty vocabulary is int64.

    Example::

        >>> vocab_array(["b", "a"]).type, vocab_array([3, 1]).type, vocab_array([]).type
        (DataType(string), DataType(int64), DataType(int64))
    """
    if values and isinstance(values[0], str):
        return pa.array(values, pa.string())
    return pa.array(values, pa.int64())


def flatten_lists(col: pa.Array, counts: Counts, name: str) -> tuple[pa.Array, np.ndarray]:
    """A list (or scalar) column as ``(non-null values, row of each value)``; nulls (and empty
    strings) counted."""
    rows = len(col)
    if pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
        counts[(name, "null")] += col.null_count
        lengths = pc.fill_null(pc.list_value_length(col), 0).to_numpy()
        values = pc.list_flatten(col)
        row = np.repeat(np.arange(rows), lengths)
    else:
        values, row = col, np.arange(rows)
    valid = values.is_valid().to_numpy(zero_copy_only=False)
    if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
        # an empty string is a missing value (the exported graphs receive nulls as "")
        valid &= pc.fill_null(pc.not_equal(values, ""), False).to_numpy(zero_copy_only=False)
    counts[(name, "null")] += int((~valid).sum())
    if not valid.all():
        values, row = values.filter(pa.array(valid)), row[valid]
    return values, row


def jagged(values: np.ndarray, row: np.ndarray, rows: int) -> Jagged:
    """Jagged arrays from values tagged with their (non-decreasing) row."""
    return values.astype(np.int64), np.bincount(row, minlength=rows).astype(np.int32)


def truncate(j: Jagged, max_len: int, keep_last: bool, counts: Counts, name: str) -> Jagged:
    """Keep at most ``max_len`` values per row (the last ones for sequences)."""
    values, lengths = j
    if lengths.size == 0 or lengths.max() <= max_len:
        return j
    counts[(name, "truncated")] += int((lengths > max_len).sum())
    starts = np.cumsum(lengths) - lengths
    within = np.arange(values.size) - np.repeat(starts, lengths)
    drop = np.repeat(lengths - max_len, lengths)
    keep = within >= drop if keep_last else within < max_len
    return values[keep], np.minimum(lengths, max_len).astype(np.int32)


def take_jagged(j: Jagged, rows: np.ndarray) -> Jagged:
    """The rows ``rows`` (any order, repeats allowed) of a jagged array.

    Example::

        >>> v, n = take_jagged((np.array([5, 6, 7]), np.array([2, 0, 1])), np.array([2, 0, 2]))
        >>> v.tolist(), n.tolist()
        ([7, 5, 6, 7], [1, 2, 1])
    """
    values, lengths = j
    rows = np.asarray(rows, np.int64)
    starts = (np.cumsum(lengths, dtype=np.int64) - lengths)[rows]
    out_lengths = lengths[rows].astype(np.int64)
    within = np.arange(out_lengths.sum()) - np.repeat(
        np.cumsum(out_lengths) - out_lengths, out_lengths
    )
    return values[np.repeat(starts, out_lengths) + within], out_lengths.astype(np.int32)


def jagged_product(left: Jagged, right: Jagged) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair ``(l, r)`` of each row's left and right values, missing (0) values skipped.

    Returns the pairs as two aligned jagged arrays sharing the same lengths.

    Example::

        >>> pl, pr, n = jagged_product((np.array([3, 4, 5]), np.array([2, 1])),
        ...                            (np.array([7, 0, 8]), np.array([1, 2])))
        >>> pl.tolist(), pr.tolist(), n.tolist()
        ([3, 4, 5], [7, 7, 8], [2, 1])
    """
    (va, la), (vb, lb) = _drop_missing(left), _drop_missing(right)
    rows = la.size
    row_a = np.repeat(np.arange(rows), la)
    reps = lb[row_a]
    start_b = (np.cumsum(lb) - lb)[row_a]
    within = np.arange(reps.sum()) - np.repeat(np.cumsum(reps) - reps, reps)
    pair_left = np.repeat(va, reps)
    pair_right = vb[np.repeat(start_b, reps) + within]
    return pair_left, pair_right, (la.astype(np.int64) * lb).astype(np.int32)


def _drop_missing(j: Jagged) -> Jagged:
    values, lengths = j
    keep = values != MISSING
    if keep.all():
        return j
    row = np.repeat(np.arange(lengths.size), lengths)
    return values[keep], np.bincount(row[keep], minlength=lengths.size).astype(np.int32)


def numeric_column(
    col: pa.Array, dim: int, counts: Counts, name: str
) -> tuple[np.ndarray, np.ndarray]:
    """Raw numeric values as float64 [rows, dim] and a [rows] mask of rows that are usable.

    Null rows, rows with a non-finite value and vector rows of the wrong length are unusable
    (counted as null, nan and malformed).
    """
    rows = len(col)
    if dim == 1:
        valid = col.is_valid().to_numpy(zero_copy_only=False)
        x = pc.fill_null(col.cast(pa.float64(), safe=False), 0.0).to_numpy().reshape(rows, 1).copy()
    else:
        lengths = pc.fill_null(pc.list_value_length(col), 0).to_numpy()
        valid = col.is_valid().to_numpy(zero_copy_only=False) & (lengths == dim)
        counts[(name, "malformed")] += int(
            (col.is_valid().to_numpy(zero_copy_only=False) & (lengths != dim)).sum()
        )
        x = np.zeros((rows, dim))
        flat = pc.list_flatten(col.filter(pa.array(valid))).cast(pa.float64(), safe=False)
        x[valid] = pc.fill_null(flat, np.nan).to_numpy().reshape(-1, dim)
    counts[(name, "null")] += int((~col.is_valid().to_numpy(zero_copy_only=False)).sum())
    finite = np.isfinite(x).all(axis=1)
    counts[(name, "nan")] += int((valid & ~finite).sum())
    return x, valid & finite
