"""Every tensor of a package stored once: the graphs' large initializers are external data in
the package's weight files, the package holds each tensor's bytes once, and a graph loads back
self-contained with the same tensors."""

from __future__ import annotations

import hashlib
from pathlib import Path

import onnx
from package_fixtures import TRUST

from pinrank.export.tensors import MIN_BYTES, TENSORS, load_inline, safetensors_ranges
from pinrank.serving.package import load_package


def _tensor_bytes(model: onnx.ModelProto) -> dict[str, bytes]:
    return {t.name: onnx.numpy_helper.to_array(t).tobytes() for t in model.graph.initializer}


def test_large_initializers_live_once_in_the_weight_files(package_dir: Path) -> None:
    package = load_package(package_dir, TRUST)
    entry = package.manifest["tensors"]
    assert entry["moved"] > 0 and entry["in_weights"] > 0
    weights = {m["weights"] for m in package.manifest["models"].values()}
    allowed = weights | ({entry["path"]} if entry["path"] else set())
    stored: dict[str, int] = {}  # sha256 -> bytes, over every external range
    for graph in package.manifest["graphs"].values():
        model = onnx.load(str(package_dir / graph["path"]), load_external_data=False)
        for t in model.graph.initializer:
            if t.data_location == onnx.TensorProto.EXTERNAL:
                fields = {e.key: e.value for e in t.external_data}
                assert fields["location"] in allowed
                data = (package_dir / fields["location"]).read_bytes()
                start, length = int(fields["offset"]), int(fields["length"])
                stored[hashlib.sha256(data[start : start + length]).hexdigest()] = length
            else:  # only small ones stay inside their graph
                assert len(onnx.numpy_helper.to_array(t).tobytes()) < MIN_BYTES, t.name
    # the shared file holds no tensor twice and none that the weights already hold
    if entry["path"]:
        assert entry["path"] == TENSORS
        assert entry["shared_bytes"] == (package_dir / TENSORS).stat().st_size
    in_weights = set()
    for relative in weights:
        data = (package_dir / relative).read_bytes()
        for start, length in safetensors_ranges(data).values():
            in_weights.add(hashlib.sha256(data[start : start + length]).hexdigest())
    shared = sum(n for digest, n in stored.items() if digest not in in_weights)
    assert entry["shared_bytes"] - shared < 64 * len(stored)  # alignment padding only
    assert entry["graph_tensor_bytes"] > sum(stored.values())  # what sharing saved


def test_a_graph_loads_back_self_contained(package_dir: Path) -> None:
    inline = load_inline(package_dir, "graphs/ranker.onnx")
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in inline.graph.initializer)
    onnx.checker.check_model(inline, full_check=True)
    weights = (package_dir / "weights" / "ranking.safetensors").read_bytes()
    ranges = safetensors_ranges(weights)
    tensors = _tensor_bytes(inline)
    big = [name for name, data in tensors.items() if len(data) >= MIN_BYTES]
    assert big
    found = {weights[s : s + n] for s, n in ranges.values()}
    assert sum(tensors[name] in found for name in big) >= len(big) // 2  # most are the weights'


def test_the_graphs_hold_structure_not_copies(package_dir: Path) -> None:
    """Sharing took the graphs from a copy of every table each to their structure (nodes,
    vocabularies) plus the few tensors the weights do not hold."""
    package = load_package(package_dir, TRUST)
    before = package.manifest["tensors"]["graph_tensor_bytes"]
    graphs = sum(p.stat().st_size for p in (package_dir / "graphs").glob("*.onnx"))
    shared = package.manifest["tensors"]["shared_bytes"]
    weights = sum(p.stat().st_size for p in (package_dir / "weights").iterdir())
    print(f"graph tensors before {before:,} B; now graphs {graphs:,} B + shared {shared:,} B")
    assert graphs + shared < 0.2 * before
    assert shared < 0.1 * weights
