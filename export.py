"""Export trained runs to one model package: ``python export.py run_dir=<run> out=<dir>``.

A thin Hydra shell (``conf/export.yaml``) over :func:`pinrank.export.package.build_package`:
``run_dir`` is one training run or a list (a retrieval run and a ranking run trained on the same
data go into one package). The package is verified against the training path before the command
returns (``verify.rows=0`` skips it).
"""

from __future__ import annotations

import shlex
import sys
import warnings

import hydra
from omegaconf import DictConfig, OmegaConf

from pinrank.data.prepare import Prepared
from pinrank.export.package import build_package
from pinrank.export.run import TrainedRun
from pinrank.export.verify import held_out_rows, verify

warnings.filterwarnings("ignore")


@hydra.main(version_base="1.3", config_path="conf", config_name="export")
def main(cfg: DictConfig) -> None:
    dirs = cfg.run_dir if OmegaConf.is_list(cfg.run_dir) else [cfg.run_dir]
    runs = [TrainedRun.load(str(d)) for d in dirs]
    command = shlex.join(["python", "export.py", *sys.argv[1:]])
    context = OmegaConf.to_container(cfg.context, resolve=True)
    assert isinstance(context, dict)
    package = build_package(runs, cfg.out, command, {str(k): v for k, v in context.items()},
                            overwrite=cfg.overwrite)  # fmt: skip
    graphs = ", ".join(package.manifest["graphs"])
    print(f"package: {package.root} ({graphs}; {len(package.manifest['files'])} files)")
    if cfg.verify.rows:
        tables = held_out_rows(Prepared.load(runs[0].prepared.root), cfg.verify.split,
                               cfg.verify.rows)  # fmt: skip
        report = verify(package, tables, tol=cfg.verify.tol)
        print(report)
        if not report.ok:
            raise SystemExit(1)


if __name__ == "__main__":
    main()
