"""The train/validation split by document hash, streamed into train/validation.parquet."""
from __future__ import annotations

import itertools
from array import array
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from components.data.clean import Document
from components.data.rows import CORPUS_SCHEMA, RowGroupWriter

OUTPUT_GROUP_CHARS = 2**20


def is_validation(doc_id: str, fraction: float) -> bool:
    """Split by the document's own hash, so adding documents never moves existing ones."""
    return int(doc_id[:8], 16) / 2**32 < fraction


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


def write_splits(docs: Iterator[Document], out_dir: Path, fraction: float, max_documents: int) -> dict:
    """Stream doc_id-ordered documents into train/validation.parquet; flat counts and lengths.

    Documents past `max_documents` are still read (not written), so the duplicate count
    covers the whole source.
    """
    lengths = array("q")  # 8 bytes a document: the only thing kept per document
    n_val = 0
    kept = itertools.islice(docs, max_documents or None)
    with (RowGroupWriter(out_dir / "train.parquet", CORPUS_SCHEMA, OUTPUT_GROUP_CHARS) as train,
          RowGroupWriter(out_dir / "validation.parquet", CORPUS_SCHEMA, OUTPUT_GROUP_CHARS) as val):
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
