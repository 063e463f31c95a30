"""Corpus sources: everything ``data.source`` can name, read as a stream of (source id, raw text).

Local files (.txt, .jsonl, .json, .csv, .parquet; all but parquet optionally gzip-compressed
as ``.gz``), directories and globs of them; directories written by ``datasets``'
``save_to_disk``; Hugging Face datasets as ``hf:<name>[:<config>]`` (``hub.py``). Every
reader yields one document at a time (``formats.py``), so memory does not grow with the
corpus. A ``.txt`` file is one document, or with ``txt_mode="paragraph"`` one per
blank-line-separated block. `iter_records` reads the same files as whole records, for the
downstream task.

Bad input raises a one-line ValueError that names the file, the line (or row) and the fix.
"""
from __future__ import annotations

import glob
import sys
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa

from components.config import TXT_MODES
from components.data import formats
from components.data.files import SUFFIX_LIST, file_format, reading, sniff, whole
from components.data.hub import HF_PREFIX, Raw, is_saved_dataset, read_hub, read_saved_dataset

__all__ = ["HF_PREFIX", "TXT_MODES", "file_format", "is_saved_dataset", "iter_records", "local_files",
           "read_documents"]

RECORD_SUFFIX_LIST = ".jsonl, .json, .csv (each optionally .gz), .parquet"


def local_files(source: str, param: str = "data.source",
                builtin: str = "builtin:stdlib-docs") -> tuple[list[Path], list[Path]]:
    """(files to read, sorted; files of other types that a directory held and are skipped).

    `param` and `builtin` name the setting and its built-in value in error messages."""
    skipped: list[Path] = []
    if glob.has_magic(source):
        files = [Path(p) for p in glob.glob(source, recursive=True) if Path(p).is_file()]
    elif Path(source).is_dir():
        root = Path(source)
        files = []
        for p in root.rglob("*"):
            # Hidden entries are tooling (.git, .dvc, editor swap files), never corpus text.
            if not p.is_file() or any(part.startswith(".") for part in p.relative_to(root).parts):
                continue
            (files if file_format(p) else skipped).append(p)
    elif Path(source).is_file():
        files = [Path(source)]
    else:
        raise ValueError(
            f"{param}: {source!r} does not exist; give a file, directory or glob "
            f"({SUFFIX_LIST}), hf:<name>[:<config>] or {builtin}"
        )
    if not files:
        raise ValueError(f"{param}: no {SUFFIX_LIST} files in {source!r}; add some or fix the path")
    for f in files:
        if file_format(f) is None:
            raise ValueError(f"{param}: {f}: unsupported file type; use one of {SUFFIX_LIST}")
    return sorted(files), sorted(skipped)


def read_documents(source: str, text_column: str, txt_mode: str = "file") -> Raw:
    """(source id, raw text) for each document `source` names, in a deterministic order.

    The text is whatever the file holds (None for a null value); cleaning comes later.
    """
    if source.startswith(HF_PREFIX):
        yield from read_hub(source, text_column)
        return
    if is_saved_dataset(Path(source)):
        yield from read_saved_dataset(Path(source), text_column)
        return
    files, skipped = local_files(source)
    if skipped:
        print(f"note: data.source: skipped {len(skipped)} file(s) of other types, e.g. {skipped[0]}",
              file=sys.stderr)
    for path in files:
        yield from _file_documents(path, text_column, txt_mode)


def _file_documents(path: Path, column: str, txt_mode: str) -> Raw:
    base = file_format(path).removesuffix(".gz")
    with reading(path):
        if base == ".parquet":
            yield from _parquet_texts(path, column)
            return
        sniff(path)
        if base == ".txt":
            yield from formats.paragraphs(path) if txt_mode == "paragraph" else [(str(path), whole(path))]
        elif base == ".csv":
            yield from _csv_texts(path, column)
        else:
            records, kind = (formats.jsonl_records, "line") if base == ".jsonl" else (formats.json_records, "file")
            for where, source_id, record in records(path):
                yield source_id, _text_of(record, column, where, kind)


def _text_of(record: Any, column: str, where: str, fix_kind: str) -> Any:
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a JSON object with a '{column}' field, got {type(record).__name__}; "
                         f"fix the {fix_kind}")
    if column not in record:
        keys = ", ".join(repr(k)[1:-1] for k in list(record)[:8]) or "none"  # escaped: one line
        raise ValueError(f"{where}: no field '{column}' (fields: {keys}); set data.text_column or fix the {fix_kind}")
    text = record[column]
    if text is not None and not isinstance(text, str):
        raise ValueError(f"{where}: field '{column}' must be a string, got {type(text).__name__}; fix the {fix_kind}")
    return text


def _csv_texts(path: Path, column: str) -> Raw:
    header, rows = formats.csv_rows(path)
    if header is None:
        return
    if column not in header:
        raise ValueError(f"{path}, line 1: no column '{column}' in the header ({', '.join(header[:8])}); "
                         "set data.text_column")
    index = header.index(column)
    for line, row in rows:
        if len(row) <= index:
            raise formats.ragged_row(path, line, row, header)
        yield f"{path}:{line}", row[index]


def _parquet_texts(path: Path, column: str) -> Raw:
    pf = formats.open_parquet(path)
    names = pf.schema_arrow.names
    if column not in names:
        raise ValueError(f"{path}: no column '{column}' (set data.text_column); has {names}")
    kind = pf.schema_arrow.field(column).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise ValueError(f"{path}: column '{column}' must hold strings, got {kind}; set data.text_column")
    for _where, source_id, record in formats.parquet_records(pf, path, [column]):
        yield source_id, record[column]


def iter_records(path: Path) -> Iterator[tuple[str, Any]]:
    """(where, record) for each record of a .jsonl / .json / .csv (+ .gz) or .parquet file.

    `where` names the file and line (or item, or row) for error messages. A record is
    whatever the file holds (a dict for csv and parquet); callers check its fields.
    """
    fmt = file_format(path)
    if fmt is None or fmt.removesuffix(".gz") == ".txt":
        raise ValueError(f"{path}: unsupported file type for labelled records; use one of {RECORD_SUFFIX_LIST}")
    base = fmt.removesuffix(".gz")
    with reading(path):
        if base == ".parquet":
            records = formats.parquet_records(formats.open_parquet(path), path)
        else:
            sniff(path)
            records = (_csv_records(path) if base == ".csv" else
                       formats.jsonl_records(path) if base == ".jsonl" else formats.json_records(path))
        for where, _source_id, record in records:
            yield where, record


def _csv_records(path: Path) -> Iterator[formats.Record]:
    header, rows = formats.csv_rows(path)
    header = header or []
    for line, row in rows:
        if len(row) != len(header):
            raise formats.ragged_row(path, line, row, header)
        yield f"{path}, line {line}", f"{path}:{line}", dict(zip(header, row))
