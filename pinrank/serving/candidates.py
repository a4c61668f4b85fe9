"""Candidate generation: for each user of a batch, the catalogue rows a feed is chosen from.

One user-tower run and one index search for the whole batch (excluding each user's ``seen``
pins; with the popularity prior chosen on val when the package has one), then per user the
unseen pins of the followed interests by popularity, and, when an approximate index could not
enumerate enough unseen pins, popular pins to top the set up to ``k``. A pin found by both
sources counts as ``retrieval``; candidates the catalogue does not hold (taken down after the
index was built) are dropped.
"""

from __future__ import annotations

from typing import Any

import faiss
import numpy as np

from pinrank.retrieval.bias import query_vectors
from pinrank.retrieval.topk import FaissTopK
from pinrank.serving.catalogue import Catalogue
from pinrank.serving.feed import EMPTY, INTERESTS, POPULAR, RETRIEVAL, FeedConfig, UserBatch
from pinrank.serving.package import Package
from pinrank.serving.probe import package_index
from pinrank.serving.runtime import Backend

_SOURCES = np.array([RETRIEVAL, INTERESTS, POPULAR], object)


def check_gpu_faiss(module: Any = faiss) -> None:
    """Fail clearly when ``--gpu-index`` (``gpu_index=True``) cannot be honoured: the faiss
    installed is a CPU build (faiss-cpu, what the pinned GPU set installs: docs/gpu.md) or sees no
    GPU. Otherwise :meth:`FaissTopK.wrap` would quietly search on CPU."""
    if not hasattr(module, "StandardGpuResources"):
        raise ValueError(
            f"--gpu-index needs a faiss build with GPU support; faiss {module.__version__} here "
            "is a CPU build (faiss-cpu, as the pinned GPU set installs: docs/gpu.md). Install a "
            "faiss GPU build of torch's CUDA major in place of faiss-cpu, or drop --gpu-index"
        )
    if module.get_num_gpus() == 0:
        raise ValueError(
            f"--gpu-index needs a GPU that faiss sees; faiss {module.__version__} has GPU support "
            "but faiss.get_num_gpus() is 0 (no GPU, driver or CUDA_VISIBLE_DEVICES?), "
            "or drop --gpu-index"
        )


class CandidateSource:
    """Candidates from a package's user tower and index, and its catalogue."""

    def __init__(
        self,
        package: Package,
        backend: Backend,
        catalogue: Catalogue,
        config: FeedConfig,
        gpu_index: bool = False,
    ) -> None:
        self.backend, self.catalogue, self.config = backend, catalogue, config
        if gpu_index:
            check_gpu_faiss()
        spec = package.manifest["index"]
        params = spec.get("params") or {}
        # the popularity prior chosen on val: queries [u / T, beta] (pinrank.retrieval.bias)
        self.bias = float(spec.get("popularity_bias", 0.0))
        self.temperature = float(spec.get("temperature", 1.0))
        self.index = FaissTopK.wrap(
            package_index(package),
            spec["factory"],
            nprobe=params.get("nprobe"),
            ef_search=params.get("ef_search"),
            use_gpu=gpu_index,
        )

    def excluded(self, users: UserBatch) -> list[np.ndarray]:
        """The pins each user must not be served (``seen``, with ``exclude_seen``)."""
        return users.seen if self.config.exclude_seen else [EMPTY] * len(users)

    def generate(
        self, users: UserBatch, k: int, wanted: list[np.ndarray]
    ) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Per user, ``[N_b]`` catalogue rows and their ``[N_b]`` sources; ``wanted``: interests
        the request adds to the user's followed ones."""
        excludes = self.excluded(users)
        found_ids = np.full((len(users), 0), -1, np.int64)
        if self.config.candidates:
            emb = self.backend.run("user_tower", users.arrays)["embedding"]  # [B, D]
            query = np.asarray(emb, np.float32)
            if self.bias:
                query = query_vectors(query, self.temperature, self.bias)  # [B, D + 2]
            depth = max(self.config.candidates, k)
            _, found_ids = self.index.search(query, depth, exclude=list(excludes))
        c = self.catalogue
        found = c.rows(found_ids.reshape(-1)).reshape(found_ids.shape)  # [B, depth], -1: none
        found[found_ids == -1] = -1
        sizes = [len(e) for e in excludes]
        seen = np.split(c.rows(np.concatenate([EMPTY, *excludes])), np.cumsum(sizes)[:-1])
        marked = np.zeros(len(c.ids), bool)  # each user's excluded rows, cleared after it
        all_rows, all_sources = [], []
        for b in range(len(users)):
            retrieved = found[b][found[b] >= 0]
            excluded = seen[b][seen[b] >= 0]
            followed = (  # the user's are sorted and distinct already
                np.union1d(users.interests[b], wanted[b]) if wanted[b].size else users.interests[b]
            )
            limit = self.config.interest_candidates if followed.size else 0
            marked[excluded] = marked[retrieved] = True
            n_marked = len(excluded) + len(retrieved)
            by_interest = c.popular_unmarked(limit, marked, n_marked, followed)
            short = k - len(retrieved) - len(by_interest)
            top_up = EMPTY
            if short > 0 and len(retrieved) + len(by_interest):  # short, not empty: top it up
                marked[by_interest] = True
                top_up = c.popular_unmarked(short, marked, n_marked + len(by_interest))
            marked[excluded] = marked[retrieved] = marked[by_interest] = False
            all_rows.append(np.concatenate([retrieved, by_interest, top_up]).astype(np.int64))
            counts = [len(retrieved), len(by_interest), len(top_up)]
            all_sources.append(np.repeat(_SOURCES, counts))
        return all_rows, all_sources
