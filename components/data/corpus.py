"""Ingest: read documents, clean them, drop duplicates and short ones, split, write parquet.

The corpus goes to ``train.parquet``/``validation.parquet`` (``doc_id``, ``source``,
``text``, rows in doc_id order) and the downstream task to ``train``/``validation``/
``test.parquet`` (``text``, ``label``, ``module``) plus ``labels.json``. Each output
directory is written atomically.

The corpus is streamed through four steps, each in its own module: ``sources.py`` reads
documents one at a time, ``clean.py`` cleans and names them, ``dedup.py`` sorts them by
doc_id out of core and drops exact duplicates, ``split.py`` routes them to train or
validation a row group at a time. Memory holds one sort run, not the corpus.

No downstream validation or test text reaches the corpus (pretraining on it would leak
into model choice and the final score): the built-in corpus leaves out the test-split
modules and every docstring or topic holding a validation or test text (near-duplicates,
as ``clean.match_text`` compares, included; counted in ``held_out_excluded``); then every
corpus, built-in or not, passes through ``decontaminate``: each paragraph sharing a 13-word
n-gram with such a text is cut, whatever its case, spacing or surroundings (counted in
``decontaminated_*``, examples in reports/decontamination.json).
"""
from __future__ import annotations

import itertools
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

from components.config import BUILTIN_TASK, DataConfig, DownstreamConfig, builtin_corpora
from components.data import python_docs, stdlib_docs
from components.data.clean import Document, clean_documents, clean_text, match_key, new_counts
from components.data.dedup import sort_unique
from components.data.decontaminate import HeldOutIndex, Report, decontaminate
from components.data.rows import DOWNSTREAM_SCHEMA, write_parquet
from components.data.sources import read_documents
from components.data.split import write_splits
from components.io import atomic_dir, write_json_atomic

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
    modules and documents holding a held-out text are left out before that, and counted in
    excluded_test_documents and held_out_excluded)."""
    return {
        **counts,
        **corpus,
        "downstream_train": len(task["train"]),
        "downstream_validation": len(task["validation"]),
        "downstream_test": len(task["test"]),
        "downstream_classes": n_classes,
        "excluded_test_documents": excluded,
    }


def held_out_texts(full_task: dict) -> set[str]:
    """The validation and test texts of a task, before any subsampling: none may be pretrained on."""
    return {text for split in ("validation", "test") for text, _, _ in full_task[split]}


def _parts(text: str) -> Iterator[str]:
    yield text
    for paragraph in text.split("\n\n"):
        yield paragraph
        yield from paragraph.split("\n")


def without_held_out(raw: Iterable[tuple[str, str | None]], held_out: set[str],
                     counts: dict) -> Iterator[tuple[str, str | None]]:
    """`raw` less each document that equals a held-out text, or whose paragraph or line
    does, compared by `match_key` (so case, spacing, punctuation and numbers do not hide
    a copy). Equality, not containment: a streamed corpus cannot afford a substring search
    for every held-out text in every document. Counted in counts["held_out_excluded"]."""
    keys = {match_key(t) for t in held_out}
    for source, text in raw:
        if keys and text and any(match_key(part) in keys for part in _parts(text) if part.strip()):
            counts["held_out_excluded"] += 1
            continue
        yield source, text


def build_corpus(
    data: DataConfig, downstream: DownstreamConfig, seed: int, corpus_dir: Path, downstream_dir: Path,
    decontamination: Report | None = None, manifest: dict | None = None,
) -> dict:
    """Write the corpus and downstream splits; return flat stats for reports/corpus_stats.json
    (`decontamination`, when given, receives what was cut and a few examples; `manifest`, the
    packages ``builtin:python-docs`` was read from, as reports/corpus_manifest.json holds them).

    Both directories appear together or not at all: a bad source fails before either is
    replaced (a user's source is read first, so it fails before the slower stdlib parse).
    ``builtin:python-docs`` is read as a user's corpus is (after the stdlib part when both are
    named), and is decontaminated the same way.
    """
    corpora = builtin_corpora(data.source)
    packages = python_docs.PythonDocs(data.max_characters) if "python-docs" in corpora else None
    counts = {**new_counts(), "held_out_excluded": 0, "downstream_overlap_removed": 0}
    task, labels, raw, excluded, held_out = _task_and_raw(data, downstream, seed, counts, packages)
    report = decontamination if decontamination is not None else Report()
    raw = decontaminate(raw, HeldOutIndex(held_out, data.decontaminate_ngram, data.decontaminate_min_words), report)
    available = len(task["train"])
    task = _label_budget(task, downstream, len(labels), seed)
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
        with atomic_dir(downstream_dir) as out:
            for split, rows in task.items():
                write_parquet(out / f"{split}.parquet", rows, DOWNSTREAM_SCHEMA)
            write_json_atomic(out / "labels.json", {"labels": labels})

    stats = {**_stats(counts, corpus, task, excluded, len(labels)), "downstream_train_available": available,
             **report.counts(), **(packages.stats() if packages is not None else python_docs.empty_stats())}
    if manifest is not None:
        manifest.update(packages.report() if packages is not None else python_docs.PythonDocs().report())
    _print_summary(stats, data, report, excluded, packages is not None)
    return stats


def _task_and_raw(data: DataConfig, downstream: DownstreamConfig, seed: int, counts: dict,
                  packages: python_docs.PythonDocs | None):
    """(task, labels, raw corpus stream, test-split modules left out, held-out texts): the
    task's held-out texts are known before the corpus is read."""
    builtin = "stdlib-docs" in builtin_corpora(data.source)
    task = excluded = None
    labels = list(stdlib_docs.LABELS)
    if downstream.task != BUILTIN_TASK:
        # A user's task is read (and its labels checked) before any corpus work.
        task, labels, held_out = read_downstream(downstream, seed, counts)
        excluded = 0
    if builtin and task is None:
        task, raw, excluded, held_out = _builtin_task_and_corpus(downstream, seed, counts)
    elif builtin:  # the built-in corpus with a user's task: its held-out texts left out
        raw = stdlib_docs.builtin_documents(stdlib_docs.cleaned_modules(clean_text), set(), held_out,
                                            clean_text, counts)
    elif packages is not None:
        raw = iter(())
    else:
        raw = read_documents(data.source, data.text_column, data.txt_mode)
        if task is not None:
            raw = without_held_out(raw, held_out, counts)
    if task is None:  # a user's corpus with the built-in task: the task first, for its held-out texts
        modules = stdlib_docs.cleaned_modules(clean_text)
        task, full = _task(modules, downstream, seed)
        held_out, excluded = held_out_texts(full), 0
    if packages is not None:  # after the stdlib part; a user's task's held-out texts left out as from a user's corpus
        more = packages.documents()
        if downstream.task != BUILTIN_TASK:
            more = without_held_out(more, held_out, counts)
        raw = itertools.chain(raw, more)
    return task, labels, raw, excluded, held_out


def _print_summary(stats: dict, data: DataConfig, report: Report, excluded: int, python_docs_read: bool) -> None:
    if python_docs_read:
        print(f"python-docs: {stats['python_docs_characters']:,} characters from {stats['python_docs_files']} modules "
              f"of {stats['python_docs_packages']} installed packages ({stats['python_docs_unparsable_files']} files "
              "that do not parse skipped)", file=sys.stderr)
    print(
        f"corpus: {stats['documents']} documents ({stats['train_documents']} train / "
        f"{stats['validation_documents']} validation), {stats['characters']:,} characters; "
        f"{stats['duplicates_removed']} duplicates and {stats['short_removed']} short documents removed; "
        f"{excluded} test-split modules and {stats['held_out_excluded']} holding a downstream validation/test "
        f"text left out; decontamination ({data.decontaminate_ngram}-grams) cut {report.characters_removed:,} "
        f"characters: {report.documents_dropped} documents dropped, {report.documents_cut} cut; "
        f"{stats['downstream_overlap_removed']} downstream texts dropped from a later split that repeated an earlier one",
        file=sys.stderr,
    )


def _label_budget(task: dict, downstream: DownstreamConfig, n_labels: int, seed: int) -> dict:
    """The task with its training split cut to `downstream.train_examples` (stratified, nested)."""
    budget = downstream.train_examples
    if budget and budget < n_labels:
        raise ValueError(f"downstream.train_examples={budget} is fewer than the task's {n_labels} classes; "
                         f"give at least {n_labels} (0 = every training example)")
    return {**task, "train": stdlib_docs.subsample(task["train"], budget, seed)}


def read_downstream(downstream: DownstreamConfig, seed: int,
                    counts: dict | None = None) -> tuple[dict, list[str], set[str]]:
    """A user's task as {split: [(text, label id, origin)]} capped per split, its label
    names, and its validation and test texts before the cap (kept out of the corpus)."""
    from components.data.downstream import read_task

    task, labels = read_task(downstream.task, downstream.text_column, downstream.label_column, downstream.labels,
                             downstream.validation_fraction, downstream.test_fraction, seed, counts)
    capped = {s: stdlib_docs.subsample(rows, downstream.max_examples_per_split, seed) for s, rows in task.items()}
    return capped, labels, held_out_texts(task)


def _task(modules: list[stdlib_docs.ModuleDocs], downstream: DownstreamConfig, seed: int) -> tuple[dict, dict]:
    """(the subsampled task, the full split) of the built-in downstream task."""
    full = stdlib_docs.chapter_examples(
        modules, downstream.min_chars, downstream.validation_fraction, downstream.test_fraction, seed
    )
    return {s: stdlib_docs.subsample(rows, downstream.max_examples_per_split, seed) for s, rows in full.items()}, full


def _builtin_task_and_corpus(downstream: DownstreamConfig, seed: int, counts: dict):
    """The task first: the built-in corpus leaves out every module with a test example and
    every docstring holding a validation or test example (even one that subsampling dropped).
    Returns (task, raw corpus, test-split modules left out, held-out texts)."""
    modules = stdlib_docs.cleaned_modules(clean_text)
    task, full = _task(modules, downstream, seed)
    test_modules = {module for _, _, module in full["test"]}
    held_out = held_out_texts(full)
    raw = stdlib_docs.builtin_documents(modules, test_modules, held_out, clean_text, counts)
    return task, raw, sum(m.name in test_modules for m in modules), held_out
