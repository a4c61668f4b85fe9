"""Ids given as strings (a data config's ``ids: hash`` or ``map``), made int64 the same way on
the training side (:mod:`pinrank.data.ingest`) and the serving side (:mod:`pinrank.serving.ids`).
"""

from __future__ import annotations

import hashlib

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
