"""Ranking candidates with the package's factorised ranker graphs.

Every candidate's part of the ranker (``ranker_items`` over the whole catalogue, with the
package's context defaults: a not-yet-shown pin) is computed once, at export, and stored in the
package as raw arrays that the scorer memory-maps (:func:`stored_item_parts`): the pages are
shared by every process serving the package, resident memory grows with the rows a process
touches, and a reload maps the new files instead of recomputing. A package without them (format
v2) gets them computed at load (:func:`compute_item_parts`). Per request, ``ranker_user``
runs once per user and ``ranker_pairs`` does only the per-pair work, in runs of at most
``max_rows`` candidates. The other ranker graphs (``ranker``, ``ranker_feed``) score the same
function and are held to these by the package probe (:mod:`pinrank.serving.probe`).
"""

from __future__ import annotations

import contextlib
import mmap
from collections.abc import Iterator

import numpy as np

from pinrank.features.columns import pack
from pinrank.serving.catalogue import Catalogue
from pinrank.serving.conform import conform
from pinrank.serving.package import Package, PackageError
from pinrank.serving.runtime import Backend

GRAPHS = ("ranker_user", "ranker_items", "ranker_pairs")
# candidates per ranker_pairs run: small enough that a run's [pairs, hidden] intermediates stay
# in the CPU's caches (8,192 gave 1.3x the batch feeds/s of 65,536 on the demo package,
# benchmarks/README.md), large enough that the per-run overhead stays small
MAX_ROWS = 8192


class Ranker:
    """Calibrated probabilities of users with catalogue rows (module docstring)."""

    def __init__(
        self, package: Package, backend: Backend, catalogue: Catalogue, max_rows: int = MAX_ROWS
    ) -> None:
        self.backend, self.catalogue, self.max_rows = backend, catalogue, max_rows
        self.context = context_arrays(package)  # [1] per context input
        stored = stored_item_parts(package, len(catalogue.ids))
        self.item_parts = (
            stored
            if stored is not None
            else compute_item_parts(backend, catalogue, self.context, max_rows)
        )
        # the graphs ranking runs from now on (ranker_items ran once above, if at all)
        self.graphs = ("ranker_user", "ranker_pairs")

    def rank(self, user_arrays: dict[str, np.ndarray], rows: list[np.ndarray]) -> list[np.ndarray]:
        """``[N_b]`` calibrated probabilities of each user ``b`` with its catalogue ``rows[b]``
        (runs of whole users; a user with more than ``max_rows`` candidates is one run)."""
        sizes = np.array([len(r) for r in rows], np.int64)
        out = [np.empty(0, np.float32)] * len(rows)
        if not sizes.sum():
            return out
        parts = self.backend.run("ranker_user", user_arrays)
        start = 0
        while start < len(rows):
            stop, total = start + 1, sizes[start]
            while stop < len(rows) and total + sizes[stop] <= self.max_rows:
                total += sizes[stop]
                stop += 1
            if total:
                inputs = {name: a[start:stop] for name, a in parts.items()}
                inputs["user_index"] = np.repeat(np.arange(stop - start), sizes[start:stop])
                inputs |= {**self.item_parts, "item_index": np.concatenate(rows[start:stop])}
                prob = np.asarray(self.backend.run("ranker_pairs", inputs)["probability"])
                if prob.shape != (total,) or not np.isfinite(prob).all():
                    raise RuntimeError(
                        f"ranker_pairs gave {prob.shape} probabilities, not {total} finite ones"
                    )
                bounds = np.cumsum(sizes[start:stop])[:-1]
                out[start:stop] = np.split(prob.astype(np.float32), bounds)
            start = stop
        return out


def context_arrays(package: Package) -> dict[str, np.ndarray]:
    """``[1]`` per context input: the package's context defaults (a not-yet-shown pin)."""
    columns = package.columns("context")
    context, _ = conform(package.manifest.get("context_defaults", {}), columns)
    return pack(context, columns)


def compute_item_parts(
    backend: Backend, catalogue: Catalogue, context: dict[str, np.ndarray], max_rows: int = 65536
) -> dict[str, np.ndarray]:
    """``ranker_items`` over the whole catalogue, in runs of at most ``max_rows`` rows; the
    padded cross features are widened to one width."""
    runs = [out for _, out in item_part_runs(backend, catalogue, context, max_rows)]
    out = {}
    for name in runs[0]:
        arrays = [r[name] for r in runs]
        width = max(a.shape[1] if a.ndim == 2 else 0 for a in arrays)
        if name.endswith((".indices", ".kept")):
            arrays = [np.pad(a, ((0, 0), (0, width - a.shape[1]))) for a in arrays]
        out[name] = np.ascontiguousarray(np.concatenate(arrays))
    return out


def item_part_runs(
    backend: Backend, catalogue: Catalogue, context: dict[str, np.ndarray], max_rows: int
) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """``(first row, ranker_items outputs)`` for each run of at most ``max_rows`` catalogue rows,
    with the context defaults (one empty run for an empty catalogue): what computing, writing
    and checking the item parts share."""
    n = len(catalogue.ids)
    for start in range(0, max(n, 1), max_rows):
        rows = np.arange(start, min(start + max_rows, n))
        repeated = {name: np.repeat(v, len(rows), axis=0) for name, v in context.items()}
        yield start, backend.run("ranker_items", catalogue.inputs(rows) | repeated)


def stored_item_parts(package: Package, rows: int) -> dict[str, np.ndarray] | None:
    """The item parts the package stores (``manifest["item_parts"]``), memory-mapped read-only,
    or ``None`` when it stores none. Each is a listed file of raw little-endian values (its sha256
    was checked when the package was loaded) whose size must be its manifest dtype (a plain
    number or bool type) times its shape, with one row per catalogue row; anything else is a
    PackageError."""
    entry = package.manifest.get("item_parts")
    if entry is None:
        return None
    where = f"{package.root}: item_parts"
    arrays = entry.get("arrays") if isinstance(entry, dict) else None
    if not isinstance(arrays, dict) or not arrays:
        raise PackageError(f"{where}: expected an 'arrays' object")
    out = {}
    for name, spec in arrays.items():
        try:
            dtype = np.dtype(str(spec["dtype"]))
            shape = [int(n) for n in spec["shape"]]
            path = package.path(spec["path"])
        except (KeyError, TypeError, ValueError) as err:
            raise PackageError(f"{where}: {name}: a bad entry {spec!r} ({err})") from None
        if (
            dtype.kind not in "biuf"
            or dtype.byteorder == ">"
            or shape[:1] != [rows]
            or min(shape, default=0) < 0
        ):
            raise PackageError(
                f"{where}: {name} is {dtype.str} {shape}; expected a little-endian number or "
                f"bool array with one row for each of the {rows} catalogue rows"
            )
        size = path.stat().st_size
        if size != dtype.itemsize * int(np.prod(shape, dtype=np.int64)):
            raise PackageError(
                f"{where}: {name}: {spec['path']} holds {size} bytes; {dtype.str} {shape} "
                "takes the manifest's size times its type"
            )
        if not size:
            out[name] = np.zeros(shape, dtype)
            continue
        array = np.memmap(path, dtype=dtype, mode="r", shape=tuple(shape))
        # rows are read at random: no readahead of the neighbours (where the OS has madvise)
        with contextlib.suppress(AttributeError, OSError, ValueError):
            array._mmap.madvise(mmap.MADV_RANDOM)  # type: ignore[attr-defined]
        out[name] = array
    return out
