"""Every tensor of a package stored once: graph initializers moved out of the ONNX protobufs.

The exporter writes each graph self-contained, so a table the ranker graphs share (the user x
interest table sits in ``ranker``, ``ranker_feed`` and ``ranker_pairs``) was stored once per
graph and again in the weights file, and a large catalogue would push a protobuf towards its
2 GB limit. :func:`share` replaces every initializer of at least :data:`MIN_BYTES` by ONNX
external data: one whose bytes are a tensor of the package's safetensors weights points into
that file; the others go, once per distinct content, into :data:`TENSORS`.

Locations are **package-relative** paths (``weights/ranking.safetensors``), not relative to the
graph as ONNX's own loader assumes: pinrank's loader
(:func:`pinrank.serving.runtime.inline_external`) reads a location through the package (listed,
digest-checked), checks offset and length against the tensor's type and shape, and hands ONNX
Runtime a self-contained model, so no path named inside a graph is ever opened.
:func:`load_inline` does the same for tools (``onnx.load`` with the package as the base folder).
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path
from typing import Any

import onnx
from onnx import TensorProto, numpy_helper

MIN_BYTES = 1024  # smaller initializers (biases, scalars) stay inside their graph
ALIGN = 64
TENSORS = "graphs/tensors.bin"
_TYPED_FIELDS = (
    "float_data",
    "int32_data",
    "string_data",
    "int64_data",
    "double_data",
    "uint64_data",
)


def safetensors_ranges(data: bytes) -> dict[str, tuple[int, int]]:
    """``{name: (offset, length)}`` of every tensor of a safetensors file, offsets from the
    file's start."""
    (size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + size])
    start = 8 + size
    return {
        name: (
            start + entry["data_offsets"][0],
            entry["data_offsets"][1] - entry["data_offsets"][0],
        )
        for name, entry in header.items()
        if name != "__metadata__"
    }


def share(root: Path, graph_files: list[str], weight_files: list[str]) -> dict[str, Any]:
    """Move the large initializers of ``graph_files`` (package-relative) to external data in
    ``weight_files`` (safetensors, where the same bytes are there) or :data:`TENSORS`; rewrite
    the graphs in place. Returns the manifest's ``tensors`` entry: where the shared file is and
    how many bytes the graphs' tensors take before and after."""
    known: dict[str, tuple[str, int, int]] = {}  # sha256 of the bytes -> (location, offset, length)
    for relative in weight_files:
        data = (root / relative).read_bytes()
        for offset, length in safetensors_ranges(data).values():
            if length >= MIN_BYTES:
                digest = hashlib.sha256(data[offset : offset + length]).hexdigest()
                known.setdefault(digest, (relative, offset, length))
    blob = bytearray()
    before = moved = in_weights = 0
    for relative in graph_files:
        path = root / relative
        model = onnx.load(str(path), load_external_data=False)
        for t in model.graph.initializer:
            if t.data_location == TensorProto.EXTERNAL or t.data_type == TensorProto.STRING:
                continue
            raw = t.raw_data if t.HasField("raw_data") else numpy_helper.to_array(t).tobytes()
            if len(raw) < MIN_BYTES:
                continue
            before += len(raw)
            digest = hashlib.sha256(raw).hexdigest()
            if digest not in known:
                blob.extend(b"\0" * (-len(blob) % ALIGN))
                known[digest] = (TENSORS, len(blob), len(raw))
                blob.extend(raw)
            location, offset, length = known[digest]
            in_weights += location != TENSORS
            _point(t, location, offset, length)
            moved += 1
        path.write_bytes(model.SerializeToString())
    if blob:
        (root / TENSORS).write_bytes(bytes(blob))
    return {
        "path": TENSORS if blob else None,
        "min_bytes": MIN_BYTES,
        "moved": moved,
        "in_weights": in_weights,
        "graph_tensor_bytes": before,
        "shared_bytes": len(blob),
    }


def _point(t: TensorProto, location: str, offset: int, length: int) -> None:
    for name in _TYPED_FIELDS:
        t.ClearField(name)
    t.ClearField("raw_data")
    del t.external_data[:]
    for key, value in (("location", location), ("offset", offset), ("length", length)):
        entry = t.external_data.add()
        entry.key, entry.value = key, str(value)
    t.data_location = TensorProto.EXTERNAL


def load_inline(root: str | Path, relative: str) -> onnx.ModelProto:
    """A package's graph with its external tensors read back in (package-relative locations),
    for tools and tests; serving uses the digest-checked path instead."""
    root = Path(root)
    model = onnx.load(str(root / relative), load_external_data=False)
    onnx.external_data_helper.load_external_data_for_model(model, str(root))
    return model
