"""One unit of a batch-feeds job: a row group of users scored into one committed shard.

The engines of :mod:`pinrank.batch.feeds` (``local``: the driver's process; ``ray``:
:mod:`pinrank.batch.ray_engine`'s actors) share this module and nothing else: the job's
configuration (:class:`JobConfig`), its unit of work (:class:`Unit`), the scorer a unit runs
(:func:`make_scorer`), the shard's schema (:data:`FEED_SCHEMA`), the spec's bad-value counts
(:class:`Policy`), and :func:`score_unit`, which writes a unit's shard and record atomically
under the run's fence (see :mod:`pinrank.batch.feeds` for the exactly-once protocol).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field, fields
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pinrank.features.columns import INTEREST_COLUMN, SEEN
from pinrank.features.spec import FeatureSpec
from pinrank.features.state import FeatureState, transform_side
from pinrank.logs import peak_rss_mb
from pinrank.serving.conform import TOO_LONG
from pinrank.serving.feed import Feed, FeedConfig
from pinrank.serving.ids import IdCodec
from pinrank.serving.package import Package, load_package, sha256
from pinrank.serving.ranking import MAX_ROWS
from pinrank.serving.scorer import FeedScorer
from pinrank.serving.signing import Trust

TMP, FENCE = ".tmp", ".fence"
FEED_SCHEMA = pa.schema(
    [
        ("user_id", pa.int64()),
        ("position", pa.int32()),
        ("item_id", pa.int64()),
        ("score", pa.float32()),  # the calibrated probability; null on the fallback paths
        ("popularity", pa.int64()),  # engaged train events of a fallback's popular pin
        ("source", pa.string()),
        ("path", pa.string()),
    ]
)
BACKENDS, DEVICES = ("onnx", "torch"), ("cpu", "cuda", "tensorrt")
log = logging.getLogger(__name__)


class FeedsJobError(RuntimeError):
    """The job cannot run as asked (bad input, another job's output, a held lock)."""


@dataclass(frozen=True)
class JobConfig:
    """How feeds are made.

    Args:
        k: pins per feed.
        batch_users: users per scorer call (graphs run once per batch).
        max_rows: most candidates per ranker run (bounds the ranker's memory).
        backend: ``onnx`` (ONNX Runtime) or ``torch`` (the same networks in torch).
        device: ``cpu``, ``cuda`` or ``tensorrt`` (ONNX Runtime's providers; torch: cpu/cuda).
        threads: intra-op threads per ONNX Runtime session (``None``: its default).
        workers: processes of the ``local`` engine, each scoring whole units with its own copy
            of the scorer (``1``: the driver's process; ``None``: one per CPU this process may
            use, at most one per unit; :func:`~pinrank.batch.feeds.run_feeds` resolves it).
        gpu_index: search FAISS on GPU (faiss-gpu and a GPU required).
        feed: how each feed is assembled (candidates, quotas, diversity).
    """

    k: int = 50
    batch_users: int = 1024
    max_rows: int = MAX_ROWS
    backend: str = "onnx"
    device: str = "cpu"
    threads: int | None = None
    workers: int | None = 1
    gpu_index: bool = False
    feed: FeedConfig = field(default_factory=FeedConfig)

    def __post_init__(self) -> None:
        for name in ("k", "batch_users", "max_rows"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.device not in DEVICES or (self.backend == "torch" and self.device == "tensorrt"):
            raise ValueError(f"device {self.device!r} is not one of {DEVICES} for {self.backend}")
        for name in ("threads", "workers"):
            value = getattr(self, name)
            if value is not None and (
                not isinstance(value, int) or isinstance(value, bool) or value < 1
            ):
                raise ValueError(f"{name} must be an integer >= 1 or None, got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        feed = {f.name: getattr(self.feed, f.name) for f in fields(self.feed)}
        return out | {"feed": feed | {"quotas": dict(self.feed.quotas)}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> JobConfig:
        return cls(**{**d, "feed": FeedConfig(**d.get("feed", {}))})


@dataclass(frozen=True)
class Unit:
    """One row group of one input file: the job's unit of work and of output."""

    index: int
    path: str
    row_group: int
    rows: int

    @property
    def name(self) -> str:
        return f"part-{self.index:06d}"


def make_scorer(package: Package, config: JobConfig) -> FeedScorer:
    """A store-less :class:`FeedScorer` on the configured backend and device."""
    backend: Any
    if config.backend == "torch":
        from pinrank.export.torch_backend import TorchBackend

        backend = TorchBackend(package, config.device)
    else:
        from pinrank.serving.runtime import OnnxBackend

        providers = {"cpu": ["cpu"], "cuda": ["cuda"], "tensorrt": ["tensorrt", "cuda"]}
        backend = OnnxBackend(package, providers[config.device], config.threads)
    return FeedScorer(
        package, None, backend, config.feed, max_rows=config.max_rows, gpu_index=config.gpu_index
    )


def required_columns(scorer: FeedScorer) -> list[str]:
    """The user columns a feed needs: the graphs' and the ``seen`` pins candidates exclude
    (followed interests, where the users have them, are read too: :func:`read_columns`)."""
    cols = [scorer.id_column, *(c.column for c in scorer.user_columns), SEEN]
    return list(dict.fromkeys(cols))


def read_columns(scorer: FeedScorer, schema: pa.Schema) -> list[str]:
    """The user columns read from a file of ``schema``: :func:`required_columns`, and the
    followed interests where it has them."""
    extra = [INTEREST_COLUMN] if INTEREST_COLUMN in schema.names else []
    return list(dict.fromkeys([*required_columns(scorer), *extra]))


def feed_schema(ids: IdCodec | None = None) -> pa.Schema:
    """:data:`FEED_SCHEMA`, with ``user_id`` and ``item_id`` strings where the package maps
    them (the ids as the data gave them, :mod:`pinrank.serving.ids`)."""
    if ids is None:
        return FEED_SCHEMA
    types = {"user_id": ids.arrow_type("user_id"), "item_id": ids.arrow_type("item_id")}
    return pa.schema([f.with_type(types.get(f.name, f.type)) for f in FEED_SCHEMA])


def feeds_table(feeds: Sequence[Feed], ids: IdCodec | None = None) -> pa.Table:
    """Feeds as rows of :func:`feed_schema`, best first within each user."""
    sizes = np.array([len(f.items) for f in feeds], np.int64)
    items = [i for f in feeds for i in f.items]
    user_ids = np.repeat(np.array([f.user_id for f in feeds], np.int64), sizes)
    item_ids = np.array([i.item_id for i in items], np.int64)
    users: Any = user_ids if ids is None else ids.decode("user_id", user_ids)
    pins: Any = item_ids if ids is None else ids.decode("item_id", item_ids)
    return pa.table(
        {
            "user_id": users,
            "position": (
                np.arange(sizes.sum()) - np.repeat(np.cumsum(sizes) - sizes, sizes)
            ).astype(np.int32),
            "item_id": pins,
            "score": pa.array([i.score for i in items], pa.float32()),
            "popularity": pa.array([i.popularity for i in items], pa.int64()),
            "source": pa.array([i.source for i in items], pa.string()),
            "path": pa.array(np.repeat(np.array([f.path for f in feeds], object), sizes)),
        },
        schema=feed_schema(ids),
    )


@dataclass(frozen=True)
class Policy:
    """The feature spec's bad-value policy, to count what it replaces in user rows."""

    spec: FeatureSpec
    state: FeatureState

    @classmethod
    def of(cls, package: Package) -> Policy:
        """The package's policy, parsed once per package version in a process."""
        key = (str(package.root), package.version)
        if key not in _POLICIES:
            _POLICIES[key] = cls(package.spec(), package.state())
        return _POLICIES[key]

    def counts(self, users: pa.Table) -> Counter[str]:
        """``replaced.{feature}.{reason}``: every value of the user features that the spec's
        policy replaces (null, nan, negative, out_of_range, oov, malformed, truncated), counted
        by the training featurizer's own transforms, so batch and training count alike."""
        counts: Counter[tuple[str, str]] = Counter()
        transform_side(self.spec, self.state, "user", users, counts)
        return Counter({f"replaced.{f}.{why}": n for (f, why), n in counts.items() if n})


_POLICIES: dict[tuple[str, str], Policy] = {}


def score_unit(
    scorer: FeedScorer,
    unit: Unit,
    out: Path,
    config: JobConfig,
    on_batch: Callable[[int], None] | None = None,
    fence: str | None = None,
) -> dict[str, Any]:
    """Write one unit's feeds and commit them (file, then record); returns the record.

    ``fence``: the run's token (:func:`run_feeds`); the unit commits only while ``.fence`` still
    holds it (FeedsJobError otherwise: a later run owns the folder)."""
    t0 = time.perf_counter()
    policy = Policy.of(scorer.package)
    tmp = out / TMP / f"{unit.name}.parquet.{os.getpid()}"
    counts: Counter[str] = Counter()
    users = rows = 0
    source = pq.ParquetFile(unit.path)
    with pq.ParquetWriter(tmp, feed_schema(scorer.ids), compression="zstd") as writer:
        for batch in source.iter_batches(
            batch_size=config.batch_users,
            row_groups=[unit.row_group],
            columns=read_columns(scorer, source.schema_arrow),
        ):
            table = pa.Table.from_batches([batch])
            valid = pc.is_valid(table.column(scorer.id_column))
            skipped = table.num_rows - pc.sum(valid.cast(pa.int64())).as_py()
            if skipped:
                counts["skipped.null_id"] += skipped
                table = table.filter(valid)
            if table.num_rows:
                feeds = scorer.feeds(scorer.user_batch(table), config.k)
                part = feeds_table(feeds, scorer.ids)
                writer.write_table(part)
                users, rows = users + len(feeds), rows + part.num_rows
                counts.update(policy.counts(table))
                for f in feeds:
                    counts[f"path.{f.path}"] += 1
                    for column, why in f.replaced.items():
                        if why == TOO_LONG:  # over its limit: not counted by the featurizer
                            counts[f"too_long.{column}"] += 1
                    counts["short_feeds"] += f.counts.get("short", 0) > 0
            if on_batch is not None:
                on_batch(batch.num_rows)
    fsync(tmp)
    final = out / f"{unit.name}.parquet"
    check_fence(out, fence)
    os.replace(tmp, final)
    record = {
        "unit": asdict(unit),
        "file": final.name,
        "users": users,
        "rows": rows,
        "bytes": final.stat().st_size,
        "sha256": sha256(final),
        "seconds": round(time.perf_counter() - t0, 3),
        "counts": dict(sorted(counts.items())),
    }
    check_fence(out, fence)
    write_json(out / f"{unit.name}.json", record)
    return record


def check_fence(out: Path, fence: str | None) -> None:
    """Raise FeedsJobError unless ``out/.fence`` holds ``fence`` (``None``: no check)."""
    if fence is None:
        return
    try:
        current = (out / FENCE).read_text().strip()
    except FileNotFoundError:
        current = ""
    if current != fence:
        raise FeedsJobError(f"{out}: a later run owns this folder (fence {current or 'gone'})")


def write_json(path: Path, data: dict[str, Any]) -> None:
    write_atomic(path, json.dumps(data, indent=2))


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically, by a temporary file under ``.tmp/`` (cleared by
    every run, so a kill mid-write leaves nothing behind)."""
    tmp = path.parent / TMP / f"{path.name}.{os.getpid()}.{threading.get_ident()}"
    tmp.parent.mkdir(exist_ok=True)
    tmp.write_text(text)
    fsync(tmp)
    os.replace(tmp, path)


def fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Job:
    """What the driver hands an engine: the verified package, the probed scorer built from it,
    the config, the trust policy workers load the package under, and this run's fence."""

    package: Package
    scorer: FeedScorer
    config: JobConfig
    trust: Trust
    fence: str


class Engine(Protocol):
    """Scores units for :func:`~pinrank.batch.feeds.run_feeds`: each through
    :func:`score_unit`, in whatever processes; yields each unit's record once committed and
    reports scored users to ``progress``."""

    def run(
        self, job: Job, units: list[Unit], out: Path, progress: Callable[[int], None]
    ) -> Iterator[dict[str, Any]]: ...


class LocalEngine:
    """Units on this machine: one after the other in the driver's process with the driver's
    scorer (``config.workers`` 1), or spread over ``config.workers`` spawned processes, each
    loading the package once under the driver's trust policy (the local twin of the ray
    engine's actors: same unit function, same records, the same fence and driver watch)."""

    def run(
        self, job: Job, units: list[Unit], out: Path, progress: Callable[[int], None]
    ) -> Iterator[dict[str, Any]]:
        workers = min(job.config.workers or 1, len(units))
        if workers <= 1:
            for unit in units:
                yield score_unit(job.scorer, unit, out, job.config, progress, job.fence)
            return
        setup = (
            str(job.package.root),
            job.trust.to_dict(),
            job.package.version,
            job.config.to_dict(),
            os.getpid(),
            socket.gethostname(),
        )
        pool = ProcessPoolExecutor(
            workers, mp_context=get_context("spawn"), initializer=_worker_setup, initargs=setup
        )
        try:
            futures = [pool.submit(_worker_unit, u, str(out), job.fence) for u in units]
            for future in as_completed(futures):
                try:
                    record = future.result()
                except BrokenProcessPool as err:
                    raise FeedsJobError(f"a feeds worker process died ({err})") from err
                progress(record["unit"]["rows"])
                yield record
        finally:  # on an error, the units not started are dropped (a rerun resumes them)
            pool.shutdown(wait=True, cancel_futures=True)


_WORKER: dict[str, Any] = {}


def worker_scorer(
    package: str, trust: dict[str, Any], version: str, config: dict[str, Any]
) -> tuple[JobConfig, FeedScorer]:
    """A worker's (local process or Ray actor) config and scorer: the package loaded under the
    driver's trust policy, which must be the version the driver checked."""
    loaded = load_package(package, Trust.from_dict(trust))
    if loaded.version != version:
        raise FeedsJobError(f"{package} changed under the job: {loaded.version} != {version}")
    job_config = JobConfig.from_dict(config)
    return job_config, make_scorer(loaded, job_config)


def _worker_setup(
    package: str,
    trust: dict[str, Any],
    version: str,
    config: dict[str, Any],
    driver_pid: int,
    driver_host: str,
) -> None:
    """A local worker process: watch the driver, then build its scorer once."""
    watch_driver(driver_pid, driver_host)
    _WORKER["config"], _WORKER["scorer"] = worker_scorer(package, trust, version, config)


def _worker_unit(unit: Unit, out: str, fence: str) -> dict[str, Any]:
    record = score_unit(_WORKER["scorer"], unit, Path(out), _WORKER["config"], None, fence)
    return record | {"worker_peak_rss_mb": round(peak_rss_mb(), 1)}


def watch_driver(pid: int, host: str, every_s: float = 0.5) -> None:
    """Exit this process as soon as process ``pid`` is gone, when it runs on ``host``."""
    if host != socket.gethostname():
        return  # another node: the fence alone keeps a late commit out

    def watch() -> None:
        while True:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                log.error("the feeds driver (pid %d) is gone: this worker stops", pid)
                os._exit(1)
            except PermissionError:
                pass  # alive, another user's
            time.sleep(every_s)

    threading.Thread(target=watch, name="pinrank-driver-watch", daemon=True).start()
