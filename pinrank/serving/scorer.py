"""Feeds from a model package: candidates, per-feed ranking, blending, diversity and fallbacks.

Pipeline of a known user's feed (:meth:`FeedScorer.feed`)::

    user row (UserStore) -> conform to the graphs' user columns
      -> user_tower -> FAISS top-max(candidates, k), excluding the user's ``seen`` pins
         (with the popularity prior chosen on val when the package has one)
      + ``interest_candidates`` unseen pins of the user's followed interests, by popularity
      -> ranker_user once + ranker_pairs over every candidate (item parts: stored at export)
      -> blending: at most floor(quota * k) pins per source, best score first
      -> diversification ("cap": per interest and per board; "mmr"; "none")
      -> backfill by score where the constraints left the feed short -> top-k, best first

A pin found by both sources counts as ``retrieval``. Candidates the catalogue does not hold
(e.g. taken down after the index was built) are dropped: they cannot be featurized.

The parts: :class:`~pinrank.serving.users.UserRows` (rows conformed for the graphs),
:class:`~pinrank.serving.candidates.CandidateSource`, :class:`~pinrank.serving.ranking.Ranker`
(the factorised ranker graphs), :func:`~pinrank.serving.blend.select` (blending and diversity)
and the :class:`~pinrank.serving.catalogue.Catalogue`. Paths, sources and the fallbacks:
:mod:`pinrank.serving.feed`. Bad arguments raise ValueError; nothing else reaches the caller of
:meth:`FeedScorer.feed`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from pinrank.serving import ranking
from pinrank.serving.assemble import Popular, personalized
from pinrank.serving.blend import Candidates
from pinrank.serving.candidates import CandidateSource
from pinrank.serving.catalogue import Catalogue
from pinrank.serving.feed import (
    EMPTY,
    PERSONALIZED,
    PERSONALIZED_DEFAULTS,
    Feed,
    FeedConfig,
    UserBatch,
    check_interests,
    check_item_ids,
    check_k,
    check_user_id,
    is_int,
)
from pinrank.serving.ids import IdCodec
from pinrank.serving.interests import InterestRanker, UnknownUsers
from pinrank.serving.package import Package, PackageError
from pinrank.serving.probe import probe_graphs
from pinrank.serving.ranking import Ranker
from pinrank.serving.runtime import Backend, OnnxBackend, trim_memory
from pinrank.serving.store import ID_COLUMN, StoreError, UserStore
from pinrank.serving.users import UserRows

GRAPHS = ("user_tower", *ranking.GRAPHS)
log = logging.getLogger(__name__)


def check_servable(package: Package) -> None:
    """PackageError unless the package has every graph of :data:`GRAPHS` and an index."""
    lacking = [g for g in GRAPHS if not package.has(g)]
    lacking += ["index"] * ("index" not in package.manifest)
    if lacking:
        raise PackageError(f"{package.root}: cannot serve feeds without {lacking}")


class FeedScorer:
    """Feeds and pair scores for users of a :class:`UserStore`, from one package.

    Args:
        package: a loaded package with the graphs of :data:`GRAPHS` and an index.
        users: where :meth:`feed` and :meth:`score` read user rows (``None``: :meth:`feeds` only).
        backend: runs the graphs (default: :class:`OnnxBackend` on the best installed provider).
        config: how feeds are assembled.
        max_rows: most candidates per ranker run (bounds memory).
        gpu_index: search the index on GPU (batch jobs).
    """

    def __init__(
        self, package: Package, users: UserStore | None, backend: Backend | None = None,
        config: FeedConfig | None = None, max_rows: int = ranking.MAX_ROWS, gpu_index: bool = False,
    ) -> None:  # fmt: skip
        if not is_int(max_rows) or max_rows < 1:
            raise ValueError(f"max_rows must be an integer >= 1, got {max_rows!r}")
        check_servable(package)
        self.package, self.users, self.max_rows = package, users, int(max_rows)
        self.id_column = users.id_column if users is not None else ID_COLUMN
        self.backend: Backend = backend if backend is not None else OnnxBackend(package)
        self.config = config if config is not None else FeedConfig()
        self.user_columns = package.columns("user")
        self.rows = UserRows(self.user_columns, self.id_column)
        self.catalogue = Catalogue.from_package(package)
        self.source = CandidateSource(package, self.backend, self.catalogue, self.config, gpu_index)
        self.ranker = Ranker(package, self.backend, self.catalogue, self.max_rows)
        self.popular = Popular(self.catalogue, self.config)
        self.ids = IdCodec.from_package(package)  # originals of string ids, for the edges
        self.interest_ranker = InterestRanker.of(package, self.backend)  # None: no section
        self.unknown = UnknownUsers(self.interest_ranker, self.catalogue, self.popular, self.config)
        trim_memory()

    def feed(self, user_id: int, k: int = 50, interests: Sequence[int] | None = None,
             signup: Mapping[str, Any] | None = None) -> Feed:  # fmt: skip
        """The user's top-``k`` pins, best first; ``interests``: known to the caller (e.g. picked
        at sign-up), they serve an unknown user and add to a known user's followed ones;
        ``signup``: an unknown user's sign-up fields, for the interest model (UnknownUsers)."""
        return self.feed_many([user_id], k, [interests], [signup])[0]

    def feed_many(self, user_ids: Sequence[int], k: int = 50,
                  interests: Sequence[Sequence[int] | None] = (),
                  signups: Sequence[Mapping[str, Any] | None] = ()) -> list[Feed]:  # fmt: skip
        """:meth:`feed` of many users, the known users' graphs run once for all. Failures
        degrade: a store failure gives every user ``error_popular`` (``store_{reason}``), and a
        failure of the batch scores its users one by one (``model_error`` where one fails)."""
        uids, k = [check_user_id(u) for u in user_ids], check_k(k)
        wanted = [check_interests(i) for i in interests] if interests else [EMPTY] * len(uids)
        fields = list(signups) or [None] * len(uids)
        if len(wanted) != len(uids) or len(fields) != len(uids):
            raise ValueError(f"{len(wanted)} interests, {len(fields)} sign-ups, {len(uids)} users")
        try:
            rows = self._records(uids)
        except Exception as err:
            return [self.popular.degraded(u, k, EMPTY, err) for u in uids]
        known = {b: row for b, row in enumerate(rows) if row is not None}
        unknown = [b for b in range(len(uids)) if b not in known]
        feeds = {b: self.unknown.feed(uids[b], k, wanted[b], fields[b]) for b in unknown}
        if known:
            try:
                batch = self.rows.records([uids[b] for b in known], list(known.values()))
                done = self._personalized(batch, k, [wanted[b] for b in known])
                feeds |= dict(zip(known, done, strict=True))
            except Exception:  # one user's failure must not fail the others: one by one
                log.exception("batched feeds failed; scoring %d users one by one", len(known))
                feeds |= {b: self._one(uids[b], row, k, wanted[b]) for b, row in known.items()}
        return [feeds[b] for b in range(len(uids))]

    def feeds(self, users: UserBatch, k: int = 50) -> list[Feed]:
        """Feeds of many known users (the batch path); unlike :meth:`feed`, failures raise."""
        return self._personalized(users, check_k(k), [EMPTY] * len(users))

    def probe(self, user_id: int = 2**62, k: int = 10) -> Feed:
        """Every graph on a probe (:func:`probe_graphs`), then a new user's feed through the batch
        path, which must be personalized, ``k`` long, with probabilities in ``[0, 1]``."""
        uid, k = check_user_id(user_id), check_k(k)
        probe_graphs(self.package, self.backend, self.catalogue)
        _keep_only(self.backend, ("user_tower", *self.ranker.graphs))
        feed = self.feeds(self.rows.new_user(uid), k)[0]
        scores = np.array([np.nan if i.score is None else i.score for i in feed.items])
        if feed.path not in (PERSONALIZED, PERSONALIZED_DEFAULTS) or len(feed.items) != k:
            raise PackageError(
                f"{self.package.root}: a new user's probe feed is {feed.path!r} "
                f"with {len(feed.items)} pins, not {k} personalized ones"
            )
        if not (np.isfinite(scores).all() and (scores >= 0).all() and (scores <= 1).all()):
            raise PackageError(f"{self.package.root}: probe scores outside [0, 1]: {scores}")
        return feed

    def user_batch(self, rows: pa.Table) -> UserBatch:
        """Typed stored user rows (e.g. Parquet) conformed for the graphs, vectorised."""
        return self.rows.table(rows)

    def score(self, user_id: int, item_ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """``[N]`` calibrated probabilities of (user, item) pairs, in the order given. An
        unknown user is scored as a new one; an item the catalogue lacks raises ValueError, and
        store and graph failures propagate (explicit pairs have no fallback)."""
        uid, ids = check_user_id(user_id), check_item_ids(item_ids)
        rows = self.catalogue.rows(ids)
        if (rows < 0).any():
            raise ValueError(f"items not in the catalogue: {ids[rows < 0][:10].tolist()}")
        if not ids.size:
            return np.empty(0, np.float32)
        row = self._records([uid])[0]
        user = self.rows.new_user(uid) if row is None else self.rows.records([uid], [row])
        return self.ranker.rank(user.arrays, [rows])[0]

    def candidates(
        self, user_id: int, k: int = 50, interests: Sequence[int] | None = None
    ) -> Candidates:
        """The scored candidates a known user's feed is chosen from (KeyError when unknown)."""
        uid, k, wanted = check_user_id(user_id), check_k(k), check_interests(interests)
        row = self._records([uid])[0]
        if row is None:
            raise KeyError(f"unknown user {uid}")
        return self._candidates(self.rows.records([uid], [row]), k, [wanted])[0]

    def _records(self, uids: list[int]) -> list[dict[str, Any] | None]:
        """The users' stored rows; a store's own failure as StoreError (``error`` if untyped)."""
        if self.users is None:
            raise ValueError("this scorer has no user store: it scores user rows (feeds)")
        try:
            return self.users.records(uids)
        except StoreError:
            raise
        except Exception as err:
            raise StoreError("error", f"{type(err).__name__}: {err}") from err

    def _one(self, uid: int, row: dict[str, Any], k: int, wanted: np.ndarray) -> Feed:
        user = self.rows.records([uid], [row])  # conforming never raises on bad values
        try:
            return self._personalized(user, k, [wanted])[0]
        except Exception as err:
            return self.popular.degraded(uid, k, user.seen[0], err)

    def _personalized(self, users: UserBatch, k: int, wanted: list[np.ndarray]) -> list[Feed]:
        if len(users) == 0:  # an empty batch: nothing to run (graphs refuse 0-row inputs)
            return []
        return personalized(users, self._candidates(users, k, wanted), k, self.config, self.popular)

    def _candidates(self, users: UserBatch, k: int, wanted: list[np.ndarray]) -> list[Candidates]:
        rows, sources = self.source.generate(users, k, wanted)
        c = self.catalogue
        return [
            Candidates(r, c.ids[r], s, score, c.boards[r], c.row_interests(r))
            for r, s, score in zip(rows, sources, self.ranker.rank(users.arrays, rows), strict=True)
        ]


def _keep_only(backend: Backend, graphs: Sequence[str]) -> None:
    """After the probe: only the graphs feeds run stay loaded (where the backend can drop the
    others), and the memory the loading freed goes back to the system."""
    release = getattr(backend, "release", None)
    if release is not None:
        release(graphs)
    trim_memory()
