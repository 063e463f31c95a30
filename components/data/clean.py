"""Raw text to corpus documents: cleaning, the content hash that names a document, short ones dropped."""
from __future__ import annotations

import hashlib
import re
import unicodedata
from typing import Iterable, Iterator, NamedTuple

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_TRAILING = re.compile(r"[ \t]+$", re.MULTILINE)
_BLANK_RUNS = re.compile(r"\n{3,}")
_NOT_LETTERS = re.compile(r"[\W\d_]+")


def clean_text(s: str) -> str:
    """NFC, newlines unified, control characters (but \\n, \\t) removed, whitespace tidied."""
    s = unicodedata.normalize("NFC", s)
    # Newlines first: \r is itself a control character and would otherwise be deleted.
    s = s.replace("\r\n", "\n").replace("\r", "\n")
    s = _CONTROL.sub("", s)
    s = _TRAILING.sub("", s)
    return _BLANK_RUNS.sub("\n\n", s).strip()


def match_text(s: str) -> str:
    """What near-duplicates share: NFKC, case-folded, every run of punctuation, symbols,
    digits and whitespace made one space, trimmed.

    Two texts that differ only in case, spacing, punctuation or numbers ("Returns 2 items."
    and "returns 3 items") are the same example for the leak checks: a model that saw one
    has seen the other. A text with no letters at all keeps its case-folded words instead,
    so such texts do not all collide on "".
    """
    s = unicodedata.normalize("NFKC", s).casefold()
    words = _NOT_LETTERS.sub(" ", s).split() or s.split()
    return " ".join(words)


def match_key(s: str) -> str:
    """A short hash of `match_text(s)`: equal for near-duplicates, 16 bytes to keep in a set."""
    return hashlib.blake2b(match_text(s).encode("utf-8"), digest_size=16).hexdigest()


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
