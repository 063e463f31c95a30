"""Exact-duplicate removal: the cleaned documents in doc_id order, each content once.

An external merge sort: runs of RUN_CHARS characters are sorted in memory and spilled to
parquet, merged MERGE_FANIN at a time, and equal ids dropped as they meet in the last
merge. Memory holds one run (or one small row group per run while merging), not the corpus.
"""
from __future__ import annotations

import heapq
from pathlib import Path
from typing import Iterable, Iterator

import pyarrow.parquet as pq

from components.data.clean import Document
from components.data.rows import CORPUS_SCHEMA, RowGroupWriter

# An in-memory run. The built-in corpus (~1.7M characters) fits in one, so it never
# touches disk; larger corpora spill runs and merge them.
RUN_CHARS = 4 * 2**20
MERGE_FANIN = 16
RUN_GROUP_CHARS = 64 * 2**10  # small row groups in runs: a merge holds one per run


def _by_id(doc: Document) -> str:
    return doc.doc_id


def _spill(docs: Iterable[Document], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with RowGroupWriter(path, CORPUS_SCHEMA, RUN_GROUP_CHARS) as out:
        for doc in docs:
            out.write(doc)
    return path


def _read_run(path: Path) -> Iterator[Document]:
    run = pq.ParquetFile(path)
    for group in range(run.num_row_groups):
        columns = run.read_row_group(group).to_pydict()
        yield from map(Document._make, zip(*(columns[name] for name in CORPUS_SCHEMA.names)))


# Kept over DuckDB (and pyarrow) by measurement: benchmarks/ingest_libraries.py, 50x the
# built-in corpus (22,250 documents, 86.6M characters, 2,180 exact duplicates), AMD EPYC,
# one child process per side, medians of 3: this sort 13.0 s and 175 MiB peak RSS (114
# over the interpreter with pyarrow loaded); DuckDB 2.0 (one thread, file database,
# memory_limit 128MB, the least that sorts this corpus; 64MB runs out of memory) 8.6 s but
# 367 MiB (285 over its own baseline); pyarrow has no out-of-core sort (in memory: 5.1 s,
# 423 MiB, growing with the corpus). Bounded memory comes first, so ours stays.
def sort_unique(
    docs: Iterable[Document], work_dir: Path, counts: dict,
    run_chars: int = RUN_CHARS, fanin: int = MERGE_FANIN,
) -> Iterator[Document]:
    """`docs` in doc_id order, exact duplicates dropped (the first copy kept, counted in
    counts["duplicates_removed"]).

    Runs of `run_chars` characters are sorted in memory (a stable sort, so equal ids keep
    their reading order) and spilled to parquet in `work_dir`; runs are merged `fanin` at
    a time, earlier runs first on ties. A corpus that fits in one run never touches disk.
    """
    runs, buffer = _sorted_runs(docs, work_dir, run_chars)
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


def _sorted_runs(docs: Iterable[Document], work_dir: Path, run_chars: int) -> tuple[list[Path], list[Document]]:
    """(spilled sorted runs, the sorted last run if nothing was spilled, else [])."""
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
    return runs, buffer
