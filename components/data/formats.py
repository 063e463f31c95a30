"""One streaming reader per local file format, shared by the corpus and the downstream task.

Each yields one record at a time with where it came from: memory does not grow with the
file. `.txt` yields documents (a whole file, or blank-line-separated paragraphs); `.jsonl`,
`.json`, `.csv` and `.parquet` yield records as (where, source id, value), `where` naming
the file and line (item, row) for error messages, the source id naming the record in the
corpus. What a record must hold is checked by the caller (``sources.py``, ``downstream.py``).

A `.json` file is one top-level array of records, or an object whose first list-valued
field holds them. ijson parses it incrementally; it is fed a line at a time so that each
record and each error is named by its line. Numbers follow ijson's C backend: NaN,
Infinity and integers beyond 64 bits are refused as invalid JSON (strict RFC 8259).
"""
from __future__ import annotations

import csv
import itertools
import json
from pathlib import Path
from typing import Any, Iterator

import ijson
import pyarrow as pa
import pyarrow.parquet as pq

from components.data.files import LineFeed, lines, open_file

BATCH_ROWS = 1024
# Bytes ijson reads at a time from a line longer than this (its own default buffer).
CHUNK_BYTES = 64 * 2**10
_STARTS = ("start_map", "start_array")
_ENDS = ("end_map", "end_array")
_NOT_JSON_LIST = "expected a JSON array of objects, or an object holding such a list"

Record = tuple[str, str, Any]
"""(where, source id, value)."""


def paragraphs(path: Path) -> Iterator[tuple[str, str]]:
    """(source id, text): one document per block of non-blank lines, named by its first line."""
    block: list[str] = []
    start = 0
    for lineno, line in lines(path):
        if line.strip():
            if not block:
                start = lineno
            block.append(line)
        elif block:
            yield f"{path}:{start}", "".join(block)
            block = []
    if block:
        yield f"{path}:{start}", "".join(block)


def jsonl_records(path: Path) -> Iterator[Record]:
    for lineno, line in lines(path):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}, line {lineno}: not valid JSON ({e.msg}, column {e.colno}); "
                             "fix or remove the line") from None
        yield f"{path}, line {lineno}", f"{path}:{lineno}", value


# ijson replaced a hand-written incremental parser (~120 lines over json's raw_decode) by
# measurement: benchmarks/ingest_libraries.py, an 86 MB array of 22,250 records (50x the
# built-in corpus), AMD EPYC, medians of 3. One child process per side: hand-written 4.51 s
# and 76 MiB peak RSS, bare ijson.items 1.86 s and 63 MiB, this reader 2.7 s and 69 MiB (61
# of it the interpreter). In one process, back to back: hand-written 2.38 s, this reader
# 1.71 s, bare ijson.items 0.93 s; the rest is the line tracking and Python-built records.
def json_records(path: Path) -> Iterator[Record]:
    """Items of the top-level array, or of the first list in a top-level object; the rest
    of the file is parsed too (and must be valid) but not kept."""
    with open_file(path) as f:
        feed = LineFeed(f, path)
        events = ijson.basic_parse(feed, buf_size=CHUNK_BYTES, use_float=True)
        try:
            for i, (line, value) in enumerate(_top_level_items(events, feed, path)):
                yield f"{path}, item {i} (line {line})", f"{path}[{i}]", value
            for _ in events:
                pass
        except ijson.JSONError as e:
            raise _bad_json(path, feed, e) from None


def _top_level_items(events: Iterator, feed: LineFeed, path: Path) -> Iterator[tuple[int, Any]]:
    event, _ = next(events, (None, None))
    if event == "start_array":
        yield from _array_items(events, feed)
        return
    if event != "start_map":
        raise ValueError(f"{path}, line {feed.line}: {_NOT_JSON_LIST}; fix the file")
    found = False
    for event, value in events:
        if event == "end_map":
            break
        if event == "start_array" and not found:
            found = True
            yield from _array_items(events, feed)
        elif event in _STARTS:
            _value(event, value, events, keep=False)
    if not found:
        raise ValueError(f"{path}, line {feed.line}: the top-level object holds no list of records; fix the file")


def _array_items(events: Iterator, feed: LineFeed) -> Iterator[tuple[int, Any]]:
    """(first line, value) of each item of the array whose start was just read."""
    for event, value in events:
        if event == "end_array":
            return
        line = feed.line
        yield line, _value(event, value, events) if event in _STARTS else value


def _value(event: str, value: Any, events: Iterator, keep: bool = True) -> Any:
    """The object or array that `event` starts, built from the events up to its end (or skipped)."""
    builder = ijson.ObjectBuilder() if keep else None
    depth = 0
    for event, value in itertools.chain([(event, value)], events):
        if builder is not None:
            builder.event(event, value)
        if event in _STARTS:
            depth += 1
        elif event in _ENDS:
            depth -= 1
            if not depth:
                break
    return builder.value if builder is not None else None


def _bad_json(path: Path, feed: LineFeed, error: Exception) -> ValueError:
    # yajl's message: its first line is the reason, the next ones draw the spot.
    detail = (str(error).strip().splitlines() or [type(error).__name__])[0].removeprefix("b'")
    where = f"{path}, line {feed.line}"
    if "premature EOF" in detail:
        if feed.blank:
            return ValueError(f"{where}: {_NOT_JSON_LIST} (the file is empty); fix the file")
        return ValueError(f"{where}: not valid JSON (the file ends inside it: truncated?); fix the file")
    if "trailing garbage" in detail:
        return ValueError(f"{where}: extra data after the JSON value; one JSON value per line? name the file .jsonl")
    return ValueError(f"{where}: not valid JSON ({detail}); fix the file")


def csv_rows(path: Path) -> tuple[list[str] | None, Iterator[tuple[int, list[str]]]]:
    """(header, (line of the row's end, fields) of each non-empty row); None for an empty file."""
    # Documents are often longer than csv's default 128 KiB field limit.
    csv.field_size_limit(2**31 - 1)
    reader = csv.reader(line for _, line in lines(path))

    def bad(e: csv.Error) -> ValueError:
        return ValueError(f"{path}, line {reader.line_num}: bad CSV ({e}); fix the row's quoting")

    try:  # the header row can be the bad one too (a lone carriage return in it, say)
        header = next(reader, None)
    except csv.Error as e:
        raise bad(e) from None

    def rows() -> Iterator[tuple[int, list[str]]]:
        try:
            for row in reader:
                if row:
                    yield reader.line_num, row
        except csv.Error as e:
            raise bad(e) from None

    return header, rows()


def ragged_row(path: Path, line: int, row: list[str], header: list[str]) -> ValueError:
    return ValueError(f"{path}, line {line}: {len(row)} fields, the header has {len(header)}; "
                      "fix the row's quoting or commas")


def open_parquet(path: Path) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise ValueError(f"{path}: not a readable parquet file ({e}); re-export it or fix the suffix") from None


def parquet_records(pf: pq.ParquetFile, path: Path, columns: list[str] | None = None) -> Iterator[Record]:
    """Rows as dicts of `columns` (all by default), in batches: a large row group is never
    turned into Python objects all at once."""
    row = 0
    for batch in pf.iter_batches(batch_size=BATCH_ROWS, columns=columns):
        for record in batch.to_pylist():
            yield f"{path}, row {row}", f"{path}:{row}", record
            row += 1
