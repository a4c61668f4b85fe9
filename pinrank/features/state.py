"""Fitted feature state (vocabularies, statistics, hash constants) and applying it to rows.

The state is learned from training rows only (:func:`fit`) and saved as plain JSON, with each
vocabulary in an Arrow IPC file beside it (``vocab/{feature}.arrow``, one column ``value``, its
sha256 in the JSON): a million-id vocabulary loads as one int64 array, not as a JSON list of
Python ints. Nothing in either executes code on load. :func:`transform_side` turns one side's
Arrow rows into jagged index arrays and dense float32 matrices, following the spec's
missing-value policies and counting every value it replaces.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pinrank.features.spec import Cross, Feature, FeatureSpec, SpecError
from pinrank.features.transforms import (
    MISSING,
    OOV,
    Counts,
    Jagged,
    VocabLookup,
    bucketize,
    flatten_lists,
    hash_ids,
    hash_params,
    jagged,
    jagged_product,
    numeric_column,
    truncate,
    vocab_array,
)

STATE_VERSION = 1
VOCAB_DIR = "vocab"


@dataclass
class FeatureState:
    """Everything fitted for a spec, keyed by feature or cross name.

    Per categorical feature: ``cardinality`` and, by transform, ``vocab`` (values in index order
    from 2: an Arrow int64 or string array; saved as a file beside the JSON), ``hash``
    ``{a, b, buckets}``, or ``boundaries``. Per numeric feature: ``default``
    (raw fill), ``mean`` and ``std`` (for standardize), each a list of ``dim`` floats. Per cross:
    ``{a, b, buckets, right_cardinality, cardinality}``. ``rows`` counts the fitted rows per side.
    """

    features: dict[str, dict[str, Any]]
    crosses: dict[str, dict[str, Any]]
    rows: dict[str, int] = field(default_factory=dict)
    version: int = STATE_VERSION

    def __post_init__(self) -> None:
        for st in self.features.values():  # one in-memory form: Arrow arrays
            if "vocab" in st and not isinstance(st["vocab"], pa.Array):
                st["vocab"] = vocab_array(list(st["vocab"]))
        # built lazily from the vocabularies; not part of the saved state
        self._lookups: dict[str, VocabLookup] = {}

    def lookups(self) -> dict[str, VocabLookup]:
        """Value -> index lookups of every vocabulary feature, built once."""
        if not self._lookups:
            self._lookups = {
                name: VocabLookup(st["vocab"])
                for name, st in self.features.items()
                if "vocab" in st
            }
        return self._lookups

    def cardinality(self, name: str) -> int:
        """Number of embedding rows a categorical feature or cross needs."""
        entry = self.features.get(name) or self.crosses.get(name)
        if entry is None:
            raise KeyError(f"no fitted state for {name!r}")
        return int(entry["cardinality"])

    def save(self, path: str | Path) -> Path:
        """Write the JSON to ``path`` and every vocabulary to ``vocab/{feature}.arrow`` beside
        it (the JSON names each file with its size and sha256)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        features = {}
        for name, st in self.features.items():
            if "vocab" in st:
                st = {**st, "vocab": _write_vocab(path.parent, name, st["vocab"])}
            features[name] = st
        data["features"] = features
        path.write_text(json.dumps(data, indent=1, sort_keys=True))
        return path

    @classmethod
    def load(cls, path: str | Path) -> FeatureState:
        path = Path(path)
        return cls.from_json(path.read_text(), str(path), lambda rel: path.parent / rel)

    @classmethod
    def from_json(
        cls,
        text: str,
        where: str = "feature state",
        read: Callable[[str], Any] | None = None,
    ) -> FeatureState:
        """The state from the text :meth:`save` wrote; ValueError naming ``where`` otherwise.

        ``read``: relative path -> the file's bytes or a path to it (the vocabulary files
        beside the JSON; a package passes its verified reader)."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"{where}: not JSON ({err})") from None
        if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
            version = data.get("version") if isinstance(data, dict) else None
            raise ValueError(f"{where}: feature state version {version}, expected {STATE_VERSION}")
        names = {f.name for f in fields(cls)}
        if set(data) - names:
            raise ValueError(f"{where}: unknown feature state keys {sorted(set(data) - names)}")
        features = data.get("features")
        if not isinstance(features, dict):
            raise ValueError(f"{where}: 'features' is not an object")
        for name, st in features.items():
            if isinstance(st, dict) and isinstance(st.get("vocab"), dict):
                if read is None:
                    raise ValueError(f"{where}: vocabulary of {name!r} is a file, and no reader")
                st["vocab"] = _read_vocab(name, st["vocab"], read, where)
        return cls(**data)


def vocab_file(name: str) -> str:
    """Where the vocabulary of feature ``name`` lies, relative to the state's JSON."""
    return f"{VOCAB_DIR}/{name}.arrow"


def _write_vocab(folder: Path, name: str, values: pa.Array) -> dict[str, Any]:
    rel = vocab_file(name)
    (folder / VOCAB_DIR).mkdir(parents=True, exist_ok=True)
    table = pa.table({"value": values})
    with pa.OSFile(str(folder / rel), "wb") as sink, pa.ipc.new_file(sink, table.schema) as w:
        w.write_table(table)
    digest = hashlib.sha256((folder / rel).read_bytes()).hexdigest()
    return {"file": rel, "size": len(values), "sha256": digest}


def _read_vocab(
    name: str, entry: dict[str, Any], read: Callable[[str], Any], where: str
) -> pa.Array:
    """One vocabulary file, checked: the file the name implies, its sha256, one non-null,
    duplicate-free int64 or string column of the recorded size."""
    rel = vocab_file(name)
    bad = f"{where}: vocabulary {rel}"
    if entry.get("file") != rel:
        raise ValueError(f"{bad}: the state names {entry.get('file')!r} instead")
    got = read(rel)
    data = got if isinstance(got, bytes) else Path(got).read_bytes()
    if hashlib.sha256(data).hexdigest() != entry.get("sha256"):
        raise ValueError(f"{bad}: sha256 differs from the state's")
    try:
        table = pa.ipc.open_file(pa.BufferReader(data)).read_all()
        table.validate(full=True)
    except (pa.ArrowException, OSError) as err:
        raise ValueError(f"{bad}: not an Arrow IPC file ({err})") from None
    if table.schema.names != ["value"] or not (
        pa.types.is_int64(table.schema.field(0).type)
        or pa.types.is_string(table.schema.field(0).type)
    ):
        raise ValueError(f"{bad}: expected one int64 or string column 'value', got {table.schema}")
    values = table.column(0).combine_chunks()
    if len(values) != entry.get("size") or values.null_count:
        raise ValueError(
            f"{bad}: {len(values)} values ({values.null_count} null), expected "
            f"{entry.get('size')} non-null"
        )
    if pc.count_distinct(values).as_py() != len(values):
        raise ValueError(f"{bad}: duplicate values")
    return values


# ----------------------------------------------------------------------------------------- fit


class _NumericStats:
    """Streaming count / sum / sum of squares per dimension."""

    def __init__(self, dim: int) -> None:
        self.n, self.raw_sum = 0, np.zeros(dim)
        self.sum, self.sumsq = np.zeros(dim), np.zeros(dim)

    def update(self, raw: np.ndarray, pre: np.ndarray) -> None:
        self.n += len(raw)
        self.raw_sum += raw.sum(axis=0)
        self.sum += pre.sum(axis=0)
        self.sumsq += (pre**2).sum(axis=0)

    def finish(self, f: Feature) -> dict[str, Any]:
        n = max(self.n, 1)
        mean = self.sum / n
        std = np.sqrt(np.maximum(self.sumsq / n - mean**2, 0.0))
        default = (
            [float(f.default)] * f.dim if f.default is not None else (self.raw_sum / n).tolist()
        )
        return {
            "default": default,
            "mean": mean.tolist(),
            "std": np.where(std > 1e-12, std, 1.0).tolist(),  # a constant feature maps to 0
            "fitted_rows": self.n,
        }


def fit(spec: FeatureSpec, sides: dict[str, Iterable[pa.RecordBatch | pa.Table]]) -> FeatureState:
    """Learn the state of ``spec`` from training rows, streamed one batch at a time.

    Args:
        spec: the feature spec.
        sides: for each side of the spec, its *training* rows (users of training events, pins of
            training events, the training events themselves), as an iterable of Arrow batches.

    Returns:
        The fitted :class:`FeatureState`.
    """
    vocab_counts: dict[str, Counter] = {}
    numeric: dict[str, _NumericStats] = {}
    rows: dict[str, int] = {}
    for side, batches in sides.items():
        feats = spec.side(side)
        for f in feats:
            if f.vocab is not None:
                vocab_counts[f.name] = Counter()
            if f.kind == "numeric":
                numeric[f.name] = _NumericStats(f.dim)
        rows[side] = 0
        for batch in batches:
            rows[side] += batch.num_rows
            for f in feats:
                col = _column(batch, f)
                if f.vocab is not None:
                    _count_values(f, col, vocab_counts[f.name])
                elif f.kind == "numeric":
                    raw, ok = _valid_numeric(f, col, Counter())
                    numeric[f.name].update(raw[ok], _pre_standardize(f, raw[ok], Counter()))
    missing = {s for f in spec.features for s in [f.side]} - set(sides)
    if missing:
        raise ValueError(f"fit needs training rows for sides {sorted(missing)}")
    state_f = {
        f.name: _feature_state(f, vocab_counts, numeric) for f in spec.features if f.shares is None
    }
    for f in spec.features:
        if f.shares is not None:
            state_f[f.name] = {"shares": f.shares, "cardinality": state_f[f.shares]["cardinality"]}
    crosses = {}
    for c in spec.crosses:
        a, b = hash_params(c.name)
        right = state_f[c.features[1]]["cardinality"]
        if state_f[c.features[0]]["cardinality"] * right >= 2**62:
            raise SpecError(f"cross {c.name!r}: cardinalities too large to pair without overflow")
        crosses[c.name] = {
            "a": a,
            "b": b,
            "buckets": c.buckets,
            "right_cardinality": right,
            "cardinality": c.buckets + 1,
        }
    return FeatureState(state_f, crosses, rows)


def _count_values(f: Feature, col: pa.Array, counter: Counter) -> None:
    values, _ = flatten_lists(col, Counter(), f.name)
    if not pa.types.is_string(values.type) and not pa.types.is_large_string(values.type):
        values = values.filter(pc.greater_equal(values, 0))
    vc = pc.value_counts(values)
    counter.update(
        dict(zip(vc.field("values").to_pylist(), vc.field("counts").to_pylist(), strict=True))
    )


def _feature_state(
    f: Feature, vocab_counts: dict[str, Counter], numeric: dict[str, _NumericStats]
) -> dict[str, Any]:
    if f.kind == "numeric":
        return numeric[f.name].finish(f)
    if f.vocab is not None:
        kept = [(v, n) for v, n in vocab_counts[f.name].items() if n >= f.vocab.min_count]
        kept.sort(key=lambda vn: (-vn[1], vn[0]))  # frequency, then value: deterministic
        values = vocab_array([v for v, _ in kept[: f.vocab.max_size]])
        return {"vocab": values, "cardinality": len(values) + 2}
    if f.hash_buckets is not None:
        a, b = hash_params(f.name)
        return {
            "hash": {"a": a, "b": b, "buckets": f.hash_buckets},
            "cardinality": f.hash_buckets + 1,
        }
    assert f.bucketize is not None
    return {"boundaries": list(f.bucketize), "cardinality": len(f.bucketize) + 2}


# --------------------------------------------------------------------------------------- apply


@dataclass
class SideArrays:
    """One side's transformed rows: sparse jagged indices and dense float32 [rows, dim]."""

    rows: int
    sparse: dict[str, Jagged]
    dense: dict[str, np.ndarray]


def transform_side(
    spec: FeatureSpec,
    state: FeatureState,
    side: str,
    table: pa.Table | pa.RecordBatch,
    counts: Counts,
) -> SideArrays:
    """Transform the rows of one side; every replaced value is added to ``counts``."""
    sparse, dense = {}, {}
    lookups = state.lookups()
    for f in spec.side(side):
        col = _column(table, f)
        if f.kind == "numeric":
            dense[f.name] = _apply_numeric(f, state.features[f.name], col, counts)
        else:
            owner = state.features[f.shares] if f.shares else state.features[f.name]
            sparse[f.name] = _apply_categorical(f, owner, lookups, col, counts)
    return SideArrays(table.num_rows, sparse, dense)


def cross_features(
    crosses: Iterable[Cross], state: FeatureState, by_name: dict[str, Jagged]
) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
    """Hashed crosses from the (row-aligned) jagged indices of their two features: per cross
    its ids, lengths and, for a ``mean`` cross, float32 per-pair weights (1 / the row's number
    of kept first-feature values: a user's interest profile crossed with a pin's interests adds
    the profile's share of each of the pin's interests, summed over them); ``None`` for
    ``sum``."""
    out = {}
    for c in crosses:
        st = state.crosses[c.name]
        first = by_name[c.features[0]]
        left, right, lengths = jagged_product(first, by_name[c.features[1]])
        pair = left * np.int64(st["right_cardinality"]) + right
        weights = None
        if c.pooling == "mean":
            row = np.repeat(np.arange(first[1].size), first[1])
            kept = np.bincount(row[first[0] != MISSING], minlength=first[1].size)
            weights = np.repeat(1.0 / np.maximum(kept, 1), lengths).astype(np.float32)
        out[c.name] = (hash_ids(pair, st["a"], st["b"], st["buckets"]), lengths, weights)
    return out


def _column(table: pa.Table | pa.RecordBatch, f: Feature) -> pa.Array:
    if f.source not in table.schema.names:
        raise KeyError(
            f"feature {f.name!r}: column {f.source!r} missing from the {f.side} rows "
            f"(has {table.schema.names})"
        )
    col = table.column(f.source)
    return col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col


def _apply_categorical(
    f: Feature, st: dict[str, Any], lookups: dict[str, VocabLookup], col: pa.Array, counts: Counts
) -> Jagged:
    is_list = pa.types.is_list(col.type) or pa.types.is_large_list(col.type)
    if is_list != (f.kind != "categorical"):
        raise TypeError(f"feature {f.name!r} ({f.kind}): column {f.source!r} has type {col.type}")
    rows = len(col)
    values, row = flatten_lists(col, counts, f.name)
    if pa.types.is_integer(values.type) or pa.types.is_floating(values.type):
        x = values.to_numpy(zero_copy_only=False)
        bad = x < 0
        counts[(f.name, "negative")] += int(bad.sum())
        if f.valid is not None:
            out = ~bad & ((x < f.valid[0]) | (x > f.valid[1]))
            counts[(f.name, "out_of_range")] += int(out.sum())
            bad |= out
        if bad.any():
            values, row, x = values.filter(pa.array(~bad)), row[~bad], x[~bad]
    if "vocab" in st:
        idx = lookups[f.shares or f.name](values)
        counts[(f.name, "oov")] += int((idx == OOV).sum())
    elif "hash" in st:
        idx = hash_ids(x, st["hash"]["a"], st["hash"]["b"], st["hash"]["buckets"])
    else:
        idx = bucketize(x.astype(np.float64), np.asarray(st["boundaries"], np.float64))
    if f.kind == "categorical":  # exactly one index per row, MISSING where dropped
        out = np.full(rows, MISSING, np.int64)
        out[row] = idx
        return out, np.ones(rows, np.int32)
    j = jagged(idx, row, rows)
    return truncate(j, f.max_len, f.kind == "sequence", counts, f.name) if f.max_len else j


def _valid_numeric(f: Feature, col: pa.Array, counts: Counts) -> tuple[np.ndarray, np.ndarray]:
    x, ok = numeric_column(col, f.dim, counts, f.name)
    if f.valid is not None:
        out = ok & ((x < f.valid[0]) | (x > f.valid[1])).any(axis=1)
        counts[(f.name, "out_of_range")] += int(out.sum())
        ok &= ~out
    return x, ok


def _pre_standardize(f: Feature, x: np.ndarray, counts: Counts) -> np.ndarray:
    """Apply the numeric steps before ``standardize`` (which the spec keeps last)."""
    for step in f.transforms:
        name, arg = next(iter(step.items())) if isinstance(step, dict) else (step, (0.0, 0.0))
        if name == "log1p":
            neg = x < 0
            counts[(f.name, "negative")] += int(neg.any(axis=1).sum())
            x = np.log1p(np.where(neg, 0.0, x))
        elif name == "clip":
            x = np.clip(x, arg[0], arg[1])
    return x


def _apply_numeric(f: Feature, st: dict[str, Any], col: pa.Array, counts: Counts) -> np.ndarray:
    x, ok = _valid_numeric(f, col, counts)
    x[~ok] = np.asarray(st["default"])
    x = _pre_standardize(f, x, counts)
    if "standardize" in f.transforms:
        x = (x - np.asarray(st["mean"])) / np.asarray(st["std"])
    return x.astype(np.float32)
