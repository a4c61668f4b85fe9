"""Running a package's graphs: ONNX Runtime sessions with execution providers chosen from what
is installed and what the caller asks for (TensorRT, CUDA, CPU). No torch here.

A *backend* is anything with ``run(graph, inputs) -> {output: array}`` over a package's graph
names; :class:`OnnxBackend` is the default, and ``pinrank.export.torch_backend.TorchBackend``
runs the same networks in torch (for GPU machines without onnxruntime-gpu).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

import numpy as np
import onnxruntime as ort

from pinrank.serving.package import Package, PackageError

PREFERENCE = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
log = logging.getLogger(__name__)


class Backend(Protocol):
    name: str

    def run(self, graph: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


def choose_providers(requested: Sequence[str] | None = None) -> list[str]:
    """Providers to use, best first: ``requested`` (short names such as ``cuda`` allowed) where
    installed, else every installed one of :data:`PREFERENCE`; CPU is always last."""
    available = ort.get_available_providers()
    if requested:
        wanted = [_full_name(r) for r in requested]
        missing = [w for w in wanted if w not in available]
        if missing:
            log.warning("execution providers %s are not installed; using what is", missing)
        chosen = [w for w in wanted if w in available]
    else:
        chosen = [p for p in PREFERENCE if p in available]
    return [*[p for p in chosen if p != "CPUExecutionProvider"], "CPUExecutionProvider"]


def _full_name(name: str) -> str:
    short = {"tensorrt": "TensorrtExecutionProvider", "cuda": "CUDAExecutionProvider"}
    return short.get(name.lower(), "CPUExecutionProvider" if name.lower() == "cpu" else name)


class OnnxBackend:
    """ONNX Runtime sessions over a package's graphs, created on first use.

    Args:
        package: a loaded package.
        providers: execution providers to ask for (``None``: the best installed).
        threads: intra-op threads per session (``None``: ONNX Runtime's default).
    """

    name = "onnxruntime"

    def __init__(
        self, package: Package, providers: Sequence[str] | None = None, threads: int | None = None
    ) -> None:
        self.package, self.providers = package, choose_providers(providers)
        self.threads = threads
        self._sessions: dict[str, ort.InferenceSession] = {}
        self._blobs: dict[str, bytes] = {}
        # the files graphs' external tensors may point into: the models' safetensors and the
        # shared tensors
        manifest = package.manifest
        shared = (manifest.get("tensors") or {}).get("path")
        self._weight_files = {str(m.get("weights")) for m in manifest.get("models", {}).values()}
        self._weight_files |= {shared} if shared else set()

    def _weights(self, relative: str) -> bytes:
        """A weights file the graphs' external tensors may point into, read once through the
        package (listed, digest-checked)."""
        if relative not in self._weight_files:
            raise PackageError(
                f"{self.package.root}: external data in {relative!r}, which is not one of the "
                f"package's weight files ({sorted(self._weight_files)})"
            )
        if relative not in self._blobs:
            self._blobs[relative] = self.package.read(relative)
        return self._blobs[relative]

    def session(self, graph: str) -> ort.InferenceSession:
        if graph not in self._sessions:
            opts = ort.SessionOptions()
            if self.threads:
                opts.intra_op_num_threads = self.threads
            opts.log_severity_level = 3
            where = f"{self.package.root}: graph {graph!r}"
            data = self.package.read(self.package.graph_file(graph))  # the hashed bytes
            data = inline_external(data, self._weights, where)
            try:
                session = ort.InferenceSession(data, opts, providers=self.providers)
            except Exception as err:  # ORT raises its own types for any bad model
                raise PackageError(f"{where} does not load in ONNX Runtime ({err})") from None
            self._sessions[graph] = session
        return self._sessions[graph]

    def release(self, keep: Sequence[str] = ()) -> None:
        """Drop the sessions of every graph but ``keep``, and the weight bytes read to build
        them (a graph needed again is loaded again). A scorer keeps only the graphs it serves
        with once its probe has run every graph: at 1M pins the others' vocabularies and
        weights are gigabytes."""
        self._sessions = {g: s for g, s in self._sessions.items() if g in keep}
        self._blobs.clear()

    def run(self, graph: str, inputs: dict[str, Any]) -> dict[str, np.ndarray]:
        """Run one graph on named arrays (extra entries are ignored)."""
        session = self.session(graph)
        names = [i.name for i in session.get_inputs()]
        missing = [n for n in names if n not in inputs]
        if missing:
            raise KeyError(f"graph {graph!r} needs inputs {missing}")
        feed = {n: inputs[n] for n in names}
        if any(np.shape(v)[:1] == (0,) for v in feed.values()):
            return _empty_outputs(session)  # ORT fails on 0-row inputs; there is nothing to do
        outs = session.run(None, feed)
        return dict(zip([o.name for o in session.get_outputs()], outs, strict=True))


ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(bool)": np.bool_,
}


def _empty_outputs(session: ort.InferenceSession) -> dict[str, np.ndarray]:
    """Each output with 0 rows: its declared element type and its fixed trailing dims (a
    symbolic trailing dim counts 0)."""
    out: dict[str, np.ndarray] = {}
    for o in session.get_outputs():
        tail = [d if isinstance(d, int) else 0 for d in o.shape[1:]]
        out[o.name] = np.zeros((0, *tail), ORT_TYPES.get(o.type, np.float32))
    return out


def trim_memory() -> None:
    """Give memory freed after a load back to the system: Arrow's pool keeps what reading the
    catalogue used, and glibc's heap keeps the freed temporaries of NumPy (at 1M pins about
    220 MB of a scorer's resident memory). Best effort: a no-op where either is unavailable."""
    import contextlib
    import ctypes

    import pyarrow as pa

    pa.default_memory_pool().release_unused()
    with contextlib.suppress(OSError, AttributeError):  # not glibc (macOS, musl)
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def inline_external(data: bytes, read: Callable[[str], bytes], where: str) -> bytes:
    """The model ``data`` with every external tensor's bytes put back in, read by ``read`` from
    the package-relative location the tensor names (:mod:`pinrank.export.tensors`): ONNX Runtime
    gets a self-contained model and never opens a path a graph names. Only initializers of the
    main graph may be external; each must name a location, an offset and a length that fit its
    file and equal its type's size times its shape. Anything else is a PackageError."""
    from onnx import ModelProto, TensorProto, helper

    model = ModelProto()
    try:
        model.ParseFromString(data)
    except Exception as err:  # protobuf's DecodeError, or anything else a bad file raises
        raise PackageError(f"{where} is not an ONNX model ({err})") from None
    changed = False
    for t in model.graph.initializer:
        if t.data_location != TensorProto.EXTERNAL and not len(t.external_data):
            continue
        fields = {e.key: e.value for e in t.external_data}
        bad = f"{where}: tensor {t.name!r} has external data"
        if set(fields) - {"location", "offset", "length"} or t.data_type in (
            TensorProto.STRING,
            TensorProto.UNDEFINED,
        ):
            raise PackageError(f"{bad} that the package format does not allow ({fields})")
        try:
            blob = read(fields.get("location", ""))
        except PackageError as err:
            raise PackageError(f"{bad}: {err}") from None
        try:
            offset, length = int(fields.get("offset", "0")), int(fields["length"])
            itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
        except (KeyError, ValueError, TypeError):
            raise PackageError(f"{bad} with a bad offset, length or type ({fields})") from None
        expected = itemsize * int(np.prod(list(t.dims), dtype=np.int64))
        if offset < 0 or length != expected or offset + length > len(blob):
            raise PackageError(
                f"{bad} of {length} bytes at {offset} in {fields['location']!r} "
                f"({len(blob)} bytes); its type and shape take {expected}"
            )
        del t.external_data[:]
        t.data_location = TensorProto.DEFAULT
        t.raw_data = blob[offset : offset + length]
        changed = True
    for t in _tensors(model):  # anywhere else (attributes, subgraphs, functions): never
        if t.data_location == TensorProto.EXTERNAL or len(t.external_data):
            raise PackageError(f"{where}: tensor {t.name!r} has external data outside the graph's "
                               "initializers, which the package format does not allow")  # fmt: skip
    return model.SerializeToString() if changed else data


def _tensors(model: Any) -> Iterator[Any]:
    """Every TensorProto of a model: initializers, sparse initializers and attribute tensors, in
    the main graph, every subgraph and every function."""
    graphs, nodes = [model.graph], [n for f in model.functions for n in f.node]
    while graphs or nodes:
        if graphs:
            g = graphs.pop()
            yield from g.initializer
            for sparse in g.sparse_initializer:
                yield from (sparse.values, sparse.indices)
            nodes.extend(g.node)
            continue
        for a in nodes.pop().attribute:
            if a.HasField("t"):
                yield a.t
            yield from a.tensors
            if a.HasField("g"):
                graphs.append(a.g)
            graphs.extend(a.graphs)
