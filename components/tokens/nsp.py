"""BERT's next-sentence-prediction pairs, planned on sentence lengths and filled from disk.

The recipe of the original BERT data builder (create_instances_from_document): segments of
whole sentences fill a target length (a shorter random one with `short_seq_prob`); half the
time B is the true continuation (label 0), otherwise B is taken from a random *other*
document (label 1) and the sentences of A's chunk that B would have used are put back. A
chunk of one sentence has no A/B boundary, so its B is always random: splitting the sentence
would make "B starts mid-sentence" a cue for IsNext. The plan only needs
sentence lengths, so a corpus of any size is tokenized once into flat files and each
pair reads just the two documents it uses: memory does not grow with the corpus.
"""
from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Callable, Iterable, Iterator, NamedTuple, Sequence

import numpy as np

from components.tokens import packing
from components.tokens.packing import ArrayWriter, EncodedBatch

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n\s*\n")


def split_sentences(text: str) -> list[str]:
    """A plain rule-based sentence splitter: good enough for NSP segment boundaries."""
    return [s.strip() for s in _SENTENCE_END.split(text) if s and s.strip()]


class Pair(NamedTuple):
    """Token spans [start, end) within documents; label 1 = B is a random other document
    (always so when A's chunk was a single sentence: `single_sentence`)."""

    a_doc: int
    a_start: int
    a_end: int
    b_doc: int
    b_start: int
    b_end: int
    label: int
    truncated: int
    single_sentence: int = 0


def _truncate(a0: int, a1: int, b0: int, b1: int, max_tokens: int):
    """Trim the longer side until the pair fits, as BERT does, but A only from its front and
    B only from its back: the A|B junction stays where two sentences meet, for both labels.
    (BERT trims a random end, so a truncated IsNext B could start mid-sentence.) Cutting in
    bulk keeps this O(1) for a 30k-token 'sentence' of code."""
    la, lb = a1 - a0, b1 - b0
    while la + lb > max_tokens:
        excess = la + lb - max_tokens
        if la == lb:
            cut_a, cut_b = excess // 2, excess - excess // 2
        elif la > lb:
            cut_a, cut_b = min(excess, la - lb), 0
        else:
            cut_a, cut_b = 0, min(excess, lb - la)
        la, lb = la - cut_a, lb - cut_b
    return a1 - la, a1, b0, b0 + lb


def plan_nsp_pairs(sentence_lengths: Callable[[int], list[int]], n_docs: int, block_size: int,
                   short_seq_prob: float, seed: int) -> Iterator[Pair]:
    """The pairs, in document order; deterministic for a seed.

    `sentence_lengths(d)` gives document d's sentence lengths in tokens (all >= 1).
    """
    rng = random.Random(seed)
    max_tokens = block_size - 3  # [CLS] A [SEP] B [SEP]

    def new_target() -> int:
        return rng.randint(2, max_tokens) if rng.random() < short_seq_prob else max_tokens

    for d in range(n_docs):
        lengths = sentence_lengths(d)
        offsets = [0]
        for n in lengths:
            offsets.append(offsets[-1] + n)
        target = new_target()
        first, i = 0, 0  # the chunk is sentences[first : i + 1]
        while i < len(lengths):
            size = offsets[i + 1] - offsets[first]
            if i < len(lengths) - 1 and size < target:
                i += 1
                continue
            next_first = i + 1
            one_sentence = i == first
            if not (one_sentence and n_docs == 1):  # no boundary and no other document: no pair
                # One sentence: A is all of it and B must be random (BERT's rule).
                is_random = one_sentence or (n_docs > 1 and rng.random() < 0.5)
                a_end_sentence = i + 1 if one_sentence else first + rng.randint(1, i - first)
                a0, a1, rest_end = offsets[first], offsets[a_end_sentence], offsets[i + 1]
                if is_random:
                    other = rng.randrange(n_docs - 1)
                    other += other >= d  # uniform over the other documents, never this one
                    other_lengths = sentence_lengths(other)
                    s = rng.randrange(len(other_lengths))
                    b0 = sum(other_lengths[:s])
                    b1, need = b0, target - (a1 - a0)
                    for n in other_lengths[s:]:
                        b1 += n
                        if b1 - b0 >= need:
                            break
                    b_doc = other
                    next_first = a_end_sentence  # put back the sentences B did not use
                else:
                    b_doc, b0, b1 = d, a1, rest_end
                before = (a1 - a0) + (b1 - b0)
                a0, a1, b0, b1 = _truncate(a0, a1, b0, b1, max_tokens)
                yield Pair(d, a0, a1, b_doc, b0, b1, int(is_random), before - (a1 - a0) - (b1 - b0), int(one_sentence))
            first = i = max(next_first, first + 1)
            target = new_target()


class PairRows:
    """Fill [CLS] A [SEP] B [SEP] [PAD]... rows, token types and word starts from pairs."""

    def __init__(self, block_size: int, cls_id: int, sep_id: int, pad_id: int, dtype, with_words: bool):
        self.block_size, self.cls_id, self.sep_id, self.pad_id = block_size, cls_id, sep_id, pad_id
        self.dtype, self.with_words = dtype, with_words

    def build(self, pairs: list[Pair], tokens: Callable[[int], tuple[np.ndarray, np.ndarray | None]]) -> dict:
        n, width = len(pairs), self.block_size
        ids = np.full((n, width), self.pad_id, dtype=self.dtype)
        types = np.zeros((n, width), dtype=np.uint8)
        starts = np.ones((n, width), dtype=np.uint8) if self.with_words else None
        for r, p in enumerate(pairs):
            a_ids, a_starts = tokens(p.a_doc)
            b_ids, b_starts = tokens(p.b_doc)
            la, lb = p.a_end - p.a_start, p.b_end - p.b_start
            sep_a, end = 1 + la, 2 + la + lb
            ids[r, 0] = self.cls_id
            ids[r, 1:sep_a] = a_ids[p.a_start : p.a_end]
            ids[r, sep_a] = self.sep_id
            ids[r, sep_a + 1 : end] = b_ids[p.b_start : p.b_end]
            ids[r, end] = self.sep_id
            types[r, sep_a + 1 : end + 1] = 1
            if starts is not None:
                starts[r, 1:sep_a] = a_starts[p.a_start : p.a_end]
                starts[r, sep_a + 1 : end] = b_starts[p.b_start : p.b_end]
        labels = np.asarray([p.label for p in pairs], dtype=np.uint8)
        out = {"input_ids": ids, "token_type_ids": types, "nsp_labels": labels}
        if starts is not None:
            out["word_starts"] = starts
        return out


def build_nsp_pairs(docs: Sequence[Sequence[Sequence[int]]], block_size: int, short_seq_prob: float, seed: int,
                    cls_id: int, sep_id: int, pad_id: int) -> dict[str, np.ndarray]:
    """In-memory pairs from documents given as lists of tokenised sentences (small inputs)."""
    docs = [[list(s) for s in doc if len(s)] for doc in docs]
    docs = [doc for doc in docs if doc]
    flat = [np.asarray([t for s in doc for t in s], dtype=np.int64) for doc in docs]
    pairs = list(plan_nsp_pairs(lambda d: [len(s) for s in docs[d]], len(docs), block_size, short_seq_prob, seed))
    rows = PairRows(block_size, cls_id, sep_id, pad_id, np.int64, with_words=False)
    return rows.build(pairs, lambda d: (flat[d], None))


def _offsets(counts: list[np.ndarray]) -> np.ndarray:
    """[0, c0, c0 + c1, ...] over the concatenated counts."""
    flat = np.concatenate([np.zeros(0, np.int64), *counts]).astype(np.int64)
    return np.concatenate([np.zeros(1, np.int64), np.cumsum(flat)])


class SentenceStore:
    """Tokenised sentences of a split: tokens and word starts in flat files, 4 bytes a
    sentence (its length) in RAM. Documents are read back with one seek each, never
    memory-mapped, so random access to 'other' documents adds nothing to the resident set."""

    def __init__(self, prefix: Path, dtype, with_words: bool):
        self.dtype, self.with_words = np.dtype(dtype), with_words
        self._tokens = open(f"{prefix}.tokens.bin", "w+b")
        self._starts = open(f"{prefix}.starts.bin", "w+b") if with_words else None
        self._lengths: list[np.ndarray] = []
        self._doc_sentences: list[np.ndarray] = []
        self._doc_tokens: list[np.ndarray] = []
        self.words = self.corpus_tokens = 0

    def add(self, batch: EncodedBatch, sentences_per_doc: np.ndarray) -> None:
        """Append a batch of sentences; empty sentences and documents are left out."""
        self._tokens.write(np.ascontiguousarray(batch.ids, dtype=self.dtype).tobytes())
        if self._starts is not None:
            self._starts.write(batch.word_starts.tobytes())
        doc_of = np.repeat(np.arange(len(sentences_per_doc)), sentences_per_doc)
        kept = batch.lengths > 0
        sentences = np.bincount(doc_of[kept], minlength=len(sentences_per_doc))
        tokens = np.bincount(doc_of, weights=batch.lengths, minlength=len(sentences_per_doc)).astype(np.int64)
        self._lengths.append(batch.lengths[kept].astype(np.int32))
        self._doc_sentences.append(sentences[sentences > 0])
        self._doc_tokens.append(tokens[sentences > 0])
        self.words += batch.words
        self.corpus_tokens += int(batch.lengths.sum())

    def finish(self) -> None:
        self._tokens.flush()
        if self._starts is not None:
            self._starts.flush()
        self.sentence_lengths = np.concatenate([np.zeros(0, np.int32), *self._lengths])
        self.doc_sentence_offsets = _offsets(self._doc_sentences)
        self.doc_token_offsets = _offsets(self._doc_tokens)
        self.n_docs = len(self.doc_token_offsets) - 1
        self._lengths, self._doc_sentences, self._doc_tokens = [], [], []

    def lengths_of(self, d: int) -> list[int]:
        return self.sentence_lengths[self.doc_sentence_offsets[d] : self.doc_sentence_offsets[d + 1]].tolist()

    def tokens_of(self, d: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Document d's tokens (and word starts): its sentences are contiguous on disk."""
        start, count = int(self.doc_token_offsets[d]), int(self.doc_token_offsets[d + 1] - self.doc_token_offsets[d])
        self._tokens.seek(start * self.dtype.itemsize)
        ids = np.frombuffer(self._tokens.read(count * self.dtype.itemsize), dtype=self.dtype)
        starts = None
        if self._starts is not None:
            self._starts.seek(start)
            starts = np.frombuffer(self._starts.read(count), dtype=np.uint8)
        return ids, starts

    def close(self) -> None:
        for f in (self._tokens, self._starts):
            if f is not None:
                f.close()
                Path(f.name).unlink(missing_ok=True)


def write_nsp_pairs(store: SentenceStore, block_size: int, short_seq_prob: float, seed: int, rows: PairRows,
                    out_prefix: str, chunk: int = 4096) -> dict:
    """Plan and write `<prefix>.{input_ids,token_type_ids,nsp_labels[,word_starts]}.npy`; returns stats."""
    writers = {
        "input_ids": ArrayWriter(Path(f"{out_prefix}.input_ids.npy"), rows.dtype, (block_size,)),
        "token_type_ids": ArrayWriter(Path(f"{out_prefix}.token_type_ids.npy"), np.uint8, (block_size,)),
        "nsp_labels": ArrayWriter(Path(f"{out_prefix}.nsp_labels.npy"), np.uint8),
    }
    if rows.with_words:
        writers["word_starts"] = ArrayWriter(Path(f"{out_prefix}.word_starts.npy"), np.uint8, (block_size,))
    cache: dict[int, tuple] = {}

    def tokens(d: int):
        # A's document is read once for all its pairs; B's random documents one read each.
        if d not in cache:
            if len(cache) > 8:
                cache.clear()
            cache[d] = store.tokens_of(d)
        return cache[d]

    stats = {"blocks": 0, "tokens": 0, "random": 0, "truncated": 0}

    def flush(pairs: list[Pair]) -> None:
        arrays = rows.build(pairs, tokens)
        for name, writer in writers.items():
            writer.append(arrays[name])
        stats["blocks"] += len(pairs)
        stats["tokens"] += int(np.count_nonzero(arrays["input_ids"] != rows.pad_id))
        stats["random"] += int(arrays["nsp_labels"].sum())
        stats["truncated"] += sum(p.truncated for p in pairs)

    try:
        pending: list[Pair] = []
        for pair in plan_nsp_pairs(store.lengths_of, store.n_docs, block_size, short_seq_prob, seed):
            pending.append(pair)
            if len(pending) == chunk:
                flush(pending)
                pending = []
        if pending:
            flush(pending)
    finally:
        for writer in writers.values():
            writer.close()
    slots = stats["blocks"] * block_size
    return {
        "documents": store.n_docs,
        "corpus_tokens": store.corpus_tokens,
        "blocks": stats["blocks"],
        "tokens": stats["tokens"],
        "tokens_dropped": stats["truncated"],
        "packing_efficiency": stats["tokens"] / slots if slots else 0.0,
        "fertility": store.corpus_tokens / store.words if store.words else 0.0,
        "nsp_random_share": stats["random"] / stats["blocks"] if stats["blocks"] else 0.0,
    }


def sentences_of(texts: Iterable[str], batch_docs: int,
                 max_chars: int | None = None) -> Iterator[tuple[list[str], np.ndarray]]:
    """Batches of sentences from up to `batch_docs` documents (and about `max_chars`
    characters), with each document's sentence count."""
    max_chars = max_chars or packing.BATCH_CHARS
    batch: list[str] = []
    counts: list[int] = []
    chars = 0
    for text in texts:
        sentences = split_sentences(text)
        batch.extend(sentences)
        counts.append(len(sentences))
        chars += len(text)
        if len(counts) == batch_docs or chars >= max_chars:
            yield batch, np.asarray(counts, dtype=np.int64)
            batch, counts, chars = [], [], 0
    if counts:
        yield batch, np.asarray(counts, dtype=np.int64)
