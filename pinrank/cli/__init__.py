"""``pinrank``: one command for the whole pipeline.

  data       generate, inspect, ingest, prepare, report
  models     train, export                 (Hydra apps over the shipped configs)
  packages   keygen, verify, feed, users, feeds
  lifecycle  models list|show|register|promote|rollback|fetch, compare, retrain
  service    serve                         (the HTTP feed service)
  demo       demo                          (the data stage of `make demo`)

Examples::

    pinrank generate --out data/synth --users 4000 --items 3000 --events 200000
    pinrank inspect conf/data/ml100k.yaml --out outputs/inspect/ml100k
    pinrank ingest conf/data/ml100k.yaml
    pinrank train data=ml100k model=wide_deep trainer.max_epochs=3
    pinrank export run_dir=outputs/train/runs/RUN out=outputs/packages/mine
    pinrank verify outputs/packages/demo --trusted-key outputs/keys/signing.pub
    pinrank feed outputs/packages/demo --trusted-key outputs/keys/signing.pub --user 7 --k 10
    pinrank feeds outputs/packages/demo --trusted-key outputs/keys/signing.pub \\
        --users data/demo/users --out outputs/feeds/demo
    pinrank serve run outputs/packages/demo --trusted-key outputs/keys/signing.pub \\
        --users data/demo/users.arrow

``pinrank COMMAND --help`` describes a command, its defaults and examples; ``train`` and ``export``
answer with Hydra's help (config groups and the composed config). ``-q`` / ``-v`` / ``-vv`` before
the command set how much is logged (:mod:`pinrank.logs`).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import sys
from typing import Any

from pinrank import logs
from pinrank.cli.common import HelpFormatter
from pinrank.resources import SERVICE_PACKAGE

# commands handed whole to another parser: Hydra's for train / export, the service's for serve
PASS_THROUGH = {
    "train": ("pinrank.training.main", "train a model: pinrank train [model=...] [data=...] ..."),
    "export": ("pinrank.export.main", "export trained runs to a verified model package"),
    "serve": (f"{SERVICE_PACKAGE}.__main__", "the HTTP feed service: pinrank serve run PACKAGE"),
}


def version() -> str:
    try:
        return importlib.metadata.version("pinrank")
    except importlib.metadata.PackageNotFoundError:  # a checkout that was never installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    from pinrank.cli import data, models, packages

    parser = argparse.ArgumentParser(
        prog="pinrank", description=__doc__, formatter_class=HelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"pinrank {version()}")
    level = parser.add_mutually_exclusive_group()
    level.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="more detail (-vv: libraries' debug lines too)",
    )
    level.add_argument("-q", "--quiet", action="store_true", help="warnings and results only")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    data.register(sub)
    for name, (_, summary) in PASS_THROUGH.items():
        p = sub.add_parser(name, help=summary, add_help=False)
        p.add_argument("args", nargs=argparse.REMAINDER)
    packages.register(sub)
    models.register(sub)
    models.register_compare(sub)
    models.register_retrain(sub)
    return parser


def _pass_through(command: str, argv: list[str]) -> int:
    """Run ``serve`` with ``argv``, or ``train`` / ``export`` (Hydra reads ``sys.argv``)."""
    module: Any = importlib.import_module(PASS_THROUGH[command][0])
    if command == "serve":
        module.main(argv, prog="pinrank serve")
        return 0
    saved = sys.argv
    # the module's own file: Lightning starts the other processes of a multi-process trainer
    # (trainer=ddp, trainer=torchrec_dmp) by running sys.argv[0] again
    script = module.__file__ if command == "train" else f"pinrank {command}"
    sys.argv = [script, *argv]
    try:
        module.main()
    finally:
        sys.argv = saved
    return 0


def _split_pass_through(argv: list[str]) -> tuple[int, str, list[str]] | None:
    """(verbosity, command, its arguments) when ``argv`` runs a pass-through command: argparse
    would take the command's own options (``--help``, Hydra's ``-m``) for ours."""
    verbosity, i = 0, 0
    while i < len(argv) and argv[i] in ("-q", "--quiet", "-v", "-vv", "--verbose"):
        verbosity = -1 if argv[i] in ("-q", "--quiet") else verbosity + argv[i].count("v")
        i += 1
    if i < len(argv) and argv[i] in PASS_THROUGH:
        return verbosity, argv[i], argv[i + 1 :]
    return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if (through := _split_pass_through(argv)) is not None:
        verbosity, command, rest = through
        logs.setup(verbosity)
        return _pass_through(command, rest)
    args = build_parser().parse_args(argv)
    logs.setup(-1 if args.quiet else args.verbose)
    try:
        args.func(args)
    except (ValueError, KeyError, TypeError, FileNotFoundError) as err:
        print(f"pinrank {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0
