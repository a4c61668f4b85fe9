"""The data commands: generate, inspect, ingest, prepare, report and the demo's data stage."""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

from pinrank.cli.common import command
from pinrank.data.prepare import prepare
from pinrank.data.sources import SyntheticSource, load_source
from pinrank.data.splits import SplitConfig
from pinrank.data.synthetic import SyntheticConfig, generate
from pinrank.logs import peak_rss_mb
from pinrank.resources import conf_file


def data_report(prepared: Any) -> Any:
    from pinrank.data.report import data_report as report  # the featurizer: torch

    return report(prepared)


def _synthetic_config(args: argparse.Namespace) -> SyntheticConfig:
    given = {
        f.name: getattr(args, f.name)
        for f in fields(SyntheticConfig)
        if getattr(args, f.name, None) is not None
    }
    return SyntheticConfig(**given)


def cmd_generate(args: argparse.Namespace) -> None:
    t0 = time.perf_counter()
    cfg = _synthetic_config(args)
    out = generate(cfg, args.out)
    secs = time.perf_counter() - t0
    result = {
        "out": str(out),
        "users": cfg.n_users,
        "items": cfg.n_items,
        "events": cfg.n_events,
        "seconds": round(secs, 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }
    print(json.dumps(result))


def _data_config_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="a data config, e.g. conf/data/ml100k.yaml")
    p.add_argument("--root-dir", default=".", help="paths.root_dir (default: .)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a field of the config's source, e.g. --set root=data/mine",
    )


def _source(args: argparse.Namespace) -> Any:
    """The source of ``args.config`` with the ``--set`` overrides."""
    bad = [kv for kv in args.set if "=" not in kv]
    if bad:
        raise ValueError(f"--set takes FIELD=VALUE, got {bad[0]!r}")
    return load_source(args.config, args.root_dir, dict(kv.split("=", 1) for kv in args.set))


def cmd_inspect(args: argparse.Namespace) -> None:
    """What is in the files a data config names, and a suggested feature spec."""
    from pinrank.data.inspect import inspect_source, report_text, write
    from pinrank.data.sources import TableSource
    from pinrank.data.suggest import suggest_spec

    t0 = time.perf_counter()
    source = _source(args)
    if not isinstance(source, TableSource):  # generated data: inspect its raw tables
        source = TableSource.of_raw(source.ensure_raw(), root=source.root, spec=source.spec)
    found = inspect_source(source.config())
    cfg = source.config()
    events = cfg.tables["events"].columns
    label = tuple(
        n for n, r in events.items() if {cfg.label.column, cfg.engagement} & set(r.sources)
    )
    spec = suggest_spec(found.as_dict()["columns"], found.events, label)
    written = write(found, Path(args.out), spec)
    print(report_text(found))
    print(
        f"[inspect] {', '.join(str(p) for p in written.values())} "
        f"({time.perf_counter() - t0:.1f}s, peak RSS {peak_rss_mb():.0f} MB)"
    )


def cmd_ingest(args: argparse.Namespace) -> None:
    """Read the files a data config names into raw tables and prepare them (what
    ``python train.py data=...`` does first), printing what was read."""
    t0 = time.perf_counter()
    source = _source(args)
    prepared = source.ensure()
    counts_file = prepared.raw / "source.json"
    result = {
        "raw": str(prepared.raw),
        "prepared": str(prepared.root),
        "read": json.loads(counts_file.read_text()) if counts_file.exists() else None,
        "splits": json.loads((prepared.root / "prepared.json").read_text())["splits"],
        "seconds": round(time.perf_counter() - t0, 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }
    print(json.dumps(result, indent=2))


def cmd_prepare(args: argparse.Namespace) -> None:
    split = SplitConfig(args.test_fraction, args.val_fraction, args.cold_user_mod)
    prepared = prepare(args.raw, args.out, args.spec, split, args.history_len)
    print(f"prepared {prepared.root}: splits, history and feature state fitted on train")


def cmd_report(args: argparse.Namespace) -> None:
    from pinrank.data.prepare import Prepared

    report = data_report(Prepared.load(args.data))
    print(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report.as_dict(), indent=2))


def cmd_demo(args: argparse.Namespace) -> None:
    """The data stage of the demo: synthetic data -> splits -> fitted spec -> report.

    Uses the same fingerprinted source as ``train.py data.source.root=<out>``, so training on the
    demo data afterwards reuses it instead of generating it again.
    """
    out = Path(args.out)
    t0 = time.perf_counter()
    cfg = SyntheticConfig(seed=args.seed)
    source = SyntheticSource(
        root=str(out), spec=str(conf_file("features", "synthetic.yaml")), generator=cfg
    )
    prepared = source.ensure()
    report = data_report(prepared)
    (out / "report.json").write_text(json.dumps(report.as_dict(), indent=2))
    print(_data_summary(report.as_dict(), out, prepared.state_path, time.perf_counter() - t0))


def _data_summary(report: dict[str, Any], out: Path, state: Path, secs: float) -> str:
    """The demo's data stage in four lines; the whole report is in ``report.json``."""
    t, s = report["tables"], report["splits"]
    splits = ", ".join(f"{name} {v['events']:,}" for name, v in s.items())
    replaced = sum(sum(reasons.values()) for reasons in report["bad_values"].values())
    return "\n".join(
        [
            f"[data] {t['users']:,} users, {t['items']:,} pins, {t['events']:,} impressions "
            f"generated in {out / 'raw'}",
            f"[data] events per split (docs/evaluation.md): {splits}; "
            f"label rate {s['train']['label_rate']:.3f}",
            f"[data] feature spec fitted on train -> {state}; {replaced:,} values replaced by the "
            f"spec's policies in {len(report['bad_values'])} features",
            f"[data] report {out / 'report.json'} (pinrank report {out / 'prepared'}); "
            f"{secs:.1f}s, peak RSS {peak_rss_mb():.0f} MB",
        ]
    )


def register(sub: Any) -> None:
    g = command(
        sub,
        "generate",
        "write a synthetic data set (users, pins, impressions, truth)",
        cmd_generate,
        [
            "pinrank generate --out data/synth --users 4000 --items 3000 --events 200000",
            "pinrank generate --out data/big --users 10000000 --items 1000000 --events 50000000",
        ],
    )
    g.add_argument("--out", required=True, help="folder for users/, items/, events/, truth/")
    defaults = SyntheticConfig()
    for flag, name in [
        ("--users", "n_users"),
        ("--items", "n_items"),
        ("--events", "n_events"),
        ("--boards", "n_boards"),
        ("--creators", "n_creators"),
        ("--interests", "n_interests"),
        ("--seed", "seed"),
        ("--users-per-chunk", "users_per_chunk"),
        ("--rows-per-shard", "rows_per_shard"),
    ]:
        g.add_argument(flag, dest=name, type=int, default=getattr(defaults, name), help=name)
    g.add_argument(
        "--dirty",
        dest="dirty",
        type=float,
        default=defaults.dirty,
        help="share of rows with bad values",
    )

    i = command(
        sub,
        "inspect",
        "report what is in the files a data config names and suggest a feature spec",
        cmd_inspect,
        [
            "pinrank inspect conf/data/ml100k.yaml --out outputs/inspect/ml100k",
            "pinrank inspect conf/data/mine.yaml --set root=data/mine",
        ],
    )
    _data_config_arguments(i)
    i.add_argument("--out", default="outputs/inspect", help="report, spec and plots go here")

    m = command(
        sub,
        "ingest",
        "read the files a data config names, then split them and fit the feature spec",
        cmd_ingest,
        [
            "pinrank ingest conf/data/ml100k.yaml",
            "pinrank ingest conf/data/mine.yaml --set root=data/mine",
        ],
    )
    _data_config_arguments(m)

    p = command(
        sub,
        "prepare",
        "split raw tables, derive history, fit the feature spec on train",
        cmd_prepare,
        [
            "pinrank prepare --raw data/synth --out data/synth/prepared "
            "--spec conf/features/synthetic.yaml"
        ],
    )
    p.add_argument("--raw", required=True, help="folder with users/, items/, events/")
    p.add_argument("--out", required=True, help="folder for the prepared data set")
    p.add_argument("--spec", required=True, help="feature spec YAML, e.g. conf/features/*.yaml")
    split = SplitConfig()
    p.add_argument(
        "--test-fraction",
        type=float,
        default=split.test_fraction,
        help="latest share of each user's events held out for test",
    )
    p.add_argument(
        "--val-fraction",
        type=float,
        default=split.val_fraction,
        help="the share before it, for validation",
    )
    p.add_argument(
        "--cold-user-mod",
        type=int,
        default=split.cold_user_mod,
        help="users whose id %% N == 0 are held out as cold-start users",
    )
    p.add_argument("--history-len", type=int, default=100, help="history kept per user")

    r = command(
        sub,
        "report",
        "print the data report of a prepared data set",
        cmd_report,
        ["pinrank report data/demo/prepared --json outputs/report.json"],
    )
    r.add_argument("data", help="a prepared data set")
    r.add_argument("--json", help="also write the report as JSON here")

    d = command(
        sub,
        "demo",
        "the data stage of `make demo` on the embedded default",
        cmd_demo,
        ["pinrank demo --out data/demo"],
    )
    d.add_argument("--out", default="data/demo", help="folder for raw/, prepared/, report.json")
    d.add_argument("--seed", type=int, default=0, help="the generator's seed")
