"""Experiment tracking: where a training run's config, metrics and files go besides its folder.

``python train.py logger=mlflow`` logs to MLflow: per-epoch metrics through Lightning's
``MLFlowLogger`` while fitting, then (:func:`finish_run`) the resolved config as parameters, every
number of the final report (``metrics.json``) as a metric, the run's kind, data fingerprint and
folder as tags, and the whole run folder (``run.json``, ``metrics.json``, plots, checkpoints) as
artifacts, so a run found in MLflow can be exported. ``logger=tensorboard`` writes event files
(per epoch, and the final report at the last step). ``logger=csv``, the default, needs nothing
installed and is what every run writes anyway (``csv/metrics.csv``).

Where MLflow logs (:func:`tracking_uri`): ``$MLFLOW_TRACKING_URI`` when set (a team's tracking
server, ``http://host:5000``), else the embedded store, a SQLite file under ``outputs/mlflow``
with its artifacts beside it: no server to run.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

ENV = "MLFLOW_TRACKING_URI"
EMBEDDED_DIR = Path("outputs") / "mlflow"
PARAM_CHARS = 6000  # MLflow's longest parameter value
BAD_CHARS = re.compile(r"[^A-Za-z0-9_\-. :/]")  # what MLflow refuses in a name
BATCH = 100  # entities per log_batch call (MLflow takes at most 100 params, 1,000 metrics)


def tracking_uri(uri: str | None = None) -> str:
    """``uri`` when given, else ``$MLFLOW_TRACKING_URI``, else the embedded store
    (``sqlite:///outputs/mlflow/mlflow.db``, relative to the working folder)."""
    return uri or os.environ.get(ENV) or f"sqlite:///{EMBEDDED_DIR / 'mlflow.db'}"


def artifact_root(uri: str) -> str | None:
    """Where new experiments keep their artifacts: beside a SQLite store's file (MLflow's own
    default is ``./mlartifacts`` of whatever folder the command runs in); ``None`` for a
    server, which chooses (``mlflow server --artifacts-destination``)."""
    path = sqlite_path(uri)
    return (path.parent / "artifacts").resolve().as_uri() if path is not None else None


def sqlite_path(uri: str) -> Path | None:
    """The file of a ``sqlite:///`` URI (its folder created), else ``None``."""
    if not uri.startswith("sqlite:///"):
        return None
    path = Path(uri.removeprefix("sqlite:///"))
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def flatten(tree: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """``(dotted.key, leaf)`` of a nested mapping; lists stay leaves.

    Example::

        >>> dict(flatten({"model": {"lr": 0.1, "hidden": [8]}, "seed": 0}))
        {'model.lr': 0.1, 'model.hidden': [8], 'seed': 0}
    """
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            yield from flatten(value, f"{name}.")
        else:
            yield name, value


def metric_name(name: str) -> str:
    """A metric's name as MLflow takes it: ``@`` written ``_at_`` (``test/recall@20`` ->
    ``test/recall_at_20``), any other character MLflow refuses as ``_``."""
    return BAD_CHARS.sub("_", name.replace("@", "_at_"))


def numbers(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The finite or NaN numbers of a (nested) metrics mapping, by dotted name; booleans and
    strings left out."""
    out = {}
    for name, value in flatten(metrics):
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if number and not math.isinf(value):
            out[name] = float(value)
    return out


def finish_run(loggers: Iterable[Any], out_dir: str | Path, metrics: Mapping[str, Any],
               config: Mapping[str, Any], step: int) -> None:  # fmt: skip
    """Hand the final report to each logger that keeps one (module docstring): MLflow and
    TensorBoard; the CSV logger's file already has the epochs, and ``metrics.json`` the rest."""
    from pytorch_lightning.loggers import MLFlowLogger, TensorBoardLogger

    for logger in loggers:
        if isinstance(logger, MLFlowLogger):
            _finish_mlflow(logger, Path(out_dir), metrics, config)
        elif isinstance(logger, TensorBoardLogger):
            logger.log_metrics(numbers(metrics), step=step)
            logger.save()


def _finish_mlflow(logger: Any, out_dir: Path, metrics: Mapping[str, Any],
                   config: Mapping[str, Any]) -> None:  # fmt: skip
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.utils.time import get_current_time_millis

    client, run_id = logger.experiment, logger.run_id
    have = client.get_run(run_id).data.params  # Lightning may have logged some already
    params = [Param(k, _param_text(v)) for k, v in flatten(config) if k not in have]
    now = get_current_time_millis()
    values = [Metric(metric_name(k), v, now, 0) for k, v in numbers(metrics).items()]
    record = _run_record(out_dir)
    tags = [
        RunTag("pinrank.run_dir", str(out_dir.resolve())),
        RunTag("pinrank.kind", str(record.get("kind", ""))),
        RunTag("pinrank.data_fingerprint", str(record.get("data", ""))),
    ]
    for start in range(0, max(len(params), len(values)), BATCH):
        client.log_batch(
            run_id, metrics=values[start : start + BATCH], params=params[start : start + BATCH]
        )
    client.log_batch(run_id, tags=tags)
    client.log_artifacts(run_id, str(out_dir), artifact_path="run")


def _param_text(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= PARAM_CHARS else text[: PARAM_CHARS - 3] + "..."


def _run_record(out_dir: Path) -> dict[str, Any]:
    path = out_dir / "run.json"
    return json.loads(path.read_text()) if path.exists() else {}
