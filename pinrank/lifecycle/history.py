"""Old models never die: every registered version's metrics on the long-term hold-out, in the
order they were registered, with the versions that served as production marked
(``pinrank models history``). The values are those :func:`Registry.log_holdout` recorded when a
version was compared (``holdout/all/<metric>``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pinrank.lifecycle.tracking import metric_name

METRICS = ("ranking/auc", "retrieval/recall@20", "ranking/log_loss")


def history_rows(registry: Any) -> list[dict[str, Any]]:
    """One row per registered version: number, package version, day (where a lifecycle
    registered it), whether it ever served, its hold-out metrics (``None`` where never
    compared)."""
    served = set(registry.history())
    rows = []
    for v in registry.versions():
        values = {m: v.metrics.get(metric_name(f"holdout/all/{m}")) for m in METRICS}
        rows.append({"version": v.number, "package_version": v.package_version,
                     "day": v.tags.get("pinrank.day"), "aliases": v.aliases,
                     "served": v.number in served, "verdict": v.tags.get("pinrank.verdict"),
                     **values})  # fmt: skip
    return rows


def plot_history(rows: list[dict[str, Any]], path: str | Path) -> Path:
    """The rows' hold-out metrics by version, production versions filled (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(METRICS), figsize=(4.2 * len(METRICS), 3.4), squeeze=False)
    for ax, metric in zip(axes[0], METRICS, strict=True):
        got = [r for r in rows if r[metric] is not None]
        x = [r["version"] for r in got]
        ax.plot(x, [r[metric] for r in got], color="grey", lw=0.8)
        for r in got:
            ax.scatter(r["version"], r[metric], s=40, zorder=3,
                       facecolors="tab:blue" if r["served"] else "white",
                       edgecolors="tab:blue")  # fmt: skip
        ax.set_title(f"hold-out {metric}", fontsize=9)
        ax.set_xlabel("registered version (filled: served as production)", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
