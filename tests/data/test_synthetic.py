"""The synthetic generator: deterministic, Pinterest-shaped, and its oracle is the real truth."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from pinrank.data.io import open_dataset, read_table
from pinrank.data.splits import check_disjoint_users
from pinrank.data.synthetic import SyntheticConfig, generate, interest_shares
from pinrank.data.truth import Oracle, TruthParams, examination, expected_sigmoid


def _auc(y: np.ndarray, s: np.ndarray) -> float:
    """Mann-Whitney AUC (ties count one half)."""
    pos, neg = s[y], s[~y]
    return float(((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])).mean())


def test_all_tables_match_their_schemas(synthetic_raw: Path, small_config: SyntheticConfig) -> None:
    SMALL = small_config
    for table in ("users", "items", "events"):
        open_dataset(synthetic_raw / table, table)  # raises on any mismatch
    events = read_table(synthetic_raw / "events", "events")
    assert events.num_rows == SMALL.n_events
    assert read_table(synthetic_raw / "users", "users").num_rows == SMALL.n_users


def test_same_seed_same_bytes_other_seed_other_data(
    tmp_path: Path, synthetic_raw: Path, small_config: SyntheticConfig
) -> None:
    SMALL = small_config
    again = generate(SMALL, tmp_path / "again")
    for sub in ("users", "items", "events", "pin_boards"):
        a = pq.read_table(synthetic_raw / sub)
        b = pq.read_table(again / sub)
        assert a.equals(b), f"{sub} differs between two runs with the same seed"
    assert (synthetic_raw / "truth" / "params.json").read_text() == (
        again / "truth" / "params.json"
    ).read_text()
    other = generate(SyntheticConfig(**{**SMALL.__dict__, "seed": 1}), tmp_path / "other")
    assert not pq.read_table(other / "events").equals(pq.read_table(synthetic_raw / "events"))


def test_interest_shares_are_heavily_imbalanced() -> None:
    s = interest_shares(40)
    assert s.sum() == pytest.approx(1.0)
    assert s[0] / s[-1] == pytest.approx(100.0)
    assert 0.08 < s[0] < 0.13 and 0.0008 < s[-1] < 0.0013
    assert (np.diff(s) < 0).all()


def test_tens_of_thousands_of_interests_keep_the_head_and_add_a_long_tail(tmp_path: Path) -> None:
    s = interest_shares(20_000, head=40, tail_share=0.1)
    assert s.sum() == pytest.approx(1.0) and s[40:].sum() == pytest.approx(0.1)
    assert s[0] == pytest.approx(0.9 * interest_shares(40)[0])  # the head's shape, scaled
    assert (np.diff(s) <= 1e-12).all() and s[-1] < 1e-5  # never rising: a tail below the head
    assert np.array_equal(interest_shares(40, head=40), interest_shares(40))
    with pytest.raises(ValueError, match="tail interests cannot hold"):
        interest_shares(60, head=40, tail_share=0.3)
    with pytest.raises(ValueError, match="every interest has a board"):
        SyntheticConfig(n_interests=1000, n_boards=400)
    cfg = SyntheticConfig(n_users=300, n_items=4000, n_events=6000, n_interests=2000,
                          n_boards=2000, users_per_chunk=100)  # fmt: skip
    items = read_table(generate(cfg, tmp_path) / "items", "items")
    primary = np.array([v[0] for v in items["interests"].to_pylist()])
    assert primary.max() < 2000 and (primary >= 40).mean() == pytest.approx(0.1, abs=0.03)


def test_pins_follow_the_shares_and_live_on_boards(tmp_path: Path) -> None:
    cfg = SyntheticConfig(n_users=50, n_items=40_000, n_events=100, n_boards=800, n_creators=40)
    out = generate(cfg, tmp_path)
    items = read_table(out / "items", "items")
    primary = pc.list_element(items["interests"], 0).to_numpy()
    share = np.bincount(primary, minlength=cfg.n_interests) / cfg.n_items
    expected = interest_shares(cfg.n_interests)
    assert np.abs(share - expected).max() < 0.01
    graph = pq.read_table(out / "pin_boards")
    origin = graph.filter(graph["origin"])
    assert origin.num_rows == cfg.n_items  # exactly one origin board per pin
    assert sorted(origin["item_id"].to_pylist()) == list(range(cfg.n_items))
    assert graph.num_rows > cfg.n_items  # pins are also saved to other boards
    # a pin's origin board is the board column of the items table
    by_item = dict(zip(origin["item_id"].to_pylist(), origin["board_id"].to_pylist(), strict=True))
    assert all(
        by_item[i] == b
        for i, b in zip(range(100), items["board_id"].to_pylist()[:100], strict=True)
    )


def test_dirty_values_are_injected(synthetic_raw: Path) -> None:
    users = read_table(synthetic_raw / "users", "users")
    items = read_table(synthetic_raw / "items", "items")
    assert users["age"].null_count > 0 and users["country"].null_count > 0
    assert pc.sum(pc.greater(users["age"], 100)).as_py() > 0
    assert items["quality"].null_count > 0


def test_oracle_matches_the_hand_worked_formula(synthetic_raw: Path) -> None:
    oracle = Oracle.load(synthetic_raw / "truth")
    p = oracle.params
    u, i = 5, 7
    aff = sum(
        w
        for k, w in zip(oracle.user_interests[u], oracle.user_weights[u], strict=True)
        if k >= 0 and k in set(oracle.item_interests[i][oracle.item_interests[i] >= 0])
    )
    logit = p.base_logit + oracle.user_bias[u] + p.affinity_weight * aff
    logit += p.quality_weight * oracle.item_quality[i]
    # E[sigmoid(logit + eps)] by brute-force sampling, then position 3's examination
    eps = np.random.default_rng(0).normal(0, p.noise, 400_000)
    want = np.mean(1 / (1 + np.exp(-(logit + eps)))) * 4.0**-p.position_decay
    got = oracle.score(np.array([u]), np.array([i]), np.array([3]))[0]
    assert got == pytest.approx(want, abs=2e-3)


def test_oracle_is_calibrated_and_beats_simple_baselines(synthetic_raw: Path) -> None:
    ev = read_table(synthetic_raw / "events", "events")
    uid, iid = ev["user_id"].to_numpy(), ev["item_id"].to_numpy()
    pos, y = ev["position"].to_numpy(), ev["engaged"].to_numpy()
    score = Oracle.load(synthetic_raw / "truth").score(uid, iid, pos)
    assert score.mean() == pytest.approx(y.mean(), abs=0.02)  # labels were drawn from it
    cnt = np.bincount(iid)
    rate = (np.bincount(iid, weights=y) + 1) / (cnt + 2)
    assert _auc(y, score) > _auc(y, rate[iid]) + 0.05  # in-sample item rate, even
    assert _auc(y, score) > _auc(y, -pos.astype(float)) + 0.05


def test_quadrature_and_position_bias() -> None:
    assert expected_sigmoid(np.array([0.0]), 2.0)[0] == pytest.approx(0.5)
    assert expected_sigmoid(np.array([3.0]), 0.0)[0] == pytest.approx(1 / (1 + np.exp(-3)))
    # noise pulls probabilities towards 1/2
    assert expected_sigmoid(np.array([3.0]), 1.0)[0] < 1 / (1 + np.exp(-3))
    ex = examination(np.arange(5), TruthParams().position_decay)
    assert ex[0] == 1.0 and (np.diff(ex) < 0).all()


def test_users_of_a_chunk_are_in_one_event_shard(tmp_path: Path) -> None:
    cfg = SyntheticConfig(
        n_users=300, n_items=100, n_events=3000, users_per_chunk=100, rows_per_shard=700
    )
    out = generate(cfg, tmp_path)
    files = sorted((out / "events").glob("part-*.parquet"))
    assert len(files) > 1
    assert sum(pq.read_metadata(f).num_rows for f in files) == cfg.n_events
    users = pa.concat_tables([pq.read_table(f) for f in files])["user_id"].to_numpy()
    assert (np.diff(users) >= 0).all()  # written in user order
    # no user's events are cut across two shards: prepare splits each shard's users alone
    check_disjoint_users(files)
