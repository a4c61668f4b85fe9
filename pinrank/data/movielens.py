"""Import MovieLens-100K (``u.user``, ``u.item``, ``u.data``) into the pinrank schemas.

The three source files become ``users/``, ``items/`` and ``events/`` folders of one Parquet
shard each, in exactly the :data:`~pinrank.data.schemas.USERS`, ``ITEMS`` and ``EVENTS``
schemas (see ``docs/PROTOCOL.md`` for the meaning of each column on this data set):

- users: ``age``, ``gender``, ``occupation``; ``country`` is ``"US"`` for a five-digit zip code
  and ``"other"`` otherwise (MovieLens has a few Canadian postal codes), ``region`` is the first
  character of the zip code and ``location`` its first three; no sign-up surface, time or
  interests.
- items: the 19 genre flags (in the order of ``u.genre``) become the ``interests`` list, the
  release date becomes ``created_ts`` (midnight UTC; null when missing).
- events: one impression per rating, ``engaged = rating >= 4``, ``engagement = "rating_<r>"``.

``u.item`` is latin-1, not UTF-8. A missing file or a malformed line raises :class:`ValueError`
naming the file and the line number. The data set's licence forbids redistribution: it is read
from wherever it lies and never copied into the repository.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from pinrank.data.io import conform, write_parquet

N_GENRES = 19
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_ITEM_FIELDS = 5 + N_GENRES

Row = tuple[Any, ...]


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """Yield ``(line number, line)`` for every non-empty line of ``path`` (1-based numbers).

    Every file is decoded as latin-1 (``u.item`` is; the others are ASCII), which never fails,
    so a stray byte surfaces as a malformed line with its number rather than a decoding error.
    """
    if not path.is_file():
        raise ValueError(f"{path}: MovieLens file not found")
    text = path.read_text(encoding="latin-1")
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            yield number, line


def _parse(path: Path, parse_line: Callable[[str], Row]) -> list[Row]:
    """Parse every line of ``path`` with ``parse_line``, naming file and line on any error."""
    rows = []
    for number, line in _lines(path):
        try:
            rows.append(parse_line(line))
        except (ValueError, IndexError, KeyError) as err:
            raise ValueError(f"{path}, line {number}: malformed line ({err}): {line!r}") from None
    if not rows:
        raise ValueError(f"{path}: no rows")
    return rows


def _fields(line: str, sep: str, count: int) -> list[str]:
    """Split ``line`` on ``sep`` and check it has ``count`` fields."""
    fields = line.split(sep)
    if len(fields) != count:
        raise ValueError(f"expected {count} {sep!r}-separated fields, found {len(fields)}")
    return fields


def _user_row(line: str) -> Row:
    """``user id|age|gender|occupation|zip code`` -> (id, age, gender, occupation, zip)."""
    user_id, age, gender, occupation, zip_code = _fields(line, "|", 5)
    if gender not in ("M", "F"):
        raise ValueError(f"gender {gender!r} is neither 'M' nor 'F'")
    if not zip_code:
        raise ValueError("empty zip code")
    return int(user_id), int(age), gender, occupation, zip_code


def _release_ts(date: str) -> int | None:
    """``01-Jan-1995`` -> seconds since the epoch at midnight UTC; ``""`` -> None."""
    if not date:
        return None
    day, month, year = date.split("-")
    when = datetime(int(year), _MONTHS.index(month) + 1, int(day), tzinfo=UTC)
    return int(when.timestamp())


def _item_row(line: str) -> Row:
    """``item id|title|release date|video release date|IMDb URL|19 flags`` -> (id, genres, ts)."""
    fields = _fields(line, "|", _ITEM_FIELDS)
    flags = fields[5:]
    if any(flag not in ("0", "1") for flag in flags):
        raise ValueError("genre flags must be 0 or 1")
    genres = [g for g, flag in enumerate(flags) if flag == "1"]
    return int(fields[0]), genres, _release_ts(fields[2])


def _event_row(line: str) -> Row:
    """``user id<TAB>item id<TAB>rating<TAB>timestamp`` -> (user, item, rating, ts)."""
    user_id, item_id, rating, ts = (int(f) for f in _fields(line, "\t", 4))
    if not 1 <= rating <= 5:
        raise ValueError(f"rating {rating} is not in 1..5")
    return user_id, item_id, rating, ts


def users_table(src: str | os.PathLike[str]) -> pa.Table:
    """Read ``src/u.user`` as a USERS table.

    Args:
        src: the MovieLens-100K folder.

    Returns:
        One row per user, in file order, in exactly the USERS schema.
    """
    path = Path(src) / "u.user"
    ids, ages, genders, occupations, zips = zip(*_parse(path, _user_row), strict=True)
    n = len(ids)
    data = pa.table(
        {
            "user_id": pa.array(ids, pa.int64()),
            "country": ["US" if len(z) == 5 and z.isdigit() else "other" for z in zips],
            "region": [z[:1] for z in zips],
            "location": [z[:3] for z in zips],
            "gender": list(genders),
            "age": pa.array(ages, pa.int32()),
            "occupation": list(occupations),
            "signup_surface": pa.nulls(n, pa.string()),
            "signup_ts": pa.nulls(n, pa.int64()),
            "interests": pa.array([[] for _ in range(n)], pa.list_(pa.int64())),
        }
    )
    return conform(data, "users", str(path))


def items_table(src: str | os.PathLike[str]) -> pa.Table:
    """Read ``src/u.item`` (latin-1) as an ITEMS table.

    Args:
        src: the MovieLens-100K folder.

    Returns:
        One row per movie, in file order, in exactly the ITEMS schema: genres as interests,
        release date as ``created_ts``, every other column null.
    """
    path = Path(src) / "u.item"
    ids, genres, created = zip(*_parse(path, _item_row), strict=True)
    n = len(ids)
    data = pa.table(
        {
            "item_id": pa.array(ids, pa.int64()),
            "board_id": pa.nulls(n, pa.int64()),
            "creator_id": pa.nulls(n, pa.int64()),
            "interests": pa.array(genres, pa.list_(pa.int64())),
            "embedding": pa.nulls(n, pa.list_(pa.float32())),
            "quality": pa.nulls(n, pa.float32()),
            "created_ts": pa.array(created, pa.int64()),
        }
    )
    return conform(data, "items", str(path))


def events_table(src: str | os.PathLike[str]) -> pa.Table:
    """Read ``src/u.data`` as an EVENTS table.

    Args:
        src: the MovieLens-100K folder.

    Returns:
        One row per rating, in file order, in exactly the EVENTS schema.
    """
    path = Path(src) / "u.data"
    rows = np.array(_parse(path, _event_row), dtype=np.int64).reshape(-1, 4)
    n = len(rows)
    data = pa.table(
        {
            "user_id": rows[:, 0],
            "item_id": rows[:, 1],
            "ts": rows[:, 3],
            "surface": pa.nulls(n, pa.string()),
            "position": pa.nulls(n, pa.int32()),
            "engaged": rows[:, 2] >= 4,
            "engagement": [f"rating_{r}" for r in rows[:, 2].tolist()],
        }
    )
    return conform(data, "events", str(path))


def import_movielens(src: str | os.PathLike[str], out: str | os.PathLike[str]) -> dict[str, Path]:
    """Convert the MovieLens-100K folder ``src`` into pinrank Parquet tables under ``out``.

    Writes ``out/users/part-00000.parquet``, ``out/items/part-00000.parquet`` and
    ``out/events/part-00000.parquet``. All three sources are parsed before anything is written.

    Args:
        src: folder holding ``u.user``, ``u.item`` and ``u.data``.
        out: folder to write into (created if needed; existing shards are replaced).

    Returns:
        The folders written, keyed ``"users"``, ``"items"``, ``"events"``.

    Raises:
        ValueError: a source file is missing, or a line is malformed (file and line named).
    """
    source, target = Path(src), Path(out)
    tables = {
        "users": users_table(source),
        "items": items_table(source),
        "events": events_table(source),
    }
    folders = {}
    for name, table in tables.items():
        folders[name] = target / name
        write_parquet(table, folders[name] / "part-00000.parquet")
    return folders


__all__ = ["events_table", "import_movielens", "items_table", "users_table"]
