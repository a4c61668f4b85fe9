"""What a feed is: its configuration, items, paths and sources, and the checks of a request.

``Feed.path``, a fixed vocabulary (:data:`PATHS`):

==========================  ======================================================================
``personalized``            known user, every feature present and well-typed
``personalized_defaults``   known user, some feature missing or malformed: replaced by null so
                            the graphs apply the spec's defaults (``Feed.replaced`` names them);
                            a null ``history``/``seen``/``last_ts`` is a user without train
                            events, not a missing feature
``unknown_user_interests``  unknown id: popular pins of the ``interests`` passed in (topped up
                            with globally popular pins where those run out)
``unknown_user_predicted``  unknown id, no interests given, the package has an interest model:
                            pins of the interests it predicts from the sign-up fields given
                            (:meth:`Catalogue.interest_mix`), topped up with popular pins
``unknown_user_popular``    unknown id, no interests given (or none with a pin): popular pins
``no_candidates_popular``   known user, but retrieval and interests gave no candidate
``error_popular``           the store, a graph or the index failed: logged, popular pins served
==========================  ======================================================================

``FeedItem.source`` is ``retrieval``, ``interests`` or ``popular`` (on personalized paths: the
popular unseen pins that top up a candidate set shorter than ``k``). ``FeedItem.score`` is always
the calibrated probability, on the personalized paths, or ``None`` where no model scored the pin
(the fallback paths); ``FeedItem.popularity`` is then the pin's engaged train events, what the
fallback ranks by, and ``None`` on the personalized paths. Popular pins never include the user's
``seen`` pins (with ``exclude_seen``), so a feed is shorter than ``k`` only when the catalogue has
fewer unseen pins (``counts["short"]``). Bad arguments (``k < 1``, a non-integer id) raise
ValueError; nothing else reaches the caller.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any

import numpy as np

PERSONALIZED, PERSONALIZED_DEFAULTS = "personalized", "personalized_defaults"
UNKNOWN_INTERESTS, UNKNOWN_POPULAR = "unknown_user_interests", "unknown_user_popular"
UNKNOWN_PREDICTED = "unknown_user_predicted"
NO_CANDIDATES, ERROR = "no_candidates_popular", "error_popular"
PATHS = (
    PERSONALIZED,
    PERSONALIZED_DEFAULTS,
    UNKNOWN_INTERESTS,
    UNKNOWN_PREDICTED,
    UNKNOWN_POPULAR,
    NO_CANDIDATES,
    ERROR,
)
RETRIEVAL, INTERESTS, POPULAR = "retrieval", "interests", "popular"
SOURCES = (RETRIEVAL, INTERESTS, POPULAR)
DIVERSITY = ("cap", "mmr", "none")
EMPTY = np.empty(0, np.int64)


@dataclass(frozen=True)
class FeedConfig:
    """How a feed is assembled.

    Args:
        candidates: retrieval depth (the index is searched ``max(candidates, k)`` deep; 0: off).
        interest_candidates: unseen pins of the user's followed interests, most popular first.
        quotas: ``{source: max share of the k pins}``; a source not listed is not limited.
        diversity: ``"cap"`` (at most ``max_per_interest`` pins per interest and
            ``max_per_board`` per board), ``"mmr"`` (maximal marginal relevance, see
            :func:`select`) or ``"none"``.
        mmr_lambda: MMR weight of relevance against similarity, in ``[0, 1]``.
        exclude_seen: never serve the user's ``seen`` pins.
        predicted_interests: an unknown user's feed mixes the pins of this many interests
            predicted from the sign-up fields (where the package has an interest model).
    """

    candidates: int = 500
    interest_candidates: int = 100
    quotas: Mapping[str, float] = field(default_factory=lambda: {RETRIEVAL: 0.8, INTERESTS: 0.2})
    diversity: str = "cap"
    max_per_interest: int = 5
    max_per_board: int = 2
    mmr_lambda: float = 0.7
    exclude_seen: bool = True
    predicted_interests: int = 20

    def __post_init__(self) -> None:
        lows = dict(candidates=0, interest_candidates=0, max_per_interest=1, max_per_board=1,
                    predicted_interests=1)  # fmt: skip
        for name, low in lows.items():
            if not is_int(getattr(self, name)) or getattr(self, name) < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {getattr(self, name)!r}")
        bad = {s: q for s, q in self.quotas.items() if s not in SOURCES or not 0 <= q <= 1}
        if bad:
            raise ValueError(f"quotas must map sources {SOURCES} to shares in [0, 1]: {bad}")
        if self.diversity not in DIVERSITY:
            raise ValueError(f"diversity must be one of {DIVERSITY}, got {self.diversity!r}")
        if not 0 <= self.mmr_lambda <= 1:
            raise ValueError(f"mmr_lambda must be in [0, 1], got {self.mmr_lambda}")
        object.__setattr__(self, "quotas", MappingProxyType(dict(self.quotas)))

    def __reduce__(self) -> tuple[Any, ...]:  # a read-only mapping does not pickle
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return (_feed_config, (values | {"quotas": dict(self.quotas)},))


def _feed_config(values: dict[str, Any]) -> FeedConfig:
    return FeedConfig(**values)


@dataclass(frozen=True)
class FeedItem:
    """One pin of a feed: its score, the source that proposed it and, for a popular pin of a
    fallback feed, its popularity (module docstring)."""

    item_id: int
    score: float | None  # the calibrated P(engaged); None where no model scored the pin
    source: str
    popularity: int | None = None  # engaged train events, on the popular fallback paths


@dataclass
class Feed:
    """A served feed, best first.

    ``replaced``: user columns replaced by null, ``{column: "missing" | "malformed" | "too_long"}``.
    ``counts``: ``candidates.{source}`` (personalized paths), ``backfilled`` (pins added past
    the quotas and caps) and ``short`` (``k`` minus the pins served). ``error``: the failure
    behind ``error_popular``; ``reason``: what failed (:attr:`fallback`).
    """

    user_id: int
    items: list[FeedItem]
    path: str
    replaced: dict[str, str] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    error: str | None = None
    reason: str | None = None

    @property
    def fallback(self) -> str | None:
        """Why this feed is not personalized (``None`` when it is): the path, or for
        ``error_popular`` what failed (``store_timeout``, ``store_unavailable``,
        ``store_corrupt``, ``store_error`` or ``model_error``)."""
        if self.path in (PERSONALIZED, PERSONALIZED_DEFAULTS):
            return None
        return self.reason or self.path

    @property
    def item_ids(self) -> np.ndarray:
        """``[len(items)]`` int64, best first."""
        return np.array([i.item_id for i in self.items], np.int64)


@dataclass
class UserBatch:
    """Users conformed for the graphs, each field ``[B]``: ids, graph ``arrays``, the columns
    replaced by null (``replaced``, as in :attr:`Feed.replaced`), ``seen`` pins and followed
    ``interests`` (sorted distinct ids)."""

    ids: np.ndarray
    arrays: dict[str, np.ndarray]
    replaced: list[dict[str, str]]
    seen: list[np.ndarray]
    interests: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.ids)


def is_int(value: Any) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_)


def check_user_id(user_id: Any) -> int:
    if not is_int(user_id):
        raise ValueError(f"user_id must be an integer, got {user_id!r}")
    return int(user_id)


def check_k(k: Any) -> int:
    if not is_int(k) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    return int(k)


def check_interests(interests: Sequence[int] | None) -> np.ndarray:
    if interests is None:
        return EMPTY
    if isinstance(interests, str | bytes) or not all(is_int(i) for i in interests):
        raise ValueError(f"interests must be a sequence of integers, got {interests!r}")
    return np.unique(np.array(list(interests), np.int64))


def check_item_ids(item_ids: Sequence[int] | np.ndarray) -> np.ndarray:
    ids = np.asarray(item_ids)
    if ids.ndim != 1 or not (np.issubdtype(ids.dtype, np.integer) or ids.size == 0):
        raise ValueError(f"item_ids must be a 1-D list of integers, got {ids.dtype} {ids.shape}")
    return ids.astype(np.int64)
