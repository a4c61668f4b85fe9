"""Sign-up segments and their candidate interests: a bounded set to score per new user.

A **segment** is a combination of sign-up columns chosen in config (e.g. ``[country, gender]``),
keyed by :func:`segment_keys`: the values joined by ``|``, a missing value written as the empty
string (``"US|F"``, ``"|M"``). The same function keys users when the data set is derived, in the
training report and in serving, so the three cannot disagree.

A segment's **candidates** are the interests its users engaged with most in their training window
(by the number of users who engaged, ties by the number who saw it, then by id), filled up to
``per_segment`` with the globally most engaged interests; a segment unseen in training gets the
global list. Serving scores only these, whatever the number of interests.

Example::

    >>> import pyarrow as pa
    >>> users = pa.table({"user_id": [1, 2, 3], "country": ["US", "US", None],
    ...                   "gender": ["F", "F", "M"]})
    >>> segment_keys(users, ["country", "gender"]).to_pylist()
    ['US|F', 'US|F', '|M']
    >>> train = pa.table({"user_id": [1, 1, 2, 3, 3], "item_id": [5, 6, 6, 7, 5],
    ...                   "engaged": [True, False, True, True, True]})
    >>> users = users.append_column(SEGMENT, segment_keys(users, ["country", "gender"]))
    >>> cand = Candidates.fit(train, users, per_segment=2)
    >>> cand.for_segment("US|F").tolist(), cand.for_segment("|M").tolist()
    ([6, 5], [5, 7])
    >>> cand.for_segment("JP|U").tolist()   # unseen: the global list
    [5, 6]
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

SEGMENT = "segment"  # the users column the derived data set adds
SEPARATOR = "|"


def segment_keys(users: pa.Table, columns: Sequence[str]) -> pa.Array:
    """The segment key of every row: ``columns``' values as strings joined by ``|``, a missing
    value as ``""``.

    Raises:
        ValueError: no columns, or a column the table lacks (named).
    """
    if not columns:
        raise ValueError("a segment needs at least one sign-up column")
    parts = []
    for name in columns:
        if name not in users.column_names:
            raise ValueError(f"segment column {name!r} is not a users column {users.column_names}")
        col = pc.cast(users.column(name), pa.string())
        parts.append(pc.fill_null(pc.replace_substring(col, SEPARATOR, "/"), ""))
    key = parts[0] if len(parts) == 1 else pc.binary_join_element_wise(*parts, SEPARATOR)
    return key.combine_chunks() if isinstance(key, pa.ChunkedArray) else key


def _ranked(interest: np.ndarray, engaged: np.ndarray) -> np.ndarray:
    """Interest ids by engaged count, then seen count, descending, then id ascending."""
    ids, inverse = np.unique(interest, return_inverse=True)
    seen = np.bincount(inverse, minlength=len(ids))
    hits = np.bincount(inverse, weights=engaged.astype(np.float64), minlength=len(ids))
    return ids[np.lexsort((ids, -seen, -hits))]


@dataclass
class Candidates:
    """Candidate interests per segment key, and the global list (see module docstring)."""

    segments: dict[str, np.ndarray]
    popular: np.ndarray
    per_segment: int

    @classmethod
    def fit(
        cls,
        train: pa.Table,
        users: pa.Table,
        per_segment: int = 1000,
        min_users: int = 1,
    ) -> Candidates:
        """From training examples (``user_id``, ``item_id`` = interest, ``engaged``).

        Args:
            train: the interest examples of the training users.
            users: ``user_id`` and ``segment`` (the key, :func:`segment_keys`) of at least
                those users.
            per_segment: candidates per segment.
            min_users: a segment with fewer training users gets the global list only.
        """
        if per_segment < 1:
            raise ValueError(f"per_segment must be >= 1, got {per_segment}")
        user_ids = users.column("user_id").to_numpy()
        order = np.argsort(user_ids, kind="stable")
        keys = users.column(SEGMENT).to_numpy(zero_copy_only=False)[order]
        ex_users = train.column("user_id").to_numpy()
        pos = np.minimum(np.searchsorted(user_ids[order], ex_users), max(len(order) - 1, 0))
        if len(order) == 0 or (user_ids[order][pos] != ex_users).any():
            raise ValueError("candidates: some training examples' users are not in the users")
        interest = train.column("item_id").to_numpy()
        engaged = np.asarray(train.column("engaged").to_numpy(zero_copy_only=False), bool)
        popular = _ranked(interest, engaged)
        ex_keys = keys[pos]
        segments: dict[str, np.ndarray] = {}
        by_key = np.argsort(ex_keys, kind="stable")
        bounds = np.flatnonzero(np.r_[True, ex_keys[by_key][1:] != ex_keys[by_key][:-1], True])
        for a, b in itertools.pairwise(bounds):
            rows = by_key[a:b]
            if len(np.unique(ex_users[rows])) < min_users:
                continue
            own = _ranked(interest[rows], engaged[rows])[:per_segment]
            fill = popular[~np.isin(popular, own)][: per_segment - len(own)]
            segments[str(ex_keys[rows[0]])] = np.concatenate([own, fill])
        return cls(segments, popular[:per_segment], per_segment)

    def for_segment(self, key: str) -> np.ndarray:
        """The candidates of a segment key (the global list for an unknown one)."""
        return self.segments.get(key, self.popular)

    def to_table(self) -> pa.Table:
        """``segment`` (string; null for the global list: no key is null) and ``interests``."""
        keys = [*self.segments, None]
        lists = [*self.segments.values(), self.popular]
        return pa.table(
            {
                SEGMENT: pa.array(keys, pa.string()),
                "interests": pa.array([v.tolist() for v in lists], pa.list_(pa.int64())),
            }
        )

    @classmethod
    def from_table(cls, table: pa.Table, where: str = "candidates") -> Candidates:
        """Read :meth:`to_table`'s layout; a clear error on anything else."""
        if set(table.column_names) != {SEGMENT, "interests"}:
            raise ValueError(f"{where}: expected columns segment, interests; got "
                             f"{table.column_names}")  # fmt: skip
        keys = table.column(SEGMENT).to_pylist()
        lists = table.column("interests").to_pylist()
        if keys.count(None) != 1 or any(v is None for v in lists):
            raise ValueError(f"{where}: needs exactly one global row (null segment), no null lists")
        if len(set(keys)) != len(keys):
            raise ValueError(f"{where}: a segment appears twice")
        rows = {
            k: np.asarray(v, np.int64) for k, v in zip(keys, lists, strict=True) if k is not None
        }
        popular = np.asarray(lists[keys.index(None)], np.int64)
        return cls(rows, popular, max(len(popular), *(len(v) for v in rows.values()), 1))
