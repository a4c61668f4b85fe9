"""The commands on model packages: keygen, verify, feed, users and batch feeds. None of them
needs torch except ``verify`` (it runs the training path) and the torch backend."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from pinrank.cli.common import command
from pinrank.data.prepare import Prepared
from pinrank.serving.signing import add_trust_arguments, trust_from_args


def cmd_verify(args: argparse.Namespace) -> None:
    from pinrank.export.verify import held_out_rows, verify
    from pinrank.serving.package import load_package
    from pinrank.serving.probe import probe_graphs
    from pinrank.serving.runtime import OnnxBackend

    package = load_package(args.package, trust_from_args(args))
    print(f"[verify] {package.root}: version {package.version}, {_signed(package)}")
    probe_graphs(package, OnnxBackend(package))  # every graph loads and runs on a probe
    parts = [(package, args.data or package.manifest["provenance"]["data"]["prepared"], "")]
    if package.has_section():  # the new-user interest model, verified on its own data
        section = package.section()
        probe_graphs(section, OnnxBackend(section))
        parts.append((section, section.manifest["provenance"]["data"]["prepared"], "[interests] "))
    backends = ["onnx", "torch"] if args.backend == "both" else [args.backend]
    failed = False
    for part, data, label in parts:
        tables = held_out_rows(Prepared.load(data), args.split, args.rows)
        for name in backends:
            report = verify(part, tables, _backend(name, part, args.device), args.tol)
            print(f"{label}{report}")
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
    from pinrank.batch.feeds import run_feeds, verify_feeds
    from pinrank.batch.units import FeedsJobError, JobConfig
    from pinrank.serving.feed import FeedConfig

    if args.verify:
        try:
            s = verify_feeds(args.verify)
        except FeedsJobError as err:
            raise SystemExit(f"pinrank feeds --verify: {err}") from err
        print(
            f"[feeds] {args.verify}: OK, {s['units']} shards, {s['users']:,} users, "
            f"{s['rows']:,} rows match their records"
        )
        return
    missing = [
        f
        for f, v in (("PACKAGE", args.package), ("--users", args.users), ("--out", args.out))
        if not v
    ]
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
            **({"max_rows": args.max_rows} if args.max_rows is not None else {}),
            backend=args.backend,
            device=args.device,
            threads=args.threads,
            workers=args.workers,
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
    s, config = result.summary, result.summary["config"]
    rate = s["users_scored_per_s"]
    workers = (
        f", {config['workers']} workers of {s['worker_peak_rss_mb']:.0f} MB at most"
        if s.get("worker_peak_rss_mb")
        else ""
    )
    print(
        f"[feeds] {s['users']:,} users, {s['rows']:,} rows in {result.out} "
        f"({s['units']} shards, {s['units_resumed']} resumed); {s['seconds']:.1f}s, "
        f"{f'{rate:,.0f}' if rate else '-'} users/s, peak RSS {s['peak_rss_mb']:.0f} MB{workers} "
        f"({s['engine']}, {config['backend']} on {config['device']}, {config['threads']} threads)"
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
    print(
        f"[keygen] {private} (private: export signs with it), {public} (trusted by loaders), "
        f"key id {key_id(load_public_key(public))}"
    )


def _signed(package: Any) -> str:
    return f"signed by key {package.signer}" if package.signer else "UNSIGNED (--allow-unsigned)"


def _backend(name: str, package: Any, device: str | None) -> Any:
    if name == "torch":
        from pinrank.export.torch_backend import TorchBackend

        return TorchBackend(package, device)
    from pinrank.serving.runtime import OnnxBackend

    return OnnxBackend(package, [device] if device else None)


def register(sub: Any) -> None:
    v = command(
        sub,
        "verify",
        "score held-out rows through the training path and the package; compare",
        cmd_verify,
        [
            "pinrank verify outputs/packages/demo --trusted-key outputs/keys/signing.pub",
            "pinrank verify PACKAGE --rows 1000 --backend both --allow-unsigned",
        ],
    )
    v.add_argument("package", help="a model package folder (python export.py ...)")
    v.add_argument("--data", help="prepared data set (default: the one the package was built on)")
    v.add_argument(
        "--split",
        default="test",
        choices=["train", "val", "test", "cold"],
        help="the split the rows come from",
    )
    v.add_argument("--rows", type=int, default=1000, help="held-out rows to score")
    v.add_argument(
        "--backend",
        default="onnx",
        choices=["onnx", "torch", "both"],
        help="what scores the package",
    )
    v.add_argument("--device", help="torch device (torch backend) or execution provider (onnx)")
    v.add_argument("--tol", type=float, default=1e-5, help="largest absolute difference allowed")
    add_trust_arguments(v)

    f = command(
        sub,
        "feed",
        "print feeds from a package with the embedded scorer",
        cmd_feed,
        [
            "pinrank feed outputs/packages/demo --trusted-key outputs/keys/signing.pub "
            "--data data/demo/prepared --users 2 --k 10",
            "pinrank feed PACKAGE --trusted-key KEY.pub --user 999999999 --interests 3 7",
        ],
    )
    f.add_argument("package", help="a model package folder")
    f.add_argument("--data", help="prepared data set whose users table is the feature store")
    f.add_argument("--user", action="append", default=[], help="a user id (repeatable)")
    f.add_argument("--users", type=int, help="the first N users (default 2 without --user)")
    f.add_argument("--interests", nargs="*", help="stated interests (unknown users)")
    f.add_argument("--k", type=int, default=10, help="pins per feed")
    f.add_argument("--candidates", type=int, default=500, help="candidates from the index")
    f.add_argument(
        "--backend", default="onnx", choices=["onnx", "torch"], help="what scores the package"
    )
    f.add_argument("--device", help="torch device, or an ONNX Runtime provider (cuda, tensorrt)")
    add_trust_arguments(f)

    k = command(
        sub,
        "keygen",
        "a new Ed25519 key pair for signing model packages",
        cmd_keygen,
        ["pinrank keygen --out outputs/keys --if-missing"],
    )
    k.add_argument("--out", required=True, help="folder for NAME.key (0600) and NAME.pub")
    k.add_argument("--name", default="signing", help="file names NAME.key and NAME.pub")
    k.add_argument("--if-missing", action="store_true", help="keep an existing pair")

    u = command(
        sub,
        "users",
        "snapshot a prepared data set's users as Parquet",
        cmd_users,
        [
            "pinrank users --data data/demo/prepared --out data/demo/users "
            "--arrow data/demo/users.arrow"
        ],
    )
    u.add_argument("--data", required=True, help="prepared data set")
    u.add_argument("--out", required=True, help="folder for users.parquet")
    u.add_argument("--row-group-users", type=int, default=10000, help="users per row group")
    u.add_argument("--arrow", help="also write this .arrow file (Arrow IPC, memory-mappable)")

    b = command(
        sub,
        "feeds",
        "batch feeds for every user of a users Parquet dataset",
        cmd_feeds,
        [
            "pinrank feeds outputs/packages/demo --trusted-key outputs/keys/signing.pub "
            "--users data/demo/users --out outputs/feeds/demo",
            "pinrank feeds PACKAGE --trusted-key KEY.pub --users USERS --out OUT "
            "--engine ray --actors 4",
            "pinrank feeds --verify outputs/feeds/demo",
        ],
    )
    b.add_argument("package", nargs="?", help="a model package folder")
    b.add_argument("--users", help="users Parquet file or folder (one shard per row group)")
    b.add_argument("--out", help="output folder (resumed when it holds the same job)")
    b.add_argument(
        "--verify", metavar="OUT", help="only check a finished job's shards against its records"
    )
    add_trust_arguments(b)
    b.add_argument("--k", type=int, default=50, help="pins per feed")
    b.add_argument("--candidates", type=int, default=500, help="candidates from the index")
    b.add_argument(
        "--interest-candidates", type=int, default=100, help="candidates per stated interest"
    )
    b.add_argument(
        "--diversity",
        default="cap",
        choices=["cap", "mmr", "none"],
        help="re-ranking for diversity",
    )
    b.add_argument("--batch-users", type=int, default=1024, help="users scored together")
    b.add_argument("--max-rows", type=int, help="most candidates per ranker run (default: 8192)")
    b.add_argument(
        "--backend", default="onnx", choices=["onnx", "torch"], help="what scores the package"
    )
    b.add_argument(
        "--device", default="cpu", choices=["cpu", "cuda", "tensorrt"], help="where the ranker runs"
    )
    b.add_argument(
        "--threads", type=int, help="ONNX Runtime intra-op threads (default: CPUs / workers)"
    )
    b.add_argument(
        "--workers",
        type=int,
        help="local: worker processes (default: one per CPU, at most one per row group; "
        "1: score in this process)",
    )
    b.add_argument("--gpu-index", action="store_true", help="FAISS search on GPU")
    b.add_argument(
        "--engine",
        default="local",
        choices=["local", "ray"],
        help="processes on this machine, or Ray actors",
    )
    b.add_argument("--actors", type=int, default=2, help="ray: actors")
    b.add_argument("--cpus-per-actor", type=float, default=1.0, help="ray: CPUs per actor")
    b.add_argument("--gpus-per-actor", type=float, default=0.0, help="ray: GPUs per actor")
    b.add_argument("--ray-address", help="ray: an existing cluster (default: start a local one)")
    b.add_argument("--overwrite", action="store_true", help="discard another job's output")
    b.add_argument("--no-progress", action="store_true", help="no progress bar")
