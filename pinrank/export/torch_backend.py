"""The optional torch backend: a package's networks run in torch (CUDA where present).

For GPU machines that have torch with CUDA but no onnxruntime-gpu. It rebuilds each network from
the manifest's config and the package's safetensors weights, and runs the *same* graph modules
that were exported (:func:`pinrank.export.graphs.graphs_for`); the one step ONNX does with a
LabelEncoder, the vocabulary lookup, is done here in NumPy with the same mapping. Same interface
as :class:`pinrank.serving.runtime.OnnxBackend` (``run(graph, inputs) -> {output: array}``), and
held to the same parity check (``pinrank verify --backend torch``). Kept outside
``pinrank.serving`` so that the serving side never imports torch.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from torch import nn

from pinrank.calibration import Calibration
from pinrank.export.graphs import Graph, graphs_for
from pinrank.export.run import build_net
from pinrank.features.state import FeatureState
from pinrank.features.transforms import MISSING, OOV, VocabLookup
from pinrank.serving.package import Package, PackageError


def label_encode(values: np.ndarray, lookup: VocabLookup) -> np.ndarray:
    """What the graphs' LabelEncoder computes, with the featurizer's own lookup: ``2 + rank``
    for a known value, 1 (out of vocabulary) otherwise, and 0 for the empty string (a missing
    string) when it is not a vocabulary value. Any shape.

    Example::

        >>> label_encode(np.array(["b", "", "z"], object), VocabLookup(["a", "b"]))
        array([3, 0, 1])
        >>> label_encode(np.array([[7, 5], [9, 9]]), VocabLookup([5, 7])).tolist()
        [[3, 2], [1, 1]]
    """
    flat = values.reshape(-1)
    is_string = flat.dtype == object
    if not lookup.size:
        out = np.full(flat.shape, OOV, np.int64)
    else:
        out = lookup(pa.array(flat, pa.string() if is_string else pa.int64()))
    if is_string and not lookup.has_empty:
        out[flat == ""] = MISSING
    return out.reshape(values.shape)


class TorchBackend:
    """A package's graphs in torch on ``device`` (``None``: CUDA when available, else CPU)."""

    name = "torch"

    def __init__(self, package: Package, device: str | None = None) -> None:
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        spec, self.state = package.spec(), package.state()
        columns = [c for side in ("user", "item", "context") for c in package.columns(side)]
        self.graphs: dict[str, Graph] = {}
        for kind, entry in package.manifest["models"].items():
            net = package_net(package, kind)
            cal = Calibration.from_dict(entry["calibration"]) if "calibration" in entry else None
            for name, graph in graphs_for(net, spec, self.state, columns, cal).items():
                self.graphs[name] = graph.to(self.device).eval()

    def run(self, graph: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return run_graph(self.graphs[graph], self.state, inputs, self.device)


def package_net(package: Package, kind: str) -> nn.Module:
    """The ``kind`` network of a package with its weights, in eval mode: built from the fixed
    registry of networks (:func:`pinrank.export.run.build_net`), weights from the package's
    digest-checked safetensors bytes; PackageError names what does not fit."""
    entry = package.manifest["models"][kind]
    where = f"{package.root}: models.{kind}"
    try:
        net = build_net(entry["net"], package.spec(), package.state())
    except (ValueError, TypeError, KeyError) as err:
        raise PackageError(f"{where}: {err}") from None
    load_weights(net, package.read(entry["weights"]), where)
    return net.eval()


def load_weights(net: nn.Module, data: bytes, where: str) -> None:
    """Load safetensors ``data`` into ``net``, strictly: every parameter and buffer is set, by a
    tensor of the file or by one it is tied to (safetensors stores a shared tensor once)."""
    try:
        tensors = load_safetensors(data)
        missing, unexpected = net.load_state_dict(tensors, strict=False)
    except (SafetensorError, RuntimeError) as err:
        raise PackageError(f"{where}: weights do not fit the network ({err})") from None
    state = net.state_dict()
    loaded = {state[k].data_ptr() for k in tensors if k in state}
    unset = [k for k in missing if state[k].data_ptr() not in loaded]
    if unset or unexpected:
        raise PackageError(f"{where}: weights lack {unset[:5]} / have unexpected {unexpected[:5]}")


@torch.no_grad()
def run_graph(
    g: Graph,
    state: FeatureState,
    inputs: dict[str, np.ndarray],
    device: torch.device | str = "cpu",
) -> dict[str, np.ndarray]:
    """One graph module on named NumPy inputs (raw columns and parts, as the ONNX graph takes
    them) -> its named outputs; the vocabulary lookups the ONNX graph's LabelEncoder does are
    done here with :func:`label_encode`."""
    args = []
    for i in g.torch_inputs:
        if i.name in g.vocab:
            f, col = g.vocab[i.name]
            owner = f.shares or f.name
            arr = label_encode(np.asarray(inputs[col.name]), state.lookups()[owner])
        else:
            arr = np.asarray(inputs[i.name])
        args.append(torch.from_numpy(np.ascontiguousarray(arr)).to(device))
    out = g(*args)
    outs = out if isinstance(out, tuple) else (out,)
    return {n: t.cpu().numpy() for n, t in zip(g.output_names, outs, strict=True)}
