"""Raw text to corpus documents: cleaning, the content hash that names a document, short ones dropped."""
from __future__ import annotations

import hashlib
import re
import unicodedata
from typing import Iterable, Iterator, NamedTuple

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
    """One corpus row; field order is the parquet column order (rows.CORPUS_SCHEMA)."""

    doc_id: str
    source: str
    text: str


def doc_id_of(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


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
