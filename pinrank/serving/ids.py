"""A package's ids as the data gave them: the originals of string ids, in and out.

Where a data config declared string ids (``ids: map`` or ``hash``, :mod:`pinrank.data.tables`),
the package holds per namespace (``user_id``, ``item_id``, an interest namespace) the original of
every int64 id (``ids/<namespace>.parquet``, sorted by id). :class:`IdCodec` turns originals into
the int64 ids the graphs, the stores and the catalogue use (:meth:`IdCodec.encode`) and back
(:meth:`IdCodec.decode`); a namespace without a file keeps integer ids and passes them through.

``map``: an original never seen in training has no id: it encodes to 0, which no mapped id is
(they start at 1), so an unknown user gets the unknown-user feed. ``hash``: any string encodes
(:func:`pinrank.features.ids.hash_string`), seen or not.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pinrank.features.ids import hash_string

if TYPE_CHECKING:
    from pinrank.serving.package import Package

UNKNOWN = 0  # the id of a ``map`` original never seen in training
MAX_ID_LENGTH = 512  # characters of one original id


@dataclass(frozen=True)
class Namespace:
    """One namespace's ids: ``ids`` int64 sorted ascending and their ``originals``."""

    kind: str
    ids: np.ndarray
    originals: np.ndarray  # object array of str, aligned with ids

    def encode(self, values: Sequence[Any]) -> np.ndarray:
        out = np.empty(len(values), np.int64)
        for i, v in enumerate(values):
            text = str(v)
            if len(text) > MAX_ID_LENGTH:
                raise ValueError(f"an id of {len(text)} characters (at most {MAX_ID_LENGTH})")
            if self.kind == "hash":
                out[i] = hash_string(text)
            else:  # map: the originals are sorted by id and by value alike (ids are ranks)
                pos = int(np.searchsorted(self.originals, text))
                hit = pos < len(self.originals) and self.originals[pos] == text
                out[i] = self.ids[pos] if hit else UNKNOWN
        return out

    def decode(self, ids: np.ndarray) -> list[Any]:
        pos = np.searchsorted(self.ids, ids)
        pos = np.minimum(pos, max(len(self.ids) - 1, 0))
        hit = self.ids[pos] == ids if len(self.ids) else np.zeros(len(ids), bool)
        return [self.originals[p] if h else None for p, h in zip(pos, hit, strict=True)]


class IdCodec:
    """Every namespace of a package: originals in, originals out (module docstring)."""

    def __init__(
        self, namespaces: dict[str, Namespace] | None = None, columns: dict[str, str] | None = None
    ) -> None:
        self.namespaces = namespaces or {}
        self.columns = columns or {}  # "items.interests" -> its namespace

    @classmethod
    def from_package(cls, package: Package) -> IdCodec:
        out: dict[str, Namespace] = {}
        columns: dict[str, str] = {}
        for ns, entry in package.manifest.get("ids", {}).items():
            table = pq.read_table(io.BytesIO(package.read(entry["path"])))
            ids = table.column("id").to_numpy()
            originals = np.asarray(table.column("original").to_pylist(), dtype=object)
            if entry.get("kind") not in ("map", "hash") or len(ids) != entry.get("count"):
                raise ValueError(f"{package.root}: ids.{ns} does not match its manifest entry")
            if len(ids) > 1 and not bool(np.all(ids[1:] > ids[:-1])):
                raise ValueError(f"{package.root}: ids.{ns} is not sorted by id")
            out[ns] = Namespace(entry["kind"], ids, originals)
            columns |= {c: ns for c in entry.get("columns", [])}
        return cls(out, columns)

    @property
    def interests(self) -> str:
        """The namespace of interest ids (the items' ``interests``), if they are strings."""
        return self.columns.get("items.interests", "interests")

    def maps(self, namespace: str) -> bool:
        """Whether ``namespace``'s ids are strings the package maps."""
        return namespace in self.namespaces

    def encode(self, namespace: str, values: Sequence[Any]) -> np.ndarray:
        """int64 ids of ``values`` (originals); integers pass through where not mapped."""
        if namespace not in self.namespaces:
            return np.asarray(values, np.int64)
        return self.namespaces[namespace].encode(values)

    def encode_one(self, namespace: str, value: Any) -> int:
        return int(self.encode(namespace, [value])[0])

    def decode(self, namespace: str, ids: np.ndarray | Sequence[int]) -> list[Any]:
        """The originals of int64 ``ids`` (ints where not mapped; None for an id without one)."""
        ids = np.asarray(ids, np.int64)
        if namespace not in self.namespaces:
            return ids.tolist()
        return self.namespaces[namespace].decode(ids)

    def arrow_type(self, namespace: str) -> pa.DataType:
        """How the namespace's ids are written out: string where mapped, else int64."""
        return pa.string() if namespace in self.namespaces else pa.int64()
