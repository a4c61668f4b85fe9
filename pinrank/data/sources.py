"""Data sources that entry points instantiate from config: the synthetic generator, or one's own
files described in config (:class:`TableSource`; MovieLens-100K is one: ``conf/data/ml100k.yaml``).

``ensure()`` makes the raw tables and the prepared data set exist and be up to date, and reuses
them when nothing changed: each step records a fingerprint of its inputs (generator config,
source files, spec text, split protocol) and is redone only when the fingerprint differs.
"""

from __future__ import annotations

import abc
import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pinrank.data.ingest import SourceConfig, ingest, source_files
from pinrank.data.io import open_dataset
from pinrank.data.prepare import Prepared, prepare
from pinrank.data.splits import SplitConfig
from pinrank.data.synthetic import SyntheticConfig, generate
from pinrank.data.truth import Oracle


def fingerprint(*parts: Any) -> str:
    """sha256 (16 hex digits) of JSON-encoded parts."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _stamp(folder: Path) -> str | None:
    path = folder / ".fingerprint"
    return path.read_text() if path.exists() else None


@dataclass
class Source(abc.ABC):
    """A data source: how its raw tables are made (``make_raw``) and what they depend on
    (``raw_fingerprint``); ``ensure`` prepares them (subclasses: the synthetic generator, one's
    own tables, the interest examples of another source)."""

    root: str
    spec: str
    split: SplitConfig = field(default_factory=SplitConfig)
    history_len: int = 100

    @abc.abstractmethod
    def raw_fingerprint(self) -> str:
        """What the raw tables depend on."""

    @abc.abstractmethod
    def make_raw(self, raw: Path) -> None:
        """Write the raw users, items and events tables into ``raw``."""

    def ensure_raw(self) -> Path:
        """The raw tables, rebuilt only when their inputs changed."""
        raw = Path(self.root) / "raw"
        if _stamp(raw) != self.raw_fingerprint():
            self.make_raw(raw)
            (raw / ".fingerprint").write_text(self.raw_fingerprint())
        return raw

    def ensure(self) -> Prepared:
        """Raw tables and prepared data set, rebuilt only where their inputs changed."""
        raw, prepared = self.ensure_raw(), Path(self.root) / "prepared"
        raw_fp = self.raw_fingerprint()
        prep_fp = fingerprint(
            raw_fp, Path(self.spec).read_text(), _split_key(self.split), self.history_len
        )
        if _stamp(prepared) != prep_fp:
            prepare(raw, prepared, self.spec, self.split, self.history_len)
            (prepared / ".fingerprint").write_text(prep_fp)
        return Prepared.load(prepared)

    def oracle(self) -> Oracle | None:
        """The ground-truth oracle where the data has one (synthetic data)."""
        return None


def _split_key(split: SplitConfig) -> dict[str, Any]:
    """The split config as fingerprinted: the default ``order`` left out, so data prepared
    before the field existed is not prepared again."""
    return {k: v for k, v in asdict(split).items() if not (k == "order" and v == "time")}


@dataclass
class SyntheticSource(Source):
    """Synthetic data generated from ``generator`` into ``root/raw``."""

    generator: SyntheticConfig = field(default_factory=SyntheticConfig)

    def raw_fingerprint(self) -> str:
        return fingerprint("synthetic", asdict(self.generator))

    def make_raw(self, raw: Path) -> None:
        generate(self.generator, raw)

    def oracle(self) -> Oracle | None:
        return Oracle.load(Path(self.root) / "raw" / "truth")


@dataclass
class TableSource(Source):
    """One's own interaction logs, read through config alone (:mod:`pinrank.data.tables`).

    Attributes:
        tables: ``events`` (required), ``users`` and ``items``: each ``path`` (a file, a folder
            of shards or a glob), ``format`` and ``columns`` (pinrank column -> source column or
            rule).
        label: a boolean (or 0/1) source column of the events, or a rule on one, e.g.
            ``rating >= 4``, ``action in [save, click]``, ``dwell_ms > 3000``.
        ids: per id namespace (``user_id``, ``item_id``, or one a column rule names):
            ``int`` (default), ``map`` or ``hash``.
        engagement: a source column of the events holding the kind of engagement.
        base: the folder relative table paths are read from (default: the working directory).
    """

    tables: dict[str, Any] = field(default_factory=dict)
    label: str = "engaged"
    ids: dict[str, str] = field(default_factory=dict)
    engagement: str | None = None
    base: str | None = None

    def config(self) -> SourceConfig:
        tables = _plain(self.tables)
        if self.base is not None:
            tables = {
                name: {**t, "path": os.path.join(self.base, t["path"])}
                if isinstance(t, dict) and "path" in t
                else t
                for name, t in tables.items()
            }
        return SourceConfig.parse(tables, self.label, _plain(self.ids), self.engagement)

    def raw_fingerprint(self) -> str:
        cfg = self.config()
        files = {
            name: [(f, os.path.getsize(f), int(os.path.getmtime(f))) for f in source_files(t)]
            for name, t in cfg.tables.items()
        }
        tables = {name: asdict(t) for name, t in cfg.tables.items()}
        return fingerprint("tables", tables, self.label, cfg.ids, self.engagement, files)

    def make_raw(self, raw: Path) -> None:
        ingest(self.config(), raw)

    @classmethod
    def of_raw(cls, raw: str | Path, root: str, spec: str) -> TableSource:
        """pinrank's own raw tables (``raw/{users,items,events}``, e.g. generated) as a
        source, every column as it is: what ``pinrank inspect`` reads for generated data."""
        tables: dict[str, Any] = {}
        for name in ("events", "users", "items"):
            names = open_dataset(Path(raw) / name, name).schema.names
            columns = {c: c for c in names if not (name == "events" and c == "engaged")}
            tables[name] = {"path": str(Path(raw) / name), "columns": columns}
        return cls(root=root, spec=spec, tables=tables, label="engaged")


def _plain(value: Any) -> Any:
    """Hydra's DictConfig / ListConfig as plain dicts and lists."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf
    except ImportError:  # pragma: no cover - omegaconf comes with hydra
        return value
    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    return value


SOURCES: dict[str, type[Source]] = {
    "pinrank.data.sources.SyntheticSource": SyntheticSource,
    "pinrank.data.sources.TableSource": TableSource,
}
NESTED = {"split": SplitConfig, "generator": SyntheticConfig}


def load_source(
    config: str | Path, root_dir: str | Path = ".", overrides: dict[str, Any] | None = None
) -> Source:
    """The source of a data config (a file, or the name of a shipped one such as ``ml100k``)
    outside Hydra, e.g. for ``pinrank ingest``: ``${paths.*}`` resolve as in training with
    ``paths.root_dir=root_dir``, ``overrides`` replace fields of ``source`` (``{"root": ...}``).
    The class is looked up in :data:`SOURCES`; nothing else named in the file is imported."""
    from omegaconf import OmegaConf

    from pinrank.resources import conf_dir, conf_file

    # conf_dir() imports pinrank.conf, which registers ${pinrank_conf:}
    shipped = conf_dir() / "data" / f"{config}.yaml"
    if not Path(config).exists() and shipped.is_file():  # a shipped config by name: "ml100k"
        config = shipped
    paths = OmegaConf.load(conf_file("paths", "default.yaml"))
    paths.root_dir = str(root_dir)
    paths.output_dir = str(Path(root_dir) / "outputs")
    cfg = OmegaConf.merge({"paths": paths, "seed": 0}, OmegaConf.load(config))
    raw = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(raw, dict)
    body = dict(raw.get("source") or {})
    target = body.pop("_target_", None)
    if target not in SOURCES:
        raise ValueError(f"{config}: source._target_ {target!r}: expected one of {sorted(SOURCES)}")
    body.update(overrides or {})
    for key, kind in NESTED.items():
        if isinstance(body.get(key), dict):
            body[key] = kind(**{k: v for k, v in body[key].items() if k != "_target_"})
    try:
        return SOURCES[target](**body)
    except TypeError as err:
        raise ValueError(f"{config}: source: {err}") from None
