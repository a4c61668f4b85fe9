"""``pinrank models``: the model registry (:mod:`pinrank.lifecycle.registry`) from the command
line: list, show, register, promote, rollback, fetch."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from pinrank.cli.common import HelpFormatter
from pinrank.serving.signing import add_trust_arguments, trust_from_args

# the headline metrics `list` shows per version (registered as <model kind>/<metric>)
HEADLINE = {
    "ranking/test/auc": "ranker AUC",
    "retrieval/test/recall_at_20": "recall@20",
    "interests/interests/cold/auc": "interests AUC",
}


def _registry(args: argparse.Namespace) -> Any:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from pinrank.lifecycle.registry import Registry

    return Registry(args.tracking_uri, args.name)


def cmd_list(args: argparse.Namespace) -> None:
    """Every registered version, oldest first: its aliases, package version, when it was
    registered, what data it was trained on and its headline metrics."""
    registry = _registry(args)
    versions = registry.versions()
    if args.json:
        print(json.dumps([v.to_dict() for v in versions], indent=2))
        return
    if not versions:
        print(f"[models] {registry.name!r} at {registry.uri}: nothing registered")
        return
    print(f"[models] {registry.name!r} at {registry.uri}: {len(versions)} versions")
    header = f"{'version':>7}  {'package':16}  {'aliases':22}  {'registered':25}  {'data':8}"
    print(header + "".join(f"  {label:>13}" for label in HEADLINE.values()))
    for v in versions:
        cells = "".join(
            f"  {v.metrics[m]:13.4f}" if m in v.metrics else f"  {'-':>13}" for m in HEADLINE
        )
        data = v.tags.get("pinrank.data_fingerprint", "")[:8]
        print(f"{v.number:>7}  {v.package_version:16}  {','.join(v.aliases) or '-':22}  "
              f"{v.created_at:25}  {data:8}{cells}")  # fmt: skip


def cmd_show(args: argparse.Namespace) -> None:
    """One version in full (JSON): tags, provenance, every registered metric, its source."""
    print(json.dumps(_registry(args).get(args.ref).to_dict(), indent=2, sort_keys=True))


def cmd_register(args: argparse.Namespace) -> None:
    """Register a package (loaded and checked under the trust flags first); the version it
    already has when these bytes are registered. Points ``--alias`` at it."""
    alias = None if args.alias == "none" else args.alias
    v = _registry(args).register(args.package, trust_from_args(args), alias, args.description)
    print(f"[models] {args.package}: v{v.number} (package {v.package_version}), aliases "
          f"{v.aliases or 'none'}")  # fmt: skip


def cmd_promote(args: argparse.Namespace) -> None:
    """Point ``production`` at a version (default: the candidate)."""
    v = _registry(args).promote(args.ref, args.reason)
    print(f"[models] production is v{v.number} (package {v.package_version})")


def cmd_rollback(args: argparse.Namespace) -> None:
    """Point ``production`` back at the version before the current one."""
    v = _registry(args).rollback()
    print(f"[models] production rolled back to v{v.number} (package {v.package_version})")


def cmd_fetch(args: argparse.Namespace) -> None:
    """Download a registered package into ``--out/<package version>`` (once), load it under the
    trust flags and check it is the registered version; prints its path."""
    path = _registry(args).fetch(args.ref, args.out, trust_from_args(args))
    print(path)


def register(sub: Any) -> None:
    models = sub.add_parser(
        "models",
        help="the model registry: list, show, register, promote, rollback, fetch, history",
        description=__doc__,
        formatter_class=HelpFormatter,
        epilog="examples:\n  pinrank models register outputs/packages/demo --trusted-key "
        "outputs/keys/signing.pub\n  pinrank models list\n  pinrank models promote candidate "
        "--reason 'beats production on the hold-out'\n  pinrank models rollback\n  "
        "MLFLOW_TRACKING_URI=http://127.0.0.1:5000 pinrank models list",
    )
    actions = models.add_subparsers(dest="action", required=True, metavar="ACTION")

    def action(name: str, func: Any, summary: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = actions.add_parser(
            name, help=summary, description=func.__doc__, formatter_class=HelpFormatter
        )
        p.set_defaults(func=func)
        p.add_argument(
            "--tracking-uri",
            help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else "
            "sqlite:///outputs/mlflow/mlflow.db)",
        )
        p.add_argument("--name", default="pinrank", help="the registered model")
        return p

    p = action("list", cmd_list, "every registered version")
    p.add_argument("--json", action="store_true", help="as JSON")
    p = action("show", cmd_show, "one version in full")
    p.add_argument("ref", help="an alias (production, candidate), a number or a package version")
    p = action("register", cmd_register, "register a package")
    p.add_argument("package", help="a model package folder")
    p.add_argument("--alias", default="candidate", help="the alias to point at it (none: no alias)")
    p.add_argument("--description", default="", help="a note kept with it")
    add_trust_arguments(p)
    p = action("promote", cmd_promote, "point production at a version")
    p.add_argument("ref", nargs="?", default="candidate", help="the version (default: candidate)")
    p.add_argument("--reason", default="", help="why (kept with the version)")
    action("rollback", cmd_rollback, "point production at the version before")
    p = action("history", cmd_history, "every version's hold-out metrics, and a plot")
    p.add_argument("--out", default="outputs/registry_history.png", help="the plot")
    p = action("fetch", cmd_fetch, "download a registered package, checked")
    p.add_argument("ref", help="an alias, a number or a package version")
    p.add_argument("--out", default="outputs/registry", help="the local package cache")
    add_trust_arguments(p)


def cmd_compare(args: argparse.Namespace) -> None:
    """Score a hold-out with packages A and B through the serving path and report every
    retrieval and ranking metric for both, B - A with a paired bootstrap interval over users,
    per slice (new / warm users, popular / niche pins), and whether B is better by the
    thresholds of ``--config``. A package is a folder, or a registered version (``@production``,
    ``@candidate``, ``@3``), fetched into ``outputs/registry``. Writes compare.json and
    compare.png to ``--out``; exits 3 when B is not better (``--check``)."""
    import yaml

    from pinrank.lifecycle import compare as cmp
    from pinrank.resources import conf_file

    path = Path(args.config) if args.config else conf_file("compare.yaml")
    config = cmp.CompareConfig.from_dict(yaml.safe_load(path.read_text()) or {})
    trust = trust_from_args(args)
    folders = [_package_folder(args, ref, trust) for ref in (args.a, args.b)]
    holdout = cmp.load_holdout(args.holdout, args.split, config)
    print(f"[compare] hold-out {holdout.name}: {len(holdout.user_ids):,} users, "
          f"{holdout.events.num_rows:,} impressions")  # fmt: skip
    a, b = (cmp.score_package(f, trust, holdout, config.k) for f in folders)
    metrics = cmp.compare_scores(holdout, a, b, config)
    decision = cmp.verdict(metrics, config)
    labels = (f"{args.a} ({a.version})", f"{args.b} ({b.version})")
    report = cmp.write_report(args.out, holdout, a, b, labels, metrics, decision, config)
    print(cmp.summary(metrics, decision, labels))
    print(f"[compare] wrote {report} and {report.with_suffix('.png')}")
    if args.check and not decision.better:
        raise SystemExit(3)


def _package_folder(args: argparse.Namespace, ref: str, trust: Any) -> Path:
    if not ref.startswith("@"):
        return Path(ref)
    return Path(_registry(args).fetch(ref[1:], args.cache, trust))


def register_compare(sub: Any) -> None:
    from pinrank.cli.common import command

    c = command(
        sub,
        "compare",
        "two model packages on the same hold-out, with paired bootstrap intervals",
        cmd_compare,
        [
            "pinrank compare outputs/packages/old outputs/packages/new --holdout "
            "data/demo/prepared --trusted-key outputs/keys/signing.pub",
            "pinrank compare @production @candidate --holdout data/demo/prepared --split cold",
        ],
    )
    c.add_argument("a", help="package A (the reference, e.g. production): a folder or @alias")
    c.add_argument("b", help="package B (the candidate): a folder or @alias")
    c.add_argument("--holdout", required=True, help="a prepared data set")
    c.add_argument("--split", default="test", help="its split that is the hold-out")
    c.add_argument("--config", help="compare settings (default: the shipped conf/compare.yaml)")
    c.add_argument("--out", default="outputs/compare", help="where the report goes")
    c.add_argument("--check", action="store_true", help="exit 3 when B is not better")
    c.add_argument("--tracking-uri", help="MLflow tracking URI for @refs")
    c.add_argument("--name", default="pinrank", help="the registered model for @refs")
    c.add_argument("--cache", default="outputs/registry", help="where @refs are fetched to")
    add_trust_arguments(c)


def cmd_retrain(args: argparse.Namespace) -> None:
    """Run a lifecycle's days (``--day``, or 0 through ``--through``): each day's data, training,
    export, registration and evaluation against production on the long-term hold-out, promoting
    only what is better (pinrank/lifecycle/retrain.py). Resumable: a day killed midway and run
    again finishes the steps not yet done."""
    from pinrank.lifecycle.retrain import LifecycleConfig, Retrain

    overrides: dict[str, Any] = {}
    if args.tracking_uri:
        overrides["tracking_uri"] = args.tracking_uri
    if args.work:
        overrides["work"] = args.work
    retrain = Retrain(LifecycleConfig.load(args.config, overrides))
    last = args.day if args.day is not None else args.through
    first = args.day if args.day is not None else 0
    for day in range(first, last + 1):
        state = retrain.run_day(day)
        decision = state["evaluate"]
        verdict = "promoted" if decision["promoted"] else "not promoted"
        print(f"[retrain] day {day}: v{decision['candidate']} {verdict}: "
              f"{'; '.join(decision['reasons'])}")  # fmt: skip


def register_retrain(sub: Any) -> None:
    from pinrank.cli.common import command

    r = command(
        sub,
        "retrain",
        "continuous retraining: a lifecycle's days, promoting only what is better",
        cmd_retrain,
        [
            "pinrank retrain --config conf/lifecycle/week.yaml --through 5",
            "pinrank retrain --config conf/lifecycle/week.yaml --day 3",
        ],
    )
    r.add_argument("--config", required=True, help="a lifecycle (conf/lifecycle/*.yaml)")
    days = r.add_mutually_exclusive_group(required=True)
    days.add_argument("--day", type=int, help="run this day (the days before it must be done)")
    days.add_argument("--through", type=int, help="run days 0 through this one")
    r.add_argument("--work", help="the work folder (default: the lifecycle's)")
    r.add_argument("--tracking-uri", help="the registry (default: the lifecycle's, else "
                   "$MLFLOW_TRACKING_URI, else the embedded store)")  # fmt: skip


def cmd_history(args: argparse.Namespace) -> None:
    """Every registered version's metrics on the long-term hold-out (recorded when it was
    compared), which ones served as production, and a plot of them (``--out``)."""
    from pinrank.lifecycle.history import METRICS, history_rows, plot_history

    rows = history_rows(_registry(args))
    print(f"{'version':>7}  {'day':>3}  {'served':6}  {'verdict':18}" +
          "".join(f"  {m:>20}" for m in METRICS))  # fmt: skip
    for r in rows:
        cells = "".join(f"  {r[m]:20.4f}" if r[m] is not None else f"  {'-':>20}" for m in METRICS)
        print(f"{r['version']:>7}  {r['day'] or '-':>3}  {'yes' if r['served'] else 'no':6}  "
              f"{(r['verdict'] or '-')[:18]:18}{cells}")  # fmt: skip
    if rows:
        print(f"[models] wrote {plot_history(rows, args.out)}")
