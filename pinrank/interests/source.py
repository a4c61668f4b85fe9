"""The interest data set: derived from any pinrank data source, prepared like every other.

:class:`InterestSource` takes another source (``base``: the synthetic generator, MovieLens, one's
own logs) and writes a data set of the same three tables, in which the "items" are interests:

- ``users``: the base users as they are, plus the ``segment`` column (:func:`segment_keys`);
- ``items``: one row per interest of the base catalogue, ``item_id`` = the interest id, with
  ``pins`` (int64: how many pins carry it; catalogue data, not an event statistic);
- ``events``: :func:`~pinrank.interests.labels.interest_examples` of every user's earliest
  window: one row per (user, interest) seen there, ``engaged`` when the user engaged with a
  pin of it.

It is then split and prepared by the same code as every data set (``ensure``): the cold-start
users (``user_id % cold_user_mod == 0``) are the same users as in the base data set, and all
their examples are the ``cold`` slice; every other user's examples are split by time. The
feature spec (``conf/features/interests*.yaml``) reads only sign-up columns on the user side.

Memory: the base events' four key columns are read at once (about 25 bytes per impression).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pinrank.data.examples import ITEM_INTERESTS
from pinrank.data.io import read_table, write_parquet
from pinrank.data.sources import Source, fingerprint
from pinrank.interests.labels import Window, interest_examples
from pinrank.interests.segments import SEGMENT, segment_keys

EVENT_KEYS = ["user_id", "item_id", "ts", "engaged"]


@dataclass
class InterestSource(Source):
    """Interest examples of another source (see module docstring).

    Attributes:
        base: the source whose users, pins and impressions the examples come from.
        window: each user's earliest window (:class:`Window`).
        segment: the sign-up columns of a segment (``[country, gender]``).
    """

    base: Source | None = None
    window: Window = field(default_factory=Window)
    segment: list[str] = field(default_factory=lambda: ["country", "gender"])

    def __post_init__(self) -> None:
        if self.base is None:
            raise ValueError("an interest source needs a base source")
        if isinstance(self.window, dict):
            self.window = Window(**{k: v for k, v in self.window.items() if k != "_target_"})
        self.segment = [str(c) for c in self.segment]
        if not self.segment:
            raise ValueError("segment: name at least one sign-up column")

    def raw_fingerprint(self) -> str:
        assert self.base is not None
        return fingerprint(
            "interests", self.base.raw_fingerprint(), asdict(self.window), self.segment
        )

    def make_raw(self, raw: Path) -> None:
        assert self.base is not None
        base = self.base.ensure_raw()
        items = read_table(base / "items", "items", ["item_id", ITEM_INTERESTS])
        events = read_table(base / "events", "events", EVENT_KEYS)
        examples = interest_examples(events, items, self.window)
        del events
        users = read_table(base / "users", "users")
        if SEGMENT in users.column_names:
            raise ValueError(f"{base / 'users'}: the users already have a {SEGMENT!r} column")
        users = users.append_column(SEGMENT, segment_keys(users, self.segment))
        write_parquet(users, raw / "users" / "part-00000.parquet")
        write_parquet(interest_table(items), raw / "items" / "part-00000.parquet")
        write_parquet(examples, raw / "events" / "part-00000.parquet")


def interest_table(items: pa.Table) -> pa.Table:
    """One row per interest of the pins: ``item_id`` (the interest id) and ``pins``."""
    flat = pc.list_flatten(items.column(ITEM_INTERESTS).combine_chunks())
    values = flat.drop_null().to_numpy().astype(np.int64)
    ids, counts = np.unique(values, return_counts=True)
    return pa.table({"item_id": ids, "pins": counts.astype(np.int64)})
