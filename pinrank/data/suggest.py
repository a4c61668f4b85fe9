"""A feature spec suggested from what ``pinrank inspect`` saw: a starting point that trains as
written, for the user to edit instead of starting from a blank page.

Rules, per mapped column (the events' own columns are the impression's context; ``users.<c>``
columns of the events are the user's):

- text: ``categorical`` with a vocabulary (``min_count: 5`` above 1,000 distinct values);
- integers: ``categorical`` when the name ends in ``id`` or up to 50 distinct values; epoch
  seconds (every
  value between 1990 and 2100): ``numeric`` with ``unit: epoch_s``; else ``numeric``;
- floats: ``numeric``, standardized, ``log1p`` first when non-negative and heavy-tailed (the 99th
  percentile over 20 times the median);
- lists of integers: ``multi_categorical``; lists of floats of one length (in 90% of rows or
  more): a ``numeric`` vector;
- ids: ``user_id`` and ``item_id`` with vocabularies (hashed above 1,000,000 ids), the histories
  and item statistics pinrank derives from train events, and the interest profiles when the
  items have ``interests``;
- crosses (the ranker's wide part): each user feature of at most 1,000 values with the items'
  interests, or with the item itself when there are none and at most 100,000 items.

Columns of other types (booleans, lists of text), columns without a value and the columns the
label is read from are listed in a comment: cast the first in the data config (``type: int``,
``ids: <namespace>``) to use them.
"""

from __future__ import annotations

from typing import Any

import yaml

from pinrank.features.spec import UNITS, FeatureSpec

PRIMES = (101, 1009, 4001, 10007, 40009, 100003, 400009, 1000003)
EPOCH = UNITS["epoch_s"]
DERIVED = {
    "history": "{side: user, source: history, kind: sequence, shares: item_id, max_len: 50, "
    "pooling: mean}",
    "seen": "{side: user, source: seen, kind: sequence, shares: item_id, max_len: 50, "
    "pooling: mean}",
    "last_active": "{side: user, source: last_ts, kind: numeric, unit: epoch_s, "
    "transforms: [standardize]}",
    "train_events": "{side: item, source: train_events, kind: numeric, default: 0, "
    "transforms: [log1p, standardize]}",
    "train_engaged": "{side: item, source: train_engaged, kind: numeric, default: 0, "
    "transforms: [log1p, standardize]}",
    "in_fashion": "{side: item, source: mean_ts, kind: numeric, unit: epoch_s, "
    "transforms: [standardize]}",
}
STRUCTURAL = ("user_id", "item_id", "ts")
SIDES = {"users": "user", "items": "item", "events": "context"}


def _dim(distinct: int) -> int:
    return 4 if distinct <= 10 else 8 if distinct <= 100 else 16 if distinct <= 10_000 else 32


def _buckets(cells: int) -> int:
    return next((p for p in PRIMES if p >= 4 * cells), PRIMES[-1])


def _feature(side: str, column: str, stats: dict[str, Any]) -> tuple[str, int | None] | None:
    """``(flow-style YAML of one feature, its cardinality if categorical)``, or None."""
    t, distinct = stats["type"], stats["distinct"]
    n = distinct if isinstance(distinct, int) else None
    if n == 0:  # no value at all
        return None
    head = f"side: {side}, source: {column}"
    if t.startswith(("int", "uint")) and column.lower().endswith("id"):  # ids: not quantities
        vocab = "{min_count: 2}" if n is None or n > 1000 else "{}"
        return (
            f"{{{head}, kind: categorical, vocab: {vocab}, embedding_dim: {_dim(n or 10**6)}}}",
            n,
        )
    if t in ("string", "large_string"):
        vocab = "{min_count: 5}" if n is None or n > 1000 else "{}"
        return (
            f"{{{head}, kind: categorical, vocab: {vocab}, embedding_dim: {_dim(n or 10**6)}}}",
            n,
        )
    if t.startswith(("int", "uint")) or t in ("float", "double", "halffloat"):
        low, high = stats.get("min"), stats.get("max")
        if t.startswith(("int", "uint")) and n is not None and n <= 50:
            return f"{{{head}, kind: categorical, vocab: {{}}, embedding_dim: {_dim(n)}}}", n
        if low is None or high is None:
            return None
        if t.startswith("int") and EPOCH[0] <= low and high <= EPOCH[1]:
            return f"{{{head}, kind: numeric, unit: epoch_s, transforms: [standardize]}}", None
        skewed = low >= 0 and stats["p99"] > 20 * max(stats["median"], 1e-9)
        steps = "[log1p, standardize]" if skewed else "[standardize]"
        return f"{{{head}, kind: numeric, transforms: {steps}}}", None
    if t.startswith("list<") and ("int" in t):
        return f"{{{head}, kind: multi_categorical, vocab: {{}}, pooling: mean}}", n
    length = stats.get("list_length") or {}
    fixed = bool(length) and length["mode"] > 0 and length["mode_share"] >= 0.9
    if t.startswith("list<") and ("float" in t or "double" in t) and fixed:
        return f"{{{head}, kind: numeric, dim: {length['mode']}, transforms: [standardize]}}", None
    return None


def suggest_spec(
    columns: dict[str, dict[str, dict[str, Any]]],
    events: dict[str, Any],
    label_columns: tuple[str, ...] = (),
) -> str:
    """The YAML text of a suggested spec from an inspection's mapped ``columns`` (per table,
    per column, :meth:`ColumnStats.as_dict`) and its ``events`` summary. The events' columns in
    ``label_columns`` (what the label and the engagement kind are read from) are left out: a
    model must not read its label."""
    feats: dict[str, str] = {}
    card: dict[str, tuple[str, int]] = {}  # categorical feature -> (side, cardinality)
    skipped: list[str] = []
    for name, ids in (("user_id", events["users"]), ("item_id", events["items"])):
        side = name[:4]
        kind = "vocab: {}" if ids <= 1_000_000 else f"hash_buckets: {_buckets(ids // 4)}"
        feats[name] = (
            f"{{side: {side}, source: {name}, kind: categorical, {kind}, embedding_dim: 32}}"
        )
    feats |= DERIVED
    for table, cols in columns.items():
        for column, stats in cols.items():
            side, source = SIDES[table], column
            if column in STRUCTURAL:
                continue
            if table == "events" and column in (*label_columns, "engaged", "engagement"):
                skipped.append(f"events.{column} (the label)")
                continue
            if "." in column:  # users.country in the events: the derived user table's column
                side, source = SIDES[column.partition(".")[0]], column.partition(".")[2]
            got = _feature(side, source, stats)
            if got is None:
                why = "no value" if stats["distinct"] == 0 else stats["type"]
                skipped.append(f"{table}.{column} ({why})")
                continue
            name = source if source not in feats else f"{side}_{source}"
            if source == "interests":
                name = f"{side}_interests"
            feats[name], n = got
            if n is not None and "categorical" in got[0]:
                card[name] = (side, n)
    interests = "item_interests" in feats
    if interests:
        for bag in ("seen_interests", "history_interests"):
            feats[bag] = (f"{{side: user, source: {bag}, kind: multi_categorical, "
                          "shares: item_interests, pooling: mean}")  # fmt: skip
    crosses: dict[str, str] = {}
    right = "item_interests" if interests else ("item_id" if events["items"] <= 100_000 else None)
    right_card = card.get("item_interests", ("item", 100))[1] if interests else events["items"]
    for name, (side, n) in card.items():
        if side == "user" and right and n <= 1000:
            cells = n * right_card
            crosses[f"{name}_x_{right.removeprefix('item_')}"] = (
                f"{{features: [{name}, {right}], buckets: {_buckets(cells)}}}"
            )
    lines = [
        "# Suggested by `pinrank inspect` from the files it read: edit it, then name it as the",
        "# data config's `spec:`. The feature spec reference: docs/features.md.",
    ]
    if skipped:
        lines.append("# not used: " + ", ".join(skipped))
    lines.append("features:")
    lines += [f"  {n}: {v}" for n, v in feats.items()]
    if crosses:
        lines.append("crosses:")
        lines += [f"  {n}: {v}" for n, v in crosses.items()]
    text = "\n".join(lines) + "\n"
    FeatureSpec.from_dict(yaml.safe_load(text))  # a suggestion that does not parse is a bug here
    return text
