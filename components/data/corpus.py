"""Ingest: read documents, clean them, drop duplicates and short ones, split, write parquet.

The corpus goes to ``train.parquet``/``validation.parquet`` (``doc_id``, ``source``,
``text``, rows in doc_id order) and the downstream task to ``train``/``validation``/
``test.parquet`` (``text``, ``label``, ``module``) plus ``labels.json``. Each output
directory is written atomically.

The corpus is streamed: documents are cleaned one at a time, sorted by doc_id with an
external merge sort (runs of RUN_CHARS characters spilled to parquet), deduplicated as
equal ids meet in the merge, and written a row group at a time. Memory holds one run, not
the corpus; the sources themselves are read in ``components/data/sources.py``.
"""
from __future__ import annotations

import hashlib
from array import array
import heapq
import itertools
import re
import shutil
import sys
import tempfile
import unicodedata
from pathlib import Path
from typing import Iterable, Iterator, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from components.config import BUILTIN_CORPUS, BUILTIN_TASK, DataConfig, DownstreamConfig
from components.data import stdlib_docs
from components.io import atomic_dir, write_json_atomic
from components.data.sources import read_documents

# An in-memory run of the external sort. The built-in corpus (~1.7M characters) fits in
# one, so it never touches disk; larger corpora spill runs and merge them.
RUN_CHARS = 4 * 2**20
MERGE_FANIN = 16
RUN_GROUP_CHARS = 64 * 2**10  # small row groups in runs: a merge holds one per run
OUTPUT_GROUP_CHARS = 2**20


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


def new_counts() -> dict[str, int]:
    return {"documents_read": 0, "duplicates_removed": 0, "short_removed": 0}


def clean_documents(raw: Iterable[tuple[str, str | None]], min_chars: int, counts: dict) -> Iterator[Document]:
    """Cleaned documents of at least `min_chars` characters; counts what was read and dropped."""
    for source, text in raw:
        counts["documents_read"] += 1
        text = clean_text(text or "")
        if len(text) < min_chars:
            counts["short_removed"] += 1
            continue
        yield Document(doc_id_of(text), source, text)


def _by_id(doc: Document) -> str:
    return doc.doc_id


class _RowGroupWriter:
    """A parquet file written one row group of about `group_chars` characters at a time."""

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
            self.writer.write_table(_table(self.rows, self.schema))
            self.rows, self.chars = [], 0

    def __enter__(self) -> "_RowGroupWriter":
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is None:
            self.flush()
        self.writer.close()


def _spill(docs: Iterable[Document], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with _RowGroupWriter(path, CORPUS_SCHEMA, RUN_GROUP_CHARS) as out:
        for doc in docs:
            out.write(doc)
    return path


def _read_run(path: Path) -> Iterator[Document]:
    run = pq.ParquetFile(path)
    for group in range(run.num_row_groups):
        columns = run.read_row_group(group).to_pydict()
        yield from map(Document._make, zip(*(columns[name] for name in CORPUS_SCHEMA.names)))


def sort_unique(
    docs: Iterable[Document], work_dir: Path, counts: dict,
    run_chars: int = RUN_CHARS, fanin: int = MERGE_FANIN,
) -> Iterator[Document]:
    """`docs` in doc_id order, exact duplicates dropped (the first copy kept, counted in
    counts["duplicates_removed"]).

    An external merge sort: runs of `run_chars` characters are sorted in memory (a stable
    sort, so equal ids keep their reading order) and spilled to parquet in `work_dir`;
    runs are merged `fanin` at a time, earlier runs first on ties. A corpus that fits in
    one run never touches disk.
    """
    runs: list[Path] = []
    buffer: list[Document] = []
    chars = 0
    for doc in docs:
        buffer.append(doc)
        chars += len(doc.text)
        if chars >= run_chars:
            buffer.sort(key=_by_id)
            runs.append(_spill(buffer, work_dir / f"run-0-{len(runs):06d}.parquet"))
            buffer, chars = [], 0
    buffer.sort(key=_by_id)
    if runs and buffer:
        runs.append(_spill(buffer, work_dir / f"run-0-{len(runs):06d}.parquet"))
        buffer = []
    level = 0
    while len(runs) > fanin:
        level += 1
        groups = [runs[i:i + fanin] for i in range(0, len(runs), fanin)]
        merged = []
        for i, group in enumerate(groups):
            merged.append(_spill(heapq.merge(*map(_read_run, group), key=_by_id),
                                 work_dir / f"run-{level}-{i:06d}.parquet"))
            for path in group:
                path.unlink()
        runs = merged
    stream = heapq.merge(*map(_read_run, runs), key=_by_id) if runs else iter(buffer)
    previous = None
    for doc in stream:
        if doc.doc_id == previous:
            counts["duplicates_removed"] += 1
            continue
        previous = doc.doc_id
        yield doc


def prepare_documents(
    raw: Iterable[tuple[str, str | None]], min_chars: int, max_documents: int = 0
) -> tuple[list[Document], dict[str, int]]:
    """Clean, drop short documents then exact duplicates (first kept); sort by doc_id.

    The in-memory form of what build_corpus streams, for small inputs.
    """
    counts = new_counts()
    with tempfile.TemporaryDirectory(prefix="lmforge-sort-") as work:
        docs = list(sort_unique(clean_documents(raw, min_chars, counts), Path(work), counts))
    return (docs[:max_documents] if max_documents else docs), counts


def route(docs: Iterable[Document], fraction: float) -> Iterator[tuple[Document, bool]]:
    """(document, goes to validation) for documents in doc_id order.

    Validation takes the documents whose hash falls under `fraction`; in doc_id order they
    come first. So both splits are non-empty from two documents on, the boundary document
    moves when one would be empty: the first one if none hashes into validation, the last
    one if all do. One document of lookahead, so this streams.
    """
    it = iter(docs)
    doc, first = next(it, None), True
    while doc is not None:
        following = next(it, None)
        val = is_validation(doc.doc_id, fraction)
        if first and not val and following is not None:
            val = True
        elif not first and val and following is None:
            val = False
        yield doc, val
        doc, first = following, False


def split_documents(docs: list[Document], fraction: float) -> tuple[list[Document], list[Document]]:
    """(train, validation) of documents in doc_id order; see `route`."""
    train: list[Document] = []
    val: list[Document] = []
    for doc, is_val in route(docs, fraction):
        (val if is_val else train).append(doc)
    return train, val


def _percentile(sorted_values: np.ndarray, q: float) -> int:
    """Nearest-rank percentile: a real document length, not an interpolated one."""
    if not len(sorted_values):
        return 0
    return int(sorted_values[min(len(sorted_values) - 1, int(q / 100 * len(sorted_values)))])


def _table(rows: list[tuple], schema: pa.Schema) -> pa.Table:
    # Built from plain lists with a fixed schema: no pandas index or metadata, stable bytes.
    return pa.table({name: [row[i] for row in rows] for i, name in enumerate(schema.names)}, schema=schema)


def _write_parquet(path: Path, rows: list[tuple], schema: pa.Schema) -> None:
    pq.write_table(_table(rows, schema), path)


def write_splits(docs: Iterator[Document], out_dir: Path, fraction: float, max_documents: int) -> dict:
    """Stream doc_id-ordered documents into train/validation.parquet; flat counts and lengths.

    Documents past `max_documents` are still read (not written), so the duplicate count
    covers the whole source.
    """
    lengths = array("q")  # 8 bytes a document: the only thing kept per document
    n_val = 0
    kept = itertools.islice(docs, max_documents or None)
    with (_RowGroupWriter(out_dir / "train.parquet", CORPUS_SCHEMA, OUTPUT_GROUP_CHARS) as train,
          _RowGroupWriter(out_dir / "validation.parquet", CORPUS_SCHEMA, OUTPUT_GROUP_CHARS) as val):
        for doc, is_val in route(kept, fraction):
            (val if is_val else train).write(doc)
            n_val += is_val
            lengths.append(len(doc.text))
    for _ in docs:
        pass
    ordered = np.sort(np.frombuffer(lengths, dtype=np.int64)) if lengths else np.zeros(0, np.int64)
    return {
        "documents": len(ordered),
        "train_documents": len(ordered) - n_val,
        "validation_documents": n_val,
        "characters": int(ordered.sum()),
        "length_p05": _percentile(ordered, 5),
        "length_p50": _percentile(ordered, 50),
        "length_p95": _percentile(ordered, 95),
    }


def _stats(counts: dict[str, int], corpus: dict, task: dict, excluded: int, n_classes: int) -> dict:
    """Flat, JSON-able numbers; documents_read counts what reached cleaning (test-split
    modules are left out before that, and counted in excluded_test_documents)."""
    return {
        **counts,
        **corpus,
        "downstream_train": len(task["train"]),
        "downstream_validation": len(task["validation"]),
        "downstream_test": len(task["test"]),
        "downstream_classes": n_classes,
        "excluded_test_documents": excluded,
    }


CORPUS_SCHEMA = pa.schema([("doc_id", pa.string()), ("source", pa.string()), ("text", pa.string())])
DOWNSTREAM_SCHEMA = pa.schema([("text", pa.string()), ("label", pa.int64()), ("module", pa.string())])


def build_corpus(
    data: DataConfig, downstream: DownstreamConfig, seed: int, corpus_dir: Path, downstream_dir: Path
) -> dict:
    """Write the corpus and downstream splits; return flat stats for reports/corpus_stats.json.

    Both directories appear together or not at all: a bad source fails before either is
    replaced (a user's source is read first, so it fails before the slower stdlib parse).
    """
    builtin = data.source == BUILTIN_CORPUS
    task = excluded = None
    labels = list(stdlib_docs.LABELS)
    if downstream.task != BUILTIN_TASK:
        # A user's task is read (and its labels checked) before any corpus work.
        task, labels = read_downstream(downstream, seed)
        excluded = 0
    if builtin and task is None:
        task, raw, excluded = _builtin_task_and_corpus(downstream, seed)
    elif builtin:  # the built-in corpus with a user's task: nothing of the task to leave out
        raw = stdlib_docs.builtin_documents(stdlib_docs.cleaned_modules(clean_text), set(), set(), clean_text)
    else:
        raw = read_documents(data.source, data.text_column, data.txt_mode)
    counts = new_counts()
    with atomic_dir(corpus_dir) as tmp:
        work = tmp / ".sort"
        docs = sort_unique(clean_documents(raw, data.min_chars, counts), work, counts)
        corpus = write_splits(docs, tmp, data.validation_fraction, data.max_documents)
        shutil.rmtree(work, ignore_errors=True)
        if not corpus["documents"]:  # raised inside atomic_dir: nothing is written
            raise ValueError(
                f"data.source {data.source!r}: no documents ({counts['documents_read']} read, "
                f"{counts['short_removed']} shorter than data.min_chars={data.min_chars}); "
                "give a non-empty corpus or lower data.min_chars"
            )
        if task is None:
            task, excluded = _task(stdlib_docs.cleaned_modules(clean_text), downstream, seed)[0], 0
        with atomic_dir(downstream_dir) as out:
            for split, rows in task.items():
                _write_parquet(out / f"{split}.parquet", rows, DOWNSTREAM_SCHEMA)
            write_json_atomic(out / "labels.json", {"labels": labels})

    stats = _stats(counts, corpus, task, excluded, len(labels))
    print(
        f"corpus: {stats['documents']} documents ({stats['train_documents']} train / "
        f"{stats['validation_documents']} validation), {stats['characters']:,} characters; "
        f"{stats['duplicates_removed']} duplicates and {stats['short_removed']} short documents removed; "
        f"{excluded} test-split modules left out",
        file=sys.stderr,
    )
    return stats


def read_downstream(downstream: DownstreamConfig, seed: int) -> tuple[dict, list[str]]:
    """A user's task as {split: [(text, label id, origin)]} and its label names, capped per split."""
    from components.data.downstream import read_task

    task, labels = read_task(downstream.task, downstream.text_column, downstream.label_column, downstream.labels,
                             downstream.validation_fraction, downstream.test_fraction, seed)
    return {s: stdlib_docs.subsample(rows, downstream.max_examples_per_split, seed) for s, rows in task.items()}, labels


def _task(modules: list[stdlib_docs.ModuleDocs], downstream: DownstreamConfig, seed: int) -> tuple[dict, dict]:
    """(the subsampled task, the full split) of the built-in downstream task."""
    full = stdlib_docs.chapter_examples(
        modules, downstream.min_chars, downstream.validation_fraction, downstream.test_fraction, seed
    )
    return {s: stdlib_docs.subsample(rows, downstream.max_examples_per_split, seed) for s, rows in full.items()}, full


def _builtin_task_and_corpus(downstream: DownstreamConfig, seed: int):
    """The task first: the built-in corpus leaves out every module with a test example
    (even one that subsampling dropped)."""
    modules = stdlib_docs.cleaned_modules(clean_text)
    task, full = _task(modules, downstream, seed)
    test_modules = {module for _, _, module in full["test"]}
    test_texts = {text for text, _, _ in full["test"]}
    raw = stdlib_docs.builtin_documents(modules, test_modules, test_texts, clean_text)
    return task, raw, sum(m.name in test_modules for m in modules)
