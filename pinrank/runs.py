"""A finished training run's typed, versioned record: ``run.json`` in its run directory.

``train.py`` writes it last, once the best checkpoint is evaluated; export reads it and nothing
else from the run (no ``metrics.json``, no Hydra files, no walk through a resolved config):

==================  ============================================================================
``kind``            ``retrieval`` (a two-tower network), ``ranking`` (wide-and-deep) or
                    ``interests`` (wide-and-deep on interest examples)
``net``             the network's arguments for :func:`pinrank.models.registry.build_network`
``checkpoint``      the best checkpoint (relative to the run directory when inside it)
``prepared``        the prepared data set the run trained on
``data``            its fingerprint: sha256 over the training split's files and the fitted state
``calibration``     ranking, interests: the score calibration fitted on val
``interests``       interests: the segment's sign-up columns, the candidates file (in the run
                    directory) and the candidates per segment
``retrieval``       retrieval: the index (FAISS factory string, search parameters) and the
                    popularity prior chosen on val
``metrics``         the final report (test metrics, baselines), carried into the package
``train_command``   how to train it again; ``config``: the resolved config, as provenance only
==================  ============================================================================
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RUN_FILE = "run.json"
FORMAT, FORMAT_VERSION = "pinrank-run", 2  # 2: the ranker's weights as tables.* and arch.*
KINDS = ("retrieval", "ranking", "interests")


class RunError(ValueError):
    """A run directory without a valid ``run.json``."""


@dataclass(frozen=True)
class RetrievalSettings:
    """How the retrieval run's index is built and searched."""

    index: str = "Flat"  # a FAISS index_factory string
    index_params: dict[str, Any] = field(default_factory=dict)
    popularity_bias: float = 0.0  # beta of the log-popularity prior chosen on val (0: none)


@dataclass(frozen=True)
class RunRecord:
    """``run.json`` (module docstring)."""

    kind: str
    net: dict[str, Any]
    checkpoint: str
    prepared: str
    data: str
    metrics: dict[str, Any]
    calibration: dict[str, Any] | None = None
    retrieval: RetrievalSettings | None = None
    interests: dict[str, Any] | None = None
    train_command: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    created_at: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise RunError(f"run kind must be one of {KINDS}, got {self.kind!r}")
        if (self.kind == "retrieval") != (self.retrieval is not None):
            raise RunError(f"a {self.kind} run {'needs' if self.kind == 'retrieval' else 'has no'}"
                           " retrieval settings")  # fmt: skip
        if (self.kind == "interests") != (self.interests is not None):
            raise RunError(f"a {self.kind} run {'needs' if self.kind == 'interests' else 'has no'}"
                           " interests settings")  # fmt: skip
        if not isinstance(self.net, dict) or not self.checkpoint or not self.prepared:
            raise RunError("run.json needs net (a mapping), checkpoint and prepared")

    def checkpoint_path(self, run_dir: Path) -> Path:
        path = Path(self.checkpoint)
        return path if path.is_absolute() else run_dir / path

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "format_version": FORMAT_VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunRecord:
        if d.get("format") != FORMAT or d.get("format_version") != FORMAT_VERSION:
            raise RunError(
                f"not a {FORMAT} v{FORMAT_VERSION} record: format {d.get('format')!r} "
                f"v{d.get('format_version')!r}"
            )
        body = {k: v for k, v in d.items() if k not in ("format", "format_version")}
        try:
            if body.get("retrieval") is not None:
                body["retrieval"] = RetrievalSettings(**body["retrieval"])
            return cls(**body)
        except TypeError as err:
            raise RunError(f"run.json: {err}") from None

    def write(self, run_dir: str | Path) -> Path:
        path = Path(run_dir) / RUN_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True))
        return path

    @classmethod
    def read(cls, run_dir: str | Path) -> RunRecord:
        path = Path(run_dir) / RUN_FILE
        if not path.is_file():
            raise RunError(f"{run_dir} is not a finished training run (no {RUN_FILE})")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise RunError(f"{path}: {err}") from None
        if not isinstance(data, dict):
            raise RunError(f"{path}: not a JSON object")
        return cls.from_dict(data)


def relative_to_run(path: str | Path, run_dir: str | Path) -> str:
    """``path`` relative to ``run_dir`` when inside it (the run directory can then move)."""
    p, root = Path(path).resolve(), Path(run_dir).resolve()
    return str(p.relative_to(root)) if p.is_relative_to(root) else str(p)


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def data_fingerprint(files: list[Path]) -> str:
    """sha256 over ``files`` (names and bytes, in the order given)."""
    h = hashlib.sha256()
    for path in files:
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()
