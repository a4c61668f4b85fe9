"""Interests for a user who has just signed up, from the package's ``interests/`` section.

:class:`InterestRanker` answers "which interests should the sign-up flow show this user?" from
the sign-up fields alone (country, gender, age, surface, followed interests...: the interest
model's user columns). The user's segment key (:func:`~pinrank.interests.segments.segment_keys`,
the same function that keyed the training users) picks the segment's candidate interests (about
1,000, whatever the number of interests; the global list for an unseen segment), and the
section's factorised ranker scores only those: ``ranker_user`` once on the sign-up row, then
``ranker_pairs`` with the interests' parts stored at export (memory-mapped). Bad sign-up values
degrade like every request's: a malformed or missing field is null, which the graphs read as
missing (the spec's policy), and is reported.

Example::

    >>> ranker = InterestRanker(package.section(), backend)  # doctest: +SKIP
    >>> ranker.rank({"country": "US", "gender": "F", "age": 31}, k=5)  # doctest: +SKIP
    InterestResult(ids=array([...]), scores=array([...]), segment='US|F', known_segment=True, ...)
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pinrank.features.columns import pack
from pinrank.interests.segments import SEGMENT, Candidates, segment_keys
from pinrank.serving.assemble import Popular
from pinrank.serving.catalogue import Catalogue
from pinrank.serving.conform import conform
from pinrank.serving.feed import EMPTY, Feed, FeedConfig
from pinrank.serving.package import Package, PackageError
from pinrank.serving.ranking import Ranker
from pinrank.serving.runtime import Backend, OnnxBackend

MAX_K = 1000
log = logging.getLogger("pinrank.serving.scorer")
MAX_STRING, MAX_LIST = 256, 1000  # a sign-up string's length, a list's values


@dataclass
class InterestResult:
    """The top interests of one sign-up: ids and calibrated P(engaged), best first."""

    ids: np.ndarray
    scores: np.ndarray
    segment: str
    known_segment: bool  # False: the segment was unseen in training (the global candidates)
    candidates: int
    problems: dict[str, str] = field(default_factory=dict)  # sign-up field -> missing/malformed


class InterestRanker:
    """The interest section's candidates and ranker (module docstring).

    Args:
        section: the package's ``interests`` section (:meth:`Package.section`).
        backend: a backend over that section.
    """

    def __init__(self, section: Package, backend: Backend) -> None:
        entry = section.manifest.get("candidates")
        if not isinstance(entry, dict) or not isinstance(entry.get("segment"), list):
            raise PackageError(f"{section.root}: the interest section has no candidates entry")
        self.segment = [str(c) for c in entry["segment"]]
        path = str(entry.get("path"))
        self.candidates = Candidates.from_table(
            pq.read_table(io.BytesIO(section.read(path))), f"{section.root}: {path}"
        )
        self.catalogue = Catalogue.from_package(section)
        self.ranker = Ranker(section, backend, self.catalogue)
        self.columns = section.columns("user")
        own = {c.column: c.kind for c in self.columns if c.column != SEGMENT}
        fields = sorted(set(own) | set(self.segment))
        self._kinds = {f: own.get(f, "string") for f in fields}  # the sign-up fields' kinds
        self.base_rate = _base_rates(section, self.catalogue)
        named = [self.candidates.popular, *self.candidates.segments.values()]
        if (self.catalogue.rows(np.concatenate(named)) < 0).any():
            raise PackageError(f"{section.root}: candidates name interests not in its catalogue")

    @classmethod
    def of(cls, package: Package, backend: Backend) -> InterestRanker | None:
        """The ranker of a package's interest section (``None`` without one), on a backend of
        the same kind and settings as ``backend``."""
        if not package.has_section():
            return None
        section = package.section()
        if isinstance(backend, OnnxBackend):
            return cls(section, OnnxBackend(section, backend.providers, backend.threads))
        return cls(section, type(backend)(section))  # type: ignore[call-arg]

    def kinds(self) -> dict[str, str]:
        """Each sign-up field and its kind (``int``, ``float``, ``string``, ``int_list``,
        ``vector``): the interest model's user columns, and the segment's (``string`` where
        the graphs do not read them)."""
        return dict(self._kinds)

    def check(self, signup: Mapping[str, Any]) -> dict[str, Any]:
        """A request's sign-up fields, strictly: ValueError naming an unknown field or a value of
        the wrong type (JSON types: an integer for ``int``, a number for ``float``, a string,
        a list of integers). Null is a missing value. Returns the fields as given."""
        kinds = self._kinds
        unknown = sorted(set(signup) - set(kinds))
        if unknown:
            raise ValueError(f"unknown sign-up fields {unknown} (this model reads {sorted(kinds)})")
        for name, value in signup.items():
            if value is not None and not _of_kind(value, kinds[name]):
                raise ValueError(f"signup.{name}: expected {_KIND_WORDS[kinds[name]]} "
                                 f"(got {value!r:.60})")  # fmt: skip
        return dict(signup)

    def lifts(self, signup: Mapping[str, Any]) -> InterestResult:
        """Every candidate of the sign-up's segment with its **lift** in ``scores``: the model's
        P(engaged) over the interest's base rate (:func:`_base_rates`; the mean prediction where
        the package lacks the train counts), best first."""
        got = self.rank(signup, MAX_K)
        base = self.base_rate[self.catalogue.rows(got.ids)]
        if np.isnan(base).any():
            base = np.full(len(got.ids), float(np.mean(got.scores)) if len(got.ids) else 1.0)
        lift = got.scores / np.maximum(base, 1e-6)
        order = np.argsort(-lift, kind="stable")
        got.ids, got.scores = got.ids[order], lift[order]
        return got

    def key(self, signup: Mapping[str, Any]) -> str:
        """The segment key of a sign-up's fields (as the training users were keyed)."""
        return self.keys([signup])[0]

    def keys(self, signups: Sequence[Mapping[str, Any]]) -> list[str]:
        """The segment key of each sign-up (:meth:`key`)."""
        values = {c: pa.array([_plain(s.get(c)) for s in signups]) for c in self.segment}
        return [str(k) for k in segment_keys(pa.table(values), self.segment).to_pylist()]

    def rank(self, signup: Mapping[str, Any], k: int = 10) -> InterestResult:
        """The ``k`` best of the sign-up's segment candidates by the calibrated probability
        (ties: candidate order). Unknown fields are ignored; ``k`` is 1..:data:`MAX_K`."""
        return self.rank_many([signup], k)[0]

    def rank_many(self, signups: Sequence[Mapping[str, Any]], k: int = 10) -> list[InterestResult]:
        """:meth:`rank` of many sign-ups, the graphs run once for all (the service's batches:
        ``ranker_user`` on every sign-up row, ``ranker_pairs`` on all their candidates)."""
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
            raise ValueError(f"k must be an integer in [1, {MAX_K}], got {k!r}")
        if not signups:
            return []
        keys = self.keys(signups)
        tables, problems = [], []
        for signup, key in zip(signups, keys, strict=True):
            table, found = conform({**signup, SEGMENT: key}, self.columns)
            found.pop(SEGMENT, None)
            tables.append(table)
            problems.append(found)
        ids = [self.candidates.for_segment(key) for key in keys]
        probs = self.ranker.rank(
            pack(pa.concat_tables(tables), self.columns), [self.catalogue.rows(i) for i in ids]
        )
        out = []
        for key, cand, prob, found in zip(keys, ids, probs, problems, strict=True):
            order = _top(prob, k)
            known = key in self.candidates.segments
            out.append(InterestResult(cand[order], prob[order], key, known, len(cand), found))
        return out


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    """The positions of the ``k`` highest scores, best first, ties in position order (what a
    stable descending sort's first ``k`` are, without sorting all of them)."""
    if k >= len(scores):
        return np.argsort(-scores, kind="stable")
    kth = np.partition(-scores, k - 1)[k - 1]
    keep = np.flatnonzero(-scores <= kth)  # every tie with the k-th too, in position order
    return keep[np.argsort(-scores[keep], kind="stable")][:k]


class UnknownUsers:
    """An unknown user's feed: the popular pins of the interests the caller states; else, where
    the package has an interest model, the pins of the interests it predicts from the sign-up
    fields (popular pins re-weighted by the user's lift of each interest:
    :meth:`Catalogue.lift_mix`, path ``unknown_user_predicted``); else popular pins.
    A failing interest model degrades to popular pins (logged), never to an error."""

    def __init__(
        self, ranker: InterestRanker | None, catalogue: Catalogue, popular: Popular,
        config: FeedConfig,
    ) -> None:  # fmt: skip
        self.ranker, self.catalogue, self.popular, self.config = ranker, catalogue, popular, config

    def feed(self, uid: int, k: int, wanted: np.ndarray, signup: Mapping[str, Any] | None) -> Feed:
        if wanted.size or self.ranker is None:
            return self.popular.unknown(uid, k, wanted)
        try:
            got = self.ranker.lifts(signup or {})
            rows, _ = self.catalogue.lift_mix(
                got.ids, got.scores, k, EMPTY, self.config.predicted_interests
            )
        except Exception:
            log.exception("interest model failed for unknown user %d; popular pins", uid)
            return self.popular.unknown(uid, k, EMPTY)
        return self.popular.predicted(uid, k, rows, got.problems)


_KIND_WORDS = {
    "int": "an integer",
    "float": "a finite number",
    "string": f"a string of at most {MAX_STRING} characters",
    "int_list": f"a list of at most {MAX_LIST} integers",
    "vector": f"a list of at most {MAX_LIST} finite numbers",
}


def _of_kind(value: Any, kind: str) -> bool:
    def integer(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and -(2**63) <= v < 2**63

    def number(v: Any) -> bool:
        return integer(v) or (isinstance(v, float) and math.isfinite(v))

    if kind == "int":
        return integer(value)
    if kind == "float":
        return number(value)
    if kind == "string":
        return isinstance(value, str) and len(value) <= MAX_STRING
    check = integer if kind == "int_list" else number
    return isinstance(value, list) and len(value) <= MAX_LIST and all(check(v) for v in value)


def _base_rates(section: Package, catalogue: Catalogue, prior: float = 10.0) -> np.ndarray:
    """``[M]`` each interest's engagement rate among the training users who saw it (the
    interest catalogue's ``train_engaged / train_events``), shrunk towards the overall rate with
    ``prior`` pseudo-users: the average user's P(engaged | interest), what a lift divides by."""
    items = pq.read_table(io.BytesIO(section.read(section.manifest["catalogue"]["path"])))
    if not {"train_events", "train_engaged"} <= set(items.column_names):
        return np.full(len(catalogue.ids), np.nan)
    rows = catalogue.rows(items.column("item_id").to_numpy())
    seen = np.nan_to_num(items.column("train_events").to_numpy(zero_copy_only=False).astype(float))
    hits = np.nan_to_num(items.column("train_engaged").to_numpy(zero_copy_only=False).astype(float))
    overall = hits.sum() / max(seen.sum(), 1.0)
    out = np.full(len(catalogue.ids), overall)
    out[rows[rows >= 0]] = ((hits + prior * overall) / (seen + prior))[rows >= 0]
    return out


def _plain(value: Any) -> Any:
    """A sign-up value as the segment key reads it (lists and mappings are not keys)."""
    return None if isinstance(value, list | dict | tuple | set) else value
