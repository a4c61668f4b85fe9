"""The feature spec: the shipped YAML files load, and malformed specs fail with a clear name."""

from __future__ import annotations

from pathlib import Path

import pytest

from pinrank.features.spec import FeatureSpec, SpecError

CONF = Path(__file__).resolve().parents[2] / "conf" / "features"


@pytest.mark.parametrize("path", sorted(CONF.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_spec_loads(path: Path) -> None:
    spec = FeatureSpec.from_yaml(path)
    assert spec.side("user") and spec.side("item") and spec.crosses
    for c in spec.crosses:  # wide crosses pair a user feature with an item feature
        assert {spec[c.features[0]].side, spec[c.features[1]].side} == {"user", "item"}


def _one(**body: object) -> dict:
    base = {"side": "user", "source": "gender", "kind": "categorical", "vocab": {}}
    merged = {k: v for k, v in {**base, **body}.items() if v is not None}  # None drops a key
    return {"features": {"f": merged}}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (_one(side="page"), "feature 'f': side must be one of"),
        (_one(kind="text"), "feature 'f': kind must be one of"),
        (_one(hash_buckets=10), "exactly one of vocab, hash_buckets, bucketize, shares"),
        ({"features": {"f": {"side": "user", "kind": "numeric"}}}, "feature 'f': missing 'source'"),
        (_one(colour="red"), "feature 'f': .*colour"),
        (_one(vocab=None, bucketize=[3, 1]), "boundaries must be sorted"),
        (_one(vocab=None, hash_buckets=2**31), "hash_buckets must be in"),
        (_one(vocab=None, shares="nope"), "shares='nope' must name a feature"),
        (
            _one(vocab=None, kind="numeric", transforms=["standardize", "log1p"]),
            "standardize must be the last",
        ),
        (_one(vocab=None, kind="numeric", transforms=["sqrt"]), "unknown transform 'sqrt'"),
        (_one(pooling="max"), "pooling must be one of"),
        (
            {**_one(), "crosses": {"c": {"features": ["f", "g"], "buckets": 5}}},
            "cross 'c': 'g' is not",
        ),
        (
            {**_one(), "crosses": {"c": {"features": ["f"], "buckets": 5}}},
            "cross 'c': needs features",
        ),
        (
            {**_one(), "crosses": {"c": {"features": ["f", "f"], "buckets": 5, "pooling": "max"}}},
            "cross 'c': pooling must be one of",
        ),
        (
            {**_one(), "crosses": {"c": {"features": ["f", "f"], "buckets": 5, "weight": 2}}},
            r"cross 'c': unknown keys \['weight'\]",
        ),
        ({**_one(), "version": 2}, "unknown top-level keys"),
    ],
)
def test_malformed_specs_are_refused_with_the_culprit_named(data: dict, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        FeatureSpec.from_dict(data)


def test_duplicate_names_are_refused() -> None:
    data = {**_one(), "crosses": {"f": {"features": ["f", "f"], "buckets": 3}}}
    with pytest.raises(SpecError, match="duplicate feature names"):
        FeatureSpec.from_dict(data)


def _numeric(**extra: object) -> dict:
    body = {"side": "user", "source": "last_ts", "kind": "numeric", **extra}
    return {"features": {"last_active": body}}


def test_a_time_unit_declares_its_plausible_range() -> None:
    seconds = FeatureSpec.from_dict(_numeric(unit="epoch_s")).features[0]
    assert seconds.valid == (631_152_000.0, 4_102_444_800.0)
    millis = FeatureSpec.from_dict(_numeric(unit="epoch_ms")).features[0]
    assert millis.valid == (631_152_000_000.0, 4_102_444_800_000.0)
    explicit = FeatureSpec.from_dict(_numeric(unit="epoch_s", valid=[0, 10])).features[0]
    assert explicit.valid == (0, 10)
    with pytest.raises(SpecError, match="unit must be one of"):
        FeatureSpec.from_dict(_numeric(unit="hours"))
    body = {"side": "user", "source": "gender", "kind": "categorical", "vocab": {}}
    with pytest.raises(SpecError, match="unit must be one of"):
        FeatureSpec.from_dict({"features": {"gender": {**body, "unit": "epoch_s"}}})
