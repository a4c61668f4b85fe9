"""``pinrank``: the command line of the data stages (generate, ingest, prepare, report, demo)
and of model packages (verify, feed, users, feeds).

Examples::

    pinrank generate --out data/synth --users 4000 --items 3000 --events 200000
    pinrank inspect conf/data/ml100k.yaml --out outputs/inspect/ml100k   # know your data
    pinrank ingest conf/data/ml100k.yaml          # read own files by a data config, prepare
    pinrank prepare --raw data/ml100k/raw --spec conf/features/movielens.yaml \
        --out data/ml100k/prepared
    pinrank report data/ml100k/prepared
    pinrank demo --out data/demo
    pinrank verify outputs/packages/demo --rows 1000 --backend both
    pinrank feed outputs/packages/demo --user 7 --user 123456789 --interests 3 5 --k 10
    pinrank users --data data/demo/prepared --out data/demo/users
    pinrank feeds outputs/packages/demo --users data/demo/users --out outputs/feeds/demo
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

from pinrank.data.prepare import Prepared, prepare
from pinrank.data.report import data_report
from pinrank.data.sources import SyntheticSource, load_source
from pinrank.data.splits import SplitConfig
from pinrank.data.synthetic import SyntheticConfig, generate
from pinrank.serving.signing import add_trust_arguments, trust_from_args

CONF = Path(__file__).resolve().parent.parent / "conf"


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


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
        "peak_rss_mb": round(_peak_rss_mb(), 1),
    }
    print(json.dumps(result))


def _data_config_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="a data config, e.g. conf/data/ml100k.yaml")
    p.add_argument("--root-dir", default=".", help="paths.root_dir (default: .)")
    p.add_argument(
        "--set", action="append", default=[], metavar="FIELD=VALUE",
        help="override a field of the config's source, e.g. --set root=data/mine",
    )  # fmt: skip


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
        f"({time.perf_counter() - t0:.1f}s, peak RSS {_peak_rss_mb():.0f} MB)"
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
        "peak_rss_mb": round(_peak_rss_mb(), 1),
    }
    print(json.dumps(result, indent=2))


def cmd_prepare(args: argparse.Namespace) -> None:
    split = SplitConfig(args.test_fraction, args.val_fraction, args.cold_user_mod)
    prepared = prepare(args.raw, args.out, args.spec, split, args.history_len)
    print(f"prepared {prepared.root}: splits, history and feature state fitted on train")


def cmd_report(args: argparse.Namespace) -> None:
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
        root=str(out), spec=str(CONF / "features" / "synthetic.yaml"), generator=cfg
    )
    prepared = source.ensure()
    print(
        f"[data] {cfg.n_users:,} users, {cfg.n_items:,} pins, {cfg.n_events:,} impressions in "
        f"{out / 'raw'}; split by PROTOCOL.md; conf/features/synthetic.yaml fitted on train -> "
        f"{prepared.state_path} ({time.perf_counter() - t0:.1f}s)"
    )
    report = data_report(prepared)
    (out / "report.json").write_text(json.dumps(report.as_dict(), indent=2))
    print(f"[data] report ({out / 'report.json'}):")
    print(report)
    print(f"[data] done in {time.perf_counter() - t0:.1f}s, peak RSS {_peak_rss_mb():.0f} MB")


def cmd_verify(args: argparse.Namespace) -> None:
    from pinrank.export.verify import held_out_rows, verify
    from pinrank.serving.package import load_package
    from pinrank.serving.probe import probe_graphs
    from pinrank.serving.runtime import OnnxBackend

    package = load_package(args.package, trust_from_args(args))
    print(f"[verify] {package.root}: version {package.version}, {_signed(package)}")
    probe_graphs(package, OnnxBackend(package))  # every graph loads and runs on a probe
    data = args.data or package.manifest["provenance"]["data"]["prepared"]
    tables = held_out_rows(Prepared.load(data), args.split, args.rows)
    backends = ["onnx", "torch"] if args.backend == "both" else [args.backend]
    failed = False
    for name in backends:
        report = verify(package, tables, _backend(name, package, args.device), args.tol)
        print(report)
        failed |= not report.ok
    if failed:
        raise SystemExit(1)


def cmd_feed(args: argparse.Namespace) -> None:
    from pinrank.serving.feed import FeedConfig
    from pinrank.serving.package import load_package
    from pinrank.serving.scorer import FeedScorer
    from pinrank.serving.store import TableStore

    package = load_package(args.package, trust_from_args(args))
    data = args.data or package.manifest["provenance"]["data"]["prepared"]
    users = Prepared.load(data).users()
    backend = _backend(args.backend, package, args.device)
    config = FeedConfig(candidates=args.candidates)
    scorer = FeedScorer(package, TableStore(users), backend, config)
    print(f"[feed] backend {backend.name} {getattr(backend, 'providers', '')}".rstrip())
    first = args.users if args.users is not None else (0 if args.user else 2)
    codec = scorer.ids  # ids as the data gave them (strings where the package maps them)
    given = [u if codec.maps("user_id") else _int_id(u) for u in args.user]
    originals = codec.decode("user_id", users.column("user_id").to_numpy()[:first]) + given
    interests = None
    if args.interests:
        wanted = [i if codec.maps(codec.interests) else _int_id(i) for i in args.interests]
        interests = codec.encode(codec.interests, wanted).tolist()
    for original in originals:
        t0 = time.perf_counter()
        feed = scorer.feed(codec.encode_one("user_id", original), args.k, interests)
        ms = (time.perf_counter() - t0) * 1e3
        print(f"[feed] user {original}: {len(feed.items)} pins, path {feed.path}, {ms:.1f} ms")
        pins = codec.decode("item_id", feed.item_ids)
        for pos, (pin, item) in enumerate(zip(pins, feed.items, strict=True)):
            score = "" if item.score is None else f"score {item.score:.4f}"
            popular = "" if item.popularity is None else f"popularity {item.popularity}"
            print(f"  {pos:>3}  pin {pin!s:>8}  {score or popular}  {item.source}")


def _int_id(value: str) -> int:
    if not value.lstrip("-").isdigit():
        raise ValueError(f"{value!r} is not an integer id (this package's ids are integers)")
    return int(value)


def cmd_users(args: argparse.Namespace) -> None:
    """Snapshot the users of a prepared data set (with their train-derived columns) as Parquet:
    the input of ``pinrank feeds`` and of the serving user store."""
    import pyarrow.parquet as pq

    if args.row_group_users < 1:
        raise SystemExit(f"--row-group-users must be >= 1, got {args.row_group_users}")
    users = Prepared.load(args.data).users()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "users.parquet"
    tmp = out / ".users.parquet.tmp"
    pq.write_table(users, tmp, row_group_size=args.row_group_users, compression="zstd")
    tmp.replace(path)
    groups = pq.ParquetFile(path).metadata.num_row_groups
    print(f"[users] {users.num_rows:,} users -> {path} ({groups} row groups)")
    if args.arrow:  # uncompressed Arrow IPC, outside the Parquet folder: the store maps it
        import pyarrow as pa

        arrow = Path(args.arrow)
        if arrow.suffix != ".arrow" or arrow.resolve().parent == out.resolve():
            raise SystemExit(f"--arrow must be a .arrow file outside {out}, got {arrow}")
        arrow.parent.mkdir(parents=True, exist_ok=True)
        tmp = arrow.with_name(f".{arrow.name}.tmp")
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, users.schema) as writer:
            writer.write_table(users, max_chunksize=args.row_group_users)
        tmp.replace(arrow)
        print(f"[users] {users.num_rows:,} users -> {arrow} (Arrow IPC, for memory-mapping)")


def cmd_feeds(args: argparse.Namespace) -> None:
    import logging

    from pinrank.batch.feeds import run_feeds, verify_feeds
    from pinrank.batch.units import FeedsJobError, JobConfig
    from pinrank.serving.feed import FeedConfig

    logging.basicConfig(level=logging.WARNING)
    if args.verify:
        try:
            s = verify_feeds(args.verify)
        except FeedsJobError as err:
            raise SystemExit(f"pinrank feeds --verify: {err}") from err
        print(f"[feeds] {args.verify}: OK, {s['units']} shards, {s['users']:,} users, "
              f"{s['rows']:,} rows match their records")  # fmt: skip
        return
    missing = [f for f, v in (("PACKAGE", args.package), ("--users", args.users),
                              ("--out", args.out)) if not v]  # fmt: skip
    if missing:
        raise SystemExit(f"pinrank feeds: give {' '.join(missing)} (or --verify OUT)")
    try:
        feed = FeedConfig(
            candidates=args.candidates,
            interest_candidates=args.interest_candidates,
            diversity=args.diversity,
        )
        config = JobConfig(
            k=args.k,
            batch_users=args.batch_users,
            max_rows=args.max_rows,
            backend=args.backend,
            device=args.device,
            threads=args.threads,
            gpu_index=args.gpu_index,
            feed=feed,
        )
        ray = {
            "actors": args.actors,
            "cpus_per_actor": args.cpus_per_actor,
            "gpus_per_actor": args.gpus_per_actor,
            "address": args.ray_address,
        }
        result = run_feeds(
            args.package,
            args.users,
            args.out,
            config,
            engine=args.engine,
            overwrite=args.overwrite,
            progress=not args.no_progress,
            ray_options=ray if args.engine == "ray" else None,
            trust=trust_from_args(args),
        )
    except (FeedsJobError, ValueError, KeyError, TypeError) as err:
        raise SystemExit(f"pinrank feeds: {err}") from err
    s = result.summary
    print(
        f"[feeds] {s['users']:,} users, {s['rows']:,} rows in {result.out} "
        f"({s['units']} shards, {s['units_resumed']} resumed); {s['seconds']:.1f}s, "
        f"{s['users_scored_per_s']:,.0f} users/s, peak RSS {s['peak_rss_mb']:.0f} MB "
        f"({s['engine']}, {s['config']['backend']} on {s['config']['device']})"
    )
    paths = {k.split(".", 1)[1]: v for k, v in s["counts"].items() if k.startswith("path.")}
    print(
        f"[feeds] paths {paths}; other counts "
        f"{ {k: v for k, v in s['counts'].items() if not k.startswith('path.')} }"
    )


def cmd_keygen(args: argparse.Namespace) -> None:
    from pinrank.serving.signing import key_id, load_public_key, write_keypair

    private = Path(args.out) / f"{args.name}.key"
    if private.exists() and args.if_missing:
        public = private.with_suffix(".pub")
    elif private.exists():
        raise SystemExit(f"pinrank keygen: {private} exists (pass --if-missing to keep it)")
    else:
        private, public = write_keypair(args.out, args.name)
    print(f"[keygen] {private} (private: export signs with it), {public} (trusted by loaders), "
          f"key id {key_id(load_public_key(public))}")  # fmt: skip


def _signed(package: Any) -> str:
    return f"signed by key {package.signer}" if package.signer else "UNSIGNED (--allow-unsigned)"


def _backend(name: str, package: Any, device: str | None) -> Any:
    if name == "torch":
        from pinrank.export.torch_backend import TorchBackend

        return TorchBackend(package, device)
    from pinrank.serving.runtime import OnnxBackend

    return OnnxBackend(package, [device] if device else None)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pinrank", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="write a synthetic data set (users, items, events, truth)")
    g.add_argument("--out", required=True)
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
        g.add_argument(flag, dest=name, type=int)
    g.add_argument(
        "--dirty", dest="dirty", type=float, help="share of rows with bad values (default 0.01)"
    )
    g.set_defaults(func=cmd_generate)

    i = sub.add_parser(
        "inspect",
        help="report what is in the files a data config names and suggest a feature spec",
    )
    _data_config_arguments(i)
    i.add_argument("--out", default="outputs/inspect", help="report, spec and plots go here")
    i.set_defaults(func=cmd_inspect)

    m = sub.add_parser(
        "ingest",
        help="read the files a data config (conf/data/*.yaml) names, then split and fit the spec",
    )
    _data_config_arguments(m)
    m.set_defaults(func=cmd_ingest)

    p = sub.add_parser(
        "prepare", help="split events, derive history, fit the feature spec on train"
    )
    p.add_argument("--raw", required=True, help="folder with users/, items/, events/")
    p.add_argument("--out", required=True)
    p.add_argument(
        "--spec", required=True, help="feature spec YAML, e.g. conf/features/movielens.yaml"
    )
    p.add_argument("--test-fraction", type=float, default=0.2)
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--cold-user-mod", type=int, default=10)
    p.add_argument("--history-len", type=int, default=100)
    p.set_defaults(func=cmd_prepare)

    r = sub.add_parser("report", help="print the data report of a prepared data set")
    r.add_argument("data")
    r.add_argument("--json", help="also write the report as JSON here")
    r.set_defaults(func=cmd_report)

    d = sub.add_parser("demo", help="the data stage of `make demo` on the embedded default")
    d.add_argument("--out", default="data/demo")
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(func=cmd_demo)

    v = sub.add_parser(
        "verify", help="score held-out rows through the training path and the package; compare"
    )
    v.add_argument("package", help="a model package folder (python export.py ...)")
    v.add_argument("--data", help="prepared data set (default: the one the package was built on)")
    v.add_argument("--split", default="test", choices=["train", "val", "test", "cold"])
    v.add_argument("--rows", type=int, default=1000, help="held-out rows to score")
    v.add_argument("--backend", default="onnx", choices=["onnx", "torch", "both"])
    v.add_argument("--device", help="torch device (torch backend) or execution provider (onnx)")
    v.add_argument("--tol", type=float, default=1e-5, help="largest absolute difference allowed")
    add_trust_arguments(v)
    v.set_defaults(func=cmd_verify)

    f = sub.add_parser("feed", help="serve feeds from a package with the embedded scorer")
    f.add_argument("package")
    f.add_argument("--data", help="prepared data set whose users table is the feature store")
    f.add_argument("--user", action="append", default=[], help="a user id (repeatable)")
    f.add_argument("--users", type=int, help="the first N users (default 2 without --user)")
    f.add_argument("--interests", nargs="*", help="stated interests (unknown users)")
    f.add_argument("--k", type=int, default=10)
    f.add_argument("--candidates", type=int, default=500, help="candidates from the index")
    f.add_argument("--backend", default="onnx", choices=["onnx", "torch"])
    f.add_argument("--device", help="torch device, or an ONNX Runtime provider (cuda, tensorrt)")
    add_trust_arguments(f)
    f.set_defaults(func=cmd_feed)

    k = sub.add_parser("keygen", help="a new Ed25519 key pair for signing model packages")
    k.add_argument("--out", required=True, help="folder for NAME.key (0600) and NAME.pub")
    k.add_argument("--name", default="signing")
    k.add_argument("--if-missing", action="store_true", help="keep an existing pair")
    k.set_defaults(func=cmd_keygen)

    u = sub.add_parser("users", help="snapshot a prepared data set's users as Parquet")
    u.add_argument("--data", required=True, help="prepared data set")
    u.add_argument("--out", required=True, help="folder for users.parquet")
    u.add_argument("--row-group-users", type=int, default=10000, help="users per row group")
    u.add_argument("--arrow", help="also write this .arrow file (Arrow IPC, memory-mappable)")
    u.set_defaults(func=cmd_users)

    b = sub.add_parser("feeds", help="batch feeds for every user of a users Parquet dataset")
    b.add_argument("package", nargs="?", help="a model package folder")
    b.add_argument("--users", help="users Parquet file or folder (one shard per row group)")
    b.add_argument("--out", help="output folder (resumed when it holds the same job)")
    b.add_argument(
        "--verify", metavar="OUT", help="only check a finished job's shards against its records"
    )
    add_trust_arguments(b)
    b.add_argument("--k", type=int, default=50)
    b.add_argument("--candidates", type=int, default=500, help="candidates from the index")
    b.add_argument("--interest-candidates", type=int, default=100)
    b.add_argument("--diversity", default="cap", choices=["cap", "mmr", "none"])
    b.add_argument("--batch-users", type=int, default=1024)
    b.add_argument("--max-rows", type=int, default=65536, help="candidates per ranker run")
    b.add_argument("--backend", default="onnx", choices=["onnx", "torch"])
    b.add_argument("--device", default="cpu", choices=["cpu", "cuda", "tensorrt"])
    b.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads")
    b.add_argument("--gpu-index", action="store_true", help="FAISS search on GPU")
    b.add_argument("--engine", default="local", choices=["local", "ray"])
    b.add_argument("--actors", type=int, default=2, help="ray: actors")
    b.add_argument("--cpus-per-actor", type=float, default=1.0)
    b.add_argument("--gpus-per-actor", type=float, default=0.0)
    b.add_argument("--ray-address", help="ray: an existing cluster (default: start a local one)")
    b.add_argument("--overwrite", action="store_true", help="discard another job's output")
    b.add_argument("--no-progress", action="store_true")
    b.set_defaults(func=cmd_feeds)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, KeyError, TypeError, FileNotFoundError) as err:
        print(f"pinrank {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
