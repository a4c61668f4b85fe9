"""Ids given as strings (a data config's ``ids: hash`` or ``map``), made int64 the same way on
the training side (:mod:`pinrank.data.ingest`) and the serving side (:mod:`pinrank.serving.ids`).
"""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

ID_KINDS = ("int", "map", "hash")


def hash_string(value: str) -> int:
    """The int64 id of one string: the first 63 bits of its BLAKE2b digest, never 0.

    Example::

        >>> hash_string("a")
        2340832890917691671
    """
    return max(1, int.from_bytes(hashlib.blake2b(value.encode(), digest_size=8).digest()) >> 1)


def hash_strings(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """:func:`hash_string` of every value (each distinct string hashed once); null stays null.

    Example::

        >>> hash_strings(pa.array(["a", None, "a"])).to_pylist()
        [2340832890917691671, None, 2340832890917691671]
    """
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if values.null_count == len(values):
        return pa.nulls(len(values), pa.int64())
    encoded = pc.dictionary_encode(values)
    words = [hash_string(s) for s in encoded.dictionary.to_pylist()]
    return pc.take(pa.array(words, pa.int64()), encoded.indices)


class IdIndex:
    """The position of int64 ids in an array of ids, ``-1`` for an id it lacks (a repeated id:
    its first position).

    Where the ids are non-negative and at most 4x their number (plus 1,024), a lookup is one
    gather from a table of ``max id + 1`` positions; other ids (hashed or sparse 64-bit ones)
    take a binary search over the sorted ids. The table matters wherever lookups are many:
    vocabulary indices of every history list of a training batch were 45% of its featurizing
    time, and a catalogue of 1M pins cost a cache miss per step of the search.

    Example::

        >>> index = IdIndex(np.array([7, 3, 9, 3]))
        >>> index(np.array([3, 9, 5, -1, 10**12])).tolist(), index.dense is not None
        ([1, 2, -1, -1, -1], True)
        >>> IdIndex(np.array([2**40, 5]))(np.array([5, 2**40, 6])).tolist()
        [1, 0, -1]
    """

    def __init__(self, ids: np.ndarray, dense: bool = True) -> None:
        """``dense=False``: always the binary search (16 bytes an id, for an index whose
        memory counts more than its lookups)."""
        ids = np.asarray(ids, np.int64)
        self.order = np.argsort(ids, kind="stable")
        self.sorted = ids[self.order]
        self.dense: np.ndarray | None = None
        n = len(self.sorted)
        if dense and n and self.sorted[0] >= 0 and self.sorted[-1] < 4 * n + 1024:
            self.dense = np.full(int(self.sorted[-1]) + 1, -1, np.int64)
            self.dense[self.sorted[::-1]] = self.order[::-1]  # a repeated id: its first

    def __call__(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, np.int64)
        if self.dense is not None:
            inside = (ids >= 0) & (ids < len(self.dense))
            return np.where(inside, self.dense[np.where(inside, ids, 0)], -1)
        if not len(self.sorted):
            return np.full(ids.shape, -1, np.int64)
        pos = np.minimum(np.searchsorted(self.sorted, ids), len(self.sorted) - 1)
        return np.where(self.sorted[pos] == ids, self.order[pos], -1)
