"""The item catalogue of a package, in memory: every item's graph inputs packed once (a feed
slices them by row), boards, interests and popularity, for candidates and fallback feeds."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import overload

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pinrank.features.columns import INTEREST_COLUMN, ColumnSpec, pack
from pinrank.features.ids import IdIndex
from pinrank.serving.package import Package, PackageError

ITEM_ID, BOARD = "item_id", "board_id"
_EMPTY = np.empty(0, np.int64)


class Catalogue:
    """Every item a package can serve: graph inputs packed once (sliced per feed), boards,
    interests and popularity (engaged train events).

    Args:
        items: the catalogue rows (``item_id``; ``board_id`` and ``interests`` where present).
        popular: ``item_id``, ``engaged`` (a pin it lacks counts 0).
        columns: the item graphs' input columns.
    """

    def __init__(self, items: pa.Table, popular: pa.Table, columns: list[ColumnSpec]) -> None:
        self.ids = items.column(ITEM_ID).to_numpy().astype(np.int64)  # [M]
        self.arrays = pack(items, columns)
        self._index = IdIndex(self.ids)
        self.boards = _ints(items, BOARD)  # [M], -1 where none
        col = items.column(INTEREST_COLUMN) if INTEREST_COLUMN in items.column_names else None
        col = (
            col.combine_chunks()
            if col is not None
            else pa.array([[]] * len(self.ids), pa.list_(pa.int64()))
        )
        lengths = pc.fill_null(pc.list_value_length(col), 0).to_numpy().astype(np.int64)
        values = pc.fill_null(pc.list_flatten(col), -1).to_numpy().astype(np.int64)
        rows = np.repeat(np.arange(len(self.ids)), lengths)
        # each pin's distinct valid interests, sorted: a CSR of (offsets, interest_values)
        keep = values >= 0
        pairs = np.unique(np.stack([rows[keep], values[keep]], axis=1), axis=0).reshape(-1, 2)
        self.interest_rows, self.interest_values = pairs[:, 0], pairs[:, 1]
        counts = np.bincount(self.interest_rows, minlength=len(self.ids))
        self.offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)  # [M + 1]
        self.engaged = np.zeros(len(self.ids), np.int64)  # [M]
        rows = self.rows(_ints(popular, ITEM_ID))
        self.engaged[rows[rows >= 0]] = np.maximum(_ints(popular, "engaged"), 0)[rows >= 0]
        self.by_popularity = np.lexsort((self.ids, -self.engaged))  # [M] rows, most engaged first
        self.rank = np.empty(len(self.ids), np.int64)  # [M] position of each row in that order
        self.rank[self.by_popularity] = np.arange(len(self.ids))
        # per interest, its pins most popular first: a CSR over the interest ids
        by_tag = np.lexsort((self.rank[self.interest_rows], self.interest_values))
        self._tag_rows = self.interest_rows[by_tag]
        tags = self.interest_values[by_tag]
        self._tags, starts = np.unique(tags, return_index=True)
        self._tag_offsets = np.append(starts, len(tags)).astype(np.int64)
        self._tuples: list[tuple[int, ...]] | None = None

    @classmethod
    def from_package(cls, package: Package) -> Catalogue:
        items = _parquet(package, package.manifest["catalogue"]["path"])
        popular = _parquet(package, package.manifest["fallback"]["path"])
        return cls(items, popular, package.columns("item"))

    def rows(self, item_ids: np.ndarray) -> np.ndarray:
        """``[N]`` catalogue row of each id, ``-1`` where the catalogue lacks it."""
        return self._index(np.asarray(item_ids, np.int64))

    def interests(self, row: int) -> np.ndarray:
        """The distinct interests of a catalogue row, sorted (a view)."""
        return self.interest_values[self.offsets[row] : self.offsets[row + 1]]

    def interest_tuples(self) -> list[tuple[int, ...]]:
        """Every row's interests as a tuple of ints, built on first use."""
        if self._tuples is None:
            values = self.interest_values.tolist()
            bounds = self.offsets.tolist()
            self._tuples = [tuple(values[a:b]) for a, b in itertools.pairwise(bounds)]
        return self._tuples

    def row_interests(self, rows: np.ndarray) -> RowInterests:
        """The interests of each of ``rows``, looked up when read."""
        return RowInterests(self, rows)

    def inputs(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        return {name: a[rows] for name, a in self.arrays.items()}

    def popular(
        self, limit: int, exclude: np.ndarray, interests: np.ndarray | None = None
    ) -> np.ndarray:
        """``[<= limit]`` rows by engaged train events (ties: lower id), not in ``exclude`` (ids),
        restricted to pins with any of ``interests`` when given.

        Only the first ``limit + len(exclude)`` pins of each list (the catalogue's, or each
        interest's) can be in the answer, so the cost does not grow with the catalogue.
        """
        limit = max(limit, 0)
        head = self._head(limit + len(exclude), interests)
        return head[~np.isin(self.ids[head], exclude)][:limit]

    def popular_unmarked(
        self, limit: int, marked: np.ndarray, n_marked: int, interests: np.ndarray | None = None
    ) -> np.ndarray:
        """:meth:`popular` with the excluded pins given as rows: ``marked`` ``[M]`` bool, true at
        the (at most ``n_marked``) excluded rows (a caller that scores many users marks and
        clears each user's rows in one array instead of matching ids)."""
        limit = max(limit, 0)
        head = self._head(limit + n_marked, interests)
        return head[~marked[head]][:limit]

    def lift_mix(
        self,
        interests: np.ndarray,
        lifts: np.ndarray,
        limit: int,
        exclude: np.ndarray,
        top: int = 20,
    ) -> tuple[np.ndarray, np.ndarray]:
        """``[<= limit]`` rows and scores, best first, not in ``exclude`` (ids): popular pins
        re-weighted by a user's interests. A pin scores ``(engaged + 1) x lift``, its lift the
        best of its interests' (``lifts[i]``: how much more than the average user this user
        engages with interest ``i``; 1 for an interest not given). The candidates are the most
        popular pins and those of the ``top`` interests of highest lift, each list read only
        ``limit + len(exclude)`` deep, so the cost does not grow with the catalogue. Ties: the
        more popular pin."""
        interests = np.asarray(interests, np.int64)
        lifts = np.asarray(lifts, np.float64)
        if len(interests) != len(lifts):
            raise ValueError(f"{len(interests)} interests, {len(lifts)} lifts")
        limit = max(limit, 0)
        depth = limit + len(exclude)
        if not limit or not len(self.ids):
            return _EMPTY, np.empty(0)
        best = interests[np.argsort(-lifts, kind="stable")[:top]]
        rows = np.union1d(self._head(depth, None), self._head(depth, best))
        order = np.argsort(interests, kind="stable")
        keys, values = interests[order], lifts[order]
        lift = np.full(len(rows), -np.inf)
        lengths = self.offsets[rows + 1] - self.offsets[rows]
        if lengths.sum() and len(keys):  # every candidate's interests, gathered in one go
            starts = np.repeat(self.offsets[rows] - np.cumsum(lengths) + lengths, lengths)
            tags = self.interest_values[starts + np.arange(lengths.sum())]
            at = np.minimum(np.searchsorted(keys, tags), len(keys) - 1)
            per = np.where(keys[at] == tags, values[at], 1.0)  # 1: an interest not given
            np.maximum.at(lift, np.repeat(np.arange(len(rows)), lengths), per)  # its best
        lift[lengths == 0] = 1.0  # a pin of no interest
        scores = (self.engaged[rows] + 1.0) * lift
        rank = np.lexsort((self.rank[rows], -scores))
        rows, scores = rows[rank], scores[rank]
        allowed = ~np.isin(self.ids[rows], exclude)
        return rows[allowed][:limit], scores[allowed][:limit]

    def _head(self, depth: int, interests: np.ndarray | None) -> np.ndarray:
        """The first ``depth`` rows of the popularity order, or of each of ``interests``' lists
        merged (distinct rows, most popular first)."""
        if interests is None:
            return self.by_popularity[:depth]
        if not len(self._tags):  # no pin has an interest
            return _EMPTY
        at = np.searchsorted(self._tags, interests)
        tags = self._tags[np.minimum(at, len(self._tags) - 1)]
        at = at[(at < len(self._tags)) & (tags == interests)]
        if not at.size:
            return _EMPTY
        starts = self._tag_offsets[at]
        ends = np.minimum(self._tag_offsets[at + 1], starts + depth)
        rows = np.concatenate(
            [self._tag_rows[a:b] for a, b in zip(starts.tolist(), ends.tolist(), strict=True)]
        )
        # ranks are distinct: their sorted distinct values are the rows, most popular first
        return self.by_popularity[np.unique(self.rank[rows])]


class RowInterests(Sequence[np.ndarray]):
    """``[N]`` interest arrays of catalogue rows, as a sequence read on access (no copy)."""

    def __init__(self, catalogue: Catalogue, rows: np.ndarray) -> None:
        self.catalogue, self.rows = catalogue, np.asarray(rows, np.int64)

    def __len__(self) -> int:
        return len(self.rows)

    def tags(self, i: int) -> tuple[int, ...]:
        """The interests of candidate ``i`` as a tuple of ints (the blending loop's fast path)."""
        return self.catalogue.interest_tuples()[self.rows[i]]

    @overload
    def __getitem__(self, i: int) -> np.ndarray: ...

    @overload
    def __getitem__(self, i: slice) -> list[np.ndarray]: ...

    def __getitem__(self, i: int | slice) -> np.ndarray | list[np.ndarray]:
        if isinstance(i, slice):
            return [self.catalogue.interests(int(r)) for r in self.rows[i]]
        return self.catalogue.interests(int(self.rows[i]))


def _parquet(package: Package, relative: str) -> pa.Table:
    """A Parquet file of the package, from its digest-checked bytes."""
    try:
        return pq.read_table(pa.BufferReader(package.read(relative)))
    except (pa.ArrowInvalid, OSError) as err:
        raise PackageError(f"{package.root}: {relative} is not readable Parquet ({err})") from None


def _ints(table: pa.Table, column: str) -> np.ndarray:
    """``[R]`` int64 values of a column, ``-1`` where null or where the column is absent."""
    if column not in table.column_names:
        return np.full(table.num_rows, -1, np.int64)
    return pc.fill_null(table.column(column).cast(pa.int64()), -1).to_numpy().astype(np.int64)
