"""Reading a FAISS index from untrusted bytes, bounded by what the manifest says it holds.

FAISS's reader sizes each vector it reads from a length field in the file, and allocates before
it finds that the data is not there: one changed 8-byte field can make a process reserve
gigabytes before the read fails. So, before FAISS sees a byte, :func:`read_index_checked`
parses the index header (the wrapper's and the wrapped index's: type, dimension, count, metric)
and compares it with the manifest's description (``factory``, ``dim``, ``items``, ``bytes``,
``metric``); then FAISS reads with its per-vector allocation limit set to the size of the file,
so that no length field can ask for more memory than the file itself holds.

Header layout (``faiss/impl/index_read.cpp``, ``read_index_header``): a fourcc, ``d`` int32,
``ntotal`` int64, two int64 fields, ``is_trained`` one byte, ``metric_type`` int32 and, when the
metric is above 1, a float argument. The ID-map wrappers (``IxMp``, ``IxM2``) are followed by the
wrapped index.
"""

from __future__ import annotations

import struct
import threading
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np

WRAPPERS = (b"IxMp", b"IxM2")  # IndexIDMap, IndexIDMap2: a header, then the wrapped index
FLAT_STORAGE = (b"IxFI", b"IxF2", b"IHNf", b"IwFl")  # hold every vector as d float32s
KNOWN = (*FLAT_STORAGE, b"IwPQ", b"IxPq", b"IHNs", b"IwSq", b"IxSQ")
METRICS = {"inner_product": 0, "l2": 1}
_HEADER = struct.Struct("<4siqqqBi")  # fourcc, d, ntotal, 2 x int64, is_trained, metric
_LIMITS = threading.Lock()


class IndexFileError(ValueError):
    """An index file does not match its description; the message says how."""


@dataclass(frozen=True)
class IndexHeader:
    fourcc: bytes
    dim: int
    ntotal: int
    metric: int
    size: int  # bytes of this header


def parse_header(data: bytes, offset: int = 0) -> IndexHeader:
    """The index header at ``offset``.

    Example::

        >>> index = faiss.IndexIDMap(faiss.IndexFlatIP(4))
        >>> index.add_with_ids(np.eye(4, dtype=np.float32), np.arange(4))
        >>> data = faiss.serialize_index(index).tobytes()
        >>> parse_header(data).fourcc, parse_header(data).ntotal
        (b'IxMp', 4)
        >>> parse_header(data, parse_header(data).size).fourcc
        b'IxFI'
    """
    if len(data) < offset + _HEADER.size:
        raise IndexFileError(f"index file too short for a header at byte {offset}")
    fourcc, d, ntotal, _, _, trained, metric = _HEADER.unpack_from(data, offset)
    if trained not in (0, 1):
        raise IndexFileError(f"index header at byte {offset}: is_trained byte {trained}")
    size = _HEADER.size + (4 if metric > 1 else 0)
    return IndexHeader(fourcc, d, ntotal, metric, size)


def check_header(data: bytes, expect: dict[str, Any]) -> list[IndexHeader]:
    """The headers of ``data`` (wrapper first), checked against ``expect`` (the manifest's index
    entry: ``dim``, ``items``, ``bytes``, ``metric``); IndexFileError naming the first field
    that differs."""
    if len(data) != expect.get("bytes"):
        raise IndexFileError(f"index is {len(data)} bytes, the manifest says {expect.get('bytes')}")
    headers = [parse_header(data)]
    if headers[0].fourcc in WRAPPERS:
        headers.append(parse_header(data, headers[0].size))
    inner = headers[-1]
    if inner.fourcc not in KNOWN:
        raise IndexFileError(f"index type {inner.fourcc!r} is not one that pinrank reads")
    metric = METRICS.get(str(expect.get("metric")))
    for h in headers:
        if h.dim != expect.get("dim") or h.ntotal != expect.get("items"):
            raise IndexFileError(
                f"index header {h.fourcc!r} says {h.ntotal} vectors of dimension {h.dim}; the "
                f"manifest says {expect.get('items')} of dimension {expect.get('dim')}"
            )
        if h.metric != metric:
            raise IndexFileError(
                f"index metric {h.metric}, the manifest says {expect.get('metric')}"
            )
    if inner.fourcc in FLAT_STORAGE and inner.ntotal * inner.dim * 4 > len(data):
        raise IndexFileError(f"{len(data)} bytes cannot hold {inner.ntotal} x {inner.dim} floats")
    return headers


def read_index_checked(data: bytes, expect: dict[str, Any]) -> Any:
    """A FAISS index from ``data`` after :func:`check_header`, read with FAISS's per-vector
    allocation limit set to ``len(data)``; the index read must hold ``expect['items']`` vectors
    of ``expect['dim']``."""
    check_header(data, expect)
    with _LIMITS:  # the limit is process-wide: set it, read, put it back
        before = faiss.get_deserialization_vector_byte_limit()
        faiss.set_deserialization_vector_byte_limit(max(len(data), 1 << 16))
        try:
            index = faiss.deserialize_index(np.frombuffer(data, np.uint8))
        except RuntimeError as err:
            raise IndexFileError(
                f"FAISS cannot read the index ({str(err).splitlines()[-1]})"
            ) from None
        finally:
            faiss.set_deserialization_vector_byte_limit(before)
    if index.ntotal != expect["items"] or index.d != expect["dim"]:
        raise IndexFileError(
            f"index read holds {index.ntotal} x {index.d}, not as the manifest says"
        )
    return index
