"""Decontamination: no downstream validation or test text reaches a tokenizer or a pretraining run.

Every corpus, built-in or a user's, with the built-in task or a user's, passes through
`decontaminate` before cleaning. A passage is contaminated when it shares a long word n-gram
with a held-out (validation or test) text, as GPT-3 (Brown et al. 2020, appendix C) and
lm-evaluation-harness check: words are runs of letters, case-folded (NFKC), so punctuation,
digits, case and spacing never hide a copy, and a copy inside a longer document is found
wherever it sits.

- A held-out text of `ngram` (13) words or more matches through any of its 13-grams.
- A shorter text matches as a whole when it has at least `min_words` (8) words: GPT-3's
  floor for its per-benchmark n. Below it a phrase is common English ("return the absolute
  value of"), and cutting every passage that holds it would cut legitimate text; such a
  text is still caught when a whole paragraph or line of the corpus is that text.

What is cut is the paragraph (blank-line-separated block) that holds the match, or every
paragraph a match spans; a document left with nothing is dropped. How many documents and
characters went, with a few examples, is counted for reports/corpus_stats.json and
reports/decontamination.json.
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from typing import Iterable, Iterator

NGRAM = 13
MIN_WORDS = 8
MAX_EXAMPLES = 5

_WORD = re.compile(r"[^\W\d_]+")
_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")


def _norm(word: str) -> str:
    return (word if word.isascii() else unicodedata.normalize("NFKC", word)).casefold()


def words(text: str) -> list[str]:
    """The words compared: runs of letters, case-folded."""
    return [_norm(w) for w in _WORD.findall(text)]


@dataclass
class Report:
    """What decontamination removed, for the data report."""

    documents_dropped: int = 0
    documents_cut: int = 0
    characters_removed: int = 0
    examples: list[dict] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return {"decontaminated_documents_dropped": self.documents_dropped,
                "decontaminated_documents_cut": self.documents_cut,
                "decontaminated_characters_removed": self.characters_removed}


class HeldOutIndex:
    """The n-grams of the held-out texts, and the search for them in a corpus text."""

    def __init__(self, held_out: Iterable[str], ngram: int = NGRAM, min_words: int = MIN_WORDS):
        if not 1 <= min_words <= ngram:
            raise ValueError(f"decontamination: min_words ({min_words}) must be in [1, ngram={ngram}]")
        self.ngram = ngram
        self.grams: dict[int, set[tuple[str, ...]]] = {}
        self.short: set[tuple[str, ...]] = set()  # texts under min_words: matched as a whole paragraph or line
        self.vocab: set[str] = set()
        for text in held_out:
            ws = tuple(words(text))
            if len(ws) < min_words:
                if ws:
                    self.short.add(ws)
                continue
            n = min(ngram, len(ws))
            self.grams.setdefault(n, set()).update(ws[i:i + n] for i in range(len(ws) - n + 1))
            self.vocab.update(ws)
        self.lengths = sorted(self.grams)

    def __bool__(self) -> bool:
        return bool(self.grams or self.short)

    def spans(self, text: str) -> list[tuple[int, int]]:
        """Character spans of `text` that copy a held-out n-gram (or a short held-out text whole)."""
        found = [(m.start(), m.end()) for m in self._whole_units(text)]
        if not self.grams:
            return found
        toks = [(_norm(m.group()), m.start(), m.end()) for m in _WORD.finditer(text)]
        # Only a run of held-out words can hold a held-out n-gram: most text is skipped here.
        start = None
        for i in range(len(toks) + 1):
            inside = i < len(toks) and toks[i][0] in self.vocab
            if inside and start is None:
                start = i
            elif not inside and start is not None:
                found.extend(self._run_spans(toks, start, i))
                start = None
        return found

    def _run_spans(self, toks, a: int, b: int) -> Iterator[tuple[int, int]]:
        ws = [t[0] for t in toks[a:b]]
        for n in self.lengths:
            grams = self.grams[n]
            for i in range(len(ws) - n + 1):
                if tuple(ws[i:i + n]) in grams:
                    yield toks[a + i][1], toks[a + i + n - 1][2]

    def _whole_units(self, text: str) -> Iterator[re.Match]:
        if not self.short:
            return
        for m in re.finditer(r"[^\n]+", text):
            if tuple(words(m.group())) in self.short:
                yield m


def _paragraphs(text: str) -> list[tuple[int, int]]:
    bounds, start = [], 0
    for m in _PARAGRAPH_BREAK.finditer(text):
        bounds.append((start, m.start()))
        start = m.end()
    bounds.append((start, len(text)))
    return bounds


def cut(text: str, index: HeldOutIndex) -> tuple[str, list[str]]:
    """`text` less every paragraph holding a held-out match, and the matched passages.

    Repeated until clean: joining the paragraphs around a cut can (rarely) make a new match."""
    matched: list[str] = []
    for _ in range(10):
        spans = index.spans(text)
        if not spans:
            return text, matched
        matched.extend(text[s:e] for s, e in spans[:2])
        kept = [text[s:e] for s, e in _paragraphs(text)
                if not any(s < ms_e and ms_s < e for ms_s, ms_e in spans)]
        text = "\n\n".join(p for p in kept if p.strip())
    return "", matched


def decontaminate(raw: Iterable[tuple[str, str | None]], index: HeldOutIndex,
                  report: Report) -> Iterator[tuple[str, str | None]]:
    """`raw` (source, text) with every held-out match cut out; counted in `report`."""
    for source, text in raw:
        if not index or not text:
            yield source, text
            continue
        kept, matched = cut(text, index)
        if not matched:
            yield source, text
            continue
        report.characters_removed += len(text) - len(kept)
        if len(report.examples) < MAX_EXAMPLES:
            report.examples.append({"source": source, "matched": matched[0][:200],
                                    "removed_characters": len(text) - len(kept), "dropped": not kept})
        if kept:
            report.documents_cut += 1
            yield source, kept
        else:
            report.documents_dropped += 1
