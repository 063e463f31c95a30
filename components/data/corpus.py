"""Ingest: read documents, clean them, drop duplicates and short ones, split, write parquet.

The corpus goes to ``train.parquet``/``validation.parquet`` (``doc_id``, ``source``,
``text``, rows in doc_id order) and the downstream task to ``train``/``validation``/
``test.parquet`` (``text``, ``label``, ``module``) plus ``labels.json``. Each output
directory is written atomically.

The corpus is streamed through four steps, each in its own module: ``sources.py`` reads
documents one at a time, ``clean.py`` cleans and names them, ``dedup.py`` sorts them by
doc_id out of core and drops exact duplicates, ``split.py`` routes them to train or
validation a row group at a time. Memory holds one sort run, not the corpus.
"""
from __future__ import annotations

import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from components.data import stdlib_docs
from components.data.clean import Document, clean_documents, clean_text, new_counts
from components.data.dedup import sort_unique
from components.data.rows import DOWNSTREAM_SCHEMA, write_parquet
from components.data.sources import HF_PREFIX, TXT_MODES, read_documents
from components.data.split import write_splits
from components.io import atomic_dir, write_json_atomic

BUILTIN_CORPUS = "builtin:stdlib-docs"
BUILTIN_TASK = "builtin:stdlib-chapters"


@dataclass(frozen=True)
class DataConfig:
    """params.yaml section ``data``: where the pretraining corpus comes from."""

    source: str = BUILTIN_CORPUS
    """``builtin:stdlib-docs``; a local file, directory or glob of .txt, .jsonl, .json, .csv
    (each optionally .gz) and .parquet; a ``save_to_disk`` directory; or ``hf:<name>[:<config>]``."""
    text_column: str = "text"
    """Field (jsonl, json, Hugging Face) or column (csv, parquet) holding each document's text."""
    txt_mode: str = "file"
    """``file``: a .txt file is one document; ``paragraph``: each blank-line-separated block is."""
    validation_fraction: float = 0.05
    """Share of documents, chosen by hash of their text, held out for validation."""
    min_chars: int = 20
    """Documents shorter than this after cleaning are dropped."""
    max_documents: int = 0
    """Keep only the first N documents by doc_id (0 = all): a hash sample, the same whatever
    order the files are read in; keeps tiny runs fast."""

    def __post_init__(self) -> None:
        if self.source.startswith("builtin:") and self.source != BUILTIN_CORPUS:
            raise ValueError(f"data.source: unknown built-in {self.source!r}; use {BUILTIN_CORPUS!r} or a path")
        if not self.source.strip():
            raise ValueError(f"data.source must be {BUILTIN_CORPUS!r} or a path, got an empty string")
        if self.source.startswith(HF_PREFIX) and not self.source.removeprefix(HF_PREFIX).partition(":")[0]:
            raise ValueError(f"data.source: {self.source!r} names no dataset; use hf:<name>[:<config>]")
        if self.txt_mode not in TXT_MODES:
            raise ValueError(f"data.txt_mode must be one of {', '.join(TXT_MODES)}, got {self.txt_mode!r}")
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
    """params.yaml section ``downstream``: the classification task models are fine-tuned on."""

    task: str = BUILTIN_TASK
    """``builtin:stdlib-chapters`` (docstring -> library chapter), a labelled .csv / .jsonl /
    .json / .parquet file, a directory or glob of them named by split, a save_to_disk
    directory, or ``hf:<name>[:<config>]`` (components/data/downstream.py)."""
    text_column: str = "text"
    """Field holding the text (not the built-in task)."""
    label_column: str = "label"
    """Field holding the label: a string, an integer or a ClassLabel id (not the built-in task)."""
    labels: str = ""
    """The label set in order, comma-separated; empty = the dataset's ClassLabel names, else
    the training split's sorted labels. Rows with other labels are an error."""
    validation_fraction: float = 0.15
    """Share of each class held out for validation (built-in: as whole modules; a user's
    task: only where it has no validation split)."""
    test_fraction: float = 0.15
    """Share of each class held out for test (built-in: whole modules that the built-in
    corpus then leaves out; a user's task: only where it has no test split)."""
    min_chars: int = 40
    """Docstrings shorter than this are not examples (built-in task)."""
    max_examples_per_split: int = 0
    """Cap on each split's size (0 = all), subsampled so every class keeps examples."""

    def __post_init__(self) -> None:
        if not self.task.strip():
            raise ValueError(f"downstream.task is empty; give {BUILTIN_TASK!r}, a labelled file or directory, "
                             "or hf:<name>[:<config>]")
        if self.task.startswith("builtin:") and self.task != BUILTIN_TASK:
            raise ValueError(f"downstream.task {self.task!r}: the only built-in task is {BUILTIN_TASK!r}; "
                             "or give a labelled file, directory or hf:<name>[:<config>]")
        for name in ("validation_fraction", "test_fraction"):
            value = getattr(self, name)
            if not 0 < value < 0.5:
                raise ValueError(f"downstream.{name} must be in (0, 0.5), got {value}")
        if self.min_chars < 1:
            raise ValueError(f"downstream.min_chars must be >= 1, got {self.min_chars}")
        for name in ("text_column", "label_column"):
            if not getattr(self, name).strip():
                raise ValueError(f"downstream.{name} is empty; name the field that holds the {name[:-7]}")
        if self.text_column == self.label_column:
            raise ValueError(f"downstream.text_column and downstream.label_column are both {self.text_column!r}; "
                             "they must name different fields")
        if self.max_examples_per_split < 0:
            raise ValueError(f"downstream.max_examples_per_split must be 0 (all) or positive, "
                             f"got {self.max_examples_per_split}")
        n_classes = len(stdlib_docs.LABELS)
        if self.task == BUILTIN_TASK and self.max_examples_per_split != 0 and self.max_examples_per_split < n_classes:
            raise ValueError(
                f"downstream.max_examples_per_split must be 0 (all) or >= {n_classes} "
                f"(one per class), got {self.max_examples_per_split}"
            )



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
                write_parquet(out / f"{split}.parquet", rows, DOWNSTREAM_SCHEMA)
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
