"""Batch feeds: a fresh feed for every user of a users Parquet dataset, from a model package.

    pinrank feeds outputs/packages/demo --users data/demo/users_snapshot --out outputs/feeds/demo

Each row group of the input is one *unit* of work. A unit streams its users in batches of
``batch_users`` through :meth:`FeedScorer.feeds` (user tower -> FAISS -> ranker with the per-feed
factorisation -> blending and diversity -> top-k, the same code and the same feeds as the
online scorer) and writes ``part-{unit:06d}.parquet`` with the columns of :data:`FEED_SCHEMA`.

Exactly once, whatever kills the job:

- a unit's Parquet file is written under ``.tmp/`` and renamed into place (atomic), then its
  record ``part-{unit:06d}.json`` (users, rows, bytes, sha256, counts) the same way (its
  temporary file under ``.tmp/`` too, which every run clears); a unit is done when its record
  exists and its file has the recorded size and sha256, and a rerun skips it; a damaged shard
  is written again;
- ``_job.json``, written first, names the package (its version and signer), the input files
  (resolved path, size, row groups), the config, the engine and the ONNX Runtime thread count
  (the last float digit of a score can depend on it); a rerun with a different one of these is
  refused (``overwrite`` starts over), so two jobs' shards never mix;
- ``.lock`` (``flock``) refuses a second job on the same folder while one runs, and ``.fence``
  holds a token new to each run: a unit commits only while the fence still holds its run's
  token, so a worker left over from a killed run can never commit into a later one (Ray workers
  also stop as soon as the driver process is gone);
- ``_SUCCESS.json`` holds the totals once every unit is done; :func:`verify_feeds`
  (``pinrank feeds --verify OUT``) checks a finished job's shards against their records.

Units are deterministic (fixed batches, no sampling), so a rerun writes the same bytes a single
run would have. Memory is bounded by one row group plus one batch's candidates, whatever the
number of users; write inputs with row groups of 10k-100k users.

Engines: ``local`` (this machine: by default one worker process per CPU, at most one per unit,
each loading the package once; ``workers=1`` scores in this process) and ``ray`` (a Ray Data
actor pool maps the same unit function over the units, one package load per actor; see
:func:`run_feeds`). Worker processes score about 1.5x the feeds of one process running ONNX
Runtime on as many threads, which leaves the Python of candidates and blending on one core.
Bad input: a missing or mistyped column stops the job before any unit starts, naming it; null
ids are skipped and counted; null or malformed values get the spec's defaults (the feed's
``path`` says ``personalized_defaults``), and every value the spec's policy replaces is counted
per feature and reason (``replaced.age.out_of_range``, ``replaced.history.oov``, ...) by the
training featurizer's own transforms (:class:`Policy`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import shutil
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pinrank.batch.units import (
    FEED_SCHEMA,
    FENCE,
    TMP,
    Engine,
    FeedsJobError,
    Job,
    JobConfig,
    LocalEngine,
    Unit,
    make_scorer,
    required_columns,
    write_atomic,
    write_json,
)
from pinrank.logs import peak_rss_mb
from pinrank.serving.package import Package, load_package, sha256
from pinrank.serving.signing import Trust

# 2: engine and threads in the job identity; 3: popularity apart from score
FORMAT, FORMAT_VERSION = "pinrank-feeds", 3
JOB, SUCCESS, LOCK = "_job.json", "_SUCCESS.json", ".lock"
ENGINES = ("local", "ray")
log = logging.getLogger(__name__)


def input_files(users: str | Path) -> list[Path]:
    """The Parquet file, or every ``*.parquet`` under the folder, in path order."""
    root = Path(users).resolve()  # one job identity for a relative and an absolute path
    if root.is_file():
        return [root]
    files = sorted(p for p in root.rglob("*.parquet") if not p.name.startswith((".", "_")))
    if not root.is_dir() or not files:
        raise FeedsJobError(f"no users Parquet at {root} (a .parquet file or a folder of them)")
    return files


def plan(users: str | Path, required: Sequence[str]) -> list[Unit]:
    """Every row group of the input as a :class:`Unit`; each file must hold ``required``."""
    units: list[Unit] = []
    for path in input_files(users):
        try:
            meta = pq.ParquetFile(path)
        except (pa.ArrowInvalid, OSError) as err:
            raise FeedsJobError(f"{path}: not a readable Parquet file ({err})") from err
        missing = [c for c in required if c not in meta.schema_arrow.names]
        if missing:
            raise FeedsJobError(
                f"{path}: users have no column(s) {missing} that the package's graphs read "
                f"(have {meta.schema_arrow.names})"
            )
        for rg in range(meta.metadata.num_row_groups):
            rows = meta.metadata.row_group(rg).num_rows
            units.append(Unit(len(units), str(path), rg, rows))
    return units


def done(out: Path, unit: Unit) -> dict[str, Any] | None:
    """The unit's record when the unit is committed: record present, and its file of the
    recorded size and sha256 (a damaged shard is not done, and gets written again)."""
    record_path, part = out / f"{unit.name}.json", out / f"{unit.name}.parquet"
    try:
        record = json.loads(record_path.read_text())
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    if not isinstance(record, dict) or record.get("unit") != asdict(unit) or not part.exists():
        return None
    if part.stat().st_size != record.get("bytes") or sha256(part) != record.get("sha256"):
        log.warning("%s does not match its record: writing it again", part)
        return None
    return record


@dataclass
class JobResult:
    """What :func:`run_feeds` did: the summary also written to ``_SUCCESS.json``."""

    out: Path
    summary: dict[str, Any]


def run_feeds(
    package_dir: str | Path,
    users: str | Path,
    out: str | Path,
    config: JobConfig | None = None,
    engine: str = "local",
    overwrite: bool = False,
    progress: bool = True,
    ray_options: dict[str, Any] | None = None,
    trust: Trust | None = None,
) -> JobResult:
    """Feeds for every user of ``users`` into ``out``, resuming whatever an earlier run of the
    same job committed (module docstring). ``trust``: which package signers are trusted
    (:class:`~pinrank.serving.signing.Trust`; ``None`` trusts none, refusing every package).

    ``ray_options`` (engine ``ray``): ``actors`` (default 2), ``cpus_per_actor`` (1),
    ``gpus_per_actor`` (0), ``address`` (``None``: a local Ray instance).
    """
    config = config or JobConfig()
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    trust = trust or Trust()
    t0 = time.perf_counter()
    package = load_package(package_dir, trust)
    config = _pin_workers(config, engine, len(plan(users, ())))
    config = _pin_threads(config, engine, ray_options or {})
    scorer = make_scorer(package, config)
    scorer.probe()  # every graph on a probe before any unit: a bad package writes nothing
    units = plan(users, required_columns(scorer))
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    with _lock(out):
        shutil.rmtree(out / TMP, ignore_errors=True)
        (out / TMP).mkdir()
        for stale in out.glob(".*.json.*"):  # temporary records of older versions
            stale.unlink()
        fence = uuid.uuid4().hex
        write_atomic(out / FENCE, fence)
        identity = _identity(package, units, config, engine)
        _claim(out, identity, overwrite)
        (out / SUCCESS).unlink(missing_ok=True)
        records = {u.index: r for u in units if (r := done(out, u)) is not None}
        todo = [u for u in units if u.index not in records]
        log.info("%d shards: %d done before, %d to do", len(units), len(records), len(todo))
        bar = _progress(
            sum(u.rows for u in units), sum(u.rows for u in units if u.index in records), progress
        )
        t_score = time.perf_counter()
        with bar:
            job = Job(package, scorer, config, trust, fence)
            for record in _engine(engine, ray_options or {}).run(job, todo, out, bar.update):
                records[record["unit"]["index"]] = record
        scoring = time.perf_counter() - t_score
        missing = [u.index for u in units if u.index not in records]
        if missing:  # an engine returned without every unit: never claim success
            raise FeedsJobError(f"units {missing[:10]} were not written")
        seconds = time.perf_counter() - t0
        summary = _summary(
            units, records, config, engine, seconds, scoring, [u.index for u in todo]
        )
        write_json(out / SUCCESS, summary)
        shutil.rmtree(out / TMP, ignore_errors=True)
    return JobResult(out, summary)


def verify_feeds(out: str | Path) -> dict[str, Any]:
    """Check a finished job's output as a consumer would before reading it: ``_SUCCESS.json``
    and ``_job.json`` present, one record per unit, each shard of its recorded size and sha256,
    no shard without a record, and the totals equal to the records'. Returns the summary;
    FeedsJobError lists every problem found."""
    out = Path(out)
    try:
        summary = json.loads((out / SUCCESS).read_text())
        json.loads((out / JOB).read_text())
    except (FileNotFoundError, json.JSONDecodeError) as err:
        raise FeedsJobError(f"{out}: not a finished feeds job ({err})") from None
    problems: list[str] = []
    users = rows = 0
    for i in range(int(summary.get("units", 0))):
        name = f"part-{i:06d}"
        try:
            record = json.loads((out / f"{name}.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            problems.append(f"{name}.json is missing or unreadable")
            continue
        part = out / f"{name}.parquet"
        if not part.is_file():
            problems.append(f"{part.name} is missing")
        elif part.stat().st_size != record.get("bytes") or sha256(part) != record.get("sha256"):
            problems.append(f"{part.name} does not match its record (size or sha256)")
        users, rows = users + int(record.get("users", 0)), rows + int(record.get("rows", 0))
    expected = {
        f"part-{i:06d}.{x}"
        for i in range(int(summary.get("units", 0)))
        for x in ("json", "parquet")
    }
    extra = sorted(p.name for p in out.glob("part-*") if p.name not in expected)
    if extra:
        problems.append(f"files of no unit: {extra[:10]}")
    if (users, rows) != (summary.get("users"), summary.get("rows")):
        problems.append(
            f"records total {users} users / {rows} rows, {SUCCESS} says "
            f"{summary.get('users')} / {summary.get('rows')}"
        )
    if problems:
        raise FeedsJobError(f"{out}: {len(problems)} problem(s): " + "; ".join(problems))
    return summary


def read_feeds(out: str | Path) -> pa.Table:
    """Every committed shard of a finished job, in unit order (``_SUCCESS.json`` required)."""
    out = Path(out)
    if not (out / SUCCESS).exists():
        raise FeedsJobError(f"{out}: the job has not finished (no {SUCCESS})")
    parts = sorted(out.glob("part-*.parquet"))
    return (
        pa.concat_tables([pq.read_table(p) for p in parts]) if parts else FEED_SCHEMA.empty_table()
    )


def _summary(
    units: list[Unit],
    records: dict[int, dict[str, Any]],
    config: JobConfig,
    engine: str,
    seconds: float,
    scoring: float,
    written: list[int],
) -> dict[str, Any]:
    """Totals over every unit; the rate counts only the users this run scored, over the time
    spent scoring (the package load and planning excluded; ``seconds`` has them)."""
    counts: Counter[str] = Counter()
    for r in records.values():
        counts.update(r["counts"])
    scored = sum(records[i]["users"] for i in written)
    return {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "engine": engine,
        "units": len(units),
        "units_resumed": len(units) - len(written),
        "units_written": len(written),
        "users": sum(r["users"] for r in records.values()),
        "rows": sum(r["rows"] for r in records.values()),
        "counts": dict(sorted(counts.items())),
        "seconds": round(seconds, 3),
        "scoring_seconds": round(scoring, 3),
        "users_scored_per_s": round(scored / scoring, 1) if scoring > 0 else None,
        "peak_rss_mb": round(peak_rss_mb(), 1),
        # the largest worker process's (local workers; the driver's peak is above)
        "worker_peak_rss_mb": max(
            (r["worker_peak_rss_mb"] for r in records.values() if "worker_peak_rss_mb" in r),
            default=None,
        ),
        "config": config.to_dict(),
    }


def _engine(name: str, ray_options: dict[str, Any]) -> Engine:
    if name == "ray":
        from pinrank.batch.ray_engine import RayEngine  # Ray is imported only when asked for

        return RayEngine(ray_options)
    return LocalEngine()


def _pin_workers(config: JobConfig, engine: str, units: int) -> JobConfig:
    """``config`` with an explicit number of local worker processes (``workers=None``: one per
    CPU this process may use, at most one per unit; one on a GPU or with the ray engine, whose
    actors are its workers), so the job identity names it."""
    if config.workers is not None:
        return config
    cpus = len(os.sched_getaffinity(0))
    local_cpu = engine == "local" and config.device == "cpu"
    return dataclasses.replace(config, workers=max(min(cpus, units), 1) if local_cpu else 1)


def _pin_threads(config: JobConfig, engine: str, ray_options: dict[str, Any]) -> JobConfig:
    """``config`` with an explicit ONNX Runtime thread count (``threads=None``: this process's
    CPUs shared by the local workers, or one Ray actor's share), so the job identity names the
    count that scored it."""
    if config.threads is not None or config.backend != "onnx":
        return config
    if engine == "ray":
        threads = max(int(float(ray_options.get("cpus_per_actor", 1))), 1)
    else:
        threads = max(len(os.sched_getaffinity(0)) // (config.workers or 1), 1)
    return dataclasses.replace(config, threads=threads)


def _identity(
    package: Package, units: list[Unit], config: JobConfig, engine: str
) -> dict[str, Any]:
    files: dict[str, dict[str, int]] = {}
    for u in units:
        f = files.setdefault(u.path, {"bytes": Path(u.path).stat().st_size, "row_groups": 0})
        f["row_groups"] += 1
    return {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "package": {
            "path": str(package.root),
            "version": package.version,
            "signer": package.signer,
        },
        "users": [{"path": p, **v} for p, v in files.items()],
        "config": config.to_dict(),
        "engine": engine,
    }


def _claim(out: Path, identity: dict[str, Any], overwrite: bool) -> None:
    """Own ``out`` for this job: new, the same job's, or cleared when ``overwrite``."""
    job = out / JOB
    if job.exists() and not overwrite:
        previous = json.loads(job.read_text())
        if previous == identity:
            return
        keys = ("package", "users", "config", "engine")
        differ = [k for k in keys if previous.get(k) != identity.get(k)]
        raise FeedsJobError(
            f"{out} holds feeds of another job (its {', '.join(differ) or 'format'} differ); "
            "pass overwrite to start over, or choose another output folder"
        )
    if not job.exists() and any(out.glob("part-*")) and not overwrite:
        raise FeedsJobError(f"{out} holds part files but no {JOB}; refusing to mix them")
    for stale in [*out.glob("part-*"), out / SUCCESS]:
        stale.unlink(missing_ok=True)
    write_json(job, identity)


@contextlib.contextmanager
def _lock(out: Path) -> Iterator[None]:
    with open(out / LOCK, "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            raise FeedsJobError(f"another feeds job is writing to {out}") from err
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class _Quiet:
    def update(self, n: int) -> None:
        pass

    def __enter__(self) -> _Quiet:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def _progress(total: int, initial: int, enabled: bool) -> Any:
    """A progress bar of users (rate and ETA) on stderr, or a silent stand-in."""
    if not enabled:
        return _Quiet()
    from tqdm import tqdm

    return tqdm(
        total=total, initial=initial, unit="user", unit_scale=True, file=sys.stderr, smoothing=0.1
    )
