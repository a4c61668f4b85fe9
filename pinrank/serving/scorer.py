"""Feeds from a model package: candidates, per-feed ranking, blending, diversity and fallbacks.

Pipeline of a known user's feed (:meth:`FeedScorer.feed`)::

    user row (UserStore) -> conform to the graphs' user columns
      -> user_tower -> FAISS top-max(candidates, k), excluding the user's ``seen`` pins
         (with the popularity prior chosen on val when the package has one)
      + ``interest_candidates`` unseen pins of the user's followed interests, by popularity
      -> ranker_user once + ranker_feed over every candidate (context = context_defaults)
      -> blending: at most floor(quota * k) pins per source, best score first
      -> diversification ("cap": per interest and per board; "mmr"; "none")
      -> backfill by score where the constraints left the feed short -> top-k, best first

A pin found by both sources counts as ``retrieval``. Candidates the catalogue does not hold
(e.g. taken down after the index was built) are dropped: they cannot be featurized.

``Feed.path``, a fixed vocabulary (:data:`PATHS`):

==========================  ======================================================================
``personalized``            known user, every feature present and well-typed
``personalized_defaults``   known user, some feature missing or malformed: replaced by null so
                            the graphs apply the spec's defaults (``Feed.replaced`` names them);
                            a null ``history``/``seen``/``last_ts`` is a user without train
                            events, not a missing feature
``unknown_user_interests``  unknown id: popular pins of the ``interests`` passed in (topped up
                            with globally popular pins where those run out)
``unknown_user_popular``    unknown id, no interests given (or none with a pin): popular pins
``no_candidates_popular``   known user, but retrieval and interests gave no candidate
``error_popular``           the store, a graph or the index failed: logged, popular pins served
==========================  ======================================================================

``FeedItem.source`` is ``retrieval``, ``interests`` or ``popular`` (on personalized paths: the
popular unseen pins that top up a candidate set shorter than ``k``). ``FeedItem.score`` is the
calibrated probability on the personalized paths and the pin's engaged train events on the
others. Popular pins never include the user's ``seen`` pins (with ``exclude_seen``), so a feed
is shorter than ``k`` only when the catalogue has fewer unseen pins (``counts["short"]``).
Bad arguments (``k < 1``, a non-integer id) raise ValueError; nothing else reaches the caller.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np
import pyarrow as pa

from pinrank.data.examples import EVENT_DERIVED_USER_COLUMNS
from pinrank.features.columns import ColumnSpec, pack
from pinrank.retrieval.bias import query_vectors
from pinrank.retrieval.topk import FaissTopK
from pinrank.serving.blend import Candidates, select
from pinrank.serving.package import Package, PackageError
from pinrank.serving.runtime import Backend, OnnxBackend
from pinrank.serving.store import Catalogue, UserStore, conform, found

PERSONALIZED, PERSONALIZED_DEFAULTS = "personalized", "personalized_defaults"
UNKNOWN_INTERESTS, UNKNOWN_POPULAR = "unknown_user_interests", "unknown_user_popular"
NO_CANDIDATES, ERROR = "no_candidates_popular", "error_popular"
PATHS = (
    PERSONALIZED,
    PERSONALIZED_DEFAULTS,
    UNKNOWN_INTERESTS,
    UNKNOWN_POPULAR,
    NO_CANDIDATES,
    ERROR,
)
RETRIEVAL, INTERESTS, POPULAR = "retrieval", "interests", "popular"
SOURCES = (RETRIEVAL, INTERESTS, POPULAR)
DIVERSITY = ("cap", "mmr", "none")
GRAPHS = ("user_tower", "ranker_user", "ranker_feed")
INTEREST_COLUMN, SEEN = "interests", "seen"
_EMPTY = np.empty(0, np.int64)
log = logging.getLogger(__name__)


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
    """

    candidates: int = 500
    interest_candidates: int = 100
    quotas: Mapping[str, float] = field(default_factory=lambda: {RETRIEVAL: 0.8, INTERESTS: 0.2})
    diversity: str = "cap"
    max_per_interest: int = 5
    max_per_board: int = 2
    mmr_lambda: float = 0.7
    exclude_seen: bool = True

    def __post_init__(self) -> None:
        lows = dict(candidates=0, interest_candidates=0, max_per_interest=1, max_per_board=1)
        for name, low in lows.items():
            if not _is_int(getattr(self, name)) or getattr(self, name) < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {getattr(self, name)!r}")
        bad = {s: q for s, q in self.quotas.items() if s not in SOURCES or not 0 <= q <= 1}
        if bad:
            raise ValueError(f"quotas must map sources {SOURCES} to shares in [0, 1]: {bad}")
        if self.diversity not in DIVERSITY:
            raise ValueError(f"diversity must be one of {DIVERSITY}, got {self.diversity!r}")
        if not 0 <= self.mmr_lambda <= 1:
            raise ValueError(f"mmr_lambda must be in [0, 1], got {self.mmr_lambda}")
        object.__setattr__(self, "quotas", MappingProxyType(dict(self.quotas)))


@dataclass(frozen=True)
class FeedItem:
    """One pin of a feed: its score and the source that proposed it (module docstring)."""

    item_id: int
    score: float
    source: str


@dataclass
class Feed:
    """A served feed, best first.

    ``replaced``: user columns replaced by null, ``{column: "missing" | "malformed"}``.
    ``counts``: ``candidates.{source}`` (personalized paths), ``backfilled`` (pins added past
    the quotas and caps) and ``short`` (``k`` minus the pins served). ``error``: the failure
    behind ``error_popular``.
    """

    user_id: int
    items: list[FeedItem]
    path: str
    replaced: dict[str, str] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    error: str | None = None

    @property
    def item_ids(self) -> np.ndarray:
        """``[len(items)]`` int64, best first."""
        return np.array([i.item_id for i in self.items], np.int64)


@dataclass
class _User:
    user_id: int
    arrays: dict[str, np.ndarray]  # the user graphs' inputs, [1] each
    replaced: dict[str, str]
    seen: np.ndarray  # [S] int64
    interests: np.ndarray  # [I] int64


class FeedScorer:
    """Feeds and pair scores for users of a :class:`UserStore`, from one package.

    Args:
        package: a loaded package with ``user_tower``, ``ranker_user``, ``ranker_feed`` and an
            index.
        users: where user rows come from.
        backend: runs the graphs (default: :class:`OnnxBackend` on the best installed provider).
        config: how feeds are assembled.
    """

    def __init__(
        self,
        package: Package,
        users: UserStore,
        backend: Backend | None = None,
        config: FeedConfig | None = None,
    ) -> None:
        lacking = [g for g in GRAPHS if not package.has(g)]
        lacking += ["index"] * ("index" not in package.manifest)
        if lacking:
            raise PackageError(f"{package.root}: cannot serve feeds without {lacking}")
        self.package, self.users = package, users
        self.backend: Backend = backend if backend is not None else OnnxBackend(package)
        self.config = config if config is not None else FeedConfig()
        self.user_columns = package.columns("user")
        self.catalogue = Catalogue.from_package(package)
        spec = package.manifest["index"]
        params = spec.get("params") or {}
        # the popularity prior chosen on val: queries [u / T, beta] (pinrank.retrieval.bias)
        self.bias = float(spec.get("popularity_bias", 0.0))
        self.temperature = float(spec.get("temperature", 1.0))
        # CPU: a feed is one query (latency-bound), and GPU k-selection caps k + len(seen)
        self.index = FaissTopK.load(
            str(package.path(spec["path"])),
            spec["factory"],
            nprobe=params.get("nprobe"),
            ef_search=params.get("ef_search"),
            use_gpu=False,
        )
        context, _ = conform(
            package.manifest.get("context_defaults", {}), package.columns("context")
        )
        self.context = pack(context, package.columns("context"))  # [1] per context input

    def feed(self, user_id: int, k: int = 50, interests: Sequence[int] | None = None) -> Feed:
        """The user's top-``k`` pins, best first, without duplicates (paths: module docstring).

        ``interests``: interests the caller knows of (e.g. picked at sign-up): they serve an
        unknown user, and add to a known user's followed interests for interest candidates.
        """
        uid, k, wanted = _check_user_id(user_id), _check_k(k), _check_interests(interests)
        user: _User | None = None
        try:
            user = self._user(uid)
            if user is None:
                path = UNKNOWN_INTERESTS if wanted.size else UNKNOWN_POPULAR
                return self._popular_feed(uid, k, path, _EMPTY, wanted if wanted.size else None)
            return self._personalized(user, k, wanted)
        except Exception as err:  # degrade, never raise to the caller
            log.exception("feed for user %d failed; serving popular pins", uid)
            seen = user.seen if user is not None else _EMPTY
            feed = self._popular_feed(uid, k, ERROR, seen)
            feed.error = f"{type(err).__name__}: {err}"
            return feed

    def score(self, user_id: int, item_ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """``[N]`` float32 calibrated probabilities of (user, item) pairs, in the order given.

        An unknown user is scored as a new one (every feature but the id missing); an id the
        catalogue lacks raises ValueError. Unlike :meth:`feed`, store and graph failures
        propagate: a caller scoring explicit pairs has no fallback to be given.
        """
        uid = _check_user_id(user_id)
        ids = np.asarray(item_ids)
        if ids.ndim != 1 or not (np.issubdtype(ids.dtype, np.integer) or ids.size == 0):
            raise ValueError(
                f"item_ids must be a 1-D list of integers, got {ids.dtype} {ids.shape}"
            )
        rows = self.catalogue.rows(ids)
        if (rows < 0).any():
            raise ValueError(f"items not in the catalogue: {ids[rows < 0][:10].tolist()}")
        if not ids.size:
            return np.empty(0, np.float32)
        user = self._user(uid) or self._conform(uid, {self.users.id_column: uid})
        return self._rank(user.arrays, rows)

    def candidates(
        self, user_id: int, k: int = 50, interests: Sequence[int] | None = None
    ) -> Candidates:
        """The scored candidates a known user's feed is chosen from (KeyError when unknown)."""
        uid, k, wanted = _check_user_id(user_id), _check_k(k), _check_interests(interests)
        user = self._user(uid)
        if user is None:
            raise KeyError(f"unknown user {uid}")
        return self._candidates(user, k, wanted)

    def _user(self, uid: int) -> _User | None:
        """The stored user, conformed to the graphs; None when the store does not know it."""
        rows = self.users.get(np.array([uid], np.int64))
        if not found(rows, self.users.id_column)[0]:
            return None
        return self._conform(uid, rows.slice(0, 1).to_pylist()[0])

    def _conform(self, uid: int, row: dict[str, Any]) -> _User:
        extra = [ColumnSpec("user", c, "int_list") for c in (SEEN, INTEREST_COLUMN)]
        table, replaced = conform(row, [*self.user_columns, *extra], EVENT_DERIVED_USER_COLUMNS)
        seen, followed = _valid_ids(table, SEEN), _valid_ids(table, INTEREST_COLUMN)
        return _User(uid, pack(table, self.user_columns), replaced, seen, followed)

    def _personalized(self, user: _User, k: int, wanted: np.ndarray) -> Feed:
        cands = self._candidates(user, k, wanted)
        counts = {
            f"candidates.{s}": int((cands.sources == s).sum()) for s in (RETRIEVAL, INTERESTS)
        }
        if not cands.rows.size:
            feed = self._popular_feed(user.user_id, k, NO_CANDIDATES, user.seen)
            feed.replaced, feed.counts = user.replaced, counts | feed.counts
            return feed
        chosen, backfilled = select(cands, k, self.config)
        items = [
            FeedItem(int(cands.item_ids[i]), float(cands.scores[i]), str(cands.sources[i]))
            for i in chosen
        ]
        counts |= {"backfilled": backfilled, "short": k - len(items)}
        path = PERSONALIZED_DEFAULTS if user.replaced else PERSONALIZED
        return Feed(user.user_id, items, path, dict(user.replaced), counts)

    def _candidates(self, user: _User, k: int, wanted: np.ndarray) -> Candidates:
        exclude = user.seen if self.config.exclude_seen else _EMPTY
        retrieved = _EMPTY
        if self.config.candidates:
            emb = self.backend.run("user_tower", user.arrays)["embedding"]  # [1, D]
            query = np.asarray(emb, np.float32)
            if self.bias:
                query = query_vectors(query, self.temperature, self.bias)  # [1, D + 2]
            depth = max(self.config.candidates, k)
            _, ids = self.index.search(query, depth, exclude=[exclude])
            retrieved = self.catalogue.rows(ids[0][ids[0] != -1])
            retrieved = retrieved[retrieved >= 0]
        followed = np.union1d(user.interests, wanted)
        limit = self.config.interest_candidates if followed.size else 0
        taken = np.union1d(exclude, self.catalogue.ids[retrieved])
        by_interest = self.catalogue.popular(limit, taken, followed)
        # an approximate index cannot enumerate the last unseen pins of a user who has seen
        # nearly everything: a short (not empty) candidate set is topped up with popular pins
        short = k - len(retrieved) - len(by_interest)
        top_up = _EMPTY
        if short > 0 and len(retrieved) + len(by_interest):
            taken = np.union1d(taken, self.catalogue.ids[by_interest])
            top_up = self.catalogue.popular(short, taken)
        rows = np.concatenate([retrieved, by_interest, top_up]).astype(np.int64)
        sources = np.array(
            [RETRIEVAL] * len(retrieved) + [INTERESTS] * len(by_interest) + [POPULAR] * len(top_up),
            object,
        )
        scores = self._rank(user.arrays, rows) if rows.size else np.empty(0, np.float32)
        interests = [self.catalogue.interests(r) for r in rows]
        ids, boards = self.catalogue.ids[rows], self.catalogue.boards[rows]
        return Candidates(rows, ids, sources, scores, boards, interests)

    def _rank(self, user_arrays: dict[str, np.ndarray], rows: np.ndarray) -> np.ndarray:
        """``[N]`` calibrated probabilities of one user with catalogue ``rows``: the user part
        of the ranker once, then the per-candidate part."""
        parts = self.backend.run("ranker_user", user_arrays)
        n = len(rows)
        inputs = {**parts, "user_index": np.zeros(n, np.int64), **self.catalogue.inputs(rows)}
        inputs |= {name: np.repeat(a, n, axis=0) for name, a in self.context.items()}
        prob = np.asarray(self.backend.run("ranker_feed", inputs)["probability"], np.float32)
        if prob.shape != (n,) or not np.isfinite(prob).all():
            raise RuntimeError(f"ranker_feed gave {prob.shape} probabilities, not {n} finite ones")
        return prob

    def _popular_feed(
        self, uid: int, k: int, path: str, exclude: np.ndarray, interests: np.ndarray | None = None
    ) -> Feed:
        """Popular pins (of ``interests`` first, when given), without ``exclude`` ids."""
        exclude = exclude if self.config.exclude_seen else _EMPTY
        first = self.catalogue.popular(k, exclude, interests) if interests is not None else _EMPTY
        if interests is not None and not first.size:
            path = UNKNOWN_POPULAR  # no pin has any of those interests
        rest = self.catalogue.popular(
            k - len(first), np.union1d(exclude, self.catalogue.ids[first])
        )
        items = [
            FeedItem(int(self.catalogue.ids[r]), float(self.catalogue.engaged[r]), source)
            for rows, source in ((first, INTERESTS), (rest, POPULAR))
            for r in rows
        ]
        return Feed(uid, items, path, counts={"short": k - len(items)})


def _valid_ids(table: pa.Table, column: str) -> np.ndarray:
    """``[n]`` the non-negative ids of a one-row table's list column."""
    values = table.column(column).to_pylist()[0] or []
    return np.unique(np.array([v for v in values if v is not None and v >= 0], np.int64))


def _is_int(value: Any) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_)


def _check_user_id(user_id: Any) -> int:
    if not _is_int(user_id):
        raise ValueError(f"user_id must be an integer, got {user_id!r}")
    return int(user_id)


def _check_k(k: Any) -> int:
    if not _is_int(k) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    return int(k)


def _check_interests(interests: Sequence[int] | None) -> np.ndarray:
    if interests is None:
        return _EMPTY
    if isinstance(interests, str | bytes) or not all(_is_int(i) for i in interests):
        raise ValueError(f"interests must be a sequence of integers, got {interests!r}")
    return np.unique(np.array(list(interests), np.int64))
