"""Start the feed service, or load a users snapshot into Redis.

    python -m serve run outputs/packages/demo --users data/demo/users
    python -m serve run outputs/packages/demo --redis redis://127.0.0.1:6379/0
    python -m serve load-redis --users data/demo/users --redis redis://127.0.0.1:6379/0
    python -m serve run outputs/packages/demo --config serve/service.yaml

``--config FILE`` reads the options of ``run`` from a YAML file (``serve/service.yaml`` lists them
all with their defaults); options given on the command line win over the file.

The admin token (``POST /admin/reload``) is read from ``$PINRANK_ADMIN_TOKEN`` or
``--admin-token-file``, never from the command line (other users can read it there).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from pinrank import logs
from pinrank.serving.feed import FeedConfig
from pinrank.serving.signing import add_trust_arguments, trust_from_args
from pinrank.serving.store import TableStore, UserStore

from .batcher import SCORING
from .http import timed_h11

TOKEN_ENV = "PINRANK_ADMIN_TOKEN"


def admin_token(path: str | None) -> str | None:
    if path:
        token = Path(path).read_text().strip()
        if not token:
            raise SystemExit(f"--admin-token-file {path} is empty")
        return token
    return os.environ.get(TOKEN_ENV) or None


def user_store(args: argparse.Namespace) -> UserStore:
    if args.redis:
        from pinrank.serving.redis_store import RedisStore

        return RedisStore.connect(args.redis, args.redis_prefix, args.store_timeout_ms / 1e3)
    if not args.users:
        raise SystemExit("give --users PARQUET (e.g. data/demo/users) or --redis URL")
    return TableStore.from_path(args.users)


def config_file(path: str, parser: argparse.ArgumentParser) -> dict[str, object]:
    """The options a YAML file sets, by their names on the command line without ``--``
    (``batch-max`` or ``batch_max``); a clear error for an unknown option or a wrong type."""
    import yaml

    try:
        raw = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise SystemExit(f"--config {path}: {err}") from None
    if not isinstance(raw, dict):
        raise SystemExit(f"--config {path}: expected a mapping of option: value")
    actions = {a.dest: a for a in parser._actions if a.option_strings and a.dest != "help"}
    values: dict[str, object] = {}
    for key, value in raw.items():
        dest = str(key).replace("-", "_")
        action = actions.get(dest)
        if action is None or dest == "config":
            raise SystemExit(f"--config {path}: unknown option {key!r}; known: {sorted(actions)}")
        if value is not None and action.type is not None and not isinstance(value, list):
            try:
                value = action.type(value)  # type: ignore[operator]
            except (TypeError, ValueError):
                raise SystemExit(f"--config {path}: {key}: {value!r} is not valid") from None
        if action.choices is not None and value not in action.choices:
            raise SystemExit(f"--config {path}: {key}: {value!r} not one of {list(action.choices)}")
        values[dest] = value
    return values


def cmd_run(args: argparse.Namespace) -> None:
    import uvicorn

    from .app import Settings, create_app
    from .follow import Follow, parse_follow

    trust = trust_from_args(args)
    alias, follow = parse_follow(args.package), None
    if alias is not None:
        follow = Follow(alias, args.tracking_uri, args.registry_name, Path(args.registry_cache),
                        args.registry_poll_s)  # fmt: skip
    package = follow.fetch(trust) if follow is not None else Path(args.package)
    settings = Settings(
        package=package,
        follow=follow,
        trust=trust,
        admin_token=admin_token(args.admin_token_file),
        feed=FeedConfig(candidates=args.candidates),
        threads=args.threads,
        batch_max=args.batch_max,
        batch_workers=args.batch_workers,
        scoring=args.scoring,
        score_timeout_s=args.score_timeout_s,
        max_queue=args.max_queue,
        queue_deadline_ms=args.queue_deadline_ms,
        body_timeout_s=args.body_timeout_s,
    )
    app = create_app(settings, user_store(args))
    model = app.state.service.model
    print(f"[serve] {model.path} (version {model.version}, {model.signer}) on "
          f"http://{args.host}:{args.port}"
          f"{'' if settings.admin_token else ' (admin endpoints disabled: no token)'}")  # fmt: skip
    if settings.scoring == "threads":
        # the batch threads' Python (blending, diversity) and the event loop share one GIL: a
        # shorter switch interval lets the loop answer /healthz and admission decisions sooner
        sys.setswitchinterval(0.001)
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        access_log=args.access_log,
        log_level="warning",
        http=timed_h11(args.header_timeout_s),
        timeout_keep_alive=args.keepalive_timeout_s,
        limit_concurrency=args.max_connections,
    )


def cmd_load_redis(args: argparse.Namespace) -> None:
    import pyarrow.parquet as pq

    from pinrank.serving.redis_store import client, write_users

    users = pq.read_table(args.users)
    n = write_users(client(args.redis, timeout_s=10.0), users, args.redis_prefix)
    print(f"[serve] wrote {n:,} users to {args.redis} under {args.redis_prefix!r}")


def build_parser(prog: str = "python -m serve") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="serve feeds over HTTP")
    run.add_argument(
        "package",
        help="a model package folder, or registry:ALIAS (e.g. registry:production): the "
        "registry's package for that alias, followed when the alias moves",
    )
    run.add_argument(
        "--tracking-uri",
        help="the registry (registry:ALIAS; default: $MLFLOW_TRACKING_URI, else the embedded "
        "store under outputs/mlflow)",
    )
    run.add_argument("--registry-name", default="pinrank", help="the registered model")
    run.add_argument("--registry-cache", default="outputs/registry",
                     help="where registered packages are fetched to (the model root)")  # fmt: skip
    run.add_argument("--registry-poll-s", type=float, default=15.0,
                     help="how often the registry is asked where the alias points")  # fmt: skip
    run.add_argument(
        "--users", help="users snapshot (pinrank users): Parquet, or .arrow (memory-mapped)"
    )
    run.add_argument("--host", default="127.0.0.1")
    run.add_argument("--port", type=int, default=8000)
    run.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads per graph")
    run.add_argument("--candidates", type=int, default=500, help="retrieval depth per feed")
    run.add_argument(
        "--batch-max", type=int, default=32, help="feed requests scored together (1: off)"
    )
    run.add_argument(
        "--batch-workers", type=int, default=2, help="batches of feed requests scored at once"
    )
    run.add_argument(
        "--scoring",
        choices=SCORING,
        default="processes",
        help="score in worker processes (the event loop keeps its GIL) or in threads",
    )
    run.add_argument(
        "--score-timeout-s", type=float, default=30.0, help="a batch's limit (processes: 503)"
    )
    run.add_argument("--admin-token-file", help=f"default: ${TOKEN_ENV}")
    add_trust_arguments(run, roots=True)
    run.add_argument("--access-log", action="store_true")
    run.add_argument("--max-queue", type=int, default=64, help="feed requests waiting, at most")
    run.add_argument(
        "--queue-deadline-ms", type=float, default=500.0, help="longest wait before 503"
    )
    run.add_argument("--header-timeout-s", type=float, default=5.0, help="request line + headers")
    run.add_argument("--body-timeout-s", type=float, default=10.0, help="a request body (408)")
    run.add_argument("--keepalive-timeout-s", type=float, default=5.0, help="idle connections")
    run.add_argument(
        "--max-connections", type=int, default=1024, help="open connections at most (503 above)"
    )
    run.set_defaults(func=cmd_run)
    load = sub.add_parser("load-redis", help="write a users snapshot into Redis")
    load.add_argument("--users", required=True)
    load.set_defaults(func=cmd_load_redis)
    for p in (run, load):
        p.add_argument("--redis", help="redis://host:port/db: read users from Redis")
        p.add_argument("--redis-prefix", default="pinrank:user:")
    run.add_argument("--store-timeout-ms", type=float, default=50.0)
    run.add_argument("--config", help="YAML file of run options (serve/service.yaml)")
    return parser


def parse(argv: list[str] | None = None, prog: str = "python -m serve") -> argparse.Namespace:
    """The arguments of ``argv``, with ``run --config FILE``'s options under the flags given."""
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    if args.command == "run" and args.config:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        run = sub.choices["run"]
        run.set_defaults(**config_file(args.config, run))
        args = parser.parse_args(argv)
    if args.command == "load-redis" and not args.redis:
        parser.error("load-redis needs --redis URL")
    return args


def main(argv: list[str] | None = None, prog: str = "python -m serve") -> None:
    logs.setup(fmt="detailed")  # verbosity: pinrank -q/-v, or $PINRANK_VERBOSITY
    args = parse(argv, prog)
    args.func(args)


if __name__ == "__main__":
    main()
