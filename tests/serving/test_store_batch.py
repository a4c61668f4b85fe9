"""The vectorised paths of the store against their one-row references: ``conform_batch`` against
``conform`` row by row on dirty rows, and ``Catalogue.popular`` (which reads only the head of
each popularity list) against a brute-force scan of the whole catalogue."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest

from pinrank.features.columns import INT_NULL, ColumnSpec, pack
from pinrank.features.ids import IdIndex
from pinrank.serving.catalogue import Catalogue
from pinrank.serving.conform import conform, conform_batch

COLUMNS = [
    ColumnSpec("user", "user_id", "int"),
    ColumnSpec("user", "age", "float"),
    ColumnSpec("user", "country", "string"),
    ColumnSpec("user", "history", "int_list"),
    ColumnSpec("user", "taste", "vector", 3),
]


def dirty_rows() -> pa.Table:
    return pa.table(
        {
            "user_id": pa.array([1, 2, None, INT_NULL, 5, 6], pa.int64()),
            "age": [20.0, float("nan"), None, float("inf"), -1.5, 30.0],
            "country": ["US", None, "", "FR", "DE", "US"],
            "history": pa.array(
                [[1, 2], None, [], [3, None, INT_NULL], [INT_NULL], [7]], pa.list_(pa.int64())
            ),
            "taste": pa.array(
                [[1, 2, 3], [1, 2], None, [1, float("nan"), 3], [0, 0, float("inf")], [4, 5, 6]],
                pa.list_(pa.float32()),
            ),
        }
    )


def test_conform_batch_matches_conform_row_by_row() -> None:
    table = dirty_rows()
    typed, problems = conform_batch(table, COLUMNS, optional=["history"])
    batch = pack(typed, COLUMNS)
    for r, row in enumerate(table.to_pylist()):
        one, expected = conform(row, COLUMNS, optional=["history"])
        assert problems[r] == expected, (r, row)
        for name, ref in pack(one, COLUMNS).items():
            got = batch[name][r]
            if name == "user.history":  # padded to the batch's width: compare the row's values
                n = int(pack(one, COLUMNS)["user.history.lengths"][0])
                assert got[:n].tolist() == ref[0][:n].tolist(), (r, name)
            elif ref.dtype.kind == "f":
                np.testing.assert_array_equal(got, ref[0], err_msg=f"row {r} {name}")
            else:
                assert np.asarray(got).tolist() == np.asarray(ref[0]).tolist(), (r, name)
    assert problems[2] == {"user_id": "missing", "age": "missing", "taste": "missing"}
    assert problems[3]["age"] == "malformed" and problems[3]["history"] == "malformed"
    assert math.isnan(batch["user.age"][3])


@pytest.mark.parametrize(
    ("column", "values", "arrow_type"),
    [
        ("age", ["x", "y"], pa.string()),
        ("user_id", [1.5, 2.0], pa.float64()),
        ("country", [1, 2], pa.int64()),
        ("history", [["a"], ["b"]], pa.list_(pa.string())),
    ],
)
def test_conform_batch_refuses_a_mistyped_column(
    column: str, values: list[object], arrow_type: pa.DataType
) -> None:
    table = dirty_rows().slice(0, 2)
    table = table.set_column(table.column_names.index(column), column, pa.array(values, arrow_type))
    with pytest.raises(TypeError, match=f"column '{column}'"):
        conform_batch(table, COLUMNS)


def test_conform_batch_names_a_missing_column() -> None:
    with pytest.raises(KeyError, match="taste"):
        conform_batch(dirty_rows().drop_columns(["taste"]), COLUMNS)


def test_popular_matches_a_scan_of_the_whole_catalogue() -> None:
    rng = np.random.default_rng(0)
    m = 500
    ids = rng.permutation(10 * m)[:m].astype(np.int64)
    tags = [rng.choice(30, rng.integers(0, 4), replace=False).tolist() for _ in range(m)]
    tags[3] = [5, 5, -1]  # repeats and an invalid id
    items = pa.table({"item_id": ids, "interests": pa.array(tags, pa.list_(pa.int64()))})
    engaged = rng.integers(0, 20, m)  # many ties: broken by the lower id
    popular = pa.table({"item_id": ids, "engaged": engaged})
    cat = Catalogue(items, popular, [ColumnSpec("item", "item_id", "int")])
    order = np.lexsort((ids, -engaged))
    for trial in range(200):
        limit = int(rng.integers(0, 60))
        exclude = rng.choice(ids, int(rng.integers(0, 80)), replace=False)
        wanted = None if trial % 3 == 0 else rng.choice(32, int(rng.integers(0, 4)))
        ok = ~np.isin(ids[order], exclude)
        if wanted is not None:
            ok &= np.array([bool(set(tags[r]) & set(wanted.tolist())) for r in order])
        expected = order[ok][:limit]
        got = cat.popular(limit, exclude, wanted)
        assert got.tolist() == expected.tolist(), (trial, limit, wanted)
        # the batch path's form: the excluded pins as marked rows
        marked = np.zeros(m, bool)
        marked[cat.rows(exclude)] = True
        got = cat.popular_unmarked(limit, marked, len(exclude), wanted)
        assert got.tolist() == expected.tolist(), (trial, limit, wanted)
    assert cat.interests(3).tolist() == [5]
    assert cat.row_interests(np.array([3, 3])).tags(1) == (5,)


@pytest.mark.parametrize("spread", [1, 3, 50])  # dense ids (a table), and sparse ones (a search)
def test_catalogue_rows_of_ids_with_and_without_the_dense_table(spread: int) -> None:
    rng = np.random.default_rng(spread)
    ids = rng.choice(spread * 1000, 1000, replace=False).astype(np.int64)
    ids[7] = ids[3]  # a repeated id: its first row, as the binary search gives
    items = pa.table({"item_id": ids})
    popular = pa.table({"item_id": ids[:1], "engaged": [1]})
    cat = Catalogue(items, popular, [ColumnSpec("item", "item_id", "int")])
    assert (IdIndex(ids).dense is not None) == (spread < 5)
    asked = np.concatenate([ids, rng.integers(-5, spread * 1200, 3000), [-(2**62), 2**62]])
    order = np.argsort(ids, kind="stable")  # the binary search's answer, as a reference
    pos = np.minimum(np.searchsorted(ids[order], asked), len(ids) - 1)
    expected = np.where(ids[order][pos] == asked, order[pos], -1)
    assert cat.rows(asked).tolist() == expected.tolist()
    assert cat.rows(ids[[3, 7]]).tolist() == [3, 3]


def test_a_list_over_its_limit_is_too_long_in_both_conformers() -> None:
    """Lists without max_len are bounded at serving: a row over the column's limit is replaced
    by null and reported ``too_long`` (before its values are read: a malformed value in it is
    not reported twice); at the limit it passes."""
    columns = [ColumnSpec("user", "user_id", "int"), ColumnSpec("user", "bag", "int_list", limit=4)]
    table = pa.table(
        {
            "user_id": pa.array([1, 2, 3, 4], pa.int64()),
            "bag": pa.array(
                [[1, 2, 3, 4], [1, 2, 3, 4, 5], None, [INT_NULL, 1, 2, 3, 4]], pa.list_(pa.int64())
            ),
        }
    )
    typed, problems = conform_batch(table, columns)
    assert problems == [{}, {"bag": "too_long"}, {"bag": "missing"}, {"bag": "too_long"}]
    assert typed.column("bag").to_pylist() == [[1, 2, 3, 4], None, None, None]
    for r, row in enumerate(table.to_pylist()):
        one, expected = conform(row, columns)
        assert (
            expected == problems[r]
            and one.column("bag").to_pylist()[0] == typed.column("bag").to_pylist()[r]
        )
    assert pack(typed, columns)["user.bag"].shape == (4, 4)  # the refused rows set no width


def test_every_list_column_of_a_spec_is_trimmed_or_limited() -> None:
    from pinrank.features.columns import column_kind
    from pinrank.features.spec import LIST_LIMIT, FeatureSpec, SpecError

    spec = FeatureSpec.from_yaml("conf/features/synthetic.yaml")
    lists = pa.list_(pa.int64())
    kinds = {
        c: column_kind(spec, "user", c, lists)
        for c in ("history", "seen", "interests", "seen_interests", "history_interests")
    }
    assert kinds["history"].max_len == 50 and kinds["history"].limit is None
    assert all(kinds[c].limit == LIST_LIMIT and kinds[c].max_len is None for c in (
        "interests", "seen_interests", "history_interests"))  # fmt: skip

    def bag(limit: int) -> dict[str, object]:
        feature = {"side": "user", "source": "b", "kind": "multi_categorical", "vocab": {}}
        return {"features": {"bag": feature | {"limit": limit}}}

    assert column_kind(FeatureSpec.from_dict(bag(5000)), "user", "b", lists).limit == 5000
    with pytest.raises(SpecError, match="limit must be an integer >= 1"):
        FeatureSpec.from_dict(bag(0))


def test_a_table_store_of_many_chunks_answers_as_one_of_one_chunk() -> None:
    from pinrank.serving.store import TableStore

    chunks = [
        pa.table({"user_id": np.arange(i * 10, i * 10 + 10)[::-1], "seen": [[i, i + 1]] * 10,
                  "country": pa.array([None if i == 2 else f"c{i}"] * 10, pa.string())})
        for i in range(6)
    ]  # fmt: skip
    many = TableStore(pa.concat_tables(chunks))
    one = TableStore(pa.concat_tables(chunks).combine_chunks())
    assert len(many._batches) == 6 and len(one._batches) == 1
    rng = np.random.default_rng(0)
    for ids in (np.array([44, 3, 999, 17, 3, -5]), rng.integers(-5, 70, 40), np.array([7]),
                np.array([1000]), np.zeros(0, np.int64)):  # fmt: skip
        assert many.get(ids).to_pylist() == one.get(ids).to_pylist()
        assert many.records(ids.tolist()) == one.records(ids.tolist())


def test_lift_mix_reweights_popular_pins_by_their_best_interest() -> None:
    items = pa.table({"item_id": [1, 2, 3, 4, 5, 6],
                      "interests": [[10], [10], [20], [20, 10], [30], []]})  # fmt: skip
    popular = pa.table({"item_id": [1, 2, 3, 4, 5, 6], "engaged": [9, 0, 5, 5, 100, 50]})
    c = Catalogue(items, popular, [])
    none = np.zeros(0, np.int64)
    # lift 1 everywhere: the popular order (ties: lower id)
    rows, _ = c.lift_mix(np.array([10, 20, 30]), np.ones(3), 6, none)
    assert c.ids[rows].tolist() == c.ids[c.popular(6, none)].tolist()
    # interest 10 three times as likely, 30 a tenth: (engaged + 1) x the pin's best lift
    rows, scores = c.lift_mix(np.array([10, 30]), np.array([3.0, 0.1]), 6, none)
    # pin 6: no interest, 51; pin 4: interests 20 (not given: 1) and 10 (3), 6 x 3; pin 5: 101 x 0.1
    assert c.ids[rows].tolist() == [6, 1, 4, 5, 3, 2]
    assert np.allclose(scores, [51.0, 30.0, 18.0, 10.1, 6.0, 3.0])
    # excluded ids never come back; limit 0 is empty
    rows, _ = c.lift_mix(np.array([10]), np.array([3.0]), 3, np.array([6, 1]))
    assert 6 not in c.ids[rows] and 1 not in c.ids[rows] and len(rows) == 3
    assert c.lift_mix(np.array([10]), np.array([3.0]), 0, none)[0].size == 0
