"""The export command, ``pinrank export`` / ``python export.py run_dir=<run> out=<dir>``: a Hydra
app (``conf/export.yaml``) over :func:`pinrank.export.package.build_package`.

``run_dir`` is one training run or a list (a retrieval run and a ranking run trained on the same
data go into one package). ``signing_key`` (default ``$PINRANK_SIGNING_KEY``) is the Ed25519
private key that signs it (``pinrank keygen`` makes one); without it the package is unsigned and
loaders refuse it unless they allow unsigned packages. The package is verified against the
training path before the command returns (``verify.rows=0`` skips it).
"""

from __future__ import annotations

import logging
import shlex
import sys
import time
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from pinrank import logs
from pinrank.resources import CONF_SEARCH_PATH
from pinrank.serving.package import SECTION

log = logging.getLogger("pinrank.export")


def _export(cfg: DictConfig) -> None:
    from pinrank.data.prepare import Prepared
    from pinrank.export.index import IndexConfig
    from pinrank.export.package import build_package
    from pinrank.export.run import TrainedRun
    from pinrank.export.verify import held_out_rows, verify
    from pinrank.serving.signing import load_private_key

    logs.setup()
    t0 = time.perf_counter()
    dirs = cfg.run_dir if OmegaConf.is_list(cfg.run_dir) else [cfg.run_dir]
    runs = [TrainedRun.load(str(d)) for d in dirs]
    command = shlex.join(["python", "export.py", *sys.argv[1:]])
    context = OmegaConf.to_container(cfg.context, resolve=True)
    assert isinstance(context, dict)
    index = OmegaConf.to_container(cfg.index, resolve=True) if "index" in cfg else None
    assert index is None or isinstance(index, dict)
    key = load_private_key(cfg.signing_key) if cfg.signing_key else None
    if key is None:
        log.warning("export: no signing_key: the package is UNSIGNED (development only)")
    package = build_package(
        runs, cfg.out, command, {str(k): v for k, v in context.items()},
        overwrite=cfg.overwrite, signing_key=key, exporter=cfg.exporter,
        index=IndexConfig.from_dict({str(k): v for k, v in index.items()} if index else None),
    )  # fmt: skip
    graphs = ", ".join(package.manifest["graphs"])
    signed = f"signed by key {package.signer}" if package.signer else "unsigned"
    print(f"[export] {package.root}: {graphs}; {len(package.manifest['files'])} files, "
          f"version {package.version}, {signed} ({time.perf_counter() - t0:.1f}s)")  # fmt: skip
    if "index" in package.manifest:
        ix = package.manifest["index"]
        print(f"[export] index {ix['factory']} {ix['params']} ({ix['chosen_by']}): "
              f"recall@{ix['recall']['k']} {ix['recall']['recall_vs_exact']:.4f} vs exact "
              f"over {ix['recall']['queries']} held-out users")  # fmt: skip
    if cfg.verify.rows:
        failed = False
        for part, run in _parts(package, runs):
            tables = held_out_rows(Prepared.load(run.prepared.root), cfg.verify.split,
                                   cfg.verify.rows)  # fmt: skip
            report = verify(part, tables, tol=cfg.verify.tol)
            print(report if part is package else f"[{SECTION}] {report}")
            failed |= not report.ok
        if failed:
            raise SystemExit(1)


def _parts(package: Any, runs: list[Any]) -> list[tuple[Any, Any]]:
    """(package or section, the run whose data verifies it): the pin models' package and, where
    it has one, the interest section."""
    pins = [r for r in runs if r.kind != "interests"]
    interest = [r for r in runs if r.kind == "interests"]
    if not pins:  # an interest model alone is the package
        return [(package, interest[0])]
    return [(package, pins[0])] + [(package.section(), r) for r in interest]


main = hydra.main(version_base="1.3", config_path=CONF_SEARCH_PATH, config_name="export")(_export)
