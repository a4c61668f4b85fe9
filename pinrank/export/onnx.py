"""Export a graph of :mod:`pinrank.export.graphs` to one self-contained ONNX model.

``torch.onnx.export`` (opset 18) writes the torch part with dynamic batch and list widths, by one
of two exporters: ``torchscript`` (the default: the traced graph, about 20x faster to export, e.g.
3 s against 54 s for the demo's seven graphs) or ``dynamo`` (``torch.export``, the exporter torch
is moving to). Both are held to the same parity by ``pinrank verify`` and the tests. Then an
``ai.onnx.ml`` LabelEncoder per vocabulary lookup is put in front, reading the raw column (strings
included) and writing the index tensor the torch part expects. The result takes raw columns only
(:mod:`pinrank.features.columns`) and passes ``onnx.checker``.
"""

from __future__ import annotations

import logging
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper

from pinrank.export.graphs import Graph, GraphInput

ML_DOMAIN, ML_OPSET, OPSET = "ai.onnx.ml", 3, 18
ONNX_TYPES = {
    "int64": TensorProto.INT64,
    "float64": TensorProto.DOUBLE,
    "float32": TensorProto.FLOAT,
    "string": TensorProto.STRING,
    "bool": TensorProto.BOOL,
}
NUMPY_TYPES = {"int64": np.int64, "float64": np.float64, "float32": np.float32, "bool": np.bool_}


def example_inputs(graph: Graph, arrays: dict[str, np.ndarray]) -> tuple[torch.Tensor, ...]:
    """Torch inputs for tracing from real arrays; symbolic axes are widened to at least 2 so
    that the exporter does not specialise them to 0 or 1."""
    out = []
    for i in graph.torch_inputs:
        a = arrays.get(i.name)
        if a is None:  # a vocabulary index: any valid index traces the same graph
            a = np.ones(arrays[graph.vocab[i.name][1].name].shape, np.int64)
        out.append(torch.from_numpy(_widen(np.asarray(a), i)))
    return tuple(out)


def _widen(a: np.ndarray, spec: GraphInput) -> np.ndarray:
    for axis, size in enumerate(spec.shape):
        if isinstance(size, str) and a.shape[axis] < 2:
            reps = [1] * a.ndim
            reps[axis] = 2
            a = np.tile(a, reps) if a.shape[axis] else np.zeros(_grown(a.shape, axis), a.dtype)
    return a


def _grown(shape: tuple[int, ...], axis: int) -> tuple[int, ...]:
    return tuple(2 if i == axis else s for i, s in enumerate(shape))


EXPORTERS = ("torchscript", "dynamo")


def export_graph(
    graph: Graph, arrays: dict[str, np.ndarray], path: str | Path, exporter: str = "torchscript"
) -> Path:
    """Export ``graph`` (traced on ``arrays``, packed raw columns) to ``path`` with ``exporter``
    (:data:`EXPORTERS`)."""
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter {exporter!r}: expected one of {EXPORTERS}")
    graph.eval()
    inputs = example_inputs(graph, arrays)
    names = [i.name for i in graph.torch_inputs]
    with warnings.catch_warnings(), _quiet():
        warnings.simplefilter("ignore")
        if exporter == "torchscript":
            axes = {
                i.name: {a: _symbol(s) for a, s in enumerate(i.shape) if isinstance(s, str)}
                for i in graph.torch_inputs
            }
            with tempfile.TemporaryDirectory() as tmp:
                traced = Path(tmp) / "traced.onnx"
                torch.onnx.export(graph, inputs, traced, dynamo=False, opset_version=OPSET,
                                  input_names=names, output_names=list(graph.output_names),
                                  dynamic_axes=axes, do_constant_folding=True)  # fmt: skip
                proto = _own_output_dims(onnx.load(str(traced)))
        else:
            symbols: dict[str, torch.export.Dim] = {}

            def dim(symbol: str) -> torch.export.Dim:
                if symbol not in symbols:
                    symbols[symbol] = torch.export.Dim(_symbol(symbol))
                return symbols[symbol]

            dynamic = tuple(
                {a: dim(s) for a, s in enumerate(i.shape) if isinstance(s, str)}
                for i in graph.torch_inputs
            )
            program = torch.onnx.export(graph, inputs, dynamo=True, opset_version=OPSET,
                                        input_names=names, dynamic_shapes={"args": dynamic},
                                        verbose=False)  # fmt: skip
            assert program is not None
            proto = _rename_outputs(program.model_proto, graph.output_names)
    model = with_label_encoders(proto, graph)
    onnx.checker.check_model(model, full_check=True)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def _symbol(name: str) -> str:
    return re.sub(r"\W", "_", name)


def with_label_encoders(model: onnx.ModelProto, graph: Graph) -> onnx.ModelProto:
    """Replace the vocabulary-index inputs by LabelEncoders over the raw columns; the model's
    inputs become ``graph.inputs``, in that order."""
    g = model.graph
    exported = {i.name: i for i in g.input}
    nodes = []
    for name, (f, col) in graph.vocab.items():
        owner = f.shares or f.name
        vocab = graph.features.state.features[owner]["vocab"].to_pylist()
        values = list(range(2, len(vocab) + 2))
        attrs: dict[str, Any]
        if col.kind == "string":
            keys = [str(v) for v in vocab]
            if "" not in keys:  # the empty string is how a missing string is written
                keys, values = [*keys, ""], [*values, 0]
            attrs = {"keys_strings": keys}
        else:
            attrs = {"keys_int64s": [int(v) for v in vocab]}
        nodes.append(
            helper.make_node(
                "LabelEncoder",
                [col.name],
                [name],
                name=f"vocab:{owner}:{col.name}",
                domain=ML_DOMAIN,
                values_int64s=values,
                default_int64=1,  # out of vocabulary
                **attrs,
            )
        )
    inputs = [exported.get(i.name) or _value_info(i) for i in graph.inputs]
    del g.input[:]
    g.input.extend(inputs)
    old = list(g.node)
    del g.node[:]
    g.node.extend(nodes + old)
    if not any(o.domain == ML_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(ML_DOMAIN, ML_OPSET))
    return model


def _rename_outputs(model: onnx.ModelProto, names: tuple[str, ...]) -> onnx.ModelProto:
    """Name the outputs; an internal value that already has one of the names is renamed
    first (the exporter names values after their ops, e.g. ``embedding``)."""
    g = model.graph
    if len(g.output) != len(names):
        raise ValueError(f"graph has {len(g.output)} outputs, {len(names)} names given")
    mapping = {n: f"{n}__internal" for n in names}
    mapping |= {o.name: n for o, n in zip(g.output, names, strict=True)}

    def rename(values: list[str]) -> list[str]:
        return [mapping.get(v, v) for v in values]

    for node in g.node:
        node.input[:], node.output[:] = rename(list(node.input)), rename(list(node.output))
    for vi in [*g.output, *g.value_info]:
        vi.name = mapping.get(vi.name, vi.name)
    return model


def _own_output_dims(model: onnx.ModelProto) -> onnx.ModelProto:
    """Give each output axis the exporter named after an internal value a symbol of its own.

    The TorchScript exporter names an output's dynamic axes after the op that made them
    (``Whereuser.user_interests.indices_dim_1``) and gives several outputs the same name when
    their example widths were equal: three list columns of different widths then claimed one
    shape, and ONNX Runtime, which trusts equal symbols, reused one's buffer for another
    ("Shape mismatch attempting to re-use buffer"). Symbols of the inputs stay; the others
    become ``<output>.<axis>``, claiming nothing."""
    g = model.graph
    known = {d.dim_param for i in g.input for d in i.type.tensor_type.shape.dim if d.dim_param}
    for o in g.output:
        for axis, d in enumerate(o.type.tensor_type.shape.dim):
            if d.dim_param and d.dim_param not in known:
                d.dim_param = f"{_symbol(o.name)}_{axis}"
    del g.value_info[:]  # the exporter's shapes of internal values: ONNX Runtime infers its own
    return model


def _value_info(i: GraphInput) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(i.name, ONNX_TYPES[i.dtype], list(i.shape))


class _quiet:
    """Silence the exporter's progress lines and torchvision notices for the duration."""

    def __enter__(self) -> None:
        self.levels = {}
        for name in ("torch.onnx", "torch.export", "torch._dynamo", "torch.fx", "onnxscript"):
            logger = logging.getLogger(name)
            self.levels[name] = logger.level
            logger.setLevel(logging.ERROR)

    def __exit__(self, *exc: object) -> None:
        for name, level in self.levels.items():
            logging.getLogger(name).setLevel(level)
