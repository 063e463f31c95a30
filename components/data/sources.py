"""Corpus sources: everything ``data.source`` can name, read as a stream of (source id, raw text).

Local files (.txt, .jsonl, .json, .csv, .parquet; all but parquet optionally gzip-compressed
as ``.gz``), directories and globs of them; directories written by ``datasets``'
``save_to_disk``; Hugging Face datasets as ``hf:<name>[:<config>]``. Every reader yields one
document at a time (JSON arrays are parsed incrementally, parquet and Arrow in batches), so
memory does not grow with the corpus. A ``.txt`` file is one document, or with
``txt_mode="paragraph"`` one per blank-line-separated block.

Bad input raises a one-line ValueError that names the file, the line (or row) and the fix.
"""
from __future__ import annotations

import codecs
import csv
import glob
import gzip
import itertools
import json
import re
import sys
import zlib
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from components.config import HF_PREFIX

TEXT_SUFFIXES = (".txt", ".jsonl", ".json", ".csv")
# Longest first, so "a.jsonl.gz" is not taken for something shorter.
SUFFIXES = (*(s + ".gz" for s in TEXT_SUFFIXES), *TEXT_SUFFIXES, ".parquet")
SUFFIX_LIST = ".txt, .jsonl, .json, .csv (each optionally .gz), .parquet"
HF_SPLIT = "train"
BATCH_ROWS = 1024
CHUNK_BYTES = 1 << 20
SNIFF_BYTES = 8192
# One line (or one whole .txt document) longer than this is refused rather than read into
# memory: no real document is 64 MiB, but a minified dump or a mislabelled binary can be.
MAX_LINE_BYTES = 64 * 2**20
_BOM = codecs.BOM_UTF8
_UTF8_FIX = "convert it to UTF-8 (e.g. iconv -f latin1 -t utf-8)"
_BINARY_FIX = "binary data or UTF-16 text; give UTF-8 text files"

Raw = Iterator[tuple[str, Any]]


class SourceError(ValueError):
    """Bad input, already described in one line (file or dataset, row, fix)."""


def file_format(path: Path) -> str | None:
    """The supported suffix `path` ends with (".jsonl.gz", ".txt", ...), or None."""
    name = path.name.lower()
    return next((s for s in SUFFIXES if name.endswith(s)), None)


def is_saved_dataset(path: Path) -> bool:
    """A directory written by `datasets.Dataset.save_to_disk` (or `DatasetDict.save_to_disk`)."""
    return path.is_dir() and (
        (path / "dataset_dict.json").is_file()
        or ((path / "state.json").is_file() and (path / "dataset_info.json").is_file())
    )


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
        yield from _read_hub(source, text_column)
        return
    if is_saved_dataset(Path(source)):
        yield from _read_saved_dataset(Path(source), text_column)
        return
    files, skipped = local_files(source)
    if skipped:
        print(f"note: data.source: skipped {len(skipped)} file(s) of other types, e.g. {skipped[0]}",
              file=sys.stderr)
    for path in files:
        yield from _read_file(path, text_column, txt_mode)


def _read_file(path: Path, column: str, txt_mode: str) -> Raw:
    fmt = file_format(path)
    try:
        if fmt == ".parquet":
            yield from _read_parquet(path, column)
            return
        _sniff(path)
        base = fmt.removesuffix(".gz")
        if base == ".txt":
            yield from (_read_paragraphs(path) if txt_mode == "paragraph" else _read_whole(path))
        elif base == ".jsonl":
            yield from _read_jsonl(path, column)
        elif base == ".json":
            yield from _read_json(path, column)
        else:
            yield from _read_csv(path, column)
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise ValueError(f"{path}: not a valid gzip file ({e}); re-compress it or drop the .gz suffix") from None
    except OSError as e:
        raise ValueError(f"{path}: cannot read ({e.strerror or e}); check the file and its permissions") from None


def _open(path: Path):
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")


def _sniff(path: Path) -> None:
    """Refuse a binary file from its first bytes, before a line reader swallows a huge 'line'."""
    with _open(path) as f:
        head = f.read(SNIFF_BYTES)
    nul = head.find(b"\0")
    if nul != -1:
        line = head.count(b"\n", 0, nul) + 1
        raise ValueError(f"{path}, line {line}: NUL byte at offset {nul}: {_BINARY_FIX}")


def _decode(raw: bytes, path: Path, line: int) -> str:
    """UTF-8 text of one line (or file, then `line` is 1); NUL bytes and bad UTF-8 are errors."""
    nul = raw.find(b"\0")
    if nul != -1:
        where = line + raw.count(b"\n", 0, nul)
        raise ValueError(f"{path}, line {where}: NUL byte: {_BINARY_FIX}")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        where = line + raw.count(b"\n", 0, e.start)
        raise ValueError(f"{path}, line {where}: not UTF-8 (byte 0x{raw[e.start]:02x}); {_UTF8_FIX}") from None


def _too_long(path: Path, line: int, what: str) -> ValueError:
    return ValueError(f"{path}, line {line}: {what} longer than {MAX_LINE_BYTES // 2**20} MiB; "
                      "split it into documents (one JSON object per line, or txt_mode: paragraph)")


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    with _open(path) as f:
        lineno = 0
        while raw := f.readline(MAX_LINE_BYTES + 1):  # bounded: a huge line never fills memory
            lineno += 1
            if len(raw) > MAX_LINE_BYTES:
                raise _too_long(path, lineno, "a line")
            if lineno == 1 and raw.startswith(_BOM):
                raw = raw[len(_BOM):]
            yield lineno, _decode(raw, path, lineno)


def _read_whole(path: Path) -> Raw:
    with _open(path) as f:
        raw = f.read(MAX_LINE_BYTES + 1)
    if len(raw) > MAX_LINE_BYTES:
        raise _too_long(path, 1, "the document (txt_mode: file reads a file as one document) is")
    yield str(path), _decode(raw.removeprefix(_BOM), path, 1)


def _read_paragraphs(path: Path) -> Raw:
    """One document per block of non-blank lines, named by the block's first line."""
    block: list[str] = []
    start = 0
    for lineno, line in _lines(path):
        if line.strip():
            if not block:
                start = lineno
            block.append(line)
        elif block:
            yield f"{path}:{start}", "".join(block)
            block = []
    if block:
        yield f"{path}:{start}", "".join(block)


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


def _read_jsonl(path: Path, column: str) -> Raw:
    for lineno, line in _lines(path):
        if not line.strip():
            continue
        where = f"{path}, line {lineno}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: not valid JSON ({e.msg}, column {e.colno}); fix or remove the line") from None
        yield f"{path}:{lineno}", _text_of(record, column, where, "line")


def _chunks(path: Path) -> Iterator[str]:
    """The decoded text of `path` in chunks of about CHUNK_BYTES, for the JSON reader."""
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    line = 1
    with _open(path) as f:
        raw = f.read(CHUNK_BYTES).removeprefix(_BOM)
        while True:
            pending = len(decoder.getstate()[0])
            nul = raw.find(b"\0")
            if nul != -1:
                where = line + raw.count(b"\n", 0, nul)
                raise ValueError(f"{path}, line {where}: NUL byte: {_BINARY_FIX}")
            try:
                text = decoder.decode(raw, final=not raw)
            except UnicodeDecodeError as e:
                where = line + raw.count(b"\n", 0, max(0, e.start - pending))
                raise ValueError(f"{path}, line {where}: not UTF-8; {_UTF8_FIX}") from None
            if text:
                yield text
            if not raw:
                return
            line += raw.count(b"\n")
            raw = f.read(CHUNK_BYTES)


_WHITESPACE = re.compile(r"[ \t\r\n]*")
_DECODER = json.JSONDecoder()


class _JsonStream:
    """Walks one JSON text value by value, holding a buffer, not the file: enough to stream
    the items of a top-level array (or of the first list in a top-level object)."""

    def __init__(self, path: Path):
        self.path, self.chunks = path, _chunks(path)
        self.buf, self.pos, self.eof = "", 0, False
        self.line, self.counted = 1, 0  # the line at buf[counted]

    def _more(self) -> bool:
        chunk = next(self.chunks, None)
        if chunk is None:
            self.eof = True
            return False
        self.where()
        self.buf, self.pos, self.counted = self.buf[self.pos:] + chunk, 0, 0
        return True

    def where(self) -> int:
        """The line at the current position (newlines counted once, so reading stays linear)."""
        self.line += self.buf.count("\n", self.counted, self.pos)
        self.counted = self.pos
        return self.line

    def fail(self, what: str, fix: str = "fix the file") -> ValueError:
        return ValueError(f"{self.path}, line {self.where()}: {what}; {fix}")

    def peek(self) -> str:
        """The next non-whitespace character ('' at the end), not consumed."""
        while True:
            self.pos = _WHITESPACE.match(self.buf, self.pos).end()
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if not self._more():
                return ""

    def take(self, expected: str) -> str:
        got = self.peek()
        if not got or got not in expected:
            raise self.fail(f"expected {' or '.join(map(repr, expected))}, found {got!r}" if got
                            else f"unexpected end of file, expected {' or '.join(map(repr, expected))}")
        self.pos += 1
        return got

    def value(self) -> Any:
        self.peek()
        while True:
            try:
                obj, end = _DECODER.raw_decode(self.buf, self.pos)
                # A value that ends exactly at the buffer's end may be cut (a number, say).
                if end < len(self.buf) or self.eof:
                    self.pos = end
                    return obj
            except json.JSONDecodeError as e:
                if self.eof:
                    self.pos = e.pos
                    cut = " (the file ends inside it: truncated?)" if e.pos >= len(self.buf) else ""
                    raise self.fail(f"not valid JSON ({e.msg}){cut}") from None
            self._more()

    def items(self) -> Iterator[tuple[int, Any]]:
        """(line, value) of each item of the array that starts here."""
        self.take("[")
        if self.peek() == "]":
            self.pos += 1
            return
        while True:
            self.peek()
            yield self.where(), self.value()
            if self.take(",]") == "]":
                return


def _read_json(path: Path, column: str) -> Raw:
    stream = _JsonStream(path)
    first = stream.peek()
    if first == "[":
        records = stream.items()
    elif first == "{":
        records = _first_list_in_object(stream)
    else:
        raise stream.fail("expected a JSON array of objects, or an object holding such a list")
    for i, (line, record) in enumerate(records):
        yield f"{path}[{i}]", _text_of(record, column, f"{path}, item {i} (line {line})", "file")
    if stream.peek():
        raise stream.fail("extra data after the JSON value", "one JSON value per line? name the file .jsonl")


def _first_list_in_object(stream: _JsonStream) -> Iterator[tuple[int, Any]]:
    """Items of the first list-valued field of a top-level object; other fields are skipped."""
    stream.take("{")
    found = False
    if stream.peek() == "}":
        stream.pos += 1
    else:
        while True:
            key = stream.value()
            if not isinstance(key, str):
                raise stream.fail("expected a field name")
            stream.take(":")
            if stream.peek() == "[" and not found:
                found = True
                yield from stream.items()
            else:
                stream.value()
            if stream.take(",}") == "}":
                break
    if not found:
        raise stream.fail("the top-level object holds no list of records")


def _read_csv(path: Path, column: str) -> Raw:
    # Documents are often longer than csv's default 128 KiB field limit.
    csv.field_size_limit(2**31 - 1)
    reader = csv.reader(line for _, line in _lines(path))
    header = next(reader, None)
    if header is None:
        return
    if column not in header:
        raise ValueError(f"{path}, line 1: no column '{column}' in the header ({', '.join(header[:8])}); "
                         "set data.text_column")
    index = header.index(column)
    try:
        for row in reader:
            if not row:
                continue
            if len(row) <= index:
                raise ValueError(f"{path}, line {reader.line_num}: {len(row)} fields, the header has "
                                 f"{len(header)}; fix the row's quoting or commas")
            yield f"{path}:{reader.line_num}", row[index]
    except csv.Error as e:
        raise ValueError(f"{path}, line {reader.line_num}: bad CSV ({e}); fix the row's quoting") from None


def _read_parquet(path: Path, column: str) -> Raw:
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise ValueError(f"{path}: not a readable parquet file ({e}); re-export it or fix the suffix") from None
    names = pf.schema_arrow.names
    if column not in names:
        raise ValueError(f"{path}: no column '{column}' (set data.text_column); has {names}")
    kind = pf.schema_arrow.field(column).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise ValueError(f"{path}: column '{column}' must hold strings, got {kind}; set data.text_column")
    row = 0
    # Batches, so a large row group is never turned into Python strings all at once.
    for batch in pf.iter_batches(batch_size=BATCH_ROWS, columns=[column]):
        for text in batch.column(0).to_pylist():
            yield f"{path}:{row}", text
            row += 1


def _datasets():
    import datasets

    # The stage's stderr is a log, not a terminal: no progress bars.
    datasets.disable_progress_bars()
    return datasets


def _read_saved_dataset(path: Path, column: str) -> Raw:
    datasets = _datasets()
    try:
        dataset = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError, OSError) as e:
        raise ValueError(f"{path}: not a readable save_to_disk directory ({_first_line(e)}); save it again") from None
    if isinstance(dataset, datasets.DatasetDict):
        if HF_SPLIT not in dataset:
            raise ValueError(f"{path}: no '{HF_SPLIT}' split (has {', '.join(dataset)}); "
                             f"save the split you want as its own directory")
        dataset = dataset[HF_SPLIT]
    yield from _dataset_rows(dataset, column, str(path))


def _read_hub(source: str, column: str) -> Raw:
    name, _, config = source.removeprefix(HF_PREFIX).partition(":")
    datasets = _datasets()
    args = (name, config or None)
    offline = bool(datasets.config.HF_HUB_OFFLINE or getattr(datasets.config, "HF_DATASETS_OFFLINE", False))
    try:
        if offline and not Path(name).is_dir():
            # Streaming always reads remote files; offline, only the local cache (Arrow,
            # memory-mapped, so still no growth in RAM) can serve the dataset.
            rows = _open_hub(datasets, args, column, source, streaming=False)
        else:
            try:
                rows = _open_hub(datasets, args, column, source, streaming=True)
            except ConnectionError:  # no network after all: the cache may hold it
                rows = _open_hub(datasets, args, column, source, streaming=False)
    except SourceError:
        raise
    except ConnectionError as e:
        raise ValueError(
            f"data.source {source!r}: not in the local datasets cache and the Hub is unreachable "
            f"({_first_line(e)}); load it once with network access, or save_to_disk() it and set "
            "data.source to that directory"
        ) from None
    except (FileNotFoundError, ValueError) as e:
        raise ValueError(f"data.source {source!r}: {_first_line(e)}; check the dataset name and config") from None
    try:
        yield from rows
    except ConnectionError as e:  # a stream cut mid-way
        raise ValueError(f"data.source {source!r}: reading failed ({_first_line(e)}); run the stage again") from None


def _open_hub(datasets: Any, args: tuple, column: str, source: str, streaming: bool) -> Raw:
    """The dataset's rows, its first one already read: a stream can fail only once iterated."""
    rows = _dataset_rows(datasets.load_dataset(*args, split=HF_SPLIT, streaming=streaming), column, source)
    first = next(rows, None)
    return rows if first is None else itertools.chain([first], rows)


def _dataset_rows(dataset: Any, column: str, source: str) -> Raw:
    """Rows of a `datasets` Dataset (memory-mapped Arrow) or IterableDataset (streamed)."""
    names = dataset.column_names
    if names is not None and column not in names:
        raise SourceError(f"{source}: no column '{column}' (has {', '.join(names)}); set data.text_column")
    feature = (dataset.features or {}).get(column)
    if feature is not None and getattr(feature, "dtype", None) not in ("string", "large_string"):
        raise SourceError(f"{source}: column '{column}' must hold strings, got {feature}; set data.text_column")
    if not isinstance(dataset, _datasets().IterableDataset):
        rows = (text for batch in dataset.select_columns([column]).iter(batch_size=BATCH_ROWS)
                for text in batch[column])
    else:
        rows = (record.get(column, _MISSING) for record in dataset)
    for i, text in enumerate(rows):
        if text is _MISSING:
            raise SourceError(f"{source}, row {i}: no field '{column}'; set data.text_column")
        if text is not None and not isinstance(text, str):
            raise SourceError(f"{source}, row {i}: '{column}' must be a string, got {type(text).__name__}")
        yield f"{source}:{i}", text


_MISSING = object()


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


RECORD_SUFFIX_LIST = ".jsonl, .json, .csv (each optionally .gz), .parquet"


def iter_records(path: Path) -> Iterator[tuple[str, Any]]:
    """(where, record) for each record of a .jsonl / .json / .csv (+ .gz) or .parquet file.

    `where` names the file and line (or item, or row) for error messages. A record is
    whatever the file holds (a dict for csv and parquet); callers check its fields.
    """
    fmt = file_format(path)
    if fmt is None or fmt.removesuffix(".gz") == ".txt":
        raise ValueError(f"{path}: unsupported file type for labelled records; use one of {RECORD_SUFFIX_LIST}")
    try:
        if fmt == ".parquet":
            yield from _parquet_records(path)
            return
        _sniff(path)
        base = fmt.removesuffix(".gz")
        if base == ".jsonl":
            for lineno, line in _lines(path):
                if line.strip():
                    try:
                        yield f"{path}, line {lineno}", json.loads(line)
                    except json.JSONDecodeError as e:
                        raise ValueError(f"{path}, line {lineno}: not valid JSON ({e.msg}, column {e.colno}); "
                                         "fix or remove the line") from None
        elif base == ".json":
            stream = _JsonStream(path)
            first = stream.peek()
            if first not in ("[", "{"):
                raise stream.fail("expected a JSON array of objects, or an object holding such a list")
            records = stream.items() if first == "[" else _first_list_in_object(stream)
            for i, (line, record) in enumerate(records):
                yield f"{path}, item {i} (line {line})", record
        else:
            csv.field_size_limit(2**31 - 1)
            reader = csv.reader(line for _, line in _lines(path))
            header = next(reader, None) or []
            try:
                for row in reader:
                    if row:
                        if len(row) != len(header):
                            raise ValueError(f"{path}, line {reader.line_num}: {len(row)} fields, the header has "
                                             f"{len(header)}; fix the row's quoting or commas")
                        yield f"{path}, line {reader.line_num}", dict(zip(header, row))
            except csv.Error as e:
                raise ValueError(f"{path}, line {reader.line_num}: bad CSV ({e}); fix the row's quoting") from None
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise ValueError(f"{path}: not a valid gzip file ({e}); re-compress it or drop the .gz suffix") from None
    except OSError as e:
        raise ValueError(f"{path}: cannot read ({e.strerror or e}); check the file and its permissions") from None


def _parquet_records(path: Path) -> Iterator[tuple[str, dict]]:
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise ValueError(f"{path}: not a readable parquet file ({e}); re-export it or fix the suffix") from None
    row = 0
    for batch in pf.iter_batches(batch_size=BATCH_ROWS):
        for record in batch.to_pylist():
            yield f"{path}, row {row}", record
            row += 1
