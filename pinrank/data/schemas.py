"""Arrow schemas of the three tables every pinrank data set is made of.

All ids are int64, all times are int64 seconds since the Unix epoch. Only a few columns are
**structural**, required of every data set: the ids of users and items, and an event's user,
item, time and label (:data:`STRUCTURAL`). Every other column is whatever the data set carries
and the feature spec reads: the synthetic generator and the MovieLens importer write the
Pinterest-shaped columns below, whose types are checked where a table has them (:data:`KNOWN`);
a data set of one's own (:class:`pinrank.data.sources.TableSource`) brings its own columns, kept
with the types they were read with. Every non-structural column is nullable; what a null means
for a feature is the feature spec's policy, not the schema's. Every reader checks a file against
these rules from its footer before use (:func:`check_schema`).

``users`` (one row per user)
    ``user_id`` int64 (structural); known: ``country``, ``region``, ``location``, ``gender``,
    ``occupation``, ``signup_surface`` strings, ``age`` int32, ``signup_ts`` int64,
    ``interests`` list<int64> (followed interests, may be empty).
``items`` (one row per pin)
    ``item_id`` int64 (structural); known: ``board_id``, ``creator_id`` int64, ``interests``
    list<int64> (what interest profiles and interest candidates read), ``embedding``
    list<float32> (a small visual embedding), ``quality`` float32 (a quality prior in [0, 1]),
    ``created_ts`` int64.
``events`` (one row per impression)
    ``user_id``, ``item_id``, ``ts`` int64, ``engaged`` bool (the label; all structural);
    known: ``surface`` string, ``position`` int32, ``engagement`` string (``none`` when not
    engaged, else the kind: ``click``, ``save``, ``closeup``; MovieLens: the rating, ``4`` or
    ``5``).
"""

from __future__ import annotations

import pyarrow as pa

USERS = pa.schema(
    [
        pa.field("user_id", pa.int64(), nullable=False),
        pa.field("country", pa.string()),
        pa.field("region", pa.string()),
        pa.field("location", pa.string()),
        pa.field("gender", pa.string()),
        pa.field("age", pa.int32()),
        pa.field("occupation", pa.string()),
        pa.field("signup_surface", pa.string()),
        pa.field("signup_ts", pa.int64()),
        pa.field("interests", pa.list_(pa.int64())),
    ]
)

ITEMS = pa.schema(
    [
        pa.field("item_id", pa.int64(), nullable=False),
        pa.field("board_id", pa.int64()),
        pa.field("creator_id", pa.int64()),
        pa.field("interests", pa.list_(pa.int64())),
        pa.field("embedding", pa.list_(pa.float32())),
        pa.field("quality", pa.float32()),
        pa.field("created_ts", pa.int64()),
    ]
)

EVENTS = pa.schema(
    [
        pa.field("user_id", pa.int64(), nullable=False),
        pa.field("item_id", pa.int64(), nullable=False),
        pa.field("ts", pa.int64(), nullable=False),
        pa.field("surface", pa.string()),
        pa.field("position", pa.int32()),
        pa.field("engaged", pa.bool_(), nullable=False),
        pa.field("engagement", pa.string()),
    ]
)

SCHEMAS: dict[str, pa.Schema] = {"users": USERS, "items": ITEMS, "events": EVENTS}
KNOWN = SCHEMAS  # the columns whose type is checked wherever a table has them
STRUCTURAL: dict[str, tuple[str, ...]] = {
    "users": ("user_id",),
    "items": ("item_id",),
    "events": ("user_id", "item_id", "ts", "engaged"),
}
ID_COLUMN = {"users": "user_id", "items": "item_id"}


class SchemaError(ValueError):
    """A file or table does not match its pinrank schema; the message names column and file."""


def _widens_to(actual: pa.DataType, expected: pa.DataType) -> bool:
    """True when ``actual`` casts to ``expected`` without loss (int32 ids for int64, float64...)."""
    if actual == expected:
        return True
    if pa.types.is_integer(expected) and pa.types.is_integer(actual):
        return actual.bit_width <= expected.bit_width and (
            pa.types.is_signed_integer(actual) or actual.bit_width < expected.bit_width
        )
    if pa.types.is_floating(expected):
        return pa.types.is_floating(actual) or pa.types.is_integer(actual)
    if pa.types.is_string(expected):
        return pa.types.is_large_string(actual) or pa.types.is_dictionary(actual)
    if pa.types.is_list(expected) and (
        pa.types.is_list(actual)
        or pa.types.is_large_list(actual)
        or pa.types.is_fixed_size_list(actual)
    ):
        return _widens_to(actual.value_type, expected.value_type)
    return False


def check_schema(
    actual: pa.Schema, table: str, source: str, columns: list[str] | None = None
) -> pa.Schema:
    """Check ``actual`` against the ``table`` rules and return the schema to cast to.

    Args:
        actual: schema of the file or table read.
        table: ``"users"``, ``"items"`` or ``"events"``.
        source: the file or data set, named in errors.
        columns: the columns that are needed (default: the structural columns and the known
            ones ``actual`` has, in the order of :data:`KNOWN`, then its other columns in its
            order).

    Returns:
        Known columns (:data:`KNOWN`) with their pinrank type, others with their own.

    Raises:
        SchemaError: naming the first missing or mistyped column and ``source``.

    Example::

        >>> check_schema(pa.schema([("user_id", pa.int32())]), "events", "e.parquet", ["user_id"])
        user_id: int64 not null
        >>> check_schema(pa.schema([("user_id", pa.string())]), "events", "e.pq", ["user_id"])
        Traceback (most recent call last):
        ...
        pinrank.data.schemas.SchemaError: e.pq: column 'user_id' has type string, expected int64
        >>> check_schema(pa.schema([("user_id", pa.int64()), ("tier", pa.string())]), "users", "u")
        user_id: int64 not null
        tier: string
    """
    if table not in SCHEMAS:
        raise ValueError(f"unknown table {table!r}; expected one of {sorted(SCHEMAS)}")
    known = KNOWN[table]
    if columns is None:
        ours = [n for n in known.names if n in STRUCTURAL[table] or n in actual.names]
        columns = [*ours, *(n for n in actual.names if n not in ours)]
    fields = []
    for name in columns:
        idx = actual.get_field_index(name)
        if idx < 0:
            kind = f" ({known.field(name).type})" if known.get_field_index(name) >= 0 else ""
            raise SchemaError(f"{source}: missing column {name!r}{kind} of the {table} table")
        if known.get_field_index(name) < 0:
            fields.append(actual.field(idx))
            continue
        field = known.field(name)
        if not _widens_to(actual.field(idx).type, field.type):
            raise SchemaError(
                f"{source}: column {name!r} has type {actual.field(idx).type}, "
                f"expected {field.type}"
            )
        fields.append(field)
    return pa.schema(fields)
