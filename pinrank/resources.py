"""Files pinrank ships: the Hydra configs (``conf/`` in the repository, the package
``pinrank.conf`` once installed) and the deployable service (``serve/``, ``pinrank.service``)."""

from __future__ import annotations

import importlib.resources
from pathlib import Path

CONF_PACKAGE = "pinrank.conf"
CONF_SEARCH_PATH = f"pkg://{CONF_PACKAGE}"
SERVICE_PACKAGE = "pinrank.service"
RESOLVER = "pinrank_conf"  # ${pinrank_conf:} in a config: the shipped conf folder


def conf_dir() -> Path:
    """The folder of the shipped configs (``conf/`` in a checkout, site-packages when installed)."""
    return Path(str(importlib.resources.files(CONF_PACKAGE)))


def conf_file(*parts: str) -> Path:
    """A shipped config file, e.g. ``conf_file("features", "synthetic.yaml")``; a clear error when
    it is not there."""
    path = conf_dir().joinpath(*parts)
    if not path.is_file():
        raise FileNotFoundError(f"{'/'.join(parts)} is not among pinrank's configs ({conf_dir()})")
    return path


def register_resolvers() -> None:
    """Let configs name the shipped conf folder as ``${pinrank_conf:}``, the MLflow tracking
    URI as ``${pinrank_tracking:}`` and its artifact root as ``${pinrank_artifacts:}``
    (:mod:`pinrank.lifecycle.tracking`; idempotent)."""
    from omegaconf import OmegaConf

    from pinrank.lifecycle import tracking

    if not OmegaConf.has_resolver(RESOLVER):
        OmegaConf.register_new_resolver(RESOLVER, lambda: str(conf_dir()))
    if not OmegaConf.has_resolver("pinrank_tracking"):
        OmegaConf.register_new_resolver("pinrank_tracking", lambda: tracking.tracking_uri())
        OmegaConf.register_new_resolver(
            "pinrank_artifacts", lambda: tracking.artifact_root(tracking.tracking_uri())
        )
