"""Run under ``torch.distributed.run --nproc_per_node 2``: a finished run's network, sharded by
``pinrank.training.sharded.shard``, gives on held-out rows the outputs of the same network
whole (every process scores the same rows). Exits 1 with the largest difference otherwise.

    python -m torch.distributed.run --nproc_per_node 2 tests/training/sharded_parity.py RUN_DIR
"""

from __future__ import annotations

import copy
import sys
import warnings

import torch
import torch.distributed as dist

from pinrank.export.run import TrainedRun
from pinrank.export.verify import held_out_rows
from pinrank.features.featurizer import Featurizer
from pinrank.training.sharded import shard


def _outputs(net: torch.nn.Module, batch) -> torch.Tensor:  # type: ignore[no-untyped-def]
    if hasattr(net, "user_embedding"):  # the two-tower model: both towers' embeddings
        return torch.cat([net.user_embedding(batch), net.item_embedding(batch)], dim=1)
    return net(batch)


def main(run_dir: str) -> int:
    warnings.simplefilter("ignore")
    dist.init_process_group("gloo")
    run = TrainedRun.load(run_dir)
    net = run.net.eval()
    batch = Featurizer(run.prepared.spec(), run.prepared.state())(
        held_out_rows(run.prepared, "test", 256)
    )
    with torch.no_grad():
        whole = _outputs(copy.deepcopy(net), batch)
    shard(net, torch.device("cpu"), ["table_wise"], torch.optim.Adagrad, {"lr": 0.1})
    with torch.no_grad():
        sharded = _outputs(net, batch)
    diff = float((sharded - whole).abs().max())
    print(f"rank {dist.get_rank()}: {tuple(whole.shape)} max abs diff {diff:.3g}")
    dist.destroy_process_group()
    return 0 if diff <= 1e-5 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
