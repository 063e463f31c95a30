"""Ingest: read documents, clean them, drop duplicates and short ones, split, write parquet.

The corpus goes to ``train.parquet``/``validation.parquet`` (``doc_id``, ``source``,
``text``) and the downstream task to ``train``/``validation``/``test.parquet`` (``text``,
``label``, ``module``) plus ``labels.json``. Each output directory is written atomically.
"""
from __future__ import annotations

import glob
import hashlib
import json
import re
import sys
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, NamedTuple

import pyarrow as pa
import pyarrow.parquet as pq

from components import stdlib_docs
from components.io import atomic_dir, write_json_atomic

BUILTIN_CORPUS = "builtin:stdlib-docs"
BUILTIN_TASK = "builtin:stdlib-chapters"
LOCAL_SUFFIXES = (".jsonl", ".parquet", ".txt")


@dataclass(frozen=True)
class DataConfig:
    """params.yaml section ``data``: where the pretraining corpus comes from."""

    source: str = BUILTIN_CORPUS
    """``builtin:stdlib-docs``, or a local file, directory or glob of .txt/.jsonl/.parquet."""
    text_column: str = "text"
    """Field (jsonl) or column (parquet) holding each document's text."""
    validation_fraction: float = 0.05
    """Share of documents, chosen by hash of their text, held out for validation."""
    min_chars: int = 20
    """Documents shorter than this after cleaning are dropped."""
    max_documents: int = 0
    """Keep only the first N documents by doc_id (0 = all); keeps tiny runs fast."""

    def __post_init__(self) -> None:
        if self.source.startswith("builtin:") and self.source != BUILTIN_CORPUS:
            raise ValueError(f"data.source: unknown built-in {self.source!r}; use {BUILTIN_CORPUS!r} or a path")
        if not self.source.strip():
            raise ValueError(f"data.source must be {BUILTIN_CORPUS!r} or a path, got an empty string")
        if not self.text_column:
            raise ValueError("data.text_column must name a field, got an empty string")
        if not 0 < self.validation_fraction < 0.5:
            raise ValueError(f"data.validation_fraction must be in (0, 0.5), got {self.validation_fraction}")
        if self.min_chars < 1:
            raise ValueError(f"data.min_chars must be >= 1, got {self.min_chars}")
        if self.max_documents < 0:
            raise ValueError(f"data.max_documents must be >= 0 (0 = all), got {self.max_documents}")


@dataclass(frozen=True)
class DownstreamConfig:
    """params.yaml section ``downstream``: the built-in classification task."""

    task: str = BUILTIN_TASK
    """Which task; only ``builtin:stdlib-chapters`` (docstring -> library chapter) exists."""
    validation_fraction: float = 0.15
    """Share of each class's examples held out for validation, taken as whole modules."""
    test_fraction: float = 0.15
    """Share of each class's examples held out for test, as whole modules that the built-in
    corpus then leaves out."""
    min_chars: int = 40
    """Docstrings shorter than this are not examples."""
    max_examples_per_split: int = 0
    """Cap on each split's size (0 = all), subsampled so every class keeps examples."""

    def __post_init__(self) -> None:
        if self.task != BUILTIN_TASK:
            raise ValueError(f"downstream.task must be {BUILTIN_TASK!r} (the only task so far), got {self.task!r}")
        for name in ("validation_fraction", "test_fraction"):
            value = getattr(self, name)
            if not 0 < value < 0.5:
                raise ValueError(f"downstream.{name} must be in (0, 0.5), got {value}")
        if self.min_chars < 1:
            raise ValueError(f"downstream.min_chars must be >= 1, got {self.min_chars}")
        n_classes = len(stdlib_docs.LABELS)
        if self.max_examples_per_split != 0 and self.max_examples_per_split < n_classes:
            raise ValueError(
                f"downstream.max_examples_per_split must be 0 (all) or >= {n_classes} "
                f"(one per class), got {self.max_examples_per_split}"
            )


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_TRAILING = re.compile(r"[ \t]+$", re.MULTILINE)
_BLANK_RUNS = re.compile(r"\n{3,}")


def clean_text(s: str) -> str:
    """NFC, newlines unified, control characters (but \\n, \\t) removed, whitespace tidied."""
    s = unicodedata.normalize("NFC", s)
    # Newlines first: \r is itself a control character and would otherwise be deleted.
    s = s.replace("\r\n", "\n").replace("\r", "\n")
    s = _CONTROL.sub("", s)
    s = _TRAILING.sub("", s)
    return _BLANK_RUNS.sub("\n\n", s).strip()


class Document(NamedTuple):
    """One corpus row; field order is the parquet column order."""

    doc_id: str
    source: str
    text: str


def doc_id_of(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def is_validation(doc_id: str, fraction: float) -> bool:
    """Split by the document's own hash, so adding documents never moves existing ones."""
    return int(doc_id[:8], 16) / 2**32 < fraction


def local_files(source: str) -> list[Path]:
    """The files a local source names, in sorted order."""
    if glob.has_magic(source):
        files = [Path(p) for p in glob.glob(source, recursive=True) if Path(p).is_file()]
    elif Path(source).is_dir():
        files = [p for p in Path(source).rglob("*") if p.is_file() and p.suffix in LOCAL_SUFFIXES]
    elif Path(source).is_file():
        files = [Path(source)]
    else:
        raise ValueError(f"data.source: {source!r} does not exist (give a file, directory or glob)")
    if not files:
        raise ValueError(f"data.source: no {'/'.join(LOCAL_SUFFIXES)} files match {source!r}")
    for f in files:
        if f.suffix not in LOCAL_SUFFIXES:
            raise ValueError(f"data.source: {f}: unsupported file type; use {', '.join(LOCAL_SUFFIXES)}")
    return sorted(files)


def _read_jsonl(path: Path, column: str) -> Iterator[tuple[str, str]]:
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}, line {lineno}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: not valid JSON ({e.msg})") from None
            if not isinstance(record, dict):
                raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
            if column not in record:
                raise ValueError(f"{where}: no field '{column}' (set data.text_column)")
            text = record[column]
            if text is not None and not isinstance(text, str):
                raise ValueError(f"{where}: field '{column}' must be a string, got {type(text).__name__}")
            yield f"{path}:{lineno}", text or ""


def _read_parquet(path: Path, column: str) -> Iterator[tuple[str, str]]:
    pf = pq.ParquetFile(path)
    field = pf.schema_arrow.field(column) if column in pf.schema_arrow.names else None
    if field is None:
        raise ValueError(f"{path}: no column '{column}' (set data.text_column); has {pf.schema_arrow.names}")
    if not (pa.types.is_string(field.type) or pa.types.is_large_string(field.type)):
        raise ValueError(f"{path}: column '{column}' must hold strings, got {field.type}")
    row = 0
    # One row group at a time, so a large file never sits in memory whole.
    for group in range(pf.num_row_groups):
        for text in pf.read_row_group(group, columns=[column]).column(0).to_pylist():
            yield f"{path}:{row}", text or ""
            row += 1


def read_local_documents(source: str, text_column: str) -> Iterator[tuple[str, str]]:
    """(source, raw text) for each document of a local file, directory or glob."""
    for path in local_files(source):
        try:
            if path.suffix == ".txt":
                yield str(path), path.read_text(encoding="utf-8")
            elif path.suffix == ".jsonl":
                yield from _read_jsonl(path, text_column)
            else:
                yield from _read_parquet(path, text_column)
        except UnicodeDecodeError as e:
            raise ValueError(f"{path}: not UTF-8 text (byte {e.start}); convert it to UTF-8") from None


def prepare_documents(
    raw: Iterator[tuple[str, str]], min_chars: int, max_documents: int = 0
) -> tuple[list[Document], dict[str, int]]:
    """Clean, drop short documents then exact duplicates (first kept); sort by doc_id."""
    docs: dict[str, Document] = {}
    counts = {"documents_read": 0, "duplicates_removed": 0, "short_removed": 0}
    for source, text in raw:
        counts["documents_read"] += 1
        text = clean_text(text)
        if len(text) < min_chars:
            counts["short_removed"] += 1
            continue
        doc_id = doc_id_of(text)
        if doc_id in docs:
            counts["duplicates_removed"] += 1
            continue
        docs[doc_id] = Document(doc_id, source, text)
    kept = [docs[k] for k in sorted(docs)]
    return (kept[:max_documents] if max_documents else kept), counts


def split_documents(docs: list[Document], fraction: float) -> tuple[list[Document], list[Document]]:
    """(train, validation) by doc hash; both non-empty whenever there are >= 2 documents."""
    train = [d for d in docs if not is_validation(d.doc_id, fraction)]
    val = [d for d in docs if is_validation(d.doc_id, fraction)]
    if len(docs) >= 2 and not val:
        # The document whose hash is nearest the threshold moves; sorted by doc_id, it is first.
        val, train = train[:1], train[1:]
    if len(docs) >= 2 and not train:
        train, val = val[-1:], val[:-1]
    return train, val


def builtin_documents(
    modules: list[stdlib_docs.ModuleDocs], test_modules: set[str], test_texts: set[str]
) -> Iterator[tuple[str, str]]:
    """One document per module (test-split modules left out) and one per pydoc topic.

    A docstring or topic that holds a test example is left out too: docstrings are shared
    and quoted across modules (posixpath and ntpath, multiprocessing.context).
    """
    kept = [m for m in modules if m.name not in test_modules]
    topics = [(f"pydoc-topic:{name}", clean_text(text)) for name, text in stdlib_docs.pydoc_topics()]
    units = [d for m in kept for d in m.docstrings] + [text for _, text in topics]
    leaked = stdlib_docs.texts_containing(units, test_texts)
    for m in kept:
        yield m.name, "\n\n".join(d for d in m.docstrings if d not in leaked)
    yield from ((source, text) for source, text in topics if text not in leaked)


def _percentile(sorted_values: list[int], q: float) -> int:
    """Nearest-rank percentile: a real document length, not an interpolated one."""
    if not sorted_values:
        return 0
    return sorted_values[min(len(sorted_values) - 1, int(q / 100 * len(sorted_values)))]


def _write_parquet(path: Path, rows: list[tuple], schema: pa.Schema) -> None:
    # Built from plain lists with a fixed schema: no pandas index or metadata, stable bytes.
    columns = {name: [row[i] for row in rows] for i, name in enumerate(schema.names)}
    pq.write_table(pa.table(columns, schema=schema), path)


def _stats(counts: dict[str, int], docs: list[Document], n_val: int, task: dict, excluded: int) -> dict:
    """Flat, JSON-able numbers; documents_read counts what reached cleaning (test-split
    modules are left out before that, and counted in excluded_test_documents)."""
    lengths = sorted(len(d.text) for d in docs)
    return {
        **counts,
        "documents": len(docs),
        "train_documents": len(docs) - n_val,
        "validation_documents": n_val,
        "characters": sum(lengths),
        "length_p05": _percentile(lengths, 5),
        "length_p50": _percentile(lengths, 50),
        "length_p95": _percentile(lengths, 95),
        "downstream_train": len(task["train"]),
        "downstream_validation": len(task["validation"]),
        "downstream_test": len(task["test"]),
        "downstream_classes": len(stdlib_docs.LABELS),
        "excluded_test_documents": excluded,
    }


CORPUS_SCHEMA = pa.schema([("doc_id", pa.string()), ("source", pa.string()), ("text", pa.string())])
DOWNSTREAM_SCHEMA = pa.schema([("text", pa.string()), ("label", pa.int64()), ("module", pa.string())])


def build_corpus(
    data: DataConfig, downstream: DownstreamConfig, seed: int, corpus_dir: Path, downstream_dir: Path
) -> dict:
    """Write the corpus and downstream splits; return flat stats for reports/corpus_stats.json."""
    builtin = data.source == BUILTIN_CORPUS
    if not builtin:
        # Read a local source first, so a bad file fails before the slower stdlib parse.
        docs, counts = prepare_documents(
            read_local_documents(data.source, data.text_column), data.min_chars, data.max_documents
        )
    modules = [
        stdlib_docs.ModuleDocs(m.name, tuple(clean_text(d) for d in m.docstrings))
        for m in stdlib_docs.extract_stdlib_docs()
    ]
    full = stdlib_docs.chapter_examples(
        modules, downstream.min_chars, downstream.validation_fraction, downstream.test_fraction, seed
    )
    task = {s: stdlib_docs.subsample(rows, downstream.max_examples_per_split, seed) for s, rows in full.items()}
    excluded = 0
    if builtin:
        # Every module with a test example is held out, even if subsampling dropped its rows.
        test_modules = {module for _, _, module in full["test"]}
        test_texts = {text for text, _, _ in full["test"]}
        raw = builtin_documents(modules, test_modules, test_texts)
        docs, counts = prepare_documents(raw, data.min_chars, data.max_documents)
        excluded = sum(m.name in test_modules for m in modules)
    train, val = split_documents(docs, data.validation_fraction)

    with atomic_dir(downstream_dir) as tmp:
        for split, rows in task.items():
            _write_parquet(tmp / f"{split}.parquet", rows, DOWNSTREAM_SCHEMA)
        write_json_atomic(tmp / "labels.json", {"labels": list(stdlib_docs.LABELS)})
    with atomic_dir(corpus_dir) as tmp:
        _write_parquet(tmp / "train.parquet", train, CORPUS_SCHEMA)
        _write_parquet(tmp / "validation.parquet", val, CORPUS_SCHEMA)

    stats = _stats(counts, docs, len(val), task, excluded)
    print(
        f"corpus: {stats['documents']} documents ({len(train)} train / {len(val)} validation), "
        f"{stats['characters']:,} characters; {excluded} test-split modules left out",
        file=sys.stderr,
    )
    return stats
