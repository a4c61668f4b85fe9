"""The feature spec: one declarative description of every model input.

A spec is read from ``conf/features/*.yaml`` and drives training, export, batch scoring and serving.
Each feature names its source column, the side of the example it comes from, its kind and its
transform; crosses (for the wide part of the ranker) pair two categorical features. Every transform
is chosen so that it can also be written as ONNX operators: vocabularies as ``ai.onnx.ml``
LabelEncoder, hashing as int64 ``Mod``/``Mul``/``Add`` that cannot overflow, bucketize as
comparisons, numeric transforms as elementwise arithmetic.

Index layout of every categorical feature (so that index 0 always means "no value"):
``0`` missing (null, negative id or out of the valid range), then for a vocabulary ``1`` = out of
vocabulary and ``2..`` the fitted values in order of frequency; for hashing ``1..buckets``; for
bucketize ``1..len(boundaries)+1``.

Example::

    >>> spec = FeatureSpec.from_dict({
    ...     "features": {
    ...         "gender": {"side": "user", "source": "gender", "kind": "categorical", "vocab": {}},
    ...         "interests": {"side": "item", "source": "interests", "kind": "multi_categorical",
    ...                       "vocab": {}},
    ...     },
    ...     "crosses": {"gender_x_interest": {"features": ["gender", "interests"],
    ...                                       "buckets": 1000}},
    ... })
    >>> [f.name for f in spec.side("user")], spec.crosses[0].buckets
    (['gender'], 1000)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

SIDES = ("user", "item", "context")
KINDS = ("categorical", "multi_categorical", "sequence", "numeric")
NUMERIC_TRANSFORMS = ("log1p", "clip", "standardize")
# plausible ranges of time units: 1990-01-01 to 2100-01-01
UNITS: dict[str, tuple[float, float]] = {
    "epoch_s": (631_152_000.0, 4_102_444_800.0),
    "epoch_ms": (631_152_000_000.0, 4_102_444_800_000.0),
}
POOLINGS = ("sum", "mean")
LIST_LIMIT = 1024  # the most values a served list without max_len may hold (Feature.limit)
HASH_PRIME = 2_147_483_647  # 2^31 - 1: (x mod P) * a + b stays below 2^62, no int64 overflow


class SpecError(ValueError):
    """The feature spec is malformed; the message names the feature and the field."""


@dataclass(frozen=True)
class VocabConfig:
    """Vocabulary fitted on training data: values seen ``min_count`` times, ``max_size`` at most."""

    min_count: int = 1
    max_size: int | None = None


@dataclass(frozen=True)
class Feature:
    """One model input. See the module docstring for the index layout.

    Args:
        name: unique name, used as the KeyedJaggedTensor key or dense slot.
        side: ``user``, ``item`` or ``context`` (the impression itself).
        source: the column of that side's table.
        kind: ``categorical`` (one id), ``multi_categorical`` (a bag), ``sequence`` (an ordered
            list, truncated to its last ``max_len``), or ``numeric`` (``dim`` floats).
        vocab / hash_buckets / bucketize: the categorical transform (exactly one, or ``shares``).
        shares: reuse another categorical feature's state (e.g. history items use item_id's
            vocabulary, and the model can share the embedding table).
        valid: ``[lo, hi]`` raw values outside it are treated as missing (counted out_of_range).
        unit: the unit of a numeric time column, one of :data:`UNITS` (``epoch_s``: seconds
            since 1970, ``epoch_ms``: milliseconds); without ``valid``, the unit's plausible
            range (1990 to 2100) becomes ``valid``, so a column in the wrong unit (milliseconds
            where the model was fitted on seconds) is replaced by the default and counted
            ``out_of_range`` instead of scoring every user at the extremes.
        transforms: numeric steps in order: ``log1p``, ``{clip: [lo, hi]}``, ``standardize``.
        default: numeric fill for null/NaN/out-of-range raw values; ``None`` = the train mean.
        dim: width of a numeric feature (a list column when > 1).
        max_len: keep at most this many values of a list (sequence: the last ones).
        limit: for a list without ``max_len``: at serving, a row whose list holds more values
            is refused (the value is replaced by null and counted ``too_long``), so one row
            cannot set the padded width, memory and time of its whole batch; default
            :data:`LIST_LIMIT`. Training data is not limited.
        pooling: how the model pools a bag (``sum`` or ``mean``).
        embedding_dim: suggested embedding width for the model (models may override).
    """

    name: str
    side: str
    source: str
    kind: str
    vocab: VocabConfig | None = None
    hash_buckets: int | None = None
    bucketize: tuple[float, ...] | None = None
    shares: str | None = None
    valid: tuple[float, float] | None = None
    unit: str | None = None
    transforms: tuple[Any, ...] = ()
    default: float | None = None
    dim: int = 1
    max_len: int | None = None
    pooling: str = "mean"
    embedding_dim: int = 16
    limit: int | None = None

    def __post_init__(self) -> None:
        if self.limit is not None and (
            isinstance(self.limit, bool) or not isinstance(self.limit, int) or self.limit < 1
        ):
            raise SpecError(
                f"feature {self.name!r}: limit must be an integer >= 1, got {self.limit!r}"
            )
        if self.unit is not None and self.valid is None and self.unit in UNITS:
            object.__setattr__(self, "valid", UNITS[self.unit])

    @property
    def is_sparse(self) -> bool:
        return self.kind != "numeric"

    @property
    def transform_kind(self) -> str:
        """``vocab``, ``hash``, ``bucketize``, ``shares`` or ``numeric``."""
        if self.kind == "numeric":
            return "numeric"
        for name, value in (
            ("vocab", self.vocab),
            ("hash", self.hash_buckets),
            ("bucketize", self.bucketize),
            ("shares", self.shares),
        ):
            if value is not None:
                return name
        raise SpecError(f"feature {self.name!r}: no transform")


@dataclass(frozen=True)
class Cross:
    """A hashed cross of two categorical features, one id per pair of their values.

    Pairs where either side is missing (index 0) produce nothing; a bag crossed with a bag gives
    every pair. Output ids are ``1..buckets``. ``pooling`` is how the wide part adds up a row's
    pairs: ``sum`` (each pair weighs 1) or ``mean`` (each weighs 1 / the row's number of values
    of the first feature): a user's interest profile crossed with a pin's interests then adds,
    for each of the pin's interests, the profile's share-weighted weights, whatever the
    profile's length.
    """

    name: str
    features: tuple[str, str]
    buckets: int
    pooling: str = "sum"


@dataclass(frozen=True)
class FeatureSpec:
    """An ordered collection of features and crosses, validated on construction."""

    features: tuple[Feature, ...]
    crosses: tuple[Cross, ...] = field(default=())

    def __post_init__(self) -> None:
        names = [f.name for f in self.features] + [c.name for c in self.crosses]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise SpecError(f"duplicate feature names: {sorted(dup)}")
        by_name = {f.name: f for f in self.features}
        for f in self.features:
            _validate_feature(f, by_name)
        for c in self.crosses:
            for part in c.features:
                if part not in by_name or not by_name[part].is_sparse:
                    raise SpecError(f"cross {c.name!r}: {part!r} is not a categorical feature")
            if c.buckets < 1:
                raise SpecError(f"cross {c.name!r}: buckets must be >= 1")
            if c.pooling not in POOLINGS:
                raise SpecError(f"cross {c.name!r}: pooling must be one of {POOLINGS}")

    def __getitem__(self, name: str) -> Feature:
        for f in self.features:
            if f.name == name:
                return f
        raise KeyError(f"no feature {name!r} in the spec")

    def side(self, side: str, sparse: bool | None = None) -> list[Feature]:
        """Features of one side in spec order; ``sparse`` filters sparse or numeric ones."""
        return [
            f for f in self.features if f.side == side and (sparse is None or f.is_sparse == sparse)
        ]

    @property
    def weighted_crosses(self) -> bool:
        """Whether the wide part's crosses carry per-pair weights (some cross is ``mean``): the
        featurizer then attaches them to every cross, and the wide part's tables read them."""
        return any(c.pooling == "mean" for c in self.crosses)

    def dense_slices(self, side: str) -> dict[str, slice]:
        """Columns of each numeric feature in a side's dense matrix (spec order, ``dim`` wide)."""
        slices, start = {}, 0
        for f in self.side(side, sparse=False):
            slices[f.name] = slice(start, start + f.dim)
            start += f.dim
        return slices

    def sources(self, side: str) -> list[str]:
        """Distinct source columns a side's rows must provide, in spec order."""
        return list(dict.fromkeys(f.source for f in self.side(side)))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureSpec:
        """Build from the YAML structure ``{features: {name: {...}}, crosses: {name: {...}}}``."""
        unknown = set(data) - {"features", "crosses"}
        if unknown:
            raise SpecError(f"unknown top-level keys {sorted(unknown)}")
        feats = tuple(_feature(n, dict(body)) for n, body in (data.get("features") or {}).items())
        crosses = tuple(_cross(n, dict(body)) for n, body in (data.get("crosses") or {}).items())
        return cls(feats, crosses)

    @classmethod
    def from_yaml(cls, path: str | Path) -> FeatureSpec:
        """Read a spec file (plain YAML, no Hydra needed)."""
        with open(path) as fh:
            return cls.from_dict(yaml.safe_load(fh))


def _feature(name: str, body: dict[str, Any]) -> Feature:
    for key in ("side", "source", "kind"):
        if key not in body:
            raise SpecError(f"feature {name!r}: missing {key!r}")
    try:
        if "vocab" in body:
            body["vocab"] = VocabConfig(**(body["vocab"] or {}))
        for key in ("bucketize", "valid", "transforms"):
            if key in body:
                body[key] = tuple(body[key])
        return Feature(name=name, **body)
    except TypeError as err:
        raise SpecError(f"feature {name!r}: {err}") from None


def _cross(name: str, body: dict[str, Any]) -> Cross:
    unknown = set(body) - {"features", "buckets", "pooling"}
    if unknown:
        raise SpecError(f"cross {name!r}: unknown keys {sorted(unknown)}")
    try:
        left, right = body["features"]
        return Cross(
            name=name,
            features=(str(left), str(right)),
            buckets=int(body["buckets"]),
            pooling=str(body.get("pooling", "sum")),
        )
    except (KeyError, TypeError, ValueError) as err:
        raise SpecError(f"cross {name!r}: needs features: [a, b] and buckets ({err})") from None


def _validate_feature(f: Feature, by_name: dict[str, Feature]) -> None:
    where = f"feature {f.name!r}"
    if f.side not in SIDES:
        raise SpecError(f"{where}: side must be one of {SIDES}, got {f.side!r}")
    if f.kind not in KINDS:
        raise SpecError(f"{where}: kind must be one of {KINDS}, got {f.kind!r}")
    if f.unit is not None and (f.kind != "numeric" or f.unit not in UNITS):
        raise SpecError(f"{where}: unit must be one of {sorted(UNITS)} on a numeric feature")
    if f.kind == "numeric":
        for t in f.transforms:
            step = next(iter(t)) if isinstance(t, dict) else t
            if step not in NUMERIC_TRANSFORMS:
                raise SpecError(f"{where}: unknown transform {t!r}; one of {NUMERIC_TRANSFORMS}")
        if "standardize" in f.transforms and f.transforms[-1] != "standardize":
            raise SpecError(f"{where}: standardize must be the last transform")
        return
    given = [x for x in (f.vocab, f.hash_buckets, f.bucketize, f.shares) if x is not None]
    if len(given) != 1:
        raise SpecError(f"{where}: give exactly one of vocab, hash_buckets, bucketize, shares")
    if f.shares is not None and (f.shares not in by_name or by_name[f.shares].shares is not None):
        raise SpecError(f"{where}: shares={f.shares!r} must name a feature with its own state")
    if f.bucketize is not None and list(f.bucketize) != sorted(f.bucketize):
        raise SpecError(f"{where}: bucketize boundaries must be sorted")
    if f.hash_buckets is not None and not 1 <= f.hash_buckets < HASH_PRIME:
        raise SpecError(f"{where}: hash_buckets must be in [1, {HASH_PRIME})")
    if f.pooling not in POOLINGS:
        raise SpecError(f"{where}: pooling must be one of {POOLINGS}")
