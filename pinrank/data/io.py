"""Reading and writing pinrank tables as Parquet, streamed through ``pyarrow.dataset``.

Every file is checked against its schema from its footer alone (no data read), so a bad shard
fails with its own name before anything is computed. Writes go to a temporary name and are
renamed into place, so a reader never sees half a shard.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from pinrank.data.schemas import SchemaError, check_schema


def parquet_files(path: str | os.PathLike[str]) -> list[Path]:
    """The Parquet files of a data set: ``path`` itself or every ``*.parquet`` below it, sorted."""
    p = Path(path)
    if p.is_file():
        return [p]
    if not p.is_dir():
        raise FileNotFoundError(f"no Parquet file or folder at {p}")
    files = sorted(f for f in p.rglob("*.parquet") if not f.name.startswith("."))
    if not files:
        raise FileNotFoundError(f"no *.parquet files under {p}")
    return files


def open_dataset(
    path: str | os.PathLike[str], table: str, columns: list[str] | None = None
) -> ds.Dataset:
    """Open ``path`` as a ``pyarrow.dataset`` of ``table`` rows, every file checked first.

    Args:
        path: a Parquet file or a folder of shards.
        table: ``"users"``, ``"items"`` or ``"events"``.
        columns: the columns needed; the dataset then exposes only those, cast to the schema.

    Raises:
        SchemaError: a file lacks a column or has it with a type that does not widen losslessly;
            the message names the file and the column.
    """
    files = parquet_files(path)
    target = None
    for f in files:  # every later file must have the first one's columns
        wanted = columns if columns is not None or target is None else target.names
        target = check_schema(pq.read_schema(f), table, str(f), wanted)
    assert target is not None
    return ds.dataset([str(f) for f in files], format="parquet", schema=target)


def iter_batches(
    path: str | os.PathLike[str],
    table: str,
    columns: list[str] | None = None,
    batch_size: int = 65_536,
    filter: ds.Expression | None = None,
) -> Iterator[pa.RecordBatch]:
    """Stream ``table`` rows from ``path`` in record batches of at most ``batch_size`` rows."""
    dataset = open_dataset(path, table, columns)
    yield from dataset.to_batches(columns=columns, batch_size=batch_size, filter=filter)


def read_table(
    path: str | os.PathLike[str],
    table: str,
    columns: list[str] | None = None,
    filter: ds.Expression | None = None,
) -> pa.Table:
    """Read (the ``columns`` of) a whole data set; use for tables that fit in memory."""
    return open_dataset(path, table, columns).to_table(columns=columns, filter=filter)


def conform(data: pa.Table, table: str, source: str = "<table>") -> pa.Table:
    """Check an in-memory table against its schema and cast it to exactly that schema."""
    target = check_schema(data.schema, table, source)
    return data.select(target.names).cast(target)


ROW_GROUP_ROWS = 65_536  # the unit of parallel reading: DataLoader workers split row groups


def write_parquet(data: pa.Table, path: str | os.PathLike[str]) -> Path:
    """Write ``data`` to ``path`` atomically (temporary file, then rename), in row groups of
    :data:`ROW_GROUP_ROWS` rows so that readers can split the work finely."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    pq.write_table(data, tmp, compression="zstd", row_group_size=ROW_GROUP_ROWS)
    os.replace(tmp, out)
    return out


class ShardWriter:
    """Appends rows of one table to numbered shards ``part-00000.parquet`` ... in a folder.

    Each shard is written whole and renamed into place once it holds ``rows_per_shard`` rows
    (or on :meth:`close`), so memory stays bounded by one shard whatever the total. With
    ``split_writes=False`` a write is never cut across two shards (a shard closes once it holds
    at least ``rows_per_shard`` rows): a writer of whole users' events keeps each user's events
    in one shard, as per-user splitting needs.

    Example::

        >>> import tempfile
        >>> d = tempfile.mkdtemp()
        >>> w = ShardWriter(d, "users", rows_per_shard=2)
        >>> w.write(pa.table({"user_id": [1, 2, 3]}).cast(pa.schema([("user_id", pa.int64())])))
        >>> w.close()
        [2, 1]
    """

    def __init__(
        self,
        folder: str | os.PathLike[str],
        table: str,
        rows_per_shard: int,
        split_writes: bool = True,
    ) -> None:
        self.folder = Path(folder)
        self.split_writes = split_writes
        self.table = table
        self.rows_per_shard = rows_per_shard
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self.shard_rows: list[int] = []
        self.folder.mkdir(parents=True, exist_ok=True)
        for old in self.folder.glob("part-*.parquet"):
            old.unlink()

    def write(self, data: pa.Table) -> None:
        """Queue rows; full shards are flushed as they fill."""
        target = check_schema(data.schema, self.table, str(self.folder))
        data = data.select(target.names).cast(target)
        self._pending.append(data)
        self._pending_rows += data.num_rows
        if not self.split_writes:
            if self._pending_rows >= self.rows_per_shard:
                self._flush(pa.concat_tables(self._pending))
                self._pending, self._pending_rows = [], 0
            return
        while self._pending_rows >= self.rows_per_shard:
            merged = pa.concat_tables(self._pending)
            self._flush(merged.slice(0, self.rows_per_shard))
            rest = merged.slice(self.rows_per_shard)
            self._pending, self._pending_rows = [rest], rest.num_rows

    def _flush(self, data: pa.Table) -> None:
        if data.num_rows == 0:
            return
        write_parquet(data, self.folder / f"part-{len(self.shard_rows):05d}.parquet")
        self.shard_rows.append(data.num_rows)

    def close(self) -> list[int]:
        """Write what is left and return the row count of every shard."""
        if self._pending_rows:
            self._flush(pa.concat_tables(self._pending))
        self._pending, self._pending_rows = [], 0
        return self.shard_rows


class UserShards:
    """Events written to shards by user (``user_id % shards``), so that each user's events lie in
    one shard as the streamed split needs (:func:`pinrank.data.splits.check_disjoint_users`),
    whatever the order of the files; each shard grows by row groups of :data:`ROW_GROUP_ROWS`,
    so memory holds at most one row group per shard. Every batch must convert to the first's
    schema (SchemaError naming the source otherwise).

    Args:
        folder: where ``part-NNNNN.parquet`` go.
        shards: how many.
    """

    def __init__(self, folder: Path, shards: int) -> None:
        self.folder, self.n = folder, max(1, shards)
        self.pending: list[list[pa.Table]] = [[] for _ in range(self.n)]
        self.sizes = [0] * self.n
        self.writers: list[pq.ParquetWriter | None] = [None] * self.n
        self.schema: pa.Schema | None = None
        folder.mkdir(parents=True, exist_ok=True)

    def write(self, rows: pa.Table, source: str) -> None:
        target = check_schema(rows.schema, "events", source)
        rows = rows.select(target.names)
        if self.schema is None:
            self.schema = rows.cast(target).schema
        try:
            rows = rows.cast(self.schema)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError) as err:
            raise SchemaError(
                f"{source}: its columns {rows.schema} do not convert to the first file's "
                f"{self.schema} ({_short(err)}): give the column a type in the data config"
            ) from None
        shard = np.asarray(rows.column("user_id")) % self.n
        order = np.argsort(shard, kind="stable")
        bounds = np.searchsorted(shard[order], np.arange(self.n + 1))
        for i in range(self.n):
            if bounds[i + 1] > bounds[i]:
                self.pending[i].append(rows.take(pa.array(order[bounds[i] : bounds[i + 1]])))
                self.sizes[i] += int(bounds[i + 1] - bounds[i])
                if sum(len(t) for t in self.pending[i]) >= ROW_GROUP_ROWS:
                    self._flush(i)

    def _flush(self, i: int) -> None:
        if not self.pending[i]:
            return
        assert self.schema is not None
        if self.writers[i] is None:
            path = self.folder / f"part-{i:05d}.parquet"
            self.writers[i] = pq.ParquetWriter(path, self.schema, compression="zstd")
        writer = self.writers[i]
        assert writer is not None
        writer.write_table(pa.concat_tables(self.pending[i]), row_group_size=ROW_GROUP_ROWS)
        self.pending[i] = []

    def close(self) -> list[int]:
        """Write what is left; the rows of every shard written."""
        for i in range(self.n):
            self._flush(i)
            writer = self.writers[i]
            if writer is not None:
                writer.close()
        return [n for n in self.sizes if n]


def _short(err: BaseException) -> str:
    return str(err).splitlines()[0][:300]


__all__ = [
    "SchemaError",
    "ShardWriter",
    "UserShards",
    "conform",
    "iter_batches",
    "open_dataset",
    "parquet_files",
    "read_table",
    "write_parquet",
]
