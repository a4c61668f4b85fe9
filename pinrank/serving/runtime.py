"""Running a package's graphs: ONNX Runtime sessions with execution providers chosen from what
is installed and what the caller asks for (TensorRT, CUDA, CPU). No torch here.

A *backend* is anything with ``run(graph, inputs) -> {output: array}`` over a package's graph
names; :class:`OnnxBackend` is the default, and ``pinrank.export.torch_backend.TorchBackend``
runs the same networks in torch (for GPU machines without onnxruntime-gpu).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import onnxruntime as ort

from pinrank.serving.package import Package

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

    def session(self, graph: str) -> ort.InferenceSession:
        if graph not in self._sessions:
            opts = ort.SessionOptions()
            if self.threads:
                opts.intra_op_num_threads = self.threads
            opts.log_severity_level = 3
            path = str(self.package.graph_path(graph))
            self._sessions[graph] = ort.InferenceSession(path, opts, providers=self.providers)
        return self._sessions[graph]

    def run(self, graph: str, inputs: dict[str, Any]) -> dict[str, np.ndarray]:
        """Run one graph on named arrays (extra entries are ignored)."""
        session = self.session(graph)
        names = [i.name for i in session.get_inputs()]
        missing = [n for n in names if n not in inputs]
        if missing:
            raise KeyError(f"graph {graph!r} needs inputs {missing}")
        outs = session.run(None, {n: inputs[n] for n in names})
        return dict(zip([o.name for o in session.get_outputs()], outs, strict=True))
