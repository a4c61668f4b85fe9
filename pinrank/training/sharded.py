"""Embedding tables sharded across processes with torchrec (``trainer=torchrec_dmp``).

Plain DDP keeps every table whole in every process; at the scale of a homefeed the id tables do
not fit one device (1B pins x 64 floats is 256 GB). :class:`TorchrecShardedStrategy` is
Lightning's DDP strategy with the network's ``EmbeddingBagCollection``s sharded by torchrec's
:class:`~torchrec.distributed.DistributedModelParallel`:

- the plan comes from torchrec's ``EmbeddingShardingPlanner`` for the world size and device,
  limited to the sharding types of the config (``table_wise``, ``column_wise``, ``row_wise``:
  torchrec's CPU kernels offer table- and column-wise only; ``row_wise`` needs CUDA);
- the tables are updated in the backward pass by a fused optimizer (FBGEMM's), updating only
  the rows a batch looked up; the dense parameters keep the task's optimizer and Lightning's
  DDP (DMP's own data-parallel wrapper is replaced by a no-op: Lightning wraps the module);
- every shard starts from the weights the unsharded network was initialised with (the same
  seed gives the same initial model as any other trainer);
- each checkpoint is written twice: the sharded state (tables and the fused optimizer's
  state, every process its own shards) with ``torch.distributed.checkpoint`` under
  ``<checkpoint>.sharded/``, which :func:`load_sharded` reads back on any world size, and the
  whole model gathered into the usual Lightning checkpoint (what evaluation and export read);
- after the fit (:meth:`TorchrecShardedStrategy.unshard`), process 0 holds the network
  unsharded with the final weights, so the report, the run record and export are the same as
  after any other training.

torchrec shards each table of each collection on its own: a table tied into two collections
(``tie_shared``) would come apart, so a tied network is refused with the setting to change.
"""

from __future__ import annotations

import copy
import importlib
import shutil
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torch.distributed as dist
from pytorch_lightning.strategies import DDPStrategy
from torch import nn
from torch.nn.parallel import DistributedDataParallel

SHARDING_TYPES = ("table_wise", "column_wise", "row_wise")
SHARDED_SUFFIX = ".sharded"


class ShardingError(ValueError):
    """A network or a setting that torchrec cannot shard as asked."""


def collections(net: nn.Module) -> dict[str, Any]:
    """The torchrec ``EmbeddingBagCollection``s of ``net`` that have tables, by qualified
    name."""
    from torchrec import EmbeddingBagCollection

    return {
        n: m
        for n, m in net.named_modules()
        if isinstance(m, EmbeddingBagCollection) and m.embedding_bag_configs()
    }


def check_shardable(net: nn.Module) -> dict[str, Any]:
    """The collections to shard; a clear error where there are none or a table is tied into
    two of them."""
    found = collections(net)
    if not found:
        raise ShardingError(
            f"{type(net).__name__} has no torchrec EmbeddingBagCollection to shard: train with "
            "sparse_arch=torchrec (or auto where torchrec imports)"
        )
    owners: dict[int, str] = {}
    for name, ebc in found.items():
        for pname, p in ebc.named_parameters(remove_duplicate=False):
            other = owners.setdefault(id(p), f"{name}.{pname}")
            if other != f"{name}.{pname}":
                raise ShardingError(
                    f"table {name}.{pname} is tied to {other}: torchrec shards each table on "
                    "its own, so tied tables would come apart. Untie them "
                    "(model.net.tie_shared=false for the two-tower model, "
                    "model.net.cfg.tie_shared=false for the ranker)"
                )
    return found


def fused_optimizer(name: str) -> type[torch.optim.Optimizer]:
    """An optimizer class by dotted path (``torch.optim.Adagrad``,
    ``torchrec.optim.RowWiseAdagrad``)."""
    module, _, cls = name.rpartition(".")
    try:
        found = getattr(importlib.import_module(module), cls)
    except (ImportError, AttributeError, ValueError) as e:
        raise ShardingError(f"fused_optimizer {name!r}: not an importable class ({e})") from e
    return found


class _LightningWraps:
    """DMP's data-parallel wrapper, doing nothing: Lightning's DDP wraps the LightningModule
    (and ignores the sharded tables) so that every call of the network, not only its forward,
    synchronises the dense gradients."""

    def wrap(self, dmp: Any, env: Any, device: torch.device) -> None:
        return None


def shard(
    net: nn.Module,
    device: torch.device,
    sharding_types: Sequence[str],
    optimizer: type[torch.optim.Optimizer],
    optimizer_kwargs: dict[str, Any],
) -> Any:
    """Shard ``net``'s collections in place across the default process group; returns the
    ``DistributedModelParallel`` (its plan and fused optimizer). Every shard starts from the
    weights ``net`` had."""
    from torchrec.distributed import DistributedModelParallel
    from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology
    from torchrec.distributed.planner.types import ParameterConstraints
    from torchrec.distributed.types import ShardingPlan
    from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward

    bad = [t for t in sharding_types if t not in SHARDING_TYPES]
    if bad or not sharding_types:
        raise ShardingError(f"sharding_types {list(sharding_types)}: choose from {SHARDING_TYPES}")
    if device.type == "cpu" and "row_wise" in sharding_types and len(sharding_types) == 1:
        raise ShardingError("row_wise sharding needs CUDA: torchrec's CPU kernels shard "
                            "table_wise or column_wise")  # fmt: skip
    found = check_shardable(net)
    initial = {k: v.detach().clone() for k, v in net.state_dict().items()}
    # FBGEMM's fused kernels take tables of a multiple of 4 columns: the collections of the
    # wide part (1-wide tables) stay whole in every process, trained by the task's optimizer
    # with DDP like the dense layers (at 10M users the per-user bias is 40 MB); the others are
    # sharded and updated in the backward pass.
    sharded = {
        path: ebc
        for path, ebc in found.items()
        if all(c.embedding_dim % 4 == 0 for c in ebc.embedding_bag_configs())
    }
    if not sharded:
        raise ShardingError("no collection whose tables all have a multiple of 4 columns")
    apply_optimizer_in_backward(
        optimizer, [p for ebc in sharded.values() for p in ebc.parameters()], optimizer_kwargs
    )
    # one plan per collection: the planner's constraints are by table name, and two collections
    # may each have a table of one feature
    world, plans = dist.get_world_size(), {}
    for path, ebc in sharded.items():
        constraints = {
            c.name: ParameterConstraints(sharding_types=list(sharding_types))
            for c in ebc.embedding_bag_configs()
        }
        planner = EmbeddingShardingPlanner(
            topology=Topology(world_size=world, compute_device=device.type),
            constraints=constraints,
        )
        holder = nn.Module()  # the planner plans a collection below the module it is given
        holder.add_module("ebc", ebc)
        plans[path] = planner.collective_plan(holder, None, dist.GroupMember.WORLD).plan["ebc"]
    dmp = DistributedModelParallel(
        net, device=device, plan=ShardingPlan(plans), data_parallel_wrapper=_LightningWraps()
    )
    _copy_into_shards(net, initial)
    return dmp


def _is_sharded(value: Any) -> bool:
    return type(value).__name__ == "ShardedTensor"


@torch.no_grad()
def _copy_into_shards(net: nn.Module, full: dict[str, torch.Tensor]) -> None:
    """Load the whole tensors ``full`` into ``net``, this process's shards of each sharded one
    (its state dict's local shards are copies: they are filled, then loaded)."""
    state = net.state_dict()
    for key, value in state.items():
        if not _is_sharded(value):
            continue
        for s in value.local_shards():
            index = tuple(
                slice(o, o + n)
                for o, n in zip(s.metadata.shard_offsets, s.metadata.shard_sizes, strict=True)
            )
            s.tensor.copy_(full[key][index])
    net.load_state_dict(state)


def gathered(state: dict[str, Any]) -> dict[str, Any]:
    """``state`` with every sharded tensor gathered whole on process 0 (a collective: every
    process calls it; the others get ``None`` in its place)."""
    out: dict[str, Any] = {}
    for key, value in state.items():
        if _is_sharded(value):
            whole = torch.empty(value.size(), dtype=value.dtype) if dist.get_rank() == 0 else None
            value.gather(dst=0, out=whole)
            out[key] = whole
        else:
            out[key] = value
    return out


def load_sharded(net: nn.Module, path: str | Path) -> nn.Module:
    """Load a sharded checkpoint (``<checkpoint>.sharded/``) into ``net``, unsharded or sharded
    on any world size: ``torch.distributed.checkpoint`` reads each process's part of every
    tensor from the shards that hold it (without a process group: the whole of it)."""
    import torch.distributed.checkpoint as dcp

    path = Path(path)
    if not (path / ".metadata").exists():
        raise FileNotFoundError(f"{path}: not a sharded checkpoint (no .metadata)")
    state = {"net": net.state_dict()}
    with warnings.catch_warnings():  # "assuming the intent is to load in a single process": yes
        warnings.filterwarnings("ignore", message=".*load in a single process.*")
        dcp.load(state, checkpoint_id=str(path))
    if not any(_is_sharded(v) for v in state["net"].values()):
        net.load_state_dict(state["net"])
    return net


class TorchrecShardedStrategy(DDPStrategy):
    """Lightning's DDP with the network's tables sharded by torchrec (module docstring).

    Args:
        sharding_types: what the planner may choose per table.
        fused_optimizer: the tables' optimizer (dotted class path), applied in the backward
            pass by FBGEMM's fused kernels: on CPU Adagrad, row-wise Adagrad or SGD (FBGEMM
            has no CPU Adam); on CUDA Adam as well.
        fused_optimizer_kwargs: its arguments (``lr``, ...).
        **kwargs: :class:`~pytorch_lightning.strategies.DDPStrategy`'s.
    """

    strategy_name = "torchrec_dmp"

    def __init__(
        self,
        sharding_types: Sequence[str] = ("table_wise",),
        fused_optimizer: str = "torchrec.optim.RowWiseAdagrad",
        fused_optimizer_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("find_unused_parameters", False)
        super().__init__(**kwargs)
        self.sharding_types = tuple(sharding_types)
        self.fused_optimizer = fused_optimizer
        self.fused_optimizer_kwargs = dict(fused_optimizer_kwargs or {"lr": 0.05})
        self.dmp: Any = None
        self._twin: nn.Module | None = None

    def configure_ddp(self) -> None:
        module = self.lightning_module
        assert module is not None
        net = module.net
        assert isinstance(net, nn.Module)
        check_shardable(net)
        # process 0 keeps an unsharded twin for the report and export after the fit
        self._twin = copy.deepcopy(net) if self.global_rank == 0 else None
        self.dmp = shard(
            net, self.root_device, self.sharding_types,
            fused_optimizer(self.fused_optimizer), self.fused_optimizer_kwargs,
        )  # fmt: skip
        # DDP averages the dense layers' gradients and the replicated tables'; the sharded
        # tables are updated in the backward pass, each process its own shards
        ignore = [n for n, p in module.named_parameters() if hasattr(p, "_in_backward_optimizers")]
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(module, ignore)
        super().configure_ddp()

    def lightning_module_state_dict(self) -> dict[str, Any]:
        """The whole model on process 0 (every process takes part in the gathering)."""
        module = self.lightning_module
        assert module is not None
        return gathered(module.state_dict())

    def save_checkpoint(
        self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any | None = None
    ) -> None:
        import torch.distributed.checkpoint as dcp

        module = self.lightning_module
        assert module is not None
        sharded = Path(str(filepath) + SHARDED_SUFFIX)
        if self.global_rank == 0 and sharded.exists():
            shutil.rmtree(sharded)
        self.barrier("sharded-checkpoint")
        net = module.net
        assert isinstance(net, nn.Module)
        state = {"net": net.state_dict(), "fused": self.dmp.fused_optimizer.state_dict()}
        dcp.save(state, checkpoint_id=str(sharded))
        super().save_checkpoint(checkpoint, filepath, storage_options)

    def remove_checkpoint(self, filepath: Any) -> None:
        super().remove_checkpoint(filepath)
        if self.global_rank == 0:
            shutil.rmtree(str(filepath) + SHARDED_SUFFIX, ignore_errors=True)

    def unshard(self, module: pl.LightningModule) -> None:
        """After the fit: process 0's network becomes its unsharded twin with the final weights
        (a collective: every process calls it)."""
        if self._twin is None and self.global_rank == 0:
            raise RuntimeError("unshard() before the sharded fit")
        net = module.net
        assert isinstance(net, nn.Module)
        state = gathered(net.state_dict())
        if self.global_rank == 0:
            assert self._twin is not None
            self._twin.load_state_dict(state)
            module.net = self._twin
        self.barrier("unshard")
