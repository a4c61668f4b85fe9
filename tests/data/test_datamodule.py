"""The DataModule's batches equal the featurizer applied one row at a time."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pinrank.data.datamodule import PinrankDataModule
from pinrank.data.examples import join_examples
from pinrank.data.io import read_table
from pinrank.data.prepare import Prepared
from pinrank.data.rows import sampled_users
from pinrank.features.featurizer import FeatureBatch


def _cat(batches: list[FeatureBatch]) -> dict[str, torch.Tensor]:
    """Flatten batches into per-key tensors: sparse values, lengths and weights, dense, labels,
    ids."""
    out: dict[str, list[torch.Tensor]] = {}
    for b in batches:
        for group, kjt in b.sparse.items():
            for key, jt in kjt.to_dict().items():
                out.setdefault(f"{group}/{key}/values", []).append(jt.values())
                out.setdefault(f"{group}/{key}/lengths", []).append(jt.lengths())
                if (w := jt.weights_or_none()) is not None:  # a mean cross's per-pair weights
                    out.setdefault(f"{group}/{key}/weights", []).append(w)
        for side, x in b.dense.items():
            out.setdefault(f"dense/{side}", []).append(x)
        for name in ("labels", "user_ids", "item_ids"):
            if getattr(b, name) is not None:  # entity batches have no labels
                out.setdefault(name, []).append(getattr(b, name))
    return {k: torch.cat(v) for k, v in out.items()}


def test_batches_equal_rows_one_at_a_time(synthetic_prepared: Prepared) -> None:
    dm = PinrankDataModule(str(synthetic_prepared.root), batch_size=97, num_workers=0)
    batches = list(dm.test_dataloader())
    assert len(batches) == len(dm.stream("test")) and max(len(b) for b in batches) == 97

    events = read_table(synthetic_prepared.split("test"), "events")
    assert events.num_rows == sum(len(b) for b in batches)
    fz = dm.featurizer
    assert fz is not None
    rows = [
        fz(
            join_examples(events.slice(i, 1), dm.users, dm.items),
            events["engaged"].to_numpy()[i : i + 1],
        )
        for i in range(events.num_rows)
    ]
    batched, single = _cat(batches), _cat(rows)
    assert batched.keys() == single.keys()
    assert any(k.startswith("cross/") for k in batched)
    for key in batched:
        assert batched[key].dtype == single[key].dtype, key
        assert torch.equal(batched[key], single[key]), key
    assert not torch.isnan(batched["dense/item"]).any()


def test_worker_processes_give_the_same_batches(synthetic_prepared: Prepared) -> None:
    def keyed(num_workers: int) -> dict[tuple, FeatureBatch]:
        dm = PinrankDataModule(
            str(synthetic_prepared.root), batch_size=128, num_workers=num_workers
        )
        return {
            (tuple(b.user_ids.tolist()), tuple(b.item_ids.tolist())): b for b in dm.val_dataloader()
        }

    main, workers = keyed(0), keyed(2)
    assert main.keys() == workers.keys()
    for key, b in main.items():
        w = workers[key]
        assert torch.equal(b.dense["user"], w.dense["user"])
        assert torch.equal(b.sparse["cross"].values(), w.sparse["cross"].values())
        assert torch.equal(b.labels, w.labels)


def test_training_stream_shuffles_per_epoch_and_covers_every_row(
    synthetic_prepared: Prepared,
) -> None:
    dm = PinrankDataModule(str(synthetic_prepared.root), batch_size=256, seed=3)
    stream = dm.stream("train", shuffle=True)
    first = torch.cat([b.item_ids for b in stream])
    stream.set_epoch(1)
    second = torch.cat([b.item_ids for b in stream])
    n = read_table(synthetic_prepared.split("train"), "events").num_rows
    assert len(first) == len(second) == n
    assert not torch.equal(first, second)
    assert torch.equal(first.sort().values, second.sort().values)


def test_missing_prepared_folder_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="not a prepared data set"):
        PinrankDataModule(str(tmp_path))


def test_labels_are_the_engaged_column(synthetic_prepared: Prepared) -> None:
    dm = PinrankDataModule(str(synthetic_prepared.root), batch_size=10_000)
    got = torch.cat([b.labels for b in dm.test_dataloader()]).numpy()
    want = read_table(synthetic_prepared.split("test"), "events")["engaged"].to_numpy()
    np.testing.assert_array_equal(got, want.astype(np.float32))


@pytest.mark.parametrize("rows", [[0, 3, 4, 17, 49], [49, 3, 3, 0, 17, 3]])
def test_select_rows_equals_featurizing_those_rows(
    synthetic_prepared: Prepared, rows: list[int]
) -> None:
    dm = PinrankDataModule(str(synthetic_prepared.root), batch_size=50)
    batch = next(iter(dm.val_dataloader()))
    rows = torch.tensor(rows)
    picked = batch.select(rows)
    events = read_table(synthetic_prepared.split("val"), "events").take(rows.numpy())
    assert dm.featurizer is not None
    direct = dm.featurizer(join_examples(events, dm.users, dm.items), events["engaged"].to_numpy())
    want = _cat([direct])
    assert any(k.endswith("/weights") for k in want)  # the profile crosses' weights follow too
    for key, value in want.items():
        assert torch.equal(_cat([picked])[key], value), key


def test_catalogue_features_equal_featurizing_those_items(synthetic_prepared: Prepared) -> None:
    dm = PinrankDataModule(str(synthetic_prepared.root), num_workers=0)
    catalogue = dm.catalogue()
    ids = np.random.default_rng(0).choice(catalogue, size=300)  # unsorted, with repeats
    got, want = _cat([dm.catalogue_features(ids)]), _cat([dm.featurize_entities("item", ids)])
    assert got.keys() == want.keys() and "item/item_id/values" in got
    for key, value in want.items():
        assert torch.equal(got[key], value), key
    with pytest.raises(KeyError, match="not in the catalogue"):
        dm.catalogue_features(np.array([catalogue[0], catalogue.max() + 1]))


@pytest.mark.parametrize("engaged_only", [False, True])
def test_length_is_exact_with_many_row_groups(
    synthetic_raw, tmp_path, monkeypatch: pytest.MonkeyPatch, engaged_only: bool
) -> None:
    """Lightning ends an epoch (and validates) by the stream's length: it must be exact."""
    import pinrank.data.io as io
    from pinrank.data.prepare import prepare

    spec = Path(__file__).resolve().parents[2] / "conf" / "features" / "synthetic.yaml"
    monkeypatch.setattr(io, "ROW_GROUP_ROWS", 1000)
    prepared = prepare(synthetic_raw, tmp_path / "p", spec)
    dm = PinrankDataModule(str(prepared.root), batch_size=300, engaged_only=engaged_only)
    stream = dm.stream("train", shuffle=True)
    assert len(stream.fragments) > 3
    assert len(stream) == sum(1 for _ in stream)


def test_training_rows_leave_their_target_out(synthetic_prepared: Prepared) -> None:
    from pinrank.data.rows import item_sequences

    dm = PinrankDataModule(str(synthetic_prepared.root), batch_size=512)
    assert item_sequences(dm.spec) == ["history", "seen"]
    idx = dm.state.features["item_id"]["vocab"].to_pylist()
    index_of = {item: 2 + k for k, item in enumerate(idx)}
    hits = 0
    for batch in dm.stream("train", shuffle=True):
        seen = batch.sparse["user"]["seen"]
        target = torch.tensor([index_of.get(i, 1) for i in batch.item_ids.tolist()])
        rows = torch.repeat_interleave(torch.arange(len(batch)), seen.lengths())
        hits += int((seen.values() == target[rows]).sum())
    assert hits == 0
    # evaluation streams keep the full train-period history
    test = next(iter(dm.stream("test")))
    assert test.sparse["user"]["seen"].lengths().sum() > 0
    off = PinrankDataModule(str(synthetic_prepared.root), batch_size=512, leave_target_out=False)
    batch = next(iter(off.stream("train", shuffle=True)))
    seen = batch.sparse["user"]["seen"]
    target = torch.tensor([index_of.get(i, 1) for i in batch.item_ids.tolist()])
    rows = torch.repeat_interleave(torch.arange(len(batch)), seen.lengths())
    assert int((seen.values() == target[rows]).sum()) > 0  # without it, targets do leak in


def test_sampled_negatives_extend_training_batches_only(synthetic_prepared: Prepared) -> None:
    dm = PinrankDataModule(str(synthetic_prepared.root), batch_size=100, sampled_negatives=2)
    catalogue = set(dm.catalogue().tolist())
    batch = next(iter(dm.stream("train", shuffle=True)))
    assert len(batch) == 300  # 100 impressions + 2 sampled pins each
    assert batch.labels is not None and batch.item_ids is not None and batch.user_ids is not None
    assert float(batch.labels[100:].sum()) == 0.0
    assert set(batch.item_ids[100:].tolist()) <= catalogue
    # each sampled row keeps its impression's user
    assert batch.user_ids[100:].tolist() == batch.user_ids[:100].tolist() * 2
    assert len(next(iter(dm.stream("val")))) == min(
        100, len(read_table(dm.prepared.split("val"), "events"))
    )
    with pytest.raises(ValueError, match="sampled_negatives must be >= 0"):
        PinrankDataModule(str(synthetic_prepared.root), sampled_negatives=-1)


def test_new_user_view_has_no_id_and_no_history(synthetic_prepared: Prepared) -> None:
    dm = PinrankDataModule(str(synthetic_prepared.root), batch_size=256)
    warm = next(iter(dm.stream("val")))
    new = next(iter(dm.stream("val", as_new_users=True)))
    for name in ("history", "seen", "recent"):
        assert int(new.sparse["user"][name].lengths().sum()) == 0
        assert int(warm.sparse["user"][name].lengths().sum()) > 0
    # every id is the index an id outside the fitted vocabulary gets (hashed: one bucket)
    assert len(set(new.sparse["user"]["user_id"].values().tolist())) == 1
    assert len(set(warm.sparse["user"]["user_id"].values().tolist())) > 1
    # sign-up attributes are untouched
    for name in ("gender", "country", "age_bucket", "user_interests"):
        torch.testing.assert_close(
            new.sparse["user"][name].values(), warm.sparse["user"][name].values()
        )
    with pytest.raises(ValueError, match="cold_start_rate must be in"):
        PinrankDataModule(str(synthetic_prepared.root), cold_start_rate=1.0)


def test_cold_start_rate_shows_that_share_of_rows_as_new_users(
    synthetic_prepared: Prepared,
) -> None:
    dm = PinrankDataModule(str(synthetic_prepared.root), batch_size=2000, cold_start_rate=0.25)
    batch = next(iter(dm.stream("train", shuffle=True)))
    plain = PinrankDataModule(str(synthetic_prepared.root), batch_size=2000)
    same = next(iter(plain.stream("train", shuffle=True)))  # same seed: the same rows
    assert batch.item_ids is not None and torch.equal(batch.item_ids, same.item_ids)
    new = batch.sparse["user"]["seen"].lengths() == 0
    was = same.sparse["user"]["seen"].lengths() == 0
    assert 0.18 < float((new & ~was).float().mean()) < 0.32
    # sign-up attributes stay for every row
    torch.testing.assert_close(
        batch.sparse["user"]["gender"].values(), same.sparse["user"]["gender"].values()
    )


def test_training_rows_leave_their_own_label_out_of_item_counts(
    synthetic_prepared: Prepared,
) -> None:
    from pinrank.data.examples import join_examples as join
    from pinrank.data.rows import leave_event_out

    dm = PinrankDataModule(str(synthetic_prepared.root), batch_size=500, leave_stats_out=True)
    dm.setup()
    events = read_table(dm.prepared.split("train"), "events").slice(0, 500)
    items = join(events, dm.users, dm.items)["item"]
    out = leave_event_out(items, events["engaged"].to_numpy(zero_copy_only=False), 500)
    before = items["train_events"].to_numpy(zero_copy_only=False)
    after = out["train_events"].to_numpy(zero_copy_only=False)
    np.testing.assert_array_equal(after, before - 1)
    eng = events["engaged"].to_numpy(zero_copy_only=False).astype(int)
    np.testing.assert_array_equal(
        out["train_engaged"].to_numpy(zero_copy_only=False),
        items["train_engaged"].to_numpy(zero_copy_only=False) - eng,
    )
    # the training stream applies it; evaluation streams do not
    stream_batch = dm.stream("train").featurize(events)
    plain = PinrankDataModule(str(synthetic_prepared.root), batch_size=500).stream("train")
    assert not torch.equal(stream_batch.dense["item"], plain.featurize(events).dense["item"])
    assert dm.stream("val").cfg.leave_stats_out is False


def test_interest_profiles_leave_the_target_out_like_its_pins(synthetic_prepared: Prepared) -> None:
    """A training row's profiles, rebuilt from its pins with the target left out, are the
    prepared profiles less the target's interests once per copy of the target in the pins, on
    real training rows (repeats and unknown pins)."""
    import pyarrow as pa

    from pinrank.data.examples import INTEREST_BAGS, interest_bags
    from pinrank.data.rows import interest_profiles, leave_target_out

    dm = PinrankDataModule(str(synthetic_prepared.root), batch_size=512)
    bags = interest_profiles(dm.spec)
    assert bags == ["history_interests", "seen_interests"]
    events = read_table(synthetic_prepared.split("train"), "events").slice(0, 3000)
    tables = join_examples(events, dm.users, dm.items)
    targets = events["item_id"].to_numpy()
    users = tables["user"]
    # a target that appears twice in a row's pins: both copies leave, with their interests
    seen = users["seen"].to_pylist()
    seen[0] = [int(targets[0]), *(seen[0] or []), int(targets[0])]
    users = interest_bags(
        users.set_column(
            users.schema.get_field_index("seen"), "seen", pa.array(seen, pa.list_(pa.int64()))
        ),
        dm.items,
    )
    pins = [INTEREST_BAGS[b] for b in bags]
    left = interest_bags(leave_target_out(users, targets, pins), dm.items, bags)
    target_interests = tables["item"]["interests"].to_pylist()
    removed = 0
    for bag in bags:
        got, before = left[bag].to_pylist(), users[bag].to_pylist()
        want = []
        for row, profile in enumerate(before):  # the reference: remove by hand
            profile = list(profile or [])
            for _ in range((users[INTEREST_BAGS[bag]][row].as_py() or []).count(targets[row])):
                for k in target_interests[row] or []:
                    profile.remove(k)
            want.append(profile)
        assert [sorted(g or []) for g in got] == [sorted(w) for w in want], bag
        removed += sum(len(a or []) - len(b or []) for a, b in zip(before, got, strict=True))
    assert removed > 3000  # 3000 rows: most targets' interests were in the seen profile


def test_training_rows_have_interest_profiles_without_their_target(
    synthetic_prepared: Prepared,
) -> None:
    """The interest profiles reach the batches; a training row's profile lost its target's
    interests (rows with the target seen once), evaluation rows keep the whole profile."""
    root = str(synthetic_prepared.root)
    train = next(iter(PinrankDataModule(root, batch_size=256).stream("train")))
    off = PinrankDataModule(root, batch_size=256, leave_target_out=False)
    full = next(iter(off.stream("train")))
    a = train.sparse["user"]["seen_interests"].lengths()
    b = full.sparse["user"]["seen_interests"].lengths()
    assert bool((a <= b).all()) and int((b - a).sum()) > len(train) // 2
    assert int(train.sparse["user"]["history_interests"].lengths().sum()) > 0


def test_eval_users_streams_the_sampled_users_events_only(synthetic_prepared: Prepared) -> None:
    dm = PinrankDataModule(str(synthetic_prepared.root), batch_size=64, eval_users=0.3)
    full = read_table(synthetic_prepared.split("val"), "events")
    want = dm.eval_events("val")
    users = set(want["user_id"].to_pylist())
    assert 0.15 < len(users) / len(set(full["user_id"].to_pylist())) < 0.45
    # every event of a kept user, none of the others
    assert want.num_rows == sum(u in users for u in full["user_id"].to_pylist())
    stream = dm.stream("val")
    batches = list(stream)
    assert len(stream) == len(batches)
    got = torch.cat([b.user_ids for b in batches]).numpy()
    np.testing.assert_array_equal(got, want["user_id"].to_numpy())
    # the same users in another split; training streams every event
    test_users = set(dm.eval_events("test")["user_id"].to_pylist())
    all_test = set(read_table(synthetic_prepared.split("test"), "events")["user_id"].to_pylist())
    keep = sampled_users(np.array(sorted(all_test)), 0.3)
    assert test_users == set(np.array(sorted(all_test))[keep].tolist())
    train_rows = sum(len(b) for b in dm.stream("train", shuffle=True))
    train = read_table(synthetic_prepared.split("train"), "events")
    assert train_rows == train.num_rows
    # asked for (the ranker's logistic-regression baseline): train events of the sampled users
    sampled = torch.cat([b.user_ids for b in dm.stream("train", user_fraction=0.3)]).numpy()
    train_users = train["user_id"].to_numpy()
    kept = sampled_users(train_users, 0.3)
    np.testing.assert_array_equal(np.sort(sampled), np.sort(train_users[kept]))
    assert 0 < len(sampled) < train.num_rows
    with pytest.raises(ValueError, match="eval user fraction"):
        PinrankDataModule(str(synthetic_prepared.root), eval_users=0.0)
