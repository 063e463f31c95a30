"""Rows to parquet with stable bytes: the corpus and downstream schemas, and a writer that
emits one row group at a time (the corpus is streamed, never held whole)."""
from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

CORPUS_SCHEMA = pa.schema([("doc_id", pa.string()), ("source", pa.string()), ("text", pa.string())])
DOWNSTREAM_SCHEMA = pa.schema([("text", pa.string()), ("label", pa.int64()), ("module", pa.string())])


def table(rows: list[tuple], schema: pa.Schema) -> pa.Table:
    # Built from plain lists with a fixed schema: no pandas index or metadata, stable bytes.
    return pa.table({name: [row[i] for row in rows] for i, name in enumerate(schema.names)}, schema=schema)


def write_parquet(path: Path, rows: list[tuple], schema: pa.Schema) -> None:
    pq.write_table(table(rows, schema), path)


class RowGroupWriter:
    """A parquet file written one row group of about `group_chars` characters at a time
    (counted in each row's last field, the text)."""

    def __init__(self, path: Path, schema: pa.Schema, group_chars: int):
        self.schema, self.group_chars = schema, group_chars
        self.writer = pq.ParquetWriter(path, schema)
        self.rows: list[tuple] = []
        self.chars = 0

    def write(self, row: tuple) -> None:
        self.rows.append(row)
        self.chars += len(row[-1])
        if self.chars >= self.group_chars:
            self.flush()

    def flush(self) -> None:
        if self.rows:
            self.writer.write_table(table(self.rows, self.schema))
            self.rows, self.chars = [], 0

    def __enter__(self) -> "RowGroupWriter":
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is None:
            self.flush()
        self.writer.close()
