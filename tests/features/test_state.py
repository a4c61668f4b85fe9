"""Fitting sees train rows only; every bad value follows its policy, is counted, never NaN."""

from __future__ import annotations

import copy
import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from data_fixtures import movielens_raw

from pinrank.data.io import read_table
from pinrank.data.prepare import Prepared, prepare
from pinrank.features.featurizer import Featurizer
from pinrank.features.spec import FeatureSpec
from pinrank.features.state import FeatureState, fit, transform_side

SPEC_DATA: dict = {
    "features": {
        "gender": {"side": "user", "source": "gender", "kind": "categorical", "vocab": {}},
        "age": {
            "side": "user",
            "source": "age",
            "kind": "numeric",
            "valid": [13, 100],
            "transforms": ["standardize"],
        },
        "age_bucket": {
            "side": "user",
            "source": "age",
            "kind": "categorical",
            "valid": [13, 100],
            "bucketize": [18, 30],
        },
        "likes": {
            "side": "user",
            "source": "interests",
            "kind": "multi_categorical",
            "vocab": {"min_count": 2},
        },
        "history": {
            "side": "user",
            "source": "history",
            "kind": "sequence",
            "shares": "item_id",
            "max_len": 2,
        },
        "item_id": {"side": "item", "source": "item_id", "kind": "categorical", "vocab": {}},
        "emb": {"side": "item", "source": "embedding", "kind": "numeric", "dim": 2},
        "views": {
            "side": "item",
            "source": "views",
            "kind": "numeric",
            "transforms": ["log1p", {"clip": [0, 3]}, "standardize"],
        },
    },
    "crosses": {"gender_x_item": {"features": ["gender", "item_id"], "buckets": 97}},
}
SPEC = FeatureSpec.from_dict(SPEC_DATA)

TRAIN_USERS = pa.table(
    {
        "gender": ["F", "M", "F", None],
        "age": pa.array([20, 30, None, 150], pa.int32()),
        "interests": pa.array([[1, 2], [2], None, [3, None]], pa.list_(pa.int64())),
        "history": pa.array([[10], [], [11, 10], None], pa.list_(pa.int64())),
    }
)
TRAIN_ITEMS = pa.table(
    {
        "item_id": pa.array([10, 11, 10], pa.int64()),
        "embedding": pa.array([[1.0, 2.0], [3.0, 4.0], None], pa.list_(pa.float32())),
        "views": [0.0, float(np.e - 1), 1e9],
    }
)


@pytest.fixture(scope="module")
def state() -> FeatureState:
    return fit(SPEC, {"user": [TRAIN_USERS], "item": [TRAIN_ITEMS.to_batches()[0]]})


def test_fitted_state_hand_worked(state: FeatureState) -> None:
    f = state.features
    assert f["gender"]["vocab"].to_pylist() == ["F", "M"] and f["gender"]["cardinality"] == 4
    assert f["age"]["mean"] == [25.0] and f["age"]["std"] == [5.0] and f["age"]["default"] == [25.0]
    assert f["likes"]["vocab"].to_pylist() == [2]  # 1 and 3 seen once: below min_count 2
    assert f["item_id"]["vocab"].to_pylist() == [10, 11]
    assert f["history"] == {"shares": "item_id", "cardinality": 4}
    assert f["emb"]["mean"] == [2.0, 3.0]  # the null row is not fitted
    # views: log1p then clip to [0, 3]: values 0, 1, 3
    assert f["views"]["mean"] == pytest.approx([4 / 3])
    assert f["age_bucket"]["cardinality"] == 4
    assert state.crosses["gender_x_item"]["right_cardinality"] == 4
    assert state.rows == {"user": 4, "item": 3}


def test_state_round_trips_as_plain_json(state: FeatureState, tmp_path: Path) -> None:
    transform_side(SPEC, state, "user", TRAIN_USERS, Counter())  # a used state saves too
    path = state.save(tmp_path / "state.json")
    json.loads(path.read_text())  # plain JSON, nothing executable
    again = FeatureState.load(path)
    assert again.features == state.features and again.crosses == state.crosses


def test_vocabularies_are_arrow_files_beside_the_json(state: FeatureState, tmp_path: Path) -> None:
    path = state.save(tmp_path / "state.json")
    saved = json.loads(path.read_text())["features"]["item_id"]["vocab"]
    assert saved["file"] == "vocab/item_id.arrow" and saved["size"] == 2
    table = pa.ipc.open_file(str(tmp_path / saved["file"])).read_all()
    assert table.column("value").to_pylist() == [10, 11]  # index order: 2, 3
    assert "[10, 11]" not in path.read_text()  # no id list in the JSON
    assert FeatureState.load(path).features["gender"]["vocab"].to_pylist() == ["F", "M"]


def _write_arrow(path: Path, values: pa.Array, name: str = "value") -> None:
    table = pa.table({name: values})
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as w:
        w.write_table(table)


def _reseal(path: Path, feature: str) -> None:
    """Record the vocabulary file's new sha256 in the JSON (a consistent forgery)."""
    data = json.loads(path.read_text())
    entry = data["features"][feature]["vocab"]
    entry["sha256"] = hashlib.sha256((path.parent / entry["file"]).read_bytes()).hexdigest()
    path.write_text(json.dumps(data))


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        ("flip", "sha256 differs"),
        ("garbage", "not an Arrow IPC file"),
        ("duplicates", "duplicate values"),
        ("nulls", "null"),
        ("column", "one int64 or string column"),
        ("elsewhere", "names '../x.arrow'"),
    ],
)
def test_a_tampered_vocabulary_file_is_refused(
    state: FeatureState, tmp_path: Path, tamper: str, message: str
) -> None:
    path = state.save(tmp_path / "state.json")
    vocab = tmp_path / "vocab" / "item_id.arrow"
    if tamper == "flip":
        data = bytearray(vocab.read_bytes())
        data[len(data) // 2] ^= 1
        vocab.write_bytes(bytes(data))
    elif tamper == "garbage":
        vocab.write_bytes(b"not arrow at all")
        _reseal(path, "item_id")
    elif tamper == "elsewhere":
        data = json.loads(path.read_text())
        data["features"]["item_id"]["vocab"]["file"] = "../x.arrow"
        path.write_text(json.dumps(data))
    else:
        values = {
            "duplicates": (pa.array([10, 10], pa.int64()), "value"),
            "nulls": (pa.array([10, None], pa.int64()), "value"),
            "column": (pa.array([1.5, 2.5]), "value"),
        }[tamper]
        _write_arrow(vocab, *values)
        _reseal(path, "item_id")
    with pytest.raises(ValueError, match=message) as err:
        FeatureState.load(path)
    assert "vocab/item_id.arrow" in str(err.value)


def test_a_vocabulary_file_needs_a_reader(state: FeatureState, tmp_path: Path) -> None:
    path = state.save(tmp_path / "state.json")
    with pytest.raises(ValueError, match="vocabulary of 'gender' is a file, and no reader"):
        FeatureState.from_json(path.read_text())


def test_a_state_written_with_inline_lists_still_loads(state: FeatureState) -> None:
    data = {
        "features": {"gender": {"vocab": ["F", "M"], "cardinality": 4}},
        "crosses": {},
        "version": 1,
    }
    again = FeatureState.from_json(json.dumps(data))
    assert again.lookups()["gender"](pa.array(["M", "X"])).tolist() == [3, 1]


def test_bad_values_follow_the_policy_and_are_counted(state: FeatureState) -> None:
    users = pa.table(
        {
            "gender": ["X", None, "M"],
            "age": pa.array([-4, 500, 18], pa.int32()),
            "interests": pa.array([[2, 9, -1], None, [None]], pa.list_(pa.int64())),
            "history": pa.array([[10, 11, 12], [], None], pa.list_(pa.int64())),
        }
    )
    items = pa.table(
        {
            "item_id": pa.array([11, 99, 10], pa.int64()),
            "embedding": pa.array([[float("nan"), 1.0], [1.0], None], pa.list_(pa.float32())),
            "views": [float("inf"), -3.0, None],
        }
    )
    counts: Counter = Counter()
    u = transform_side(SPEC, state, "user", users, counts)
    i = transform_side(SPEC, state, "item", items, counts)
    assert u.sparse["gender"][0].tolist() == [1, 0, 3]  # OOV, missing, M
    assert u.dense["age"][:, 0].tolist() == [0.0, 0.0, pytest.approx(-1.4)]  # invalid -> mean
    assert u.sparse["age_bucket"][0].tolist() == [0, 0, 2]
    assert u.sparse["likes"][0].tolist() == [2, 1] and u.sparse["likes"][1].tolist() == [2, 0, 0]
    assert u.sparse["history"][0].tolist() == [3, 1]  # last two of [10, 11, 12]: 11, OOV
    assert i.sparse["item_id"][0].tolist() == [3, 1, 2]
    assert i.dense["emb"].tolist() == [[2.0, 3.0]] * 3  # NaN, wrong length, null -> default
    assert np.isfinite(i.dense["views"]).all()
    assert +counts == Counter(
        {
            ("gender", "oov"): 1,
            ("gender", "null"): 1,
            ("age", "out_of_range"): 2,
            ("age_bucket", "negative"): 1,
            ("age_bucket", "out_of_range"): 1,
            ("likes", "null"): 2,
            ("likes", "negative"): 1,
            ("likes", "oov"): 1,
            ("history", "null"): 1,
            ("history", "oov"): 1,
            ("history", "truncated"): 1,
            ("item_id", "oov"): 1,
            ("emb", "nan"): 1,
            ("emb", "malformed"): 1,
            ("emb", "null"): 1,
            ("views", "nan"): 1,
            ("views", "negative"): 1,
            ("views", "null"): 1,
        }
    )


def test_no_feature_is_ever_nan_on_random_garbage(state: FeatureState) -> None:
    rng = np.random.default_rng(0)
    n = 500
    junk = rng.choice([np.nan, np.inf, -np.inf, -1e30, 1e30, 0.5], n)
    items = pa.table(
        {
            "item_id": pa.array(rng.integers(-5, 50, n), pa.int64()),
            "embedding": pa.array([[x, -x] for x in junk], pa.list_(pa.float32())),
            "views": junk,
        }
    )
    out = transform_side(SPEC, state, "item", items, Counter())
    for name, x in out.dense.items():
        assert np.isfinite(x).all(), name


def test_missing_source_column_is_named(state: FeatureState) -> None:
    with pytest.raises(KeyError, match="column 'views' missing from the item rows"):
        transform_side(SPEC, state, "item", TRAIN_ITEMS.drop_columns(["views"]), Counter())


def test_crosses_pair_user_and_item_values(state: FeatureState) -> None:
    fz = Featurizer(SPEC, state)
    batch = fz({"user": TRAIN_USERS, "item": TRAIN_ITEMS.slice(0, 3).take([0, 1, 2, 0])})
    cross = batch.sparse["cross"]["gender_x_item"]
    assert cross.lengths().tolist() == [1, 1, 1, 0]  # the user with no gender crosses nothing
    st = state.crosses["gender_x_item"]
    pair = 2 * 4 + 2  # gender F (2) x item 10 (2)
    want = ((pair % 2147483647) * st["a"] + st["b"]) % 2147483647 % 97 + 1
    assert cross.values()[0].item() == want


def test_featurizing_only_some_crosses_features_is_a_clear_error() -> None:
    data = copy.deepcopy(SPEC_DATA)
    data["crosses"]["gender_x_likes"] = {"features": ["gender", "likes"], "buckets": 31}
    spec = FeatureSpec.from_dict(data)
    fz = Featurizer(spec, fit(spec, {"user": [TRAIN_USERS], "item": [TRAIN_ITEMS.to_batches()[0]]}))
    assert (
        "cross"
        in fz({"user": TRAIN_USERS, "item": TRAIN_ITEMS.slice(0, 3).take([0, 1, 2, 0])}).sparse
    )
    with pytest.raises(ValueError, match=r"crosses need features \['item_id'\]"):
        fz({"user": TRAIN_USERS})  # gender_x_likes could be built, gender_x_item could not


def test_fit_sees_train_rows_only(synthetic_prepared: Prepared) -> None:
    state = synthetic_prepared.state()
    train = read_table(synthetic_prepared.split("train"), "events")
    train_users = np.unique(train["user_id"].to_numpy())
    users = read_table(synthetic_prepared.raw / "users", "users")
    mine = users.filter(pc.is_in(users["user_id"], pa.array(train_users)))
    ages = mine["age"].to_numpy(zero_copy_only=False)
    ages = ages[~np.isnan(ages.astype(float))].astype(float)
    ages = ages[(ages >= 13) & (ages <= 100)]
    assert state.features["age"]["mean"][0] == pytest.approx(ages.mean())
    assert state.rows["user"] == len(train_users)
    assert state.rows["context"] == train.num_rows
    assert state.features["item_id"]["vocab"]  # pins seen in train only
    train_items = set(np.unique(train["item_id"].to_numpy()).tolist())
    assert set(state.features["item_id"]["vocab"].to_pylist()) == train_items


def test_movielens_state_excludes_cold_and_future(ml100k: Path, tmp_path: Path) -> None:
    raw = movielens_raw(ml100k, tmp_path / "raw")
    spec = Path(__file__).resolve().parents[2] / "conf" / "features" / "movielens.yaml"
    prepared = prepare(raw, tmp_path / "prepared", spec)
    vocab = set(prepared.state().features["user_id"]["vocab"].to_pylist())
    assert len(vocab) == 849 and not any(u % 10 == 0 for u in vocab)
    test = read_table(prepared.split("test"), "events")
    train_items = set(read_table(prepared.split("train"), "events")["item_id"].to_pylist())
    test_only = set(test["item_id"].to_pylist()) - train_items
    assert test_only and not test_only & set(
        prepared.state().features["item_id"]["vocab"].to_pylist()
    )
