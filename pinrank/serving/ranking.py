"""Ranking candidates with the package's factorised ranker graphs.

At load, ``ranker_items`` runs once over the whole catalogue (every candidate's part of the
ranker, with the package's context defaults: a not-yet-shown pin). Per request, ``ranker_user``
runs once per user and ``ranker_pairs`` does only the per-pair work, in runs of at most
``max_rows`` candidates. The other ranker graphs (``ranker``, ``ranker_feed``) score the same
function and are held to these by the package probe (:mod:`pinrank.serving.probe`).
"""

from __future__ import annotations

import numpy as np

from pinrank.features.columns import pack
from pinrank.serving.catalogue import Catalogue
from pinrank.serving.conform import conform
from pinrank.serving.package import Package
from pinrank.serving.runtime import Backend

GRAPHS = ("ranker_user", "ranker_items", "ranker_pairs")


class Ranker:
    """Calibrated probabilities of users with catalogue rows (module docstring)."""

    def __init__(
        self, package: Package, backend: Backend, catalogue: Catalogue, max_rows: int = 65536
    ) -> None:
        self.backend, self.catalogue, self.max_rows = backend, catalogue, max_rows
        columns = package.columns("context")
        context, _ = conform(package.manifest.get("context_defaults", {}), columns)
        self.context = pack(context, columns)  # [1] per context input
        self.item_parts = self._item_parts()

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

    def _item_parts(self) -> dict[str, np.ndarray]:
        """``ranker_items`` over the whole catalogue, in runs of at most ``max_rows`` rows; the
        padded cross features are widened to one width."""
        n = len(self.catalogue.ids)
        runs = []
        for a in range(0, max(n, 1), self.max_rows):
            rows = np.arange(a, min(a + self.max_rows, n))
            context = {name: np.repeat(v, len(rows), axis=0) for name, v in self.context.items()}
            runs.append(self.backend.run("ranker_items", self.catalogue.inputs(rows) | context))
        out = {}
        for name in runs[0]:
            arrays = [r[name] for r in runs]
            width = max(a.shape[1] if a.ndim == 2 else 0 for a in arrays)
            if name.endswith((".indices", ".kept")):
                arrays = [np.pad(a, ((0, 0), (0, width - a.shape[1]))) for a in arrays]
            out[name] = np.concatenate(arrays)
        return out
