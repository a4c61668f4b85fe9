"""The interest model in a model package: the interests/ section built beside the pin models,
signed and hashed with them, verified against its training path, and ranked from sign-up
fields by InterestRanker."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st
from package_fixtures import TRUST, resign

from pinrank.data.prepare import Prepared
from pinrank.export.verify import held_out_rows, verify
from pinrank.interests.segments import Candidates
from pinrank.serving.interests import InterestRanker, _top
from pinrank.serving.package import PackageError, load_package
from pinrank.serving.runtime import OnnxBackend


@pytest.fixture
def package(interest_package_dir: Path) -> Path:
    return interest_package_dir


def test_the_section_is_a_package_of_its_own_inside_the_signed_one(
    package: Path, interest_run: Path
) -> None:
    loaded = load_package(package, TRUST)
    assert set(loaded.manifest["models"]) == {"retrieval", "ranking"} and loaded.has_section()
    section = loaded.section()
    assert set(section.manifest["models"]) == {"interests"}
    assert {"ranker", "ranker_user", "ranker_pairs"} <= set(section.manifest["graphs"])
    assert section.manifest["candidates"]["segment"] == ["country", "gender"]
    # every file of the section is listed (and hashed) by the outer manifest
    listed = {f for f in loaded.files if f.startswith("interests/")}
    on_disk = {p.relative_to(package).as_posix() for p in (package / "interests").rglob("*")
               if p.is_file()}  # fmt: skip
    assert listed == on_disk and "interests/candidates.parquet" in listed
    # the section's graphs score as the interest run's network does
    prepared = Prepared.load(section.manifest["provenance"]["data"]["prepared"])
    report = verify(section, held_out_rows(prepared, "cold", 200))
    assert report.ok, str(report)
    assert "ranker_pairs/probability" in report.diffs


def test_an_altered_or_unlisted_section_file_is_refused(package: Path, tmp_path: Path) -> None:
    copy = tmp_path / "pkg"
    shutil.copytree(package, copy)
    with (copy / "interests" / "candidates.parquet").open("ab") as fh:
        fh.write(b"x")
    with pytest.raises(PackageError, match=r"interests/candidates\.parquet was altered"):
        load_package(copy, TRUST)
    shutil.rmtree(copy)
    shutil.copytree(package, copy)
    (copy / "interests" / "extra.bin").write_bytes(b"x")
    with pytest.raises(PackageError, match="not in the manifest"):
        load_package(copy, TRUST)
    (copy / "interests" / "extra.bin").unlink()
    # a section pointing outside itself: refused even when signed
    import json

    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["interests"]["candidates"]["path"] = "../manifest.json"
    resign(copy, manifest)
    with pytest.raises(PackageError, match="leaves the package"):
        load_package(copy, TRUST)


def test_ranker_answers_a_sign_up_from_its_segment_candidates(package: Path) -> None:
    section = load_package(package, TRUST).section()
    ranker = InterestRanker(section, OnnxBackend(section))
    cand = Candidates.from_table(pq.read_table(package / "interests" / "candidates.parquet"))
    key = next(iter(cand.segments))
    country, gender = key.split("|")
    got = ranker.rank({"country": country or None, "gender": gender or None, "age": 30}, k=5)
    assert got.segment == key and got.known_segment and got.candidates == len(cand.segments[key])
    assert len(got.ids) == 5 and set(got.ids) <= set(cand.segments[key].tolist())
    assert (np.diff(got.scores) <= 0).all() and ((got.scores > 0) & (got.scores < 1)).all()
    # the same scores as the per-pair graph on the same rows (the section's own parity)
    again = ranker.rank({"country": country or None, "gender": gender or None, "age": 30}, k=5)
    assert np.array_equal(again.ids, got.ids)
    # an unseen segment gets the global list; bad values degrade to missing, never raise
    other = ranker.rank({"country": "ZZ", "gender": "Q", "age": "old"}, k=3)
    assert not other.known_segment and set(other.ids) <= set(cand.popular.tolist())
    assert other.problems.get("age") == "malformed"
    with pytest.raises(ValueError, match="k must be"):
        ranker.rank({}, k=0)


def test_rank_many_answers_each_sign_up_as_rank_does_alone(package: Path) -> None:
    section = load_package(package, TRUST).section()
    ranker = InterestRanker(section, OnnxBackend(section))
    key = next(iter(ranker.candidates.segments))
    country, gender = key.split("|")
    signups = [
        {"country": country or None, "gender": gender or None, "age": 30},
        {"country": "ZZ", "gender": "Q", "age": "old"},  # unseen segment, malformed age
        {},
        {"country": country or None, "interests": [1, 2, 2]},
    ]
    many = ranker.rank_many(signups, k=7)
    assert [m.segment for m in many] == ranker.keys(signups)
    for signup, got in zip(signups, many, strict=True):
        alone = ranker.rank(signup, k=7)
        assert np.array_equal(got.ids, alone.ids) and got.problems == alone.problems
        np.testing.assert_allclose(got.scores, alone.scores, rtol=1e-6)
    assert ranker.rank_many([], k=3) == []
    # k past the candidates: every candidate, best first
    everything = ranker.rank_many([signups[0]], k=1000)[0]
    assert len(everything.ids) == everything.candidates


@given(st.lists(st.integers(0, 4), min_size=1, max_size=30), st.integers(1, 40))
def test_top_is_a_stable_descending_sort_cut_at_k(values: list[int], k: int) -> None:
    scores = np.array(values, np.float32) / 4  # few distinct values: many ties
    expected = np.argsort(-scores, kind="stable")[:k]
    assert np.array_equal(_top(scores, k), expected)


def test_unknown_users_feed_comes_from_predicted_interests(package: Path, users) -> None:
    from pinrank.serving.scorer import FeedScorer
    from pinrank.serving.store import TableStore

    loaded = load_package(package, TRUST)
    scorer = FeedScorer(loaded, TableStore(users))
    signup = {"country": "US", "gender": "F", "age": 30}
    top = scorer.interest_ranker.rank(signup, k=5)
    feed = scorer.feed(2**40, k=10, signup=signup)
    assert feed.path == "unknown_user_predicted" and len(feed.items) == 10
    # popular pins re-weighted by the user's lift of each interest (P(engaged) / base rate)
    lifts = scorer.interest_ranker.lifts(signup)
    assert (np.diff(lifts.scores) <= 0).all() and (lifts.scores > 0).all()
    rows, scores = scorer.catalogue.lift_mix(lifts.ids, lifts.scores, 10, np.zeros(0, np.int64))
    assert feed.item_ids.tolist() == scorer.catalogue.ids[rows].tolist()
    assert (np.diff(scores) <= 0).all()
    # a lift of 1 everywhere is the popular feed
    flat, _ = scorer.catalogue.lift_mix(
        lifts.ids, np.ones(len(lifts.ids)), 10, np.zeros(0, np.int64)
    )
    popular = scorer.feed(2**41, k=10, signup=None)
    assert (
        scorer.catalogue.ids[flat].tolist()
        == scorer.popular.unknown(2**41, 10, np.zeros(0, np.int64)).item_ids.tolist()
    )
    assert popular.path == "unknown_user_predicted"
    # stated interests win over predicted ones; a known user is unaffected
    stated = scorer.feed(2**40, k=10, interests=[int(top.ids[0])], signup=signup)
    assert stated.path == "unknown_user_interests"
    known = int(users["user_id"][0].as_py())
    assert scorer.feed(known, k=5, signup=signup).path.startswith("personalized")
    # a failing interest model degrades to popular pins, never to an error
    scorer.interest_ranker.rank = lambda *a, **kw: 1 / 0  # type: ignore[method-assign]
    assert scorer.feed(2**40, k=5, signup=signup).path == "unknown_user_popular"


def test_the_interest_model_alone_is_a_package_with_its_candidates(
    interest_run: Path, tmp_path: Path
) -> None:
    from package_fixtures import SIGNING_KEY

    from pinrank.export.package import build_package
    from pinrank.export.run import TrainedRun

    alone = build_package([TrainedRun.load(interest_run)], tmp_path / "pkg",
                          signing_key=SIGNING_KEY)  # fmt: skip
    assert set(alone.manifest["models"]) == {"interests"} and not alone.has_section()
    assert alone.manifest["candidates"]["path"] == "candidates.parquet"
    got = InterestRanker(alone, OnnxBackend(alone)).rank({"country": "US", "gender": "F"}, k=3)
    assert len(got.ids) == 3 and got.segment == "US|F"
    (tmp_path / "pkg" / "candidates.parquet").write_bytes(b"x")
    with pytest.raises(PackageError, match=r"candidates\.parquet was altered"):
        load_package(tmp_path / "pkg", TRUST)
