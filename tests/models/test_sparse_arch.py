"""The torch-only sparse arch (nn.EmbeddingBag) is torchrec's EmbeddingBagCollection by another
name: same parameter names, same initial weights from the same seed, same pooled outputs, and
the same training losses; and pinrank featurizes and trains where torchrec does not import."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from pinrank.data.prepare import Prepared
from pinrank.features.jagged import KeyedJagged, KeyedJaggedTensor
from pinrank.models import components
from pinrank.models.components import SparseArch, TableSpec, set_sparse_backend

TABLES = [TableSpec("g", 4, 3), TableSpec("tags", 10, 2, "sum"), TableSpec("m", 7, 2, "mean")]
VALUES = torch.tensor([1, 2, 5, 6, 9, 3, 0])
LENGTHS = torch.tensor([1, 0, 2, 2, 1, 1], dtype=torch.int32)  # keys m, tags, g x 2 rows


@pytest.fixture
def backend():
    before = components.sparse_backend()
    yield set_sparse_backend
    set_sparse_backend(before)


def _arch(backend, name: str, tables=TABLES, weighted: bool = False) -> SparseArch:
    backend(name)
    torch.manual_seed(0)
    return SparseArch(tables, weighted=weighted)


def test_same_parameters_weights_and_pooling(backend) -> None:
    a, b = _arch(backend, "torchrec"), _arch(backend, "torch")
    assert a.backend == "torchrec" and b.backend == "torch"
    assert list(a.state_dict()) == list(b.state_dict())
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(x, y), name
    kjt = KeyedJaggedTensor(keys=["m", "tags", "g"], values=VALUES, lengths=LENGTHS)
    mine = KeyedJagged(["m", "tags", "g"], kjt.values(), kjt.lengths())
    want = a(kjt)
    assert want.shape == (2, 7)
    assert torch.equal(b(kjt), want) and torch.equal(b(mine), want)
    # the other's checkpoint loads as is
    b.load_state_dict(a.state_dict())


def test_weighted_sums_match(backend) -> None:
    tables = [TableSpec("x", 50, 1, "sum"), TableSpec("y", 20, 1, "sum")]
    a, b = _arch(backend, "torchrec", tables, True), _arch(backend, "torch", tables, True)
    for arch in (a, b):
        for t in tables:
            seeded = torch.Generator().manual_seed(1)
            torch.nn.init.normal_(arch.weight(t.feature), generator=seeded)
    values, lengths = torch.tensor([3, 4, 49, 0, 19, 2]), torch.tensor([2, 1, 0, 3])
    weights = torch.tensor([0.5, 1.0, 2.0, 0.25, 1.0, 3.0])
    kjt = KeyedJaggedTensor(keys=["x", "y"], values=values, lengths=lengths, weights=weights)
    assert torch.equal(a(kjt), b(kjt))
    assert torch.equal(b(KeyedJagged(["x", "y"], values, lengths, weights)), a(kjt))


def test_the_torch_backends_gradients_are_torchrecs(backend) -> None:
    """The torch backend's own backward (values' gradient rows added into the table, no sort)
    gives the gradients of torchrec's bags: sum, mean and weighted, empty bags included."""
    tables = [*TABLES, TableSpec("w", 30, 4, "sum")]
    kjt = KeyedJaggedTensor(
        keys=["m", "tags", "g", "w"],
        values=torch.tensor([1, 2, 5, 6, 9, 3, 0, 7, 7, 29, 0]),
        lengths=torch.tensor([1, 0, 2, 2, 1, 1, 0, 4], dtype=torch.int32),
    )
    for weighted in (False, True):
        specs = [TableSpec(t.feature, t.num_embeddings, t.embedding_dim, "sum") for t in tables]
        specs = specs if weighted else tables
        if weighted:
            kjt = KeyedJaggedTensor(keys=kjt.keys(), values=kjt.values(), lengths=kjt.lengths(),
                                    weights=torch.linspace(0.5, 2.0, 11))  # fmt: skip
        a, b = _arch(backend, "torchrec", specs, weighted), _arch(backend, "torch", specs, weighted)
        upstream = torch.randn(2, a.output_dim, generator=torch.Generator().manual_seed(3))
        (a(kjt) * upstream).sum().backward()
        (b(kjt) * upstream).sum().backward()
        for (name, x), y in zip(a.named_parameters(), b.parameters(), strict=True):
            assert x.grad is not None and y.grad is not None, name
            assert torch.allclose(x.grad, y.grad, atol=1e-6), (weighted, name)
    double = torch.randn(12, 3, dtype=torch.float64, requires_grad=True)
    values, offsets = torch.tensor([1, 1, 4, 0, 11]), torch.tensor([0, 2, 2, 5])
    for mean in (False, True):
        assert torch.autograd.gradcheck(
            lambda w, m=mean: components.pooled_bag(w, values, offsets, None, m), (double,)
        )
    psw = torch.rand(5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda w, p: components.pooled_bag(w, values, offsets, p), (double, psw)
    )


def test_keyed_jagged_checks_its_layout() -> None:
    with pytest.raises(ValueError, match="lengths for 2 keys"):
        KeyedJagged(["a", "b"], torch.tensor([1]), torch.tensor([1, 0, 0]), stride=2)
    with pytest.raises(ValueError, match="weights for"):
        KeyedJagged(["a"], torch.tensor([1, 2]), torch.tensor([2]), torch.tensor([1.0]))


def test_unknown_backend_is_a_clear_error(backend) -> None:
    with pytest.raises(ValueError, match="sparse_arch 'fbgemm'"):
        backend("fbgemm")


# Trains a few steps of one model in a fresh process and prints its losses; with "block", the
# process cannot import torchrec at all (as on macOS or the lent GPU machine's image).
STEPS = """
import json, sys
if sys.argv[3] == "block":
    sys.modules["torchrec"] = None  # any `import torchrec...` now raises ImportError
import pytorch_lightning as pl
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from pinrank.data.datamodule import PinrankDataModule
from pinrank.features import jagged
from pinrank.models.components import set_sparse_backend
from pinrank.resources import conf_dir
from pinrank.training.main import _quiet_warnings

_quiet_warnings()
backend = set_sparse_backend(sys.argv[4])
with initialize_config_dir(str(conf_dir()), version_base="1.3"):
    cfg = compose("train", overrides=[f"model={sys.argv[2]}"])
pl.seed_everything(0, verbose=False)
dm = PinrankDataModule(sys.argv[1], batch_size=256, num_workers=0,
                       **cfg.model.get("datamodule", {}))
net = instantiate(cfg.model.net)(spec=dm.spec, state=dm.state, dense_dims=dm.dense_dims())
module = instantiate(cfg.model.module)(net=net)
losses = []

class Record(pl.Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, i):
        losses.append(float(outputs["loss"]))

trainer = pl.Trainer(accelerator="cpu", max_epochs=1, limit_train_batches=6,
                     limit_val_batches=0, logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, callbacks=[Record()])
trainer.fit(module, datamodule=dm)
print("RESULT " + json.dumps({"losses": losses, "backend": backend,
                              "torchrec": jagged.TORCHREC}))
"""


def _losses(prepared: Prepared, model: str, torchrec: str, backend: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", STEPS, str(prepared.root), model, torchrec, backend],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT ") :])


@pytest.mark.parametrize("model", ["wide_deep", "two_tower"])
def test_training_without_torchrec_gives_torchrecs_losses(
    synthetic_prepared: Prepared, model: str
) -> None:
    want = _losses(synthetic_prepared, model, "keep", "torchrec")
    got = _losses(synthetic_prepared, model, "block", "auto")
    assert want["torchrec"] and want["backend"] == "torchrec"
    assert not got["torchrec"] and got["backend"] == "torch"
    assert len(got["losses"]) == len(want["losses"]) == 6
    assert got["losses"] == pytest.approx(want["losses"], abs=1e-5)
    assert len(set(want["losses"])) > 1  # it trained: the loss moved


def test_sparse_updates_move_only_the_looked_up_rows_of_large_tables(backend) -> None:
    from pinrank.models.components import set_embedding_updates
    from pinrank.tasks.optim import Combined, build_optimizer, sparse_tables

    backend("torch")
    set_embedding_updates("sparse", min_rows=50)
    try:
        torch.manual_seed(0)
        tables = [TableSpec("big", 60, 2, "sum"), TableSpec("small", 4, 2, "sum")]
        net = torch.nn.Sequential()
        net.add_module("arch", SparseArch(tables))
        net.add_module("head", torch.nn.Linear(4, 1))
    finally:
        set_embedding_updates("dense")
    big, small = net.arch.weight("big"), net.arch.weight("small")
    assert sparse_tables(net) == [big]  # the small table keeps dense updates
    factory = lambda params: torch.optim.Adam(params, lr=0.1, weight_decay=1e-3)  # noqa: E731
    opt = build_optimizer(factory, net, [{"params": net.parameters()}])
    assert isinstance(opt, Combined)
    assert {id(p) for g in opt.param_groups for p in g["params"]} == {
        id(p) for p in net.parameters()
    }
    kjt = KeyedJagged(["big", "small"], torch.tensor([7, 9, 7, 1, 2]), torch.tensor([2, 1, 1, 1]))
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    net.head(net.arch(kjt)).sum().backward()
    assert big.grad is not None and big.grad.is_sparse
    opt.step()
    moved = (big != before["arch.ebc.embedding_bags.t_big.weight"]).any(dim=1)
    assert moved.nonzero().flatten().tolist() == [7, 9]
    # dense Adam with weight decay moves every row of the small table and the head
    assert (small != before["arch.ebc.embedding_bags.t_small.weight"]).all()
    assert not torch.equal(net.head.weight, before["head.weight"])
    # the optimiser's state round-trips (Lightning checkpoints it)
    state = opt.state_dict()
    opt.load_state_dict(state)
    assert set(state) == {"dense", "sparse"}


def test_sparse_updates_need_the_torch_backend(backend) -> None:
    from pinrank.models.components import set_embedding_updates

    backend("torchrec")
    with pytest.raises(ValueError, match="needs sparse_arch=torch"):
        set_embedding_updates("sparse")
    with pytest.raises(ValueError, match="expected dense or sparse"):
        set_embedding_updates("lazy")
