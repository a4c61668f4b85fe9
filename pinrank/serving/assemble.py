"""Feeds assembled from scored candidates, and the popular-pin feeds every fallback serves.

:func:`personalized`: blending and diversity (:func:`~pinrank.serving.blend.select`) over each
user's scored candidates, the counts of each source, and the path (``personalized``, or
``personalized_defaults`` when a column was replaced). :class:`Popular`: the fallback feeds
(paths in :mod:`pinrank.serving.feed`): an unknown user's, a user without candidates, and a
feed that failed (``error_popular``, with the failure's ``reason``).
"""

from __future__ import annotations

import logging

import numpy as np

from pinrank.serving.blend import Candidates, select
from pinrank.serving.catalogue import Catalogue
from pinrank.serving.feed import (
    EMPTY,
    ERROR,
    INTERESTS,
    NO_CANDIDATES,
    PERSONALIZED,
    PERSONALIZED_DEFAULTS,
    POPULAR,
    RETRIEVAL,
    UNKNOWN_INTERESTS,
    UNKNOWN_POPULAR,
    UNKNOWN_PREDICTED,
    Feed,
    FeedConfig,
    FeedItem,
    UserBatch,
)
from pinrank.serving.store import StoreError

log = logging.getLogger("pinrank.serving.scorer")
SOURCES = (RETRIEVAL, INTERESTS)  # the sources whose candidates a feed counts


class Popular:
    """Popular-pin feeds from a catalogue (most engaged train events first; never the user's
    ``seen`` pins with ``exclude_seen``)."""

    def __init__(self, catalogue: Catalogue, config: FeedConfig) -> None:
        self.catalogue, self.config = catalogue, config

    def feed(
        self, uid: int, k: int, path: str, exclude: np.ndarray, interests: np.ndarray | None = None
    ) -> Feed:
        """Popular pins (of ``interests`` first, when given), without ``exclude`` ids."""
        c, exclude = self.catalogue, exclude if self.config.exclude_seen else EMPTY
        first = c.popular(k, exclude, interests) if interests is not None else EMPTY
        if interests is not None and not first.size:
            path = UNKNOWN_POPULAR  # no pin has any of those interests
        rest = c.popular(k - len(first), np.union1d(exclude, c.ids[first]))
        items = [
            FeedItem(int(c.ids[r]), None, source, int(c.engaged[r]))
            for rows, source in ((first, INTERESTS), (rest, POPULAR))
            for r in rows
        ]
        return Feed(uid, items, path, counts={"short": k - len(items)})

    def unknown(self, uid: int, k: int, wanted: np.ndarray) -> Feed:
        """An id the store lacks: popular pins of the ``wanted`` interests, else popular pins."""
        path = UNKNOWN_INTERESTS if wanted.size else UNKNOWN_POPULAR
        return self.feed(uid, k, path, EMPTY, wanted if wanted.size else None)

    def predicted(
        self, uid: int, k: int, rows: np.ndarray, replaced: dict[str, str] | None = None
    ) -> Feed:
        """An unknown user's feed from predicted interests: the catalogue ``rows`` chosen by
        :meth:`Catalogue.interest_mix`, best first, topped up with popular pins."""
        if not rows.size:
            return self.feed(uid, k, UNKNOWN_POPULAR, EMPTY)
        c = self.catalogue
        rest = c.popular(k - len(rows), c.ids[rows])
        items = [FeedItem(int(c.ids[r]), None, INTERESTS, int(c.engaged[r])) for r in rows[:k]]
        items += [FeedItem(int(c.ids[r]), None, POPULAR, int(c.engaged[r])) for r in rest]
        return Feed(uid, items, UNKNOWN_PREDICTED, dict(replaced or {}),
                    counts={"short": k - len(items)})  # fmt: skip

    def degraded(self, uid: int, k: int, seen: np.ndarray, err: Exception) -> Feed:
        """Popular pins for a feed that failed, logged; ``reason`` says what failed."""
        log.error("feed for user %d failed (%s: %s); serving popular pins",
                  uid, type(err).__name__, err)  # fmt: skip
        feed = self.feed(uid, k, ERROR, seen)
        feed.error = f"{type(err).__name__}: {err}"
        feed.reason = f"store_{err.reason}" if isinstance(err, StoreError) else "model_error"
        return feed


def personalized(
    users: UserBatch, candidates: list[Candidates], k: int, config: FeedConfig, popular: Popular
) -> list[Feed]:
    """Each user's feed from its scored candidates (a user without any: popular pins)."""
    feeds = []
    for b, cands in enumerate(candidates):
        uid, replaced = int(users.ids[b]), dict(users.replaced[b])
        counts = {
            f"candidates.{s}": int((cands.sources == s).sum()) for s in (RETRIEVAL, INTERESTS)
        }
        if not cands.rows.size:
            feed = popular.feed(uid, k, NO_CANDIDATES, users.seen[b])
            feed.replaced, feed.counts = replaced, counts | feed.counts
            feeds.append(feed)
            continue
        chosen, backfilled = select(cands, k, config)
        items = [
            FeedItem(int(cands.item_ids[i]), float(cands.scores[i]), str(cands.sources[i]))
            for i in chosen
        ]
        counts |= {"backfilled": backfilled, "short": k - len(items)}
        path = PERSONALIZED_DEFAULTS if replaced else PERSONALIZED
        feeds.append(Feed(uid, items, path, replaced, counts))
    return feeds
