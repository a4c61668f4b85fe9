"""Segments and their candidate interests."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from pinrank.interests.segments import SEGMENT, Candidates, segment_keys


def test_keys_join_columns_and_name_missing_values() -> None:
    users = pa.table({"country": ["US", None, "B|R"], "gender": ["F", "M", None], "age": [3, 4, 5]})
    assert segment_keys(users, ["country", "gender"]).to_pylist() == ["US|F", "|M", "B/R|"]
    assert segment_keys(users, ["age"]).to_pylist() == ["3", "4", "5"]
    with pytest.raises(ValueError, match="segment column 'zip'"):
        segment_keys(users, ["zip"])
    with pytest.raises(ValueError, match="at least one"):
        segment_keys(users, [])


def _fixture() -> tuple[pa.Table, pa.Table]:
    users = pa.table({"user_id": [1, 2, 3, 4, 5], SEGMENT: ["a", "a", "a", "b", "c"]})
    train = pa.table(
        {
            "user_id": [1, 1, 2, 2, 3, 4, 4, 5],
            "item_id": [7, 8, 7, 9, 9, 8, 7, 8],
            "engaged": [True, False, True, True, True, True, False, False],
        }
    )
    return train, users


def test_candidates_by_segment_engagement_then_global_fill() -> None:
    train, users = _fixture()
    cand = Candidates.fit(train, users, per_segment=3)
    # global: 7 (2 engaged), 9 (2 engaged), 8 (1 engaged, 3 seen); ties by seen count, then id
    assert cand.popular.tolist() == [7, 9, 8]
    assert cand.for_segment("a").tolist() == [7, 9, 8]  # 8 seen, never engaged in a
    assert cand.for_segment("b").tolist() == [8, 7, 9]  # 8 engaged, 7 seen, 9 filled in
    assert cand.for_segment("nowhere").tolist() == [7, 9, 8]
    few = Candidates.fit(train, users, per_segment=3, min_users=2)
    assert set(few.segments) == {"a"}  # b and c have one training user each
    assert Candidates.fit(train, users, per_segment=1).for_segment("b").tolist() == [8]


def test_candidates_round_trip_through_arrow_and_refuse_bad_tables() -> None:
    train, users = _fixture()
    cand = Candidates.fit(train, users, per_segment=2)
    back = Candidates.from_table(cand.to_table())
    assert back.segments.keys() == cand.segments.keys()
    for key, ids in cand.segments.items():
        assert np.array_equal(back.segments[key], ids)
    assert np.array_equal(back.popular, cand.popular)
    table = cand.to_table()
    with pytest.raises(ValueError, match="exactly one global row"):
        Candidates.from_table(
            table.filter(pa.array([k is not None for k in table[SEGMENT].to_pylist()]))
        )
    with pytest.raises(ValueError, match="appears twice"):
        Candidates.from_table(pa.concat_tables([table.slice(0, 1), table]))
    with pytest.raises(ValueError, match="expected columns"):
        Candidates.from_table(table.rename_columns(["s", "interests"]))
    with pytest.raises(ValueError, match="not in the users"):
        Candidates.fit(train, users.slice(0, 2))
