"""Streaming tokenization and packing into fixed blocks, in bounded memory.

Texts go through the Rust tokenizer in small batches on one background thread per core
(`encode_batch` releases the GIL, so no worker processes, no pickling, no
`datasets.map(num_proc)` fork hazards); the main thread joins the documents with a
separator and appends full blocks straight to `.npy` files whose headers are written
last. No list of every token id is ever held, so memory does not grow with the corpus.
Measured on 2 cores, 20 MB: 1.91-1.99M tokens/s this way, 1.61-1.75M with a process
pool doing the same work (worker start-up, pickling texts and arrays).
"""
from __future__ import annotations

import collections
import contextlib
import itertools
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, TypeVar

import numpy as np

PARALLELISM_VAR = "TOKENIZERS_PARALLELISM"
T = TypeVar("T")
R = TypeVar("R")


def token_dtype(vocab_size: int):
    return np.uint16 if vocab_size <= np.iinfo(np.uint16).max + 1 else np.int32


def encoder_threads() -> int:
    """Threads running the tokenizer, one batch each: one per available core, at least two
    so that encoding the next batch overlaps packing the current one."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cores = os.cpu_count() or 1
    return max(2, cores)


def prepare_backend(tokenizer):
    """A private copy of the Rust tokenizer that reads special-token strings in the corpus
    as plain text: a docstring quoting "[SEP]" or "<|endoftext|>" must not inject a real
    separator (which would then also escape masking and the packing stats)."""
    from tokenizers import Tokenizer

    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    backend.encode_special_tokens = True
    return backend


@contextlib.contextmanager
def tokenizer_threads_off() -> Iterator[None]:
    """Turn off the Rust tokenizer's own thread pool (rayon) while our threads split the work.

    Nested under ours it costs throughput (2 cores, 20 MB: 1.58-1.81M tokens/s with it,
    1.87-1.89M without; its idle workers spin between jobs), and never starting it means a
    later fork of this process cannot deadlock on it. The library reads the variable on
    every call; the previous value is restored on exit.
    """
    previous = os.environ.get(PARALLELISM_VAR)
    os.environ[PARALLELISM_VAR] = "false"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(PARALLELISM_VAR, None)
        else:
            os.environ[PARALLELISM_VAR] = previous


def pipelined(items: Iterable[T], work: Callable[[T], R], threads: int) -> Iterator[R]:
    """`work(item)` for each item on `threads` background threads, results in input order.

    `work` must release the GIL for most of its time (the Rust tokenizer does). At most
    `2 * threads` items are in flight, so memory stays bounded by a few batches.
    """
    with tokenizer_threads_off(), ThreadPoolExecutor(threads, thread_name_prefix="encode") as pool:
        pending: collections.deque = collections.deque()
        for item in items:
            pending.append(pool.submit(work, item))
            if len(pending) >= 2 * threads:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


# A batch also closes at this many characters (~60k tokens, ~30 ms of one core): the
# work unit of one encoder thread. Measured on 2 cores, 20 MB corpus, tokens/s:
# 4M chars 1.60M (the last batches leave a core idle), 1M 1.86M, 256k 1.90M, 100k 1.84M,
# 30k 1.82M (per-batch overhead). Small batches also keep the Rust encodings in flight
# (~100 bytes a token until flattened) to a few MB.
BATCH_CHARS = 256_000


def batched(texts: Iterable[str], size: int, max_chars: int | None = None) -> Iterator[list[str]]:
    """Lists of at most `size` texts and about `max_chars` characters (one long text may exceed it)."""
    max_chars = max_chars or BATCH_CHARS
    batch: list[str] = []
    chars = 0
    for text in texts:
        batch.append(text)
        chars += len(text)
        if len(batch) == size or chars >= max_chars:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


@dataclass
class EncodedBatch:
    """One batch of documents (or sentences) as flat arrays: no per-token Python objects."""

    ids: np.ndarray
    """All token ids, concatenated."""
    lengths: np.ndarray
    """Tokens per input text (int64)."""
    word_starts: np.ndarray | None
    """1 where a token begins a word of the tokenizer's pre-tokenizer (None if not asked)."""
    words: int
    """Whitespace-separated words in the texts (for fertility)."""


def encode_texts(backend, texts: list[str], dtype, with_words: bool) -> EncodedBatch:
    """Encode one batch without special tokens; runs on an encoder thread."""
    # encode_batch_fast skips offsets and word ids: ~15% faster, so used unless words are needed.
    encode = backend.encode_batch if with_words else backend.encode_batch_fast
    encodings = encode(texts, add_special_tokens=False)
    lengths = np.fromiter(map(len, encodings), dtype=np.int64, count=len(encodings))
    total = int(lengths.sum())
    # One document's id list alive at a time: ~30% cheaper than building all lists first.
    ids = np.fromiter(itertools.chain.from_iterable(e.ids for e in encodings), dtype=dtype, count=total)
    starts = None
    if with_words:
        word_ids = np.fromiter(itertools.chain.from_iterable(e.word_ids for e in encodings), dtype=np.int64,
                               count=total)
        starts = np.ones(total, dtype=np.uint8)
        starts[1:] = word_ids[1:] != word_ids[:-1]
        first = np.cumsum(lengths) - lengths
        starts[first[lengths > 0]] = 1  # word ids restart with every text
    words = sum(len(t.split()) for t in texts)
    return EncodedBatch(ids, lengths, starts, words)


def make_encoder(tokenizer, with_words: bool) -> Callable[[list[str]], EncodedBatch]:
    """A function encoding one batch of texts; safe to call from several threads at once."""
    backend = prepare_backend(tokenizer)
    dtype = token_dtype(len(tokenizer))
    return lambda texts: encode_texts(backend, texts, dtype, with_words)


def encode_stream(tokenizer, texts: Iterable[str], batch_size: int, with_words: bool) -> Iterator[EncodedBatch]:
    """Encoded batches of `batch_size` texts, in order, tokenized on background threads."""
    return pipelined(batched(texts, batch_size), make_encoder(tokenizer, with_words), encoder_threads())


class ArrayWriter:
    """Rows appended straight to a `.npy` file whose header is rewritten at the end.

    numpy pads the header with room for the first dimension to grow (that is what
    `GROWTH_AXIS_MAX_DIGITS` is for), so the final header fits where the empty one was.
    """

    def __init__(self, path: Path, dtype, row_shape: tuple[int, ...] = ()):
        self.path, self.dtype, self.row_shape, self.rows = Path(path), np.dtype(dtype), tuple(row_shape), 0
        self._file = open(self.path, "wb")
        self._header_len = self._write_header()

    def _write_header(self) -> int:
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False,
                  "shape": (self.rows, *self.row_shape)}
        np.lib.format.write_array_header_1_0(self._file, header)
        return self._file.tell()

    def append(self, rows: np.ndarray) -> None:
        rows = np.ascontiguousarray(rows, dtype=self.dtype)
        if rows.shape[1:] != self.row_shape:
            raise ValueError(f"{self.path.name}: rows of shape {rows.shape[1:]}, expected {self.row_shape}")
        self._file.write(rows.tobytes())
        self.rows += len(rows)

    def close(self) -> None:
        self._file.seek(0)
        if self._write_header() != self._header_len:
            raise RuntimeError(f"{self.path.name}: npy header changed length; numpy's header padding changed")
        self._file.close()


class BlockPacker:
    """Documents joined by `sep_id` and cut into blocks of `block_size` as the stream fills.

    With `cls_id` (BERT) a block is [CLS] + (block_size - 2) stream tokens + [SEP]; the
    stream still carries [SEP] between documents, so no document runs into the next
    unmarked. Tokens left at the end (less than one block) are dropped and counted. Word
    starts, when given, travel alongside (separators and [CLS] are words of their own).
    """

    def __init__(self, block_size: int, sep_id: int, cls_id: int | None, pad_id: int | None, dtype):
        self.block_size, self.sep_id, self.cls_id, self.pad_id = block_size, sep_id, cls_id, pad_id
        self.body = block_size - 2 if cls_id is not None else block_size
        self._carry_ids = np.empty(0, dtype=dtype)
        self._carry_starts = np.empty(0, dtype=np.uint8)
        self.documents = self.corpus_tokens = self.words = self.blocks = self.non_pad = 0

    def add(self, batch: EncodedBatch) -> tuple[np.ndarray, np.ndarray | None]:
        """The blocks this batch completes: (input_ids, word_starts or None)."""
        kept = batch.lengths > 0  # an empty document would only add a stray separator
        ends = np.cumsum(batch.lengths)[kept]
        ids = np.concatenate([self._carry_ids, np.insert(batch.ids, ends, self.sep_id)])
        n = len(ids) // self.body
        id_blocks = self._wrap(ids[: n * self.body], self.cls_id, self.sep_id)
        self._carry_ids = ids[n * self.body :]
        start_blocks = None
        if batch.word_starts is not None:
            starts = np.concatenate([self._carry_starts, np.insert(batch.word_starts, ends, 1)])
            start_blocks = self._wrap(starts[: n * self.body], 1, 1)
            self._carry_starts = starts[n * self.body :]
        self.documents += len(ends)
        self.corpus_tokens += int(batch.lengths.sum())
        self.words += batch.words
        self.blocks += n
        pads = int(np.count_nonzero(id_blocks == self.pad_id)) if self.pad_id is not None else 0
        self.non_pad += id_blocks.size - pads
        return id_blocks, start_blocks

    def _wrap(self, stream: np.ndarray, first, last) -> np.ndarray:
        body = stream.reshape(-1, self.body)
        if self.cls_id is None:
            return body
        blocks = np.empty((len(body), self.block_size), dtype=stream.dtype)
        blocks[:, 0], blocks[:, 1:-1], blocks[:, -1] = first, body, last
        return blocks

    def stats(self) -> dict:
        slots = self.blocks * self.block_size
        return {
            "documents": self.documents,
            "corpus_tokens": self.corpus_tokens,
            "blocks": self.blocks,
            "tokens": self.non_pad,
            "tokens_dropped": int(len(self._carry_ids)),
            "packing_efficiency": self.non_pad / slots if slots else 0.0,
            "fertility": self.corpus_tokens / self.words if self.words else 0.0,
        }


def pack_stream(batches: Iterable[EncodedBatch], block_size: int, sep_id: int, cls_id: int | None,
                pad_id: int | None, out_prefix: str, dtype, with_words: bool) -> dict:
    """Pack encoded batches into `<prefix>.input_ids.npy` (and `.word_starts.npy`); returns stats."""
    packer = BlockPacker(block_size, sep_id, cls_id, pad_id, dtype)
    ids_out = ArrayWriter(Path(f"{out_prefix}.input_ids.npy"), dtype, (block_size,))
    starts_out = ArrayWriter(Path(f"{out_prefix}.word_starts.npy"), np.uint8, (block_size,)) if with_words else None
    try:
        for batch in batches:
            id_blocks, start_blocks = packer.add(batch)
            ids_out.append(id_blocks)
            if starts_out is not None:
                starts_out.append(start_blocks)
    finally:
        ids_out.close()
        if starts_out is not None:
            starts_out.close()
    return packer.stats()


def pack_documents(docs: Iterable[list[int]], block_size: int, sep_id: int,
                   cls_id: int | None = None) -> tuple[np.ndarray, int]:
    """In-memory `BlockPacker` for small inputs: (blocks, length of the separated stream)."""
    docs = [list(d) for d in docs]
    lengths = np.asarray([len(d) for d in docs], dtype=np.int64)
    flat = np.asarray([t for d in docs for t in d], dtype=np.int64)
    blocks, _ = BlockPacker(block_size, sep_id, cls_id, None, np.int64).add(EncodedBatch(flat, lengths, None, 0))
    return blocks, int(lengths.sum()) + int((lengths > 0).sum())
