"""User rows in Redis, the serving store for deployments (the embedded default is
:class:`~pinrank.serving.store.TableStore`, no server).

Layout under a key prefix (default ``pinrank:user:``)::

    {prefix}{user_id}     the user's row: a JSON object {column: value}, lists as arrays
    {prefix}__schema__    the Arrow schema of the rows (IPC bytes), for typed batch reads

Upstream writers own the records, so a record may hold anything: :meth:`RedisStore.records` hands
the raw values to :func:`~pinrank.serving.store.conform`, which reports a wrong type as
``malformed`` and applies the spec default, exactly as for any other store. A record that is not
a JSON object is ``corrupt``.

Every read is one MGET bounded by the client's socket timeout (``timeout_s``): a slow, stopped or
unreachable server raises :class:`~pinrank.serving.store.StoreError` (``timeout`` or
``unavailable``) within about that deadline, with no retry, so the feed degrades to its fallback
instead of waiting. :func:`write_users` loads a Parquet users snapshot (``pinrank users``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from pinrank.serving.store import ID_COLUMN, StoreError, UserStore, as_ids

DEFAULT_PREFIX = "pinrank:user:"
SCHEMA_KEY = "__schema__"


def client(url: str, timeout_s: float = 0.05) -> redis.Redis:
    """A Redis client whose every command fails after ``timeout_s`` seconds, without retries."""
    if not timeout_s > 0:
        raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
    return redis.Redis.from_url(
        url,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), 0),
        retry_on_timeout=False,
        health_check_interval=0,
    )


class RedisStore(UserStore):
    """Users read from Redis (module docstring: layout, errors, deadline).

    Args:
        client: a client made by :func:`client` (its socket timeout is the deadline).
        prefix: the key prefix.
        id_column: the id column of the rows.
    """

    def __init__(
        self, client: redis.Redis, prefix: str = DEFAULT_PREFIX, id_column: str = ID_COLUMN
    ) -> None:
        self.client, self.prefix, self.id_column = client, prefix, id_column
        self._schema: pa.Schema | None = None
        self._connected: tuple[str, str, float] | None = None

    @classmethod
    def connect(cls, url: str, prefix: str = DEFAULT_PREFIX, timeout_s: float = 0.05) -> RedisStore:
        store = cls(client(url, timeout_s), prefix)
        store._connected = (url, prefix, timeout_s)
        return store

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled as a recipe (URL, prefix, timeout): another process connects itself."""
        if type(self) is not RedisStore or self._connected is None:
            raise TypeError("only a RedisStore made by RedisStore.connect opens in another process")
        return (RedisStore.connect, self._connected)

    def key(self, user_id: int) -> str:
        return f"{self.prefix}{int(user_id)}"

    def ping(self) -> None:
        self._call(self.client.ping)

    def records(self, user_ids: Sequence[int]) -> list[dict[str, Any] | None]:
        ids = [int(u) for u in user_ids]
        raws = self._call(self.client.mget, [self.key(u) for u in ids]) if ids else []
        return [
            None if raw is None else self._record(u, raw) for u, raw in zip(ids, raws, strict=True)
        ]

    def get(self, user_ids: np.ndarray) -> pa.Table:
        records = self.records(as_ids(user_ids).tolist())
        return pa.table(
            {f.name: _column([r and r.get(f.name) for r in records], f.type) for f in self.schema}
        )

    @property
    def schema(self) -> pa.Schema:
        """The rows' Arrow schema, written by :func:`write_users` (read once)."""
        if self._schema is None:
            raw = self._call(self.client.get, self.prefix + SCHEMA_KEY)
            if raw is None:
                raise StoreError("corrupt", f"redis has no {self.prefix + SCHEMA_KEY!r}")
            schema = pa.ipc.read_schema(pa.py_buffer(raw))
            self._schema = pa.schema([f.with_nullable(True) for f in schema])
        return self._schema

    def _record(self, user_id: int, raw: bytes) -> dict[str, Any]:
        try:
            record = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise StoreError("corrupt", f"{self.key(user_id)} is not JSON: {err}") from None
        if not isinstance(record, dict):
            raise StoreError("corrupt", f"{self.key(user_id)} is not a JSON object")
        record[self.id_column] = user_id  # the key is the id
        return record

    def _call(self, method: Any, *args: Any) -> Any:
        try:
            return method(*args)
        except redis.exceptions.TimeoutError as err:
            raise StoreError("timeout", f"redis did not answer in time: {err}") from None
        except redis.exceptions.ConnectionError as err:
            raise StoreError("unavailable", f"redis is unreachable: {err}") from None
        except redis.exceptions.RedisError as err:
            raise StoreError("error", f"redis: {type(err).__name__}: {err}") from None


def _column(values: list[Any], type_: pa.DataType) -> pa.Array:
    """Values typed as ``type_``; a value that does not fit becomes null (``get`` is the typed
    batch read; :meth:`RedisStore.row` keeps raw values so they can be reported)."""
    try:
        return pa.array(values, type_)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, TypeError, ValueError):
        return pa.array([_fit(v, type_) for v in values], type_)


def _fit(value: Any, type_: pa.DataType) -> Any:
    try:
        pa.array([value], type_)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, TypeError, ValueError):
        return None
    return value


def write_users(
    client: redis.Redis, users: pa.Table, prefix: str = DEFAULT_PREFIX, batch: int = 2000
) -> int:
    """Write every row of ``users`` (with a non-null ``user_id``) as ``{prefix}{id}`` JSON, and
    the schema; returns the number of users written. Pipelined in batches of ``batch`` rows."""
    if ID_COLUMN not in users.column_names:
        raise ValueError(f"users have no {ID_COLUMN!r} column (have {users.column_names})")
    written = 0
    for rows in _batches(users, batch):
        pipe = client.pipeline(transaction=False)
        for row in rows:
            uid = row.pop(ID_COLUMN)
            if uid is None:
                continue
            pipe.set(f"{prefix}{int(uid)}", json.dumps(_plain(row), separators=(",", ":")))
            written += 1
        pipe.execute()
    client.set(prefix + SCHEMA_KEY, users.schema.serialize().to_pybytes())
    return written


def _batches(table: pa.Table, size: int) -> Iterator[list[dict[str, Any]]]:
    for batch in table.to_batches(max_chunksize=size):
        yield batch.to_pylist()


def _plain(value: Any) -> Any:
    """JSON-ready: NaN and infinities become null (JSON has neither)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        return [_plain(v) for v in value]
    return value
