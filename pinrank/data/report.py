"""A short report on a prepared data set: sizes, labels, interests and every bad value counted.

The bad-value counts come from running the real featurizer over every split, so they are exactly
the values that the spec's policies replaced (nulls, NaN, negative, out of range, unknown, ...).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pinrank.data.examples import join_examples
from pinrank.data.io import iter_batches
from pinrank.data.prepare import Prepared
from pinrank.data.splits import SPLITS
from pinrank.features.featurizer import Featurizer


@dataclass
class DataReport:
    """Numbers of a prepared data set; ``str()`` gives the printed report."""

    tables: dict[str, int]
    splits: dict[str, dict[str, float]]
    interests: dict[str, Any]
    bad_values: dict[str, dict[str, int]] = field(default_factory=dict)
    unknown_ids: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()

    def __str__(self) -> str:
        lines = ["rows: " + ", ".join(f"{k} {v:,}" for k, v in self.tables.items())]
        for name, s in self.splits.items():
            lines.append(
                f"  {name:<5} {int(s['events']):>10,} events  {int(s['users']):>8,} users  "
                f"label rate {s['label_rate']:.3f}"
            )
        it = self.interests
        if it:
            followed = it.get("users_per_count")
            lines.append(
                f"interests: {it['n']} used by pins; share of pins per interest from "
                f"{it['max_share']:.2%} down to {it['min_share']:.3%}; pins with k interests "
                f"{it['pins_per_count']}"
                + (f"; users following k interests {followed}" if followed is not None else "")
            )
        else:
            lines.append("interests: the pins have none")
        if self.bad_values:
            lines.append(
                "values replaced or cut by the spec's policies, per featurized impression of all "
                "splits (feature: reason count):"
            )
            for feat, reasons in self.bad_values.items():
                lines.append(f"  {feat:<18} " + ", ".join(f"{r} {n:,}" for r, n in reasons.items()))
        else:
            lines.append("bad values: none")
        if self.unknown_ids:
            lines.append(f"events whose user or pin is missing from its table: {self.unknown_ids}")
        return "\n".join(lines)


def _histogram(lengths: np.ndarray, top: int = 4) -> dict[str, int]:
    counts = np.bincount(np.minimum(lengths, top))
    return {(f"{k}+" if k == top else str(k)): int(n) for k, n in enumerate(counts) if n}


def data_report(prepared: Prepared, batch_size: int = 65_536) -> DataReport:
    """Build the report by streaming every split once through the featurizer."""
    featurizer = Featurizer(prepared.spec(), prepared.state())
    users_idx, items_idx = prepared.indexes()
    users, items = users_idx.table, items_idx.table
    counts: Counter = Counter()
    unknown: Counter = Counter()
    splits = {}
    for name in SPLITS:
        n = pos = 0
        seen_users: list[np.ndarray] = []
        for batch in iter_batches(prepared.split(name), "events", batch_size=batch_size):
            tables = join_examples(batch, users_idx, items_idx, unknown)
            counts.update(featurizer(tables).counts)
            n += batch.num_rows
            pos += int(pc.sum(batch.column("engaged")).as_py() or 0)
            seen_users.append(np.unique(batch.column("user_id").to_numpy()))
        n_users = len(np.unique(np.concatenate(seen_users))) if seen_users else 0
        splits[name] = {"events": n, "users": n_users, "label_rate": pos / max(n, 1)}
    interests = _interests(users, items)
    bad: dict[str, dict[str, int]] = {}
    for (feat, reason), c in sorted(counts.items()):
        if c:
            bad.setdefault(feat, {})[reason] = int(c)
    return DataReport(
        {
            "users": users.num_rows,
            "items": items.num_rows,
            "events": sum(int(s["events"]) for s in splits.values()),
        },
        splits,
        interests,
        bad,
        {f"{k[0]}": int(v) for k, v in unknown.items() if v},
    )


def _interests(users: pa.Table, items: pa.Table) -> dict[str, Any]:
    """How the pins' interests are spread (empty when the items have no interests column)."""
    if "interests" not in items.column_names:
        return {}
    item_interests = items.column("interests").combine_chunks()
    _, per_interest = np.unique(pc.list_flatten(item_interests).to_numpy(), return_counts=True)
    share = per_interest / items.num_rows
    out: dict[str, Any] = {
        "n": len(per_interest),
        "max_share": float(share.max()) if share.size else 0.0,
        "min_share": float(share.min()) if share.size else 0.0,
        "pins_per_count": _histogram(
            pc.fill_null(pc.list_value_length(item_interests), 0).to_numpy()
        ),
    }
    if "interests" in users.column_names:
        followed = users.column("interests").combine_chunks()
        out["users_per_count"] = _histogram(
            pc.fill_null(pc.list_value_length(followed), 0).to_numpy()
        )
    return out
