"""Batch feeds (``pinrank feeds``): the same feeds as the online scorer, bad input named and
counted, exactly-once output across kills (a real SIGKILL) and restarts, refusal to mix jobs,
and the Ray engine's output equal to the local engine's."""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from package_fixtures import TRUST

from pinrank.batch.feeds import JOB, LOCK, SUCCESS, read_feeds, run_feeds, verify_feeds
from pinrank.batch.units import FEED_SCHEMA, FeedsJobError, JobConfig
from pinrank.serving.feed import PERSONALIZED_DEFAULTS, FeedConfig
from pinrank.serving.package import load_package
from pinrank.serving.runtime import OnnxBackend
from pinrank.serving.scorer import FeedScorer
from pinrank.serving.store import TableStore

ROOT = Path(__file__).resolve().parents[2]
# one ONNX Runtime thread: the same count the Ray actors get, so both engines' bytes compare
CONFIG = JobConfig(
    k=20, batch_users=64, threads=1, feed=FeedConfig(candidates=60, interest_candidates=20)
)


def write_users(table: pa.Table, path: Path, row_group: int = 50) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, row_group_size=row_group)
    return path


@pytest.fixture(scope="module")
def users_dir(users: pa.Table, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The users in two files of 50-user row groups (2 files x 3 units)."""
    root = tmp_path_factory.mktemp("users")
    write_users(users.slice(0, 150), root / "a.parquet")
    write_users(users.slice(150, 150), root / "b.parquet")
    return root


@pytest.fixture(scope="module")
def reference(package_dir: Path, users_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One uninterrupted local run: what every other run must reproduce."""
    out = tmp_path_factory.mktemp("feeds") / "reference"
    run_feeds(package_dir, users_dir, out, CONFIG, progress=False, trust=TRUST)
    return out


def same_shards(a: Path, b: Path) -> None:
    """Equal part files, byte for byte, and equal records (but for timings)."""
    parts_a, parts_b = sorted(a.glob("part-*.parquet")), sorted(b.glob("part-*.parquet"))
    assert [p.name for p in parts_a] == [p.name for p in parts_b]
    for pa_, pb in zip(parts_a, parts_b, strict=True):
        assert pa_.read_bytes() == pb.read_bytes(), pa_.name
        ra, rb = (json.loads(p.with_suffix(".json").read_text()) for p in (pa_, pb))
        ra.pop("seconds"), rb.pop("seconds")
        assert ra == rb


def test_batch_feeds_equal_the_online_scorer(
    reference: Path, package_dir: Path, users: pa.Table
) -> None:
    feeds = read_feeds(reference)
    assert feeds.schema == FEED_SCHEMA
    summary = json.loads((reference / SUCCESS).read_text())
    assert summary["users"] == users.num_rows == 300 and summary["units"] == 6
    assert feeds.num_rows == summary["rows"] == 300 * CONFIG.k
    package = load_package(package_dir, TRUST)
    online = FeedScorer(package, TableStore(users), OnnxBackend(package), CONFIG.feed)
    by_user = feeds.group_by("user_id").aggregate([])  # every user once
    assert by_user.num_rows == 300
    rng = np.random.default_rng(0)
    for uid in rng.choice(users.column("user_id").to_numpy(), 40, replace=False).tolist():
        rows = feeds.filter(pc.equal(feeds["user_id"], uid))
        feed = online.feed(uid, CONFIG.k)
        assert rows["item_id"].to_pylist() == feed.item_ids.tolist(), uid
        assert rows["position"].to_pylist() == list(range(len(feed.items)))
        assert rows["source"].to_pylist() == [i.source for i in feed.items]
        assert set(rows["path"].to_pylist()) == {feed.path}
        np.testing.assert_allclose(
            rows["score"].to_numpy(), [i.score for i in feed.items], atol=1e-5
        )


def test_dirty_rows_get_defaults_and_counts(
    package_dir: Path, users: pa.Table, tmp_path: Path
) -> None:
    t = users.slice(0, 40)
    age = pa.array([None if i % 4 == 0 else 30 for i in range(40)], t.schema.field("age").type)
    t = t.set_column(t.column_names.index("age"), "age", age)
    ids = pa.array([None if i == 5 else v for i, v in enumerate(t["user_id"].to_pylist())])
    t = t.set_column(t.column_names.index("user_id"), "user_id", ids.cast(pa.int64()))
    out = tmp_path / "out"
    summary = run_feeds(
        package_dir,
        write_users(t, tmp_path / "u.parquet"),
        out,
        CONFIG,
        progress=False,
        trust=TRUST,
    ).summary
    assert summary["users"] == 39 and summary["counts"]["skipped.null_id"] == 1
    assert summary["counts"]["replaced.age.null"] == 10
    assert summary["counts"]["replaced.age_bucket.null"] == 10
    feeds = read_feeds(out)
    defaults = feeds.filter(pc.equal(feeds["path"], PERSONALIZED_DEFAULTS))
    assert (
        len(set(defaults["user_id"].to_pylist()))
        == summary["counts"][f"path.{PERSONALIZED_DEFAULTS}"]
        >= 10
    )
    assert not np.isnan(feeds["score"].to_numpy()).any()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda t: t.drop_columns(["seen"]), "no column.*'seen'"),
        (
            lambda t: t.set_column(
                t.column_names.index("age"), "age", pa.array(["x"] * t.num_rows)
            ),
            "column 'age' is string",
        ),
    ],
)
def test_bad_input_is_named_before_any_unit_runs(
    package_dir: Path, users: pa.Table, tmp_path: Path, change: object, message: str
) -> None:
    path = write_users(change(users.slice(0, 60)), tmp_path / "u.parquet")  # type: ignore[operator]
    with pytest.raises((FeedsJobError, TypeError), match=message):
        run_feeds(package_dir, path, tmp_path / "out", CONFIG, progress=False, trust=TRUST)
    assert not list((tmp_path / "out").glob("part-*.parquet"))


def test_resume_redoes_only_what_was_not_committed(
    reference: Path, package_dir: Path, users_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    run_feeds(package_dir, users_dir, out, CONFIG, progress=False, trust=TRUST)
    (out / "part-000002.json").unlink()  # killed after the file, before its record
    (out / "part-000004.parquet").write_bytes(b"torn")  # a torn file under a record
    (out / SUCCESS).unlink()
    summary = run_feeds(package_dir, users_dir, out, CONFIG, progress=False, trust=TRUST).summary
    assert summary["units_written"] == 2 and summary["units_resumed"] == 4
    same_shards(out, reference)
    again = run_feeds(package_dir, users_dir, out, CONFIG, progress=False, trust=TRUST).summary
    assert again["units_written"] == 0 and again["users"] == 300


def test_another_jobs_output_is_refused(
    package_dir: Path, users_dir: Path, reference: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    run_feeds(package_dir, users_dir, out, CONFIG, progress=False, trust=TRUST)
    other = JobConfig(k=10, batch_users=64, feed=CONFIG.feed)
    with pytest.raises(FeedsJobError, match=r"another job.*config"):
        run_feeds(package_dir, users_dir, out, other, progress=False, trust=TRUST)
    summary = run_feeds(
        package_dir, users_dir, out, other, overwrite=True, progress=False, trust=TRUST
    ).summary
    assert summary["rows"] == 300 * 10 and read_feeds(out).num_rows == 300 * 10
    with open(out / LOCK, "w") as fh:  # a job holding the folder
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(FeedsJobError, match="another feeds job"):
            run_feeds(package_dir, users_dir, out, other, progress=False, trust=TRUST)


def feeds_command(package_dir: Path, users: Path, out: Path, key: Path) -> list[str]:
    return [
        sys.executable, "-m", "pinrank.cli", "feeds", str(package_dir), "--users", str(users),
        "--out", str(out), "--k", str(CONFIG.k), "--batch-users", str(CONFIG.batch_users),
        "--threads", "1", "--trusted-key", str(key),
        "--candidates", str(CONFIG.feed.candidates),
        "--interest-candidates", str(CONFIG.feed.interest_candidates), "--no-progress",
    ]  # fmt: skip


def test_sigkill_mid_run_then_resume_gives_the_uninterrupted_output(
    package_dir: Path, users: pa.Table, tmp_path: Path, key_files: dict[str, Path]
) -> None:
    """Kill the job for real (SIGKILL) once some units are committed, at a different moment
    each time, then finish it: the output equals one uninterrupted run's, byte for byte."""
    users_path = write_users(users, tmp_path / "users.parquet", row_group=20)  # 15 units
    reference = tmp_path / "reference"
    run_feeds(package_dir, users_path, reference, CONFIG, progress=False, trust=TRUST)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    kills, workers = 0, []
    for committed in (2, 6):
        proc = subprocess.Popen(
            feeds_command(package_dir, users_path, out, key_files["public"]), cwd=ROOT, env=env
        )
        deadline = time.monotonic() + 300
        while len(list(out.glob("part-*.json"))) < committed and proc.poll() is None:
            assert time.monotonic() < deadline, "the job made no progress"
            time.sleep(0.01)
        if proc.poll() is None:
            workers += _children_of(proc.pid)
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait(timeout=60)
        assert not (out / SUCCESS).exists() or proc.returncode == 0
    assert kills >= 1, "the job finished before it could be killed"
    # the command's default: one worker process per CPU (15 units), each gone with the driver
    cpus = len(os.sched_getaffinity(0))
    assert json.loads((out / JOB).read_text())["config"]["workers"] == min(cpus, 15)
    assert len(workers) >= min(cpus, 15) if cpus > 1 else True
    deadline = time.monotonic() + 30
    while _alive(workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(workers), "worker processes outlived the killed driver"
    done = subprocess.run(
        feeds_command(package_dir, users_path, out, key_files["public"]), cwd=ROOT, env=env
    )
    assert done.returncode == 0
    same_shards(out, reference)
    feeds = read_feeds(out)
    assert feeds.num_rows == 300 * CONFIG.k
    pairs = feeds.group_by(["user_id", "position"]).aggregate([])
    assert pairs.num_rows == feeds.num_rows  # no duplicated feed rows
    assert not list((out / ".tmp").glob("*")) if (out / ".tmp").exists() else True
    assert json.loads((out / JOB).read_text())["config"]["k"] == CONFIG.k


def test_ray_engine_equals_the_local_engine(
    package_dir: Path, users_dir: Path, reference: Path, tmp_path: Path
) -> None:
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        out = tmp_path / "ray"
        summary = run_feeds(
            package_dir,
            users_dir,
            out,
            CONFIG,
            engine="ray",
            progress=False,
            trust=TRUST,
            ray_options={"actors": 2, "cpus_per_actor": 1},
        ).summary
    finally:
        ray.shutdown()
    assert summary["engine"] == "ray" and summary["units_written"] == 6
    same_shards(out, reference)


def test_worker_processes_equal_the_local_engine(
    package_dir: Path, users_dir: Path, reference: Path, tmp_path: Path
) -> None:
    out = tmp_path / "workers"
    config = dataclasses.replace(CONFIG, workers=2)
    summary = run_feeds(package_dir, users_dir, out, config, progress=False, trust=TRUST).summary
    assert summary["config"]["workers"] == 2 and summary["units_written"] == 6
    assert summary["worker_peak_rss_mb"] > 0
    same_shards(out, reference)
    # a rerun of the same job resumes it in the driver's process: nothing left to do
    again = run_feeds(package_dir, users_dir, out, config, progress=False, trust=TRUST).summary
    assert again["units_resumed"] == 6 and again["worker_peak_rss_mb"] is None


def test_workers_default_to_the_cpus_at_most_one_per_unit(
    package_dir: Path, users_dir: Path, tmp_path: Path
) -> None:
    auto = dataclasses.replace(CONFIG, workers=None, threads=None)
    out = tmp_path / "auto"
    run_feeds(package_dir, users_dir, out, auto, progress=False, trust=TRUST)
    config = json.loads((out / JOB).read_text())["config"]
    cpus = len(os.sched_getaffinity(0))
    assert config["workers"] == min(cpus, 6)  # 6 units
    assert config["threads"] == max(cpus // config["workers"], 1)
    with pytest.raises(ValueError, match="workers must be an integer >= 1"):
        JobConfig(workers=0)


def test_a_damaged_shard_is_found_by_verify_and_written_again(
    package_dir: Path, users_dir: Path, reference: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    assert verify_feeds(out)["units"] == 6
    part = out / "part-000003.parquet"
    data = bytearray(part.read_bytes())
    data[len(data) // 2] ^= 0x01  # same size: only the sha256 tells
    part.write_bytes(bytes(data))
    with pytest.raises(FeedsJobError, match=r"part-000003.parquet does not match its record"):
        verify_feeds(out)
    summary = run_feeds(package_dir, users_dir, out, CONFIG, progress=False, trust=TRUST).summary
    assert summary["units_written"] == 1 and summary["units_resumed"] == 5
    same_shards(out, reference)
    verify_feeds(out)


def test_the_verify_command(reference: Path, tmp_path: Path) -> None:
    ok = subprocess.run(
        [sys.executable, "-m", "pinrank.cli", "feeds", "--verify", str(reference)],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert ok.returncode == 0 and "OK, 6 shards" in ok.stdout, ok.stderr[-2000:]
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    (out / "part-000001.parquet").unlink()
    bad = subprocess.run(
        [sys.executable, "-m", "pinrank.cli", "feeds", "--verify", str(out)],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert bad.returncode == 1 and "part-000001.parquet is missing" in bad.stderr


def test_a_job_is_resumed_only_on_its_engine_and_thread_count(
    package_dir: Path, users_dir: Path, reference: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    identity = json.loads((out / JOB).read_text())
    assert identity["engine"] == "local" and identity["config"]["threads"] == 1
    with pytest.raises(FeedsJobError, match="engine differ"):
        run_feeds(package_dir, users_dir, out, CONFIG, engine="ray", progress=False, trust=TRUST)
    two = dataclasses.replace(CONFIG, threads=2)
    with pytest.raises(FeedsJobError, match="config differ"):
        run_feeds(package_dir, users_dir, out, two, progress=False, trust=TRUST)
    # threads=None is pinned to the CPUs this process may use, and recorded as such
    fresh = tmp_path / "fresh"
    auto = dataclasses.replace(CONFIG, threads=None)
    run_feeds(package_dir, users_dir, fresh, auto, progress=False, trust=TRUST)
    threads = json.loads((fresh / JOB).read_text())["config"]["threads"]
    assert threads == len(os.sched_getaffinity(0))


def test_relative_and_absolute_paths_are_one_job(
    package_dir: Path, users_dir: Path, reference: Path, tmp_path: Path, monkeypatch: Any
) -> None:
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    monkeypatch.chdir(users_dir.parent)
    relative_users = Path(users_dir.name)
    summary = run_feeds(
        package_dir, relative_users, Path(tmp_path.name) / "out", CONFIG,
        progress=False, trust=TRUST,
    ).summary  # fmt: skip
    assert summary["units_resumed"] == 6 and summary["units_written"] == 0


def test_temporary_records_left_by_a_kill_are_removed(
    package_dir: Path, users_dir: Path, reference: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    (out / ".part-000002.json.12345").write_text("{")  # the old layout's temporary record
    (out / ".tmp").mkdir(exist_ok=True)
    (out / ".tmp" / "part-000002.json.999.1").write_text("{")
    run_feeds(package_dir, users_dir, out, CONFIG, progress=False, trust=TRUST)
    assert not list(out.glob(".part-*")) and not (out / ".tmp").exists()
    same_shards(out, reference)


def test_a_unit_never_commits_under_a_stale_fence(
    package_dir: Path, users_dir: Path, tmp_path: Path
) -> None:
    from pinrank.batch.feeds import plan
    from pinrank.batch.units import FENCE, make_scorer, required_columns, score_unit

    scorer = make_scorer(load_package(package_dir, TRUST), CONFIG)
    unit = plan(users_dir, required_columns(scorer))[0]
    out = tmp_path / "out"
    (out / ".tmp").mkdir(parents=True)
    (out / FENCE).write_text("token-of-a-later-run")
    with pytest.raises(FeedsJobError, match="a later run owns this folder"):
        score_unit(scorer, unit, out, CONFIG, fence="token-of-the-killed-run")
    assert not list(out.glob("part-*"))
    record = score_unit(scorer, unit, out, CONFIG, fence="token-of-a-later-run")
    assert (out / record["file"]).exists()


def _stat(pid: int) -> list[str]:
    """``/proc/{pid}/stat`` after the command name: state, ppid, ... (``[]``: no such pid)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return []


def _children_of(pid: int) -> list[int]:
    """The live processes whose parent is ``pid``."""
    return [
        int(e.name)
        for e in Path("/proc").iterdir()
        if e.name.isdigit() and _stat(int(e.name))[1:2] == [str(pid)]
    ]


def _alive(pids: list[int]) -> list[int]:
    return [p for p in pids if _stat(p)[:1] not in ([], ["Z"])]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _ray_processes(marker: str) -> list[int]:
    """Pids of live processes whose command line holds ``marker``."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                environ = (proc / "environ").read_bytes()
            except OSError:
                continue
            if marker in cmdline or marker.encode() in environ:
                pids.append(int(proc.name))
    return pids


def test_ray_workers_stop_when_the_driver_is_killed_and_the_job_resumes(
    package_dir: Path, users: pa.Table, key_files: dict[str, Path], tmp_path: Path
) -> None:
    """SIGKILL the Ray engine's driver once a shard is committed: no shard is committed after
    it died, and a rerun ends with the output of an uninterrupted run, byte for byte."""
    pytest.importorskip("ray")
    users_path = write_users(users, tmp_path / "users.parquet", row_group=10)  # 30 units
    reference = tmp_path / "reference"
    run_feeds(package_dir, users_path, reference, CONFIG, progress=False, trust=TRUST)
    out = tmp_path / "out"
    marker = f"PINRANK_TEST_JOB={tmp_path.name}"
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "PINRANK_TEST_JOB": tmp_path.name}
    cmd = [*feeds_command(package_dir, users_path, out, key_files["public"]),
           "--engine", "ray", "--actors", "2", "--cpus-per-actor", "1"]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while not list(out.glob("part-*.json")) and proc.poll() is None:
            assert time.monotonic() < deadline, "the Ray job committed nothing"
            time.sleep(0.02)
        assert proc.poll() is None, "the job finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        time.sleep(3)  # the watchdog polls every 0.5 s
        committed = sorted(p.name for p in out.glob("part-*"))
        time.sleep(5)
        assert sorted(p.name for p in out.glob("part-*")) == committed, "committed after death"
        assert len(committed) < 60, "every unit was committed: the kill came too late"
        workers = [p for p in _ray_processes(marker) if "UnitWriter" in _cmdline(p)]
        assert not workers, f"Ray workers still alive: {workers}"
    finally:
        for pid in _ray_processes(marker):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    done = subprocess.run(cmd, cwd=ROOT, env=env, timeout=600)
    assert done.returncode == 0
    same_shards(out, reference)
    verify_feeds(out)


def dirty_users(users: pa.Table) -> pa.Table:
    """40 users with every kind of bad value the spec has a policy for, in the first rows."""
    t = users.slice(0, 40)

    def put(name: str, values: dict[int, Any]) -> None:
        nonlocal t
        col = t.column(name).to_pylist()
        for row, v in values.items():
            col[row] = v
        t = t.set_column(t.column_names.index(name), name, pa.array(col, t.schema.field(name).type))

    put("age", {0: -7, 1: 2_000_000_000, 2: 150})
    put("country", {3: "", 4: "Atlantis"})
    put("gender", {5: ""})
    put("history", {6: [None, 5, None], 7: [-3, 10**12], 8: None, 9: list(range(400))})
    put("seen", {10: [2**62], 11: None})
    put("last_ts", {12: 1_700_000_000_000, 13: 2**60, 14: -1})  # ms, above 2^53, negative
    return t


def test_every_replaced_value_is_counted_as_training_counts_it(
    package_dir: Path, users: pa.Table, tmp_path: Path
) -> None:
    """Batch counts equal the training featurizer's counts on the same rows, reason by reason,
    including ages out of range, empty strings, null list elements, unknown and negative item
    ids, null histories, millisecond timestamps and integers above 2^53."""
    from pinrank.features.featurizer import Featurizer

    t = dirty_users(users)
    summary = run_feeds(
        package_dir, write_users(t, tmp_path / "u.parquet"), tmp_path / "out", CONFIG,
        progress=False, trust=TRUST,
    ).summary  # fmt: skip
    package = load_package(package_dir, TRUST)
    training = Featurizer(package.spec(), package.state())({"user": t}).counts
    expected = {f"replaced.{f}.{why}": n for (f, why), n in training.items() if n}
    got = {k: v for k, v in summary["counts"].items() if k.startswith("replaced.")}
    assert got == expected
    for key in ("age.out_of_range", "age_bucket.negative", "country.null", "country.oov",
                "gender.null", "history.null", "history.negative", "history.oov",
                "history.truncated", "seen.oov", "last_active.out_of_range"):  # fmt: skip
        assert got.get(f"replaced.{key}", 0) >= 1, key
    assert got["replaced.last_active.out_of_range"] >= 2  # the ms and the 2^60 timestamps
