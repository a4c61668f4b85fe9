"""Blending and diversification of a feed's scored candidates (:func:`select`).

Pure NumPy over a :class:`Candidates` set: which ``<= k`` candidates a feed shows, within the
per-source quotas and the diversity rule of a ``FeedConfig``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from pinrank.serving.catalogue import RowInterests

if TYPE_CHECKING:
    from pinrank.serving.feed import FeedConfig

_EMPTY = np.empty(0, np.int64)


@dataclass
class Candidates:
    """A user's scored candidates, each ``[N]``: catalogue ``rows``, ``item_ids``, ``sources``,
    calibrated ``scores``, ``boards`` (-1: none) and ``interests`` (an id array each, e.g. a
    lazy view of the catalogue's)."""

    rows: np.ndarray
    item_ids: np.ndarray
    sources: np.ndarray
    scores: np.ndarray
    boards: np.ndarray
    interests: Sequence[np.ndarray]


def select(c: Candidates, k: int, config: FeedConfig) -> tuple[np.ndarray, int]:
    """Blend and diversify: positions in ``c`` of the ``<= k`` chosen candidates, best score
    first, and how many of them were backfilled.

    A source may fill at most ``floor(quota * k)`` places. ``cap`` walks the candidates best
    first and takes those within the quotas and the per-interest and per-board caps (a pin
    counts once for each of its interests). ``mmr`` repeatedly takes the candidate within the
    quotas maximising ``lambda * score - (1 - lambda) * max_similarity`` to those taken, with
    similarity 1 for the same board and else the Jaccard index of the interest sets. Where that
    leaves fewer than ``k``, the best remaining candidates fill the feed (``backfilled``).
    """
    order = np.argsort(-c.scores, kind="stable")
    caps = {s: int(np.floor(q * k + 1e-9)) for s, q in config.quotas.items()}
    if config.diversity == "mmr":
        chosen = _mmr(c, k, caps, config.mmr_lambda)
    else:
        chosen = _greedy(c, order, k, caps, config)
    extra = order[~np.isin(order, chosen)][: k - len(chosen)] if len(chosen) < k else _EMPTY
    picked = np.concatenate([np.array(chosen, np.int64), extra])
    return picked[np.argsort(-c.scores[picked], kind="stable")], len(extra)


def _greedy(
    c: Candidates, order: np.ndarray, k: int, caps: dict[str, int], config: FeedConfig
) -> list[int]:
    """The walk of :func:`select`'s ``cap`` (and ``none``) rule. The sources, boards and
    interests that reached their cap are kept in sets, so a candidate is checked with set
    lookups (the walk visits about half of a feed's candidates)."""
    capped = config.diversity == "cap"
    sources, boards = c.sources[order].tolist(), c.boards[order].tolist()
    interests = c.interests
    tags: list[Sequence[int]]
    if not capped:
        tags = [()] * len(order)
    elif isinstance(interests, RowInterests):  # the catalogue's tuples, by catalogue row
        rows = interests.rows[order].tolist()
        tags = list(map(interests.catalogue.interest_tuples().__getitem__, rows))
    else:
        tags = [interests[i].tolist() for i in order.tolist()]
    max_board, max_interest = config.max_per_board, config.max_per_interest
    per_source = dict.fromkeys(caps, 0)
    per_board: dict[int, int] = {}
    per_interest: dict[int, int] = {}
    full_sources = {s for s, cap in caps.items() if cap <= 0}
    full_boards: set[int] = set()
    full_tags: set[int] = set()
    chosen: list[int] = []
    walk = zip(order.tolist(), sources, boards, tags, strict=True) if k > 0 else iter(())
    for i, source, board, its in walk:
        if source in full_sources:
            continue
        if capped:
            if board in full_boards or not full_tags.isdisjoint(its):
                continue
            if board >= 0:
                n = per_board[board] = per_board.get(board, 0) + 1
                if n >= max_board:
                    full_boards.add(board)
            for t in its:
                n = per_interest[t] = per_interest.get(t, 0) + 1
                if n >= max_interest:
                    full_tags.add(t)
        if source in per_source:
            n = per_source[source] = per_source[source] + 1
            if n >= caps[source]:
                full_sources.add(source)
        chosen.append(i)
        if len(chosen) == k:
            break
    return chosen


def _mmr(c: Candidates, k: int, caps: dict[str, int], lam: float) -> list[int]:
    vocab = np.unique(np.concatenate([_EMPTY, *c.interests]))
    tags = np.zeros((len(c.scores), len(vocab)), np.float32)  # [N, V] multi-hot interests
    for i, t in enumerate(c.interests):
        tags[i, np.searchsorted(vocab, t)] = 1
    sizes = tags.sum(axis=1)  # [N]
    max_sim = np.zeros(len(c.scores))  # [N] similarity to the closest pin taken so far
    open_ = np.ones(len(c.scores), bool)
    per_source: Counter[str] = Counter()
    chosen: list[int] = []
    while len(chosen) < k:
        full = [s for s in set(c.sources[open_]) if per_source[s] >= caps.get(s, k)]
        eligible = open_ & ~np.isin(c.sources, full)
        if not eligible.any():
            break
        j = int(np.argmax(np.where(eligible, lam * c.scores - (1 - lam) * max_sim, -np.inf)))
        chosen.append(j)
        open_[j] = False
        per_source[c.sources[j]] += 1
        shared = tags @ tags[j]  # [N]
        union = sizes + sizes[j] - shared
        sim = np.where(union > 0, shared / np.maximum(union, 1), 0.0)
        sim = np.where((c.boards == c.boards[j]) & (c.boards >= 0), 1.0, sim)
        max_sim = np.maximum(max_sim, sim)
    return chosen
