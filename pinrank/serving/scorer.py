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
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pinrank.features.columns import EVENT_DERIVED_USER_COLUMNS, SEEN, ColumnSpec, pack
from pinrank.retrieval.bias import query_vectors
from pinrank.retrieval.topk import FaissTopK
from pinrank.serving.blend import Candidates, select
from pinrank.serving.package import Package, PackageError
from pinrank.serving.probe import package_index, probe_graphs
from pinrank.serving.runtime import Backend, OnnxBackend
from pinrank.serving.store import (
    ID_COLUMN,
    Catalogue,
    StoreError,
    UserStore,
    conform,
    conform_batch,
)

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
INTEREST_COLUMN = "interests"
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

    def __reduce__(self) -> tuple[Any, ...]:  # a read-only mapping does not pickle
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return (_feed_config, (values | {"quotas": dict(self.quotas)},))


def _feed_config(values: dict[str, Any]) -> FeedConfig:
    return FeedConfig(**values)


@dataclass(frozen=True)
class FeedItem:
    """One pin of a feed: its score and the source that proposed it (module docstring)."""

    item_id: int
    score: float
    source: str


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


class FeedScorer:
    """Feeds and pair scores for users of a :class:`UserStore`, from one package.

    Args:
        package: a loaded package with ``user_tower``, ``ranker_user``, ``ranker_feed`` and an
            index.
        users: where :meth:`feed` and :meth:`score` read user rows (``None``: only the batch
            path, :meth:`feeds` over :meth:`user_batch` rows).
        backend: runs the graphs (default: :class:`OnnxBackend` on the best installed provider).
        config: how feeds are assembled.
        max_rows: most candidates per ``ranker_feed`` run (bounds memory in :meth:`feeds`).
        gpu_index: search the index on GPU (batch jobs; a served feed is one query, which a
            CPU index answers faster, and GPU k-selection caps ``k + len(seen)``).
    """

    def __init__(
        self,
        package: Package,
        users: UserStore | None,
        backend: Backend | None = None,
        config: FeedConfig | None = None,
        max_rows: int = 65536,
        gpu_index: bool = False,
    ) -> None:
        if not _is_int(max_rows) or max_rows < 1:
            raise ValueError(f"max_rows must be an integer >= 1, got {max_rows!r}")
        self.max_rows = int(max_rows)
        lacking = [g for g in GRAPHS if not package.has(g)]
        lacking += ["index"] * ("index" not in package.manifest)
        if lacking:
            raise PackageError(f"{package.root}: cannot serve feeds without {lacking}")
        self.package, self.users = package, users
        self.id_column = users.id_column if users is not None else ID_COLUMN
        self.backend: Backend = backend if backend is not None else OnnxBackend(package)
        self.config = config if config is not None else FeedConfig()
        self.user_columns = package.columns("user")
        self.catalogue = Catalogue.from_package(package)
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
        context, _ = conform(
            package.manifest.get("context_defaults", {}), package.columns("context")
        )
        self.context = pack(context, package.columns("context"))  # [1] per context input
        # the catalogue factorisation: every candidate's part of the ranker computed once here,
        # so that ranking does only the per-pair work (packages from before it: ranker_feed)
        self.item_parts: dict[str, np.ndarray] | None = None
        if package.has("ranker_items") and package.has("ranker_pairs"):
            self.item_parts = self._item_parts()

    def feed(self, user_id: int, k: int = 50, interests: Sequence[int] | None = None) -> Feed:
        """The user's top-``k`` pins, best first, without duplicates (paths: module docstring).

        ``interests``: interests the caller knows of (e.g. picked at sign-up): they serve an
        unknown user, and add to a known user's followed interests for interest candidates.
        """
        uid, k, wanted = _check_user_id(user_id), _check_k(k), _check_interests(interests)
        self._store()
        user: UserBatch | None = None
        try:
            user = self._user(uid)
            if user is None:
                return self._unknown_feed(uid, k, wanted)
            return self._personalized(user, k, [wanted])[0]
        except Exception as err:  # degrade, never raise to the caller
            log.exception("feed for user %d failed; serving popular pins", uid)
            seen = user.seen[0] if user is not None else _EMPTY
            feed = self._popular_feed(uid, k, ERROR, seen)
            feed.error = f"{type(err).__name__}: {err}"
            feed.reason = f"store_{err.reason}" if isinstance(err, StoreError) else "model_error"
            return feed

    def feed_many(
        self, user_ids: Sequence[int], k: int = 50, interests: Sequence[Sequence[int] | None] = ()
    ) -> list[Feed]:
        """:meth:`feed` for many users at once (a service batching concurrent requests): each
        user's feed is the one :meth:`feed` gives, but the known users' graphs run once for all
        of them. ``interests``: per user, as in :meth:`feed` (empty: none for anyone). Failures
        degrade as in :meth:`feed`: a store failure gives every user ``error_popular``, and a
        failure of the batched graphs falls back to :meth:`feed` per user."""
        uids, k = [_check_user_id(u) for u in user_ids], _check_k(k)
        wanted = [_check_interests(i) for i in interests] if interests else [_EMPTY] * len(uids)
        if len(wanted) != len(uids):
            raise ValueError(f"{len(wanted)} interest lists for {len(uids)} users")
        try:
            rows = self._store().records(uids)
        except Exception:  # each feed() then degrades with the reason
            return [self.feed(u, k, w.tolist()) for u, w in zip(uids, wanted, strict=True)]
        feeds: list[Feed | None] = [None] * len(uids)
        known = [b for b, row in enumerate(rows) if row is not None]
        for b in set(range(len(uids))) - set(known):
            feeds[b] = self._unknown_feed(uids[b], k, wanted[b])
        if known:
            try:
                found_rows = [r for r in rows if r is not None]
                batch = self._conform_rows([uids[b] for b in known], found_rows)
                done = self._personalized(batch, k, [wanted[b] for b in known])
            except Exception:  # one user's failure must not fail the others: one by one
                log.exception("batched feeds failed; scoring %d users one by one", len(known))
                done = [self.feed(uids[b], k, wanted[b].tolist()) for b in known]
            for b, feed in zip(known, done, strict=True):
                feeds[b] = feed
        return [f for f in feeds if f is not None]

    def feeds(self, users: UserBatch, k: int = 50) -> list[Feed]:
        """Feeds of many known users at once (the batch path): each graph runs once per batch
        (the ranker in chunks of at most ``max_rows`` candidates) and each feed is what
        :meth:`feed` gives that user. Unlike :meth:`feed`, failures raise: a batch job stops
        and resumes rather than write fallback feeds for every user."""
        k = _check_k(k)
        return self._personalized(users, k, [_EMPTY] * len(users))

    def probe(self, user_id: int = 2**62, k: int = 10) -> Feed:
        """Run every graph of the package on a probe (:func:`~pinrank.serving.probe.probe_graphs`),
        then the feed path once on a new user (an id and nothing else, so every feature takes
        its spec default) through the batch path, which raises on any failure, and check the feed
        is personalized, ``k`` long and scored with probabilities in ``[0, 1]``. A service runs it
        before serving a package; PackageError says what is wrong."""
        uid, k = _check_user_id(user_id), _check_k(k)
        probe_graphs(self.package, self.backend, self.catalogue)
        feed = self.feeds(self._conform(uid, {self.id_column: uid}), k)[0]
        scores = np.array([i.score for i in feed.items], np.float64)
        if feed.path not in (PERSONALIZED, PERSONALIZED_DEFAULTS) or len(feed.items) != k:
            raise PackageError(
                f"{self.package.root}: a new user's probe feed is {feed.path!r} with "
                f"{len(feed.items)} pins, not {k} personalized ones"
            )
        if not (np.isfinite(scores).all() and (scores >= 0).all() and (scores <= 1).all()):
            raise PackageError(f"{self.package.root}: probe scores outside [0, 1]: {scores}")
        return feed

    def user_batch(self, rows: pa.Table) -> UserBatch:
        """Stored user rows (typed, e.g. from Parquet) conformed for the graphs, vectorised
        (:func:`~pinrank.serving.store.conform_batch`); rows with a null id are refused."""
        if self.id_column not in rows.column_names:
            raise KeyError(f"user rows have no {self.id_column!r} column")
        ids = rows.column(self.id_column)
        if ids.null_count:
            raise ValueError(f"{ids.null_count} user rows have a null {self.id_column}")
        extra = [ColumnSpec("user", c, "int_list") for c in (SEEN, INTEREST_COLUMN)]
        table, replaced = conform_batch(
            rows, [*self.user_columns, *extra], EVENT_DERIVED_USER_COLUMNS
        )
        return UserBatch(
            ids.to_numpy().astype(np.int64),
            pack(table, self.user_columns),
            replaced,
            _valid_id_lists(table.column(SEEN)),
            _valid_id_lists(table.column(INTEREST_COLUMN)),
        )

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
        user = self._user(uid) or self._conform(uid, {self.id_column: uid})
        return self._rank(user.arrays, [rows])[0]

    def candidates(
        self, user_id: int, k: int = 50, interests: Sequence[int] | None = None
    ) -> Candidates:
        """The scored candidates a known user's feed is chosen from (KeyError when unknown)."""
        uid, k, wanted = _check_user_id(user_id), _check_k(k), _check_interests(interests)
        user = self._user(uid)
        if user is None:
            raise KeyError(f"unknown user {uid}")
        return self._candidates(user, k, [wanted])[0]

    def _store(self) -> UserStore:
        if self.users is None:
            raise ValueError("this scorer has no user store: it scores user rows (feeds)")
        return self.users

    def _user(self, uid: int) -> UserBatch | None:
        """The stored user, conformed to the graphs; None when the store does not know it."""
        try:
            row = self._store().row(uid)
        except StoreError:
            raise
        except Exception as err:  # a store without its own error type
            raise StoreError("error", f"{type(err).__name__}: {err}") from err
        return None if row is None else self._conform(uid, row)

    def _conform(self, uid: int, row: dict[str, Any]) -> UserBatch:
        return self._conform_rows([uid], [row])

    def _conform_rows(self, uids: list[int], rows: list[dict[str, Any]]) -> UserBatch:
        """Raw stored rows (each typed by :func:`conform`, as one user's would be) as one batch."""
        extra = [ColumnSpec("user", c, "int_list") for c in (SEEN, INTEREST_COLUMN)]
        columns = [*self.user_columns, *extra]
        typed = [conform(row, columns, EVENT_DERIVED_USER_COLUMNS) for row in rows]
        table = pa.concat_tables([t for t, _ in typed])
        return UserBatch(
            np.array(uids, np.int64),
            pack(table, self.user_columns),
            [replaced for _, replaced in typed],
            _valid_id_lists(table.column(SEEN)),
            _valid_id_lists(table.column(INTEREST_COLUMN)),
        )

    def _personalized(self, users: UserBatch, k: int, wanted: list[np.ndarray]) -> list[Feed]:
        if len(users) == 0:  # an empty batch: nothing to run (graphs refuse 0-row inputs)
            return []
        feeds = []
        for b, cands in enumerate(self._candidates(users, k, wanted)):
            uid, replaced = int(users.ids[b]), users.replaced[b]
            counts = {
                f"candidates.{s}": int((cands.sources == s).sum()) for s in (RETRIEVAL, INTERESTS)
            }
            if not cands.rows.size:
                feed = self._popular_feed(uid, k, NO_CANDIDATES, users.seen[b])
                feed.replaced, feed.counts = dict(replaced), counts | feed.counts
                feeds.append(feed)
                continue
            chosen, backfilled = select(cands, k, self.config)
            items = [
                FeedItem(int(cands.item_ids[i]), float(cands.scores[i]), str(cands.sources[i]))
                for i in chosen
            ]
            counts |= {"backfilled": backfilled, "short": k - len(items)}
            path = PERSONALIZED_DEFAULTS if replaced else PERSONALIZED
            feeds.append(Feed(uid, items, path, dict(replaced), counts))
        return feeds

    def _candidates(self, users: UserBatch, k: int, wanted: list[np.ndarray]) -> list[Candidates]:
        """Each user's candidates: one user-tower run and one index search for the batch, the
        interest and top-up candidates per user, then the ranker over all of them."""
        excludes = users.seen if self.config.exclude_seen else [_EMPTY] * len(users)
        found_ids = np.full((len(users), 0), -1, np.int64)
        if self.config.candidates:
            emb = self.backend.run("user_tower", users.arrays)["embedding"]  # [B, D]
            query = np.asarray(emb, np.float32)
            if self.bias:
                query = query_vectors(query, self.temperature, self.bias)  # [B, D + 2]
            depth = max(self.config.candidates, k)
            _, found_ids = self.index.search(query, depth, exclude=list(excludes))
        all_rows, all_sources = [], []
        for b in range(len(users)):
            exclude, ids = excludes[b], found_ids[b]
            retrieved = self.catalogue.rows(ids[ids != -1])
            retrieved = retrieved[retrieved >= 0]
            followed = np.union1d(users.interests[b], wanted[b])
            limit = self.config.interest_candidates if followed.size else 0
            taken = np.union1d(exclude, self.catalogue.ids[retrieved])
            by_interest = self.catalogue.popular(limit, taken, followed)
            # an approximate index cannot enumerate the last unseen pins of a user who has
            # seen nearly everything: a short (not empty) candidate set is topped up with
            # popular pins
            short = k - len(retrieved) - len(by_interest)
            top_up = _EMPTY
            if short > 0 and len(retrieved) + len(by_interest):
                taken = np.union1d(taken, self.catalogue.ids[by_interest])
                top_up = self.catalogue.popular(short, taken)
            all_rows.append(np.concatenate([retrieved, by_interest, top_up]).astype(np.int64))
            all_sources.append(
                np.array(
                    [RETRIEVAL] * len(retrieved)
                    + [INTERESTS] * len(by_interest)
                    + [POPULAR] * len(top_up),
                    object,
                )
            )
        scores = self._rank(users.arrays, all_rows)
        return [
            Candidates(
                rows,
                self.catalogue.ids[rows],
                sources,
                score,
                self.catalogue.boards[rows],
                self.catalogue.row_interests(rows),
            )
            for rows, sources, score in zip(all_rows, all_sources, scores, strict=True)
        ]

    def _rank(self, user_arrays: dict[str, np.ndarray], rows: list[np.ndarray]) -> list[np.ndarray]:
        """``[N_b]`` calibrated probabilities of each user ``b`` with its catalogue ``rows[b]``:
        the user part of the ranker once per user, then the per-candidate part, in runs of at
        most :attr:`max_rows` candidates (whole users; a user with more is one run)."""
        sizes = np.array([len(r) for r in rows], np.int64)
        out = [np.empty(0, np.float32)] * len(rows)
        if not sizes.sum():
            return out
        parts = self.backend.run("ranker_user", user_arrays)
        start = 0
        while start < len(rows):
            stop = start + 1
            total = sizes[start]
            while stop < len(rows) and total + sizes[stop] <= self.max_rows:
                total += sizes[stop]
                stop += 1
            if total:
                chunk = np.concatenate(rows[start:stop])
                index = np.repeat(np.arange(stop - start), sizes[start:stop])
                inputs = {name: a[start:stop] for name, a in parts.items()}
                inputs["user_index"] = index
                if self.item_parts is not None:
                    graph = "ranker_pairs"
                    inputs |= {**self.item_parts, "item_index": chunk}
                else:
                    graph = "ranker_feed"
                    inputs |= self._candidate_inputs(chunk)
                prob = np.asarray(self.backend.run(graph, inputs)["probability"], np.float32)
                if prob.shape != (total,) or not np.isfinite(prob).all():
                    raise RuntimeError(
                        f"{graph} gave {prob.shape} probabilities, not {total} finite ones"
                    )
                bounds = np.cumsum(sizes[start:stop])[:-1]
                out[start:stop] = np.split(prob, bounds)
            start = stop
        return out

    def _candidate_inputs(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """Raw inputs of catalogue ``rows`` as candidates: their item columns and the context."""
        n = len(rows)
        context = {name: np.repeat(a, n, axis=0) for name, a in self.context.items()}
        return self.catalogue.inputs(rows) | context

    def _item_parts(self) -> dict[str, np.ndarray]:
        """``ranker_items`` over the whole catalogue, in runs of at most ``max_rows`` rows; the
        padded cross features are widened to one width."""
        runs = [
            self.backend.run("ranker_items", self._candidate_inputs(np.arange(a, b)))
            for a, b in _spans(len(self.catalogue.ids), self.max_rows)
        ]
        out = {}
        for name in runs[0]:
            arrays = [r[name] for r in runs]
            width = max(a.shape[1] if a.ndim == 2 else 0 for a in arrays)
            if name.endswith((".indices", ".kept")):
                arrays = [np.pad(a, ((0, 0), (0, width - a.shape[1]))) for a in arrays]
            out[name] = np.concatenate(arrays)
        return out

    def _unknown_feed(self, uid: int, k: int, wanted: np.ndarray) -> Feed:
        """An id the store lacks: popular pins of the ``wanted`` interests, else popular pins."""
        path = UNKNOWN_INTERESTS if wanted.size else UNKNOWN_POPULAR
        return self._popular_feed(uid, k, path, _EMPTY, wanted if wanted.size else None)

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


def _spans(n: int, size: int) -> list[tuple[int, int]]:
    """``[(start, stop)]`` covering ``range(n)`` in pieces of at most ``size`` (one if n = 0)."""
    return [(a, min(a + size, n)) for a in range(0, max(n, 1), size)]


def _valid_id_lists(column: pa.ChunkedArray | pa.Array) -> list[np.ndarray]:
    """Per row of a list column, its distinct non-negative ids, sorted."""
    col = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    lengths = pc.fill_null(pc.list_value_length(col), 0).to_numpy().astype(np.int64)
    values = pc.fill_null(pc.list_flatten(col).cast(pa.int64()), -1).to_numpy()
    if not lengths.size:
        return []
    return [np.unique(v[v >= 0]) for v in np.split(values, np.cumsum(lengths)[:-1])]


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
