"""Wide-and-deep ranker: the per-feed factorisation computes the per-pair function, the wide part
alone is a logistic regression over the crosses, gradients reach every table."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from pinrank.data.datamodule import PinrankDataModule
from pinrank.data.io import read_table
from pinrank.data.prepare import Prepared
from pinrank.evaluation.logreg import cross_rows
from pinrank.models.wide_deep import Part, WideDeep, WideDeepConfig

CFG = WideDeepConfig(
    hidden=(32, 16), dropout=0.2, wide_unigrams=("user_id", "item_id"), interaction_dim=8
)

PAL = WideDeepConfig(
    hidden=(32, 16), wide_unigrams=("user_id", "item_id"), interaction_dim=8,
    examination=("position",), examination_hidden=(8,),
)  # fmt: skip


def _dm(prepared: Prepared, **kw: object) -> PinrankDataModule:
    dm = PinrankDataModule(str(prepared.root), batch_size=128, **kw)  # type: ignore[arg-type]
    dm.setup()
    return dm


def _trained_net(dm: PinrankDataModule, cfg: WideDeepConfig = CFG, steps: int = 5) -> WideDeep:
    """A net with non-trivial weights everywhere (wide tables start at zero)."""
    torch.manual_seed(0)
    net = WideDeep.from_spec(dm.spec, dm.state, dm.dense_dims(), cfg)
    opt = torch.optim.Adam(net.parameters(), lr=0.05)
    for _, batch in zip(range(steps), dm.train_dataloader(), strict=False):
        assert batch.labels is not None
        loss = torch.nn.functional.binary_cross_entropy_with_logits(net(batch), batch.labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


def _feeds(dm: PinrankDataModule, prepared: Prepared, n_users: int = 4, per_user: int = 50):
    """Raw tables for feeds: users, candidate pins, their context, and each one's user."""
    rng = np.random.default_rng(1)
    events = read_table(prepared.split("test"), "events")
    users = rng.choice(np.unique(events["user_id"].to_numpy()), n_users, replace=False)
    users = np.r_[users, 10**9]  # plus an unknown user: all-missing features
    items = rng.choice(dm.catalogue(), (len(users), per_user))
    user_index = np.repeat(np.arange(len(users)), per_user)
    context = events.take(pa.array(rng.integers(0, events.num_rows, len(user_index))))
    return users, items.ravel(), user_index, context


@pytest.mark.parametrize("cfg", [CFG, PAL], ids=["relevance", "examination"])
def test_feed_scores_equal_pair_scores(synthetic_prepared: Prepared, cfg: WideDeepConfig) -> None:
    dm = _dm(synthetic_prepared)
    net = _trained_net(dm, cfg)
    users, items, user_index, context = _feeds(dm, synthetic_prepared)
    fz = dm.featurizer
    assert fz is not None
    user_rows, item_rows = dm.users.take(users), dm.items.take(items)
    feed = fz.feed(user_rows, item_rows, user_index, context)
    assert len(feed.users) == len(users) and len(feed) == len(items)
    pairs = fz(
        {"user": user_rows.take(pa.array(user_index)), "item": item_rows, "context": context}
    )
    # the same crosses (and mean crosses' weights), per pair or from each user once
    for key in ("values", "lengths", "weights"):
        torch.testing.assert_close(
            getattr(feed.candidates.sparse["cross"], key)(), getattr(pairs.sparse["cross"], key)()
        )
    with torch.no_grad():
        per_feed, per_pair = net.score_feed(feed), net(pairs)
    assert per_feed.shape == (len(items),)
    diff = float((per_feed - per_pair).abs().max())
    assert diff <= 1e-5, diff
    assert float(per_pair.std()) > 0.1  # a trained net with spread-out scores, not a constant


def test_user_part_is_computed_once_per_user(synthetic_prepared: Prepared) -> None:
    dm = _dm(synthetic_prepared)
    net = _trained_net(dm, steps=1)
    users, items, user_index, context = _feeds(dm, synthetic_prepared, n_users=2, per_user=30)
    assert dm.featurizer is not None
    feed = dm.featurizer.feed(dm.users.take(users), dm.items.take(items), user_index, context)
    rows: list[int] = []
    hook = net.arch.user_first.register_forward_hook(lambda m, i, o: rows.append(len(o)))
    with torch.no_grad():
        net.score_feed(feed)
    hook.remove()
    assert rows == [len(users)]  # not len(items)


def test_feed_input_errors_name_the_problem(synthetic_prepared: Prepared) -> None:
    dm = _dm(synthetic_prepared)
    users, items, user_index, context = _feeds(dm, synthetic_prepared, n_users=2, per_user=5)
    fz = dm.featurizer
    assert fz is not None
    u, i = dm.users.take(users), dm.items.take(items)
    with pytest.raises(ValueError, match="user_index has 3 rows, items 15"):
        fz.feed(u, i, user_index[:3], context)
    with pytest.raises(ValueError, match="out of range"):
        fz.feed(u, i, user_index + 5, context)
    with pytest.raises(ValueError, match="context columns"):
        fz.feed(u, i, user_index)


def test_wide_only_is_a_logistic_regression_over_crosses(synthetic_prepared: Prepared) -> None:
    dm = _dm(synthetic_prepared)
    net = WideDeep.from_spec(
        dm.spec, dm.state, dm.dense_dims(), WideDeepConfig(deep=False, interaction_dim=8)
    )
    assert net.arch.head is None and not net.tables.user.tables
    assert net.arch.user_proj.out_features == 0
    batch = next(iter(dm.train_dataloader()))
    cross = batch.sparse["cross"]
    weights = []
    for name in cross.keys():  # noqa: SIM118 (a KeyedJaggedTensor, not a dict)
        w = torch.randn(dm.state.cardinality(name))
        net.tables.cross.weight(name).data[:, 0] = w
        weights.append(w)
    with torch.no_grad():
        net.arch.bias.fill_(0.25)
        got = net(batch)
    means = {c.name: c.features[0] for c in dm.spec.crosses if c.pooling == "mean"}
    assert means  # the default spec averages its interest profiles' crosses
    expected = torch.full((len(batch),), 0.25)
    rows = torch.arange(len(batch))
    for name, w in zip(cross.keys(), weights, strict=True):
        jt = cross[name]
        row = torch.repeat_interleave(rows, jt.lengths())
        values = w[jt.values()]
        if name in means:  # each pair weighs 1 / the row's kept values of the profile
            bag = batch.sparse["user"][means[name]]
            kept = torch.zeros(len(batch)).index_add_(
                0, torch.repeat_interleave(rows, bag.lengths()), (bag.values() != 0).float()
            )
            assert (kept[row] > 0).all()
            values = values / kept[row]
        expected.index_add_(0, row, values)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-4)  # float32 sums of ~100 terms
    # the logistic-regression baseline's design matrix weighs the crosses the same way
    cards = [dm.state.cardinality(n) for n in cross.keys()]  # noqa: SIM118
    design = cross_rows([(cross, batch.labels.numpy())], cards)
    torch.testing.assert_close(
        design.matmul(torch.cat(weights)) + 0.25, expected, rtol=1e-5, atol=1e-4
    )


def test_gradients_reach_every_table(synthetic_prepared: Prepared) -> None:
    dm = _dm(synthetic_prepared)
    net = WideDeep.from_spec(dm.spec, dm.state, dm.dense_dims(), CFG)
    batch = next(iter(dm.train_dataloader()))
    net(batch).sum().backward()
    archs = {
        "user": net.tables.user, "item": net.tables.item, "context": net.tables.context,
        "cross": net.tables.cross,
        **{f"unigram/{s}": net.tables.unigram(s) for s in ("user", "item", "context")},
    }  # fmt: skip
    for group, arch in archs.items():
        for name, bag in arch.ebc.embedding_bags.items():
            assert bag.weight.grad is not None and bag.weight.grad.abs().sum() > 0, (group, name)
    # every spec feature has its deep table, every cross its wide table
    assert {t.feature for t in net.tables.user.tables} == {
        f.name for f in dm.spec.side("user", sparse=True)
    }
    assert {t.feature for t in net.tables.cross.tables} == {c.name for c in dm.spec.crosses}


def test_unknown_unigram_feature_is_refused(synthetic_prepared: Prepared) -> None:
    dm = _dm(synthetic_prepared)
    with pytest.raises(ValueError, match="'age' is not a sparse feature"):
        WideDeep.from_spec(
            dm.spec, dm.state, dm.dense_dims(), WideDeepConfig(wide_unigrams=("age",))
        )


def test_examination_tower_alone_reads_the_position(synthetic_prepared: Prepared) -> None:
    """With ``examination=("position",)`` the position feeds only the examination tower: moving
    an impression changes its examination logit and nothing of the relevance parts, and the
    output is the logit of sigmoid(relevance) * sigmoid(examination)."""
    dm = _dm(synthetic_prepared)
    net = _trained_net(dm, PAL)
    exam = net.arch.examination
    assert exam is not None and exam.dense_index.tolist() == [0]
    assert net.arch.context_dense is not None and net.arch.context_dense.numel() == 0
    users, items, user_index, context = _feeds(dm, synthetic_prepared, n_users=3, per_user=40)
    fz = dm.featurizer
    assert fz is not None
    user_rows = dm.users.take(users).take(pa.array(user_index))
    item_rows = dm.items.take(items)
    moved = context.set_column(
        context.schema.get_field_index("position"),
        "position",
        pa.array(np.arange(len(items), dtype=np.int32) % 50),
    )
    with torch.no_grad():
        parts = []
        for ctx in (context, moved):
            batch = fz({"user": user_rows, "item": item_rows, "context": ctx})
            user = net.user_part(batch.sparse["user"], batch.dense["user"])
            cand = net.candidate_part(batch)
            parts.append((user, cand, batch, net(batch)))
    (_, (f0, p0, w0, g0), _, out0), (user, (f1, p1, w1, g1), batch, out1) = parts
    for a, b in ((f0, f1), (p0, p1), (w0, w1)):
        torch.testing.assert_close(a, b)  # relevance: position-free
    assert g0 is not None and g1 is not None and float((g0 - g1).abs().max()) > 1e-3
    assert float((out0 - out1).abs().max()) > 1e-3
    no_exam = net.combine(user, Part(f1, p1, w1, None), batch.sparse.get("cross"))
    product = torch.sigmoid(no_exam) * torch.sigmoid(g1)  # relevance times examination
    torch.testing.assert_close(torch.sigmoid(out1), product, atol=1e-6, rtol=1e-5)


def test_examined_logit_is_stable_at_the_extremes() -> None:
    from pinrank.models.wide_deep import examined_logit

    z = torch.tensor([-60.0, -5.0, 0.0, 5.0, 60.0, 60.0, -60.0], dtype=torch.float64)
    g = torch.tensor([0.0, 30.0, -2.0, 3.0, 60.0, -60.0, -60.0], dtype=torch.float64)
    got = examined_logit(z, g)
    assert bool(torch.isfinite(got).all())
    p = torch.sigmoid(z) * torch.sigmoid(g)
    mid = slice(1, 4)  # where p and 1 - p are representable directly
    torch.testing.assert_close(got[mid], torch.log(p / (1 - p))[mid])
    assert float(got[4]) > 55  # both near 1: a large logit, not inf or nan
    assert abs(float(got[5]) - -60.0) < 1e-6 and abs(float(got[6]) - -120.0) < 1e-6


def test_unknown_examination_feature_is_refused(synthetic_prepared: Prepared) -> None:
    dm = _dm(synthetic_prepared)
    with pytest.raises(ValueError, match=r"examination: \['age'\] are not context features"):
        WideDeep.from_spec(dm.spec, dm.state, dm.dense_dims(), WideDeepConfig(examination=("age",)))


def test_examination_tower_gets_its_own_learning_rate(synthetic_prepared: Prepared) -> None:
    from functools import partial

    from pinrank.tasks.ranking import RankingModule

    dm = _dm(synthetic_prepared)
    net = WideDeep.from_spec(dm.spec, dm.state, dm.dense_dims(), PAL)
    adam = partial(torch.optim.Adam, lr=0.002)
    opt = RankingModule(net, adam, examination_lr=10.0).configure_optimizers()
    assert net.arch.examination is not None and net.tables.examination.tables == []
    tower = {id(p) for p in net.examination_parameters()}
    assert tower == {id(p) for p in net.arch.examination.parameters()}  # position is dense
    rest, own = opt.param_groups
    assert own["lr"] == pytest.approx(0.02) and rest["lr"] == pytest.approx(0.002)
    assert {id(p) for p in own["params"]} == tower
    assert len(rest["params"]) + len(own["params"]) == len(list(net.parameters()))
    assert not tower & {id(p) for p in rest["params"]}
    plain = RankingModule(net, adam, examination_lr=1.0).configure_optimizers()
    assert len(plain.param_groups) == 1
    with pytest.raises(ValueError, match="examination_lr must be > 0"):
        RankingModule(net, adam, examination_lr=0.0)
