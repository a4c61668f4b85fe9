"""The model registry: every exported package registered once, byte for byte, with its metrics
and provenance; aliases ``candidate`` and ``production``; promotion and rollback.

MLflow's model registry is the backend (the embedded SQLite store, or a team's tracking server:
:func:`~pinrank.lifecycle.tracking.tracking_uri`). A registration is one MLflow run in the
experiment ``pinrank/registry`` that holds the package folder as its artifacts (``package/``),
the package's version and provenance as tags and every model's final report as metrics, and one
version of the registered model (default name ``pinrank``) whose source is that folder. The
package stays the unit of deployment: :meth:`Registry.fetch` downloads it and loads it under the
caller's trust policy (every file hashed, the signature checked) before handing out its path,
and a package whose version is not the registered one is refused.

Registering is idempotent and resumable: a package is looked up by its version (the first 16 hex
digits of its manifest's sha256) first, an interrupted upload is finished in the same run, and a
second registration of the same bytes returns the first.

Example::

    >>> registry = Registry()  # doctest: +SKIP
    >>> v = registry.register("outputs/packages/demo", trust)  # doctest: +SKIP
    >>> registry.promote("candidate", reason="beats production on the hold-out")  # doctest: +SKIP
    >>> registry.fetch("production", "outputs/registry", trust)  # doctest: +SKIP
    PosixPath('outputs/registry/3f2a...')
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pinrank.lifecycle.tracking import metric_name, numbers, sqlite_path, tracking_uri
from pinrank.serving.package import Package, PackageError, load_package
from pinrank.serving.signing import Trust

NAME = "pinrank"
EXPERIMENT = "pinrank/registry"
CANDIDATE, PRODUCTION = "candidate", "production"
HISTORY = "pinrank.production_history"  # registered-model tag: production's versions, in order
VERSION_TAG = "pinrank.version"
UPLOADED = "pinrank.uploaded"
KEEP_HISTORY = 200


class RegistryError(ValueError):
    """A version or alias that is not there, or a registry that cannot do what was asked."""


@dataclass
class Version:
    """One registered package."""

    number: int  # MLflow's model version
    package_version: str  # the package's own version (manifest digest)
    aliases: list[str]
    created_at: str
    source: str  # where its files are (the registration run's artifacts)
    run_id: str
    tags: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.number, "package_version": self.package_version,
            "aliases": self.aliases, "created_at": self.created_at, "source": self.source,
            "run_id": self.run_id, "tags": self.tags, "metrics": self.metrics,
        }  # fmt: skip


class Registry:
    """The registered model ``name`` in the MLflow registry at ``uri`` (module docstring)."""

    def __init__(self, uri: str | None = None, name: str = NAME) -> None:
        try:
            from mlflow import MlflowClient
        except ImportError:
            raise RegistryError(
                "the model registry needs MLflow: pip install 'pinrank[lifecycle]'"
            ) from None
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # fetch's logs
        self.uri = tracking_uri(uri)
        sqlite_path(self.uri)  # the embedded store's folder
        self.name = name
        self.client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)

    # ----------------------------------------------------------------------------- reading

    def versions(self) -> list[Version]:
        """Every registered version, oldest first."""
        if not self._exists():
            return []
        found = self.client.search_model_versions(f"name = '{self.name}'")
        aliases = self._aliases()
        out = [self._version(mv, aliases) for mv in found]
        return sorted(out, key=lambda v: v.number)

    def get(self, ref: str | int) -> Version:
        """A version by alias (``production``, ``@candidate``), number (``3``, ``v3``) or
        package version (its 16 hex digits, or a unique prefix of at least 6)."""
        text = str(ref).strip().removeprefix("@")
        versions = self.versions()
        aliases = self._aliases() if versions else {}
        if text in aliases:
            number = aliases[text]
            return next(v for v in versions if v.number == number)
        digits = text.removeprefix("v")
        if digits.isdigit() and len(digits) < 6:
            for v in versions:
                if v.number == int(digits):
                    return v
        matches = [v for v in versions if len(text) >= 6 and v.package_version.startswith(text)]
        if len(matches) == 1:
            return matches[0]
        known = ", ".join(f"v{v.number} {v.package_version}" for v in versions) or "none"
        what = "ambiguous" if matches else "not registered"
        raise RegistryError(f"{ref!r} is {what} in {self.name!r} at {self.uri} (versions: "
                            f"{known}; aliases: {sorted(aliases) or 'none'})")  # fmt: skip

    def find(self, package_version: str) -> Version | None:
        """The version that holds the package of this version, if registered."""
        for v in self.versions():
            if v.package_version == package_version:
                return v
        return None

    def history(self) -> list[int]:
        """The versions ``production`` pointed to, in order (the last is the current one)."""
        if not self._exists():
            return []
        tags = self.client.get_registered_model(self.name).tags
        return [int(n) for n in json.loads(tags.get(HISTORY, "[]"))]

    # ----------------------------------------------------------------------------- writing

    def register(
        self, package_dir: str | Path, trust: Trust, alias: str | None = CANDIDATE,
        description: str = "",
    ) -> Version:  # fmt: skip
        """Register the package at ``package_dir`` (loaded under ``trust`` first: a package that
        does not load is never registered) and point ``alias`` at it; the existing version when
        these bytes are registered already."""
        package = load_package(package_dir, trust)
        existing = self.find(package.version)
        if existing is None:
            self._ensure_model()
            run = self._registration_run(package, description)
            self.client.create_model_version(
                self.name,
                source=f"{run.info.artifact_uri}/package",
                run_id=run.info.run_id,
                tags=_tags(package),
                description=description or None,
            )
            existing = self.find(package.version)
            if existing is None:
                raise RegistryError(f"{package.root} was registered but is not found")
        if alias is not None and alias not in existing.aliases:
            self.client.set_registered_model_alias(self.name, alias, str(existing.number))
            existing = self.get(existing.number)
        return existing

    def set_alias(self, alias: str, ref: str | int) -> Version:
        """Point ``alias`` at a version."""
        version = self.get(ref)
        self.client.set_registered_model_alias(self.name, alias, str(version.number))
        return self.get(version.number)

    def promote(self, ref: str | int = CANDIDATE, reason: str = "") -> Version:
        """Point ``production`` at a version (default: the candidate) and record it in the
        production history; the version gets ``pinrank.promoted_at`` and the reason."""
        version = self.get(ref)
        number = str(version.number)
        self.client.set_model_version_tag(self.name, number, "pinrank.promoted_at", _now())
        if reason:
            self.client.set_model_version_tag(self.name, number, "pinrank.promotion_reason",
                                              reason[:5000])  # fmt: skip
        self.client.set_registered_model_alias(self.name, PRODUCTION, number)
        history = self.history()
        if not history or history[-1] != version.number:
            self._set_history([*history, version.number])
        return self.get(version.number)

    def rollback(self) -> Version:
        """Point ``production`` back at the version it pointed to before the current one."""
        history = self.history()
        if len(history) < 2:
            raise RegistryError(
                f"{self.name!r} has no earlier production version to roll back to "
                f"(production history: {history or 'empty'})"
            )
        current, previous = history[-1], history[-2]
        self.client.set_model_version_tag(self.name, str(current), "pinrank.rolled_back_at",
                                          _now())  # fmt: skip
        self.client.set_registered_model_alias(self.name, PRODUCTION, str(previous))
        self._set_history(history[:-1])
        return self.get(previous)

    def fetch(self, ref: str | int, cache: str | Path, trust: Trust) -> Path:
        """A local copy of a registered package, loaded under ``trust`` and checked to be the
        registered version: ``cache/<package version>``, downloaded once."""
        import mlflow.artifacts

        version = self.get(ref)
        dest = Path(cache) / version.package_version
        if dest.exists():
            if _loads_as(dest, trust, version.package_version):
                return dest
            shutil.rmtree(dest)  # a partial or altered copy: fetched again
        dest.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
        try:
            got = Path(mlflow.artifacts.download_artifacts(
                artifact_uri=version.source, dst_path=str(work), tracking_uri=self.uri
            ))  # fmt: skip
            package = load_package(got, trust)
            if package.version != version.package_version:
                raise PackageError(
                    f"registered v{version.number} is package {version.package_version}, but "
                    f"its files at {version.source} are package {package.version}"
                )
            got.rename(dest)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return dest

    def log_holdout(self, ref: str | int, holdout: str, values: list[tuple[Any, float]]) -> None:
        """Record a version's metrics on a hold-out (``(metric, value)`` pairs of
        :class:`~pinrank.lifecycle.compare.Metric`) on its registration run, as
        ``holdout/<slice>/<metric>``, and the hold-out's name as a tag: what
        ``pinrank models history`` draws."""
        from mlflow.entities import Metric

        version = self.get(ref)
        now = int(datetime.now(UTC).timestamp() * 1e3)
        rows = [Metric(metric_name(f"holdout/{m.slice}/{m.name}"), float(v), now, 0)
                for m, v in values if v == v]  # fmt: skip
        for start in range(0, len(rows), 500):
            self.client.log_batch(version.run_id, metrics=rows[start : start + 500])
        self.client.set_tag(version.run_id, "pinrank.holdout", holdout[:5000])

    # ----------------------------------------------------------------------------- inside

    def _exists(self) -> bool:
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_registered_model(self.name)
        except MlflowException:
            return False
        return True

    def _ensure_model(self) -> None:
        from mlflow.exceptions import MlflowException

        if self._exists():
            return
        try:
            self.client.create_registered_model(
                self.name, description="pinrank model packages (pinrank models --help)"
            )
        except MlflowException:  # created meanwhile by another process
            if not self._exists():
                raise

    def _aliases(self) -> dict[str, int]:
        model = self.client.get_registered_model(self.name)
        return {a: int(n) for a, n in (model.aliases or {}).items()}

    def _set_history(self, history: list[int]) -> None:
        text = json.dumps(history[-KEEP_HISTORY:])
        self.client.set_registered_model_tag(self.name, HISTORY, text)

    def _version(self, mv: Any, aliases: dict[str, int]) -> Version:
        run = self.client.get_run(mv.run_id) if mv.run_id else None
        return Version(
            number=int(mv.version),
            package_version=str(mv.tags.get(VERSION_TAG, "")),
            aliases=sorted(a for a, n in aliases.items() if n == int(mv.version)),
            created_at=datetime.fromtimestamp(mv.creation_timestamp / 1e3, UTC).isoformat(
                timespec="seconds"
            ),
            source=str(mv.source),
            run_id=str(mv.run_id or ""),
            tags=dict(mv.tags),
            metrics=dict(run.data.metrics) if run is not None else {},
        )

    def _registration_run(self, package: Package, description: str) -> Any:
        """The registration run of this package: one whose upload finished, else a new one
        (or an unfinished one, whose upload is done again)."""
        experiment = self.client.get_experiment_by_name(EXPERIMENT)
        if experiment is None:
            from pinrank.lifecycle.tracking import artifact_root

            experiment_id = self.client.create_experiment(
                EXPERIMENT, artifact_location=artifact_root(self.uri)
            )
        else:
            experiment_id = experiment.experiment_id
        runs = self.client.search_runs(
            [experiment_id], f"tags.`{VERSION_TAG}` = '{package.version}'", max_results=10
        )
        for run in runs:
            if run.data.tags.get(UPLOADED) == "true":
                return run
        run = runs[0] if runs else self.client.create_run(
            experiment_id, tags=_tags(package), run_name=f"package-{package.version}"
        )  # fmt: skip
        run_id = run.info.run_id
        metrics = _package_metrics(package)
        from mlflow.entities import Metric

        now = int(datetime.now(UTC).timestamp() * 1e3)
        values = [Metric(k, v, now, 0) for k, v in metrics.items()]
        for start in range(0, len(values), 500):
            self.client.log_batch(run_id, metrics=values[start : start + 500])
        if description:
            self.client.set_tag(run_id, "mlflow.note.content", description)
        self.client.log_artifacts(run_id, str(package.root), artifact_path="package")
        self.client.set_tag(run_id, UPLOADED, "true")
        self.client.set_terminated(run_id)
        return self.client.get_run(run_id)


def _package_metrics(package: Package) -> dict[str, float]:
    """Each model's final report (the manifest's ``models.<kind>.metrics``), as
    ``<kind>/<metric>``; the interest section's as ``interests/<kind>/<metric>``."""
    out: dict[str, float] = {}
    parts = [("", package.manifest)]
    if package.has_section():
        parts.append(("interests/", package.section().manifest))
    for prefix, manifest in parts:
        for kind, model in manifest.get("models", {}).items():
            values = numbers(model.get("metrics", {}) if isinstance(model, dict) else {})
            out |= {metric_name(f"{prefix}{kind}/{k}"): v for k, v in values.items()}
    return out


def _tags(package: Package) -> dict[str, str]:
    provenance = package.manifest.get("provenance", {})
    kinds = sorted(package.manifest.get("models", {}))
    if package.has_section():
        kinds.append("interests")
    return {
        VERSION_TAG: package.version,
        "pinrank.models": ",".join(kinds),
        "pinrank.signer": str(package.signer or "unsigned"),
        "pinrank.data_fingerprint": str(provenance.get("data", {}).get("fingerprint", "")),
        "pinrank.package_created_at": str(provenance.get("created_at", "")),
        "pinrank.git_commit": str(provenance.get("git", {}).get("commit", "")),
    }


def _loads_as(path: Path, trust: Trust, version: str) -> bool:
    try:
        return load_package(path, trust).version == version
    except PackageError:
        return False


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
