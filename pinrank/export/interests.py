"""The new-user interest model inside a model package: the ``interests/`` section.

An interest run (``model=interests``) is trained on its own prepared data set (sign-up features,
interests as items), so it has its own feature spec, state, graphs and "catalogue" (the
interests). It is exported by the same code as every package, ``build_package`` on that run
alone, into the package's ``interests/`` folder: ``interests/graphs/ranker*.onnx`` (raw sign-up
and interest columns in, the calibrated probability out: self-contained like the pin graphs),
``interests/catalogue/items.parquet`` (the interests), the item parts of every interest, its own
state, weights and shared tensors, and ``interests/candidates.parquet`` (each segment's candidate
interests, :class:`~pinrank.interests.segments.Candidates`, fitted in the run's report: an
interest package of its own holds them too, :func:`write_candidates`).

The section's manifest is the sub-package's, under ``manifest["interests"]``, with its paths
relative to ``interests/``, plus ``candidates`` (path, segment columns, count per segment). The
outer manifest lists and hashes every file of the section, and its signature covers it; a loaded
package opens the section as a package of its own with :meth:`Package.section`, through the
same digest-checked reads.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from pinrank.export.run import TrainedRun
from pinrank.interests.segments import Candidates
from pinrank.serving.package import MANIFEST, MANIFEST_DIGEST, SECTION, UNLISTED, Package

CANDIDATES = "candidates.parquet"


def export_interests(
    run: TrainedRun, root: Path, exporter: str, build: Callable[..., Package]
) -> dict[str, Any]:
    """Export the interest ``run`` into ``root / "interests"`` with ``build`` (the package
    builder, :func:`~pinrank.export.package.build_package`, which calls this) and return its
    manifest section.

    Raises:
        ValueError: not an interest run, or its candidates are missing or malformed.
    """
    if run.kind != "interests" or run.record.interests is None:
        raise ValueError(f"{run.root}: not an interest run (kind {run.kind!r})")
    tmp = root.parent / f".{root.name}.{SECTION}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        sub = build([run], tmp, run.record.train_command, exporter=exporter)
        section = {k: v for k, v in sub.manifest.items() if k not in ("format", "format_version",
                                                                      "files")}  # fmt: skip
        target = root / SECTION
        target.mkdir(parents=True)
        for relative in sub.manifest["files"]:
            dest = target / relative
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(tmp / relative, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    assert not {MANIFEST, MANIFEST_DIGEST, *UNLISTED} & {p.name for p in target.iterdir()}
    return section


def write_candidates(run: TrainedRun, root: Path) -> dict[str, Any]:
    """The interest run's candidates (checked) as ``root / candidates.parquet``; returns the
    manifest's ``candidates`` entry: path, segment columns, count per segment, segments.

    Raises:
        ValueError: not an interest run, or its candidates are missing or malformed.
    """
    settings = run.record.interests
    if run.kind != "interests" or settings is None:
        raise ValueError(f"{run.root}: not an interest run (kind {run.kind!r})")
    source = run.root / str(settings.get("candidates", CANDIDATES))
    if not source.is_file():
        raise ValueError(f"{run.root}: the run saved no {source.name} (its report writes it)")
    candidates = Candidates.from_table(pq.read_table(source), str(source))  # checked on the way
    pq.write_table(candidates.to_table(), root / CANDIDATES)
    return {
        "path": CANDIDATES,
        "segment": [str(c) for c in settings["segment"]],
        "per_segment": int(settings["candidates_per_segment"]),
        "segments": len(candidates.segments),
    }
