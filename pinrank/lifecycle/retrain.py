"""``pinrank retrain``: continuous retraining that promotes only what is better.

A lifecycle (``conf/lifecycle/*.yaml``) cuts one set of logs (a raw data folder: users, items,
events) into a base history and daily batches. Day 0 trains on the base history; day ``d``
appends the ``d``-th day of events. For every day the same steps run, each recorded in the work
folder's ``state.json`` once its work is done, so a retrain killed at any point and started
again skips what is finished and redoes only the step it was killed in:

1. ``data``: the day's raw tables (every event before the day's end, less the hold-out window),
   written to a temporary folder and renamed into place: the same bytes however often it runs;
2. ``holdout`` (day 0 only): the **long-term hold-out**, fixed once and never moved: every event
   of the last ``holdout_days`` of the base history (never trained on by any day), with the
   users' stored rows as of day 0; the cold-start users (``user_id % cold_user_mod == 0``) are
   never trained on either and are its new users;
3. ``retrieval`` and ``ranking``: ``pinrank train`` on the day's data, from scratch or (with
   ``warm_start``) from production's runs (``init_from``: tables row by row by value);
4. ``export``: ``pinrank export`` of both runs into ``packages/day-<d>`` (signed, verified);
5. ``register``: the package in the registry (idempotent: by its version), alias ``candidate``,
   tagged with the lifecycle and the day;
6. ``evaluate``: the candidate against ``production`` on the hold-out
   (:func:`~pinrank.lifecycle.promotion.evaluate_candidate`): promoted only when better; the
   decision and both packages' hold-out metrics in ``days/<d>/decision.json``.

A service started with ``serve run registry:production`` follows each promotion.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from pinrank.data.io import read_table, write_parquet

DAY_S = 86_400
STEPS = ("data", "holdout", "retrieval", "ranking", "export", "register", "evaluate")
FAULT_ENV = "PINRANK_RETRAIN_FAULT"  # "<day>:<step>": SIGKILL after the step's work (tests)


@dataclass
class LifecycleConfig:
    """A lifecycle: its logs, how they are cut into days, how each day trains (module
    docstring)."""

    name: str
    work: str  # the work folder (state, data, runs, packages, reports)
    logs: str  # a raw data folder: users/, items/, events/ (generated from ``generator``)
    spec: str  # the feature spec the models train with
    base_days: int  # days of history before the first retrain
    days: int  # daily batches after the base history
    holdout_days: int = 1
    cold_user_mod: int = 10
    retrieval: list[str] = field(default_factory=list)  # train overrides
    ranking: list[str] = field(default_factory=lambda: ["model=wide_deep"])
    num_workers: int = 0
    warm_start: bool = False  # days >= 1 begin from production's runs (train.py init_from)
    compare: dict[str, Any] = field(default_factory=dict)
    tracking_uri: str | None = None
    registry_name: str = "pinrank"
    signing_key: str = "outputs/keys/signing.key"
    trusted_key: str = "outputs/keys/signing.pub"
    generator: dict[str, Any] | None = None  # SyntheticConfig fields: the logs, if missing

    @classmethod
    def load(cls, path: str | Path, overrides: dict[str, Any] | None = None) -> LifecycleConfig:
        import yaml

        values = {**(yaml.safe_load(Path(path).read_text()) or {}), **(overrides or {})}
        unknown = sorted(set(values) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"{path}: unknown lifecycle settings {unknown}")
        return cls(**values)


class Retrain:
    """The steps of one lifecycle's days over its work folder (module docstring)."""

    def __init__(self, config: LifecycleConfig) -> None:
        self.config = config
        self.work = Path(config.work)
        self.state_path = self.work / "state.json"

    # --------------------------------------------------------------------------- the days

    def ensure_logs(self) -> Path:
        """The logs folder; generated from ``generator`` when it holds no events yet."""
        logs = Path(self.config.logs)
        if not (logs / "events").exists():
            if self.config.generator is None:
                raise FileNotFoundError(f"{logs} holds no events/ and the lifecycle has no "
                                        "generator to make them")  # fmt: skip
            from pinrank.data.synthetic import SyntheticConfig, generate

            cfg = SyntheticConfig(**self.config.generator)
            _replace(logs, lambda tmp: generate(cfg, tmp))
        return logs

    def bounds(self) -> tuple[int, int]:
        """(the first day's start, the base history's end) in seconds."""
        self.ensure_logs()
        ts = read_table(Path(self.config.logs) / "events", "events", columns=["ts"])
        first = int(pc.min(ts.column("ts")).as_py()) // DAY_S * DAY_S
        end = first + self.config.base_days * DAY_S
        last = int(pc.max(ts.column("ts")).as_py())
        if end + self.config.days * DAY_S > last + DAY_S:
            raise ValueError(f"{self.config.logs}: its events end on day "
                             f"{(last - first) // DAY_S}, before base_days + days = "
                             f"{self.config.base_days + self.config.days}")  # fmt: skip
        return first, end

    def window(self) -> tuple[int, int]:
        """The hold-out window: the last ``holdout_days`` of the base history."""
        _, end = self.bounds()
        return end - self.config.holdout_days * DAY_S, end

    def run_day(self, day: int, log: Callable[[str], None] = print) -> dict[str, Any]:
        """Every step of ``day`` not yet done (module docstring); its state."""
        if not 0 <= day <= self.config.days:
            raise ValueError(f"day must be 0..{self.config.days}, got {day}")
        for d in range(day):  # a day builds on the registry of the days before it
            if not self._done(d, "evaluate"):
                raise ValueError(f"day {d} is not finished: run it first (pinrank retrain "
                                 f"--day {d})")  # fmt: skip
        steps = {"data": self._data, "holdout": self._holdout, "retrieval": self._train,
                 "ranking": self._train, "export": self._export, "register": self._register,
                 "evaluate": self._evaluate}  # fmt: skip
        for step in STEPS:
            if step == "holdout" and day != 0:
                continue
            if self._done(day, step):
                continue
            t0 = time.perf_counter()
            result = steps[step](day, step)
            _fault(day, step)
            self._record(day, step, {**result, "seconds": round(time.perf_counter() - t0, 1)})
            log(f"[retrain] {self.config.name} day {day}: {step} done "
                f"({time.perf_counter() - t0:.0f} s)")  # fmt: skip
        return self.state()["days"][str(day)]

    # ------------------------------------------------------------------------------ steps

    def _data(self, day: int, _: str) -> dict[str, Any]:
        end = self.bounds()[1]
        until = end + day * DAY_S
        lo, hi = self.window()
        logs = Path(self.config.logs)
        events = read_table(logs / "events", "events")
        ts = events.column("ts")
        keep = pc.and_(pc.less(ts, until), pc.invert(pc.and_(pc.greater_equal(ts, lo),
                                                             pc.less(ts, hi))))  # fmt: skip
        kept = events.filter(keep)
        raw = self.day_root(day) / "raw"
        _replace(raw, lambda tmp: self._write_raw(tmp, kept))
        return {"events": kept.num_rows, "until": until}

    def _write_raw(self, out: Path, events: pa.Table) -> None:
        logs = Path(self.config.logs)
        write_parquet(events, out / "events" / "part-00000.parquet")
        for name in ("users", "items"):
            write_parquet(read_table(logs / name, name), out / name / "part-00000.parquet")

    def _holdout(self, day: int, _: str) -> dict[str, Any]:
        from pinrank.data.prepare import Prepared

        lo, hi = self.window()
        events = read_table(Path(self.config.logs) / "events", "events")
        ts = events.column("ts")
        held = events.filter(pc.and_(pc.greater_equal(ts, lo), pc.less(ts, hi)))
        prepared = self._ensure_prepared(0)
        users = Prepared.load(prepared).users()
        train = read_table(Prepared.load(prepared).split("train"), "events",
                           columns=["user_id", "item_id", "engaged"])  # fmt: skip

        def write(tmp: Path) -> None:
            write_parquet(held, tmp / "events.parquet")
            write_parquet(users, tmp / "users.parquet")
            write_parquet(train, tmp / "train.parquet")
            n_items = read_table(Path(self.config.logs) / "items", "items",
                                 columns=["item_id"]).num_rows  # fmt: skip
            (tmp / "holdout.json").write_text(json.dumps({
                "name": f"{self.config.name}: {_date(lo)} to {_date(hi - 1)}",
                "window": [lo, hi], "items": n_items,
            }))  # fmt: skip

        _replace(self.work / "holdout", write)
        return {"impressions": held.num_rows, "window": [lo, hi]}

    def prepared(self, day: int) -> Path:
        """The day's prepared data set (prepared on first use)."""
        return self._ensure_prepared(day)

    def _ensure_prepared(self, day: int) -> Path:
        """The day's prepared data (prepared by the first training run, or here)."""
        return self._source(day).ensure().root

    def _source(self, day: int) -> Any:
        """The day's raw tables as a TableSource: what the hold-out prepares and what the day's
        training data config names (the same fingerprint, so it is prepared once)."""
        from pinrank.data.sources import TableSource
        from pinrank.data.splits import SplitConfig

        root = self.day_root(day)
        source = TableSource.of_raw(root / "raw", str(root / "source"), self.config.spec)
        source.split = SplitConfig(cold_user_mod=self.config.cold_user_mod)
        return source

    def _train(self, day: int, model: str) -> dict[str, Any]:
        config = self._data_config(day)
        overrides = self.config.retrieval if model == "retrieval" else self.config.ranking
        logs = self.day_root(day) / "runs" / model
        start = self._production_run(model) if self.config.warm_start and day > 0 else None
        args = ["train", "--config-dir", str(config.parent.parent.resolve()),
                f"data={config.stem}", f"task_name={model}", f"paths.log_dir={logs}",
                "eval_oracle=false", "trainer.enable_progress_bar=false", *overrides,
                *([f"init_from={start}"] if start else [])]  # fmt: skip
        _pinrank(args)
        runs = sorted((logs / model / "runs").glob("*/run.json"), key=lambda p: p.stat().st_mtime)
        if not runs:
            raise RuntimeError(f"pinrank train wrote no run under {logs}")
        return {"run": str(runs[-1].parent), "init_from": start}

    def _production_run(self, model: str) -> str | None:
        """The run of ``model`` in the production package, when a day of this lifecycle made
        it (its ``pinrank.day`` tag); else ``None`` (a fresh start)."""
        from pinrank.lifecycle.registry import PRODUCTION

        tags = self.registry().get(PRODUCTION).tags
        if tags.get("pinrank.lifecycle") != self.config.name or "pinrank.day" not in tags:
            return None
        return str(self.state()["days"][tags["pinrank.day"]][model]["run"])

    def _data_config(self, day: int) -> Path:
        """``conf/data/day_<d>.yaml`` under the work folder: the day's raw tables as a
        TableSource, the shipped synthetic data config's datamodule."""
        import yaml
        from omegaconf import OmegaConf

        from pinrank.resources import conf_file

        source = self._source(day)
        shipped: Any = OmegaConf.to_container(OmegaConf.load(conf_file("data", "synthetic.yaml")))
        datamodule = {**shipped["datamodule"], "num_workers": self.config.num_workers}
        body = {
            "source": {
                "_target_": "pinrank.data.sources.TableSource", "root": source.root,
                "spec": str(Path(self.config.spec).resolve()), "history_len": 100,
                "split": {"_target_": "pinrank.data.splits.SplitConfig",
                          "cold_user_mod": source.split.cold_user_mod},
                "tables": source.tables, "label": "engaged",
            },
            "datamodule": datamodule,
        }  # fmt: skip
        path = self.work / "conf" / "data" / f"day_{day}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(body, sort_keys=False))
        return path

    def _export(self, day: int, _: str) -> dict[str, Any]:
        state = self.state()["days"][str(day)]
        out = self.work / "packages" / f"day-{day}"
        runs = f"[{state['retrieval']['run']},{state['ranking']['run']}]"
        _pinrank(["export", f"run_dir={runs}", f"out={out}", "overwrite=true",
                  f"signing_key={self.config.signing_key}"])  # fmt: skip
        return {"package": str(out)}

    def _register(self, day: int, _: str) -> dict[str, Any]:
        registry, trust = self.registry(), self.trust()
        package = self.state()["days"][str(day)]["export"]["package"]
        version = registry.register(package, trust, description=f"{self.config.name} day {day}")
        for key, value in (("pinrank.lifecycle", self.config.name), ("pinrank.day", str(day))):
            registry.client.set_model_version_tag(registry.name, str(version.number), key, value)
        return {"version": version.number, "package_version": version.package_version}

    def _evaluate(self, day: int, _: str) -> dict[str, Any]:
        from pinrank.lifecycle.compare import CompareConfig, Holdout
        from pinrank.lifecycle.promotion import evaluate_candidate

        number = self.state()["days"][str(day)]["register"]["version"]
        config = CompareConfig.from_dict(self.config.compare)
        holdout = Holdout.load(self.work / "holdout", config)
        decision = evaluate_candidate(self.registry(), holdout, config, self.trust(),
                                      self.day_root(day) / "compare", self.work / "cache",
                                      candidate=number)  # fmt: skip
        overall = {f"{m.name}": {"production": m.a, "candidate": m.b,
                                 "diff": m.diff.to_dict()}
                   for m in decision.metrics if m.slice == "all"}  # fmt: skip
        result = {
            "candidate": number,
            "production_before": decision.production.number if decision.production else None,
            "promoted": decision.promoted, "reasons": decision.reasons, "metrics": overall,
        }  # fmt: skip
        (self.day_root(day) / "decision.json").write_text(json.dumps(result, indent=2))
        return result

    # ------------------------------------------------------------------------------ state

    def day_root(self, day: int) -> Path:
        return self.work / "days" / str(day)

    def registry(self) -> Any:
        from pinrank.lifecycle.registry import Registry

        return Registry(self.config.tracking_uri, self.config.registry_name)

    def trust(self) -> Any:
        from pinrank.serving.signing import Trust

        return Trust.from_files([self.config.trusted_key])

    def state(self) -> dict[str, Any]:
        if not self.state_path.exists():
            return {"lifecycle": asdict(self.config), "days": {}}
        return json.loads(self.state_path.read_text())

    def _done(self, day: int, step: str) -> bool:
        return step in self.state()["days"].get(str(day), {})

    def _record(self, day: int, step: str, result: dict[str, Any]) -> None:
        state = self.state()
        state["days"].setdefault(str(day), {})[step] = result
        self.work.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        os.replace(tmp, self.state_path)  # atomic: a kill leaves the old state or the new


def _replace(target: Path, write: Callable[[Path], object]) -> None:
    """Write a folder through ``write`` into a temporary sibling, then swap it in."""
    tmp = target.with_name(f".{target.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write(tmp)
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    tmp.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def _pinrank(args: list[str]) -> None:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-m", "pinrank.cli", "-q", *args], env=env,
                          capture_output=True, text=True)  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"pinrank {args[0]} failed ({proc.returncode}):\n"
                           f"{(proc.stderr or proc.stdout)[-4000:]}")  # fmt: skip


def _fault(day: int, step: str) -> None:
    """Tests: SIGKILL this process after the step named in $PINRANK_RETRAIN_FAULT."""
    if os.environ.get(FAULT_ENV) == f"{day}:{step}":
        os.kill(os.getpid(), signal.SIGKILL)


def _date(ts: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ts, UTC).date().isoformat()
