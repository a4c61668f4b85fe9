"""Raw feature columns as plain typed arrays: the input contract of the exported graphs.

An exported graph takes one input per raw source column its features read (not per feature), so
any ONNX Runtime binding can call it with the columns it already has. Names are
``{side}.{column}``; a list column adds ``{side}.{column}.lengths``. Types, and how a missing
value is written (the graph applies the spec's policy to it, exactly as the featurizer does):

=============  =======================  ==========================================
kind           array                    missing value
=============  =======================  ==========================================
``int``        int64 [B]                :data:`INT_NULL` (any negative id is missing too)
``float``      float64 [B]              NaN
``string``     string [B]               ``""``
``int_list``   int64 [B, L] + [B]       a null list has length 0; a null element is
                                        :data:`INT_NULL`; values past a row's length are ignored
``vector``     float64 [B, dim]         a null or wrong-length vector is a row of NaN
=============  =======================  ==========================================

Nothing here imports torch: the serving side packs requests with :func:`pack`.

Example::

    >>> from pinrank.features.spec import FeatureSpec
    >>> spec = FeatureSpec.from_dict({"features": {
    ...     "tags": {"side": "item", "source": "tags", "kind": "multi_categorical", "vocab": {}},
    ...     "q": {"side": "item", "source": "quality", "kind": "numeric"}}})
    >>> t = pa.table({"tags": [[3, None], None], "quality": [0.5, None]})
    >>> cols = columns_for(spec, "item", t.schema)
    >>> [(c.name, c.kind) for c in cols]
    [('item.tags', 'int_list'), ('item.quality', 'float')]
    >>> arrays = pack(t, cols)
    >>> arrays["item.tags"].tolist(), arrays["item.tags.lengths"].tolist()
    ([[3, -9223372036854775808], [0, 0]], [2, 0])
    >>> arrays["item.quality"].tolist()
    [0.5, nan]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pinrank.features.spec import LIST_LIMIT, Feature, FeatureSpec

# user columns derived from train events (pinrank.data.examples), shared by training and serving
HISTORY = "history"  # engaged train pins of a user
SEEN = "seen"  # impressed train pins of a user, any label
LAST_TS = "last_ts"  # time of a user's last train event
SEEN_INTERESTS = "seen_interests"  # the interests of a user's seen pins, one entry per pin
HISTORY_INTERESTS = "history_interests"  # the same for engaged pins
INTEREST_COLUMN = "interests"  # followed interests (users), the pin's interests (items)
# what a new (cold-start) user does not have: null in these is normal, not "missing"
EVENT_DERIVED_USER_COLUMNS = (HISTORY, SEEN, LAST_TS, SEEN_INTERESTS, HISTORY_INTERESTS)

INT_NULL = np.iinfo(np.int64).min
COLUMN_KINDS = ("int", "float", "string", "int_list", "vector")


@dataclass(frozen=True)
class ColumnSpec:
    """One raw input column of a graph: ``kind`` one of :data:`COLUMN_KINDS`.

    ``max_len`` (``int_list`` columns whose every feature keeps at most that many values):
    :func:`pack` drops the values every such feature drops (nulls and negative ids), then keeps
    the last (``keep_last``: sequences) or first ``max_len`` of each row before padding, so one
    long row cannot set the padded width of a whole batch; the graphs' outputs are unchanged.
    ``limit`` (the other ``int_list`` columns): the most values a served row may hold; the
    serving conformers replace a longer list by null, counted ``too_long``
    (:attr:`Feature.limit`).
    """

    side: str
    column: str
    kind: str
    dim: int = 1
    max_len: int | None = None
    keep_last: bool = False
    limit: int | None = None

    @property
    def name(self) -> str:
        return f"{self.side}.{self.column}"

    @property
    def lengths_name(self) -> str:
        return f"{self.name}.lengths"

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {
            "side": self.side, "column": self.column, "kind": self.kind, "dim": self.dim
        }  # fmt: skip
        if self.max_len is not None:
            out |= {"max_len": self.max_len, "keep_last": self.keep_last}
        return out


def column_kind(spec: FeatureSpec, side: str, column: str, arrow_type: pa.DataType) -> ColumnSpec:
    """The input kind of one source column, from the features reading it and its Arrow type."""
    feats = [f for f in spec.side(side) if f.source == column]
    vector = [f for f in feats if f.kind == "numeric" and f.dim > 1]
    if vector:
        return ColumnSpec(side, column, "vector", vector[0].dim)
    is_list = pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type)
    value_type = arrow_type.value_type if is_list else arrow_type
    if is_list:
        if not pa.types.is_integer(value_type):
            raise TypeError(f"{side}.{column}: list columns must hold integers, got {arrow_type}")
        max_len, keep_last, limit = _bounds(feats)
        return ColumnSpec(side, column, "int_list", 1, max_len, keep_last, limit)
    if pa.types.is_string(value_type) or pa.types.is_large_string(value_type):
        return ColumnSpec(side, column, "string")
    if pa.types.is_integer(value_type):
        return ColumnSpec(side, column, "int")
    if pa.types.is_floating(value_type):
        return ColumnSpec(side, column, "float")
    raise TypeError(f"{side}.{column}: unsupported column type {arrow_type}")


def trimmed(spec: FeatureSpec, column: ColumnSpec) -> ColumnSpec:
    """``column`` with the trimming its features allow or their limit (:class:`ColumnSpec`),
    from ``spec``."""
    if column.kind != "int_list":
        return column
    feats = [f for f in spec.side(column.side) if f.source == column.column]
    return ColumnSpec(column.side, column.column, column.kind, column.dim, *_bounds(feats))


def _bounds(feats: list[Feature]) -> tuple[int | None, bool, int | None]:
    """``(max_len, keep_last, limit)`` of a list column read by ``feats``: trimmed when they all
    allow it (:func:`_trim`), else limited (the largest :attr:`Feature.limit`, default
    :data:`LIST_LIMIT`)."""
    max_len, keep_last = _trim(feats)
    if max_len is not None:
        return max_len, keep_last, None
    return None, False, max((f.limit or LIST_LIMIT for f in feats), default=LIST_LIMIT)


def _trim(feats: list[Feature]) -> tuple[int | None, bool]:
    """How a list column may be trimmed before padding: when every feature reading it keeps at
    most ``max_len`` values from the same end and has no ``valid`` range (which could drop more
    values than nulls and negative ids), the largest ``max_len``; else nothing."""
    lens = [f.max_len for f in feats if f.max_len is not None and f.valid is None]
    ends = {f.kind == "sequence" for f in feats}
    if not feats or len(lens) != len(feats) or len(ends) != 1:
        return None, False
    return max(lens), ends.pop()


def columns_for(spec: FeatureSpec, side: str, schema: pa.Schema) -> list[ColumnSpec]:
    """Input columns of one side, in the spec's order of first use."""
    out = []
    for column in spec.sources(side):
        if column not in schema.names:
            raise KeyError(f"{side} rows have no column {column!r} (has {schema.names})")
        out.append(column_kind(spec, side, column, schema.field(column).type))
    return out


def pack(table: pa.Table | pa.RecordBatch, columns: list[ColumnSpec]) -> dict[str, np.ndarray]:
    """Arrays for the graph inputs of ``columns`` from Arrow rows (see the module table)."""
    out: dict[str, np.ndarray] = {}
    for c in columns:
        if c.column not in table.schema.names:
            raise KeyError(f"input {c.name!r}: rows have no column {c.column!r}")
        col = table.column(c.column)
        col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
        if c.kind == "int":
            out[c.name] = pc.fill_null(col.cast(pa.int64()), INT_NULL).to_numpy().copy()
        elif c.kind == "float":
            out[c.name] = pc.fill_null(col.cast(pa.float64(), safe=False), np.nan).to_numpy().copy()
        elif c.kind == "string":
            values = pc.fill_null(col.cast(pa.string()), "").to_numpy(zero_copy_only=False)
            out[c.name] = values.astype(object)
        elif c.kind == "int_list":
            out[c.name], out[c.lengths_name] = _pad_ints(col, c.max_len, c.keep_last)
        else:
            out[c.name] = _vectors(col, c.dim)
    return out


def _pad_ints(
    col: pa.Array, max_len: int | None = None, keep_last: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """[B, L] int64 padded values (L = the longest row, at least 1) and [B] lengths; with
    ``max_len``, rows lose their null and negative values and keep at most ``max_len`` (the
    last ones with ``keep_last``) first (:class:`ColumnSpec`)."""
    lengths = pc.fill_null(pc.list_value_length(col), 0).to_numpy().astype(np.int64)
    flat = pc.fill_null(pc.list_flatten(col).cast(pa.int64()), INT_NULL).to_numpy()
    if max_len is not None:
        flat, lengths = _keep(flat, lengths, max_len, keep_last)
    width = max(int(lengths.max()) if lengths.size else 0, 1)
    out = np.zeros((len(lengths), width), np.int64)
    row = np.repeat(np.arange(len(lengths)), lengths)
    within = np.arange(flat.size) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    out[row, within] = flat
    return out, lengths


def _keep(
    flat: np.ndarray, lengths: np.ndarray, max_len: int, keep_last: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Drop null (INT_NULL) and negative values, then keep at most ``max_len`` per row.

    Example::

        >>> _keep(np.array([1, -5, 2, 3, 4, 9]), np.array([5, 1]), 2, True)
        (array([3, 4, 9]), array([2, 1]))
    """
    row = np.repeat(np.arange(lengths.size), lengths)
    ok = flat >= 0
    flat, row = flat[ok], row[ok]
    lengths = np.bincount(row, minlength=lengths.size).astype(np.int64)
    if not lengths.size or lengths.max() <= max_len:
        return flat, lengths
    within = np.arange(flat.size) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    position = np.repeat(lengths, lengths) - 1 - within if keep_last else within
    kept = position < max_len
    return flat[kept], np.minimum(lengths, max_len)


def _vectors(col: pa.Array, dim: int) -> np.ndarray:
    """[B, dim] float64; null and wrong-length rows become NaN (the spec's default applies)."""
    lengths = pc.fill_null(pc.list_value_length(col), -1).to_numpy()
    ok = lengths == dim
    out = np.full((len(col), dim), np.nan)
    flat = pc.list_flatten(col.filter(pa.array(ok))).cast(pa.float64(), safe=False)
    out[ok] = pc.fill_null(flat, np.nan).to_numpy().reshape(-1, dim)
    return out
