"""Tokenizer training, document packing into fixed blocks, and NSP pair building.

Outputs are plain numpy arrays (uint16 when the vocabulary fits) that training
memory-maps, plus a ``meta.json``; nothing here needs torch.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from components.io import atomic_dir, write_json_atomic

GPT2_SPECIALS = {"eos_token": "<|endoftext|>", "pad_token": "<|pad|>"}
BERT_SPECIALS = {
    "pad_token": "[PAD]",
    "unk_token": "[UNK]",
    "cls_token": "[CLS]",
    "sep_token": "[SEP]",
    "mask_token": "[MASK]",
}


@dataclass(frozen=True)
class TokenizerConfig:
    """params.yaml `tokenizer`: one tokenizer per architecture, trained on the train split."""

    vocab_size: int = 8000
    """Target vocabulary size including special tokens (byte-level BPE and WordPiece alike)."""
    min_frequency: int = 2
    """Merges/words seen fewer times are not added to the vocabulary."""
    lowercase: bool = True
    """WordPiece (BERT) only: lower-case and strip accents, like bert-base-uncased."""
    model_max_length: int = 512
    """Saved as the tokenizer's `model_max_length`."""

    def __post_init__(self):
        if self.vocab_size < 300:
            raise ValueError(
                f"tokenizer.vocab_size must be >= 300 (256 bytes + special tokens), got {self.vocab_size}"
            )
        if self.min_frequency < 1:
            raise ValueError(f"tokenizer.min_frequency must be >= 1, got {self.min_frequency}")
        if self.model_max_length < 8:
            raise ValueError(f"tokenizer.model_max_length must be >= 8, got {self.model_max_length}")


@dataclass(frozen=True)
class TokenizeConfig:
    """params.yaml `tokenize`: packing and NSP pair building."""

    block_size: int = 128
    """Tokens per training example; must not exceed model.max_positions."""
    short_seq_prob: float = 0.1
    """NSP: probability of a shorter target length (BERT's recipe, so the model sees short inputs)."""
    batch_size: int = 1000
    """Documents per tokenizer call (the fast tokenizer parallelises inside a batch)."""

    def __post_init__(self):
        if self.block_size < 16:
            raise ValueError(f"tokenize.block_size must be >= 16, got {self.block_size}")
        if not 0.0 <= self.short_seq_prob <= 1.0:
            raise ValueError(f"tokenize.short_seq_prob must be in [0, 1], got {self.short_seq_prob}")
        if self.batch_size < 1:
            raise ValueError(f"tokenize.batch_size must be >= 1, got {self.batch_size}")


def train_tokenizer(architecture: str, texts: Iterable[str], cfg: TokenizerConfig, out_dir: Path) -> dict:
    """Train byte-level BPE (gpt2) or WordPiece (bert) and save it for AutoTokenizer."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if architecture == "gpt2":
        specials = GPT2_SPECIALS
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=cfg.vocab_size,
            min_frequency=cfg.min_frequency,
            special_tokens=list(dict.fromkeys(specials.values())),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        )
    elif architecture == "bert":
        specials = BERT_SPECIALS
        tok = Tokenizer(models.WordPiece(unk_token=specials["unk_token"]))
        tok.normalizer = normalizers.BertNormalizer(lowercase=cfg.lowercase, strip_accents=cfg.lowercase)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        trainer = trainers.WordPieceTrainer(
            vocab_size=cfg.vocab_size,
            min_frequency=cfg.min_frequency,
            special_tokens=list(specials.values()),
        )
    else:
        raise ValueError(f"unknown architecture {architecture!r}; expected gpt2 or bert")

    tok.train_from_iterator(texts, trainer)
    if architecture == "bert":
        # The WordPiece trainer numbers tied merges and the '##' alphabet in hash-map order,
        # which changes between processes. Ids carry no meaning for WordPiece (it matches
        # greedily by string), so renumber canonically: special tokens, then sorted.
        vocab = tok.get_vocab()
        special = list(specials.values())
        ordered = special + sorted(t for t in vocab if t not in special)
        tok.model = models.WordPiece(vocab={t: i for i, t in enumerate(ordered)}, unk_token=specials["unk_token"])
        cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]",
            pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
        )
    extra = {"bos_token": specials["eos_token"]} if architecture == "gpt2" else {}
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, model_max_length=cfg.model_max_length, **specials, **extra
    )
    with atomic_dir(out_dir) as tmp:
        fast.save_pretrained(tmp)
    return {"vocab_size": tok.get_vocab_size(), "architecture": architecture}


def load_tokenizer(path: str | Path):
    """Load a tokenizer saved by `train_tokenizer` (or any local HF tokenizer directory)."""
    from transformers import AutoTokenizer

    path = Path(path)
    if not (path / "tokenizer_config.json").exists():
        raise FileNotFoundError(f"{path}: no tokenizer here; run the train_tokenizer stage first")
    return AutoTokenizer.from_pretrained(str(path))


def token_dtype(vocab_size: int):
    return np.uint16 if vocab_size <= np.iinfo(np.uint16).max + 1 else np.int32


def _encode_batches(tokenizer, texts: Iterable[str], batch_size: int) -> Iterator[list[int]]:
    """Token ids per document without special tokens, through the Rust tokenizer directly."""
    backend = tokenizer.backend_tokenizer
    batch: list[str] = []
    for text in texts:
        batch.append(text)
        if len(batch) == batch_size:
            yield from (e.ids for e in backend.encode_batch(batch, add_special_tokens=False))
            batch = []
    if batch:
        yield from (e.ids for e in backend.encode_batch(batch, add_special_tokens=False))


def pack_documents(
    docs: Iterable[list[int]], block_size: int, sep_id: int, cls_id: int | None = None
) -> tuple[np.ndarray, int]:
    """Concatenate documents, each followed by `sep_id`, and cut into full blocks.

    With `cls_id` (BERT), each block is [CLS] + (block_size - 2) tokens + [SEP], the
    stream still carrying [SEP] between documents so no document runs into the next
    unmarked. The ragged tail is dropped (less than one block). Returns (blocks, tokens).
    """
    body = block_size - 2 if cls_id is not None else block_size
    stream: list[int] = []
    for ids in docs:
        stream.extend(ids)
        stream.append(sep_id)
    n_blocks = len(stream) // body
    arr = np.asarray(stream[: n_blocks * body], dtype=np.int64).reshape(n_blocks, body)
    if cls_id is not None:
        arr = np.concatenate(
            [np.full((n_blocks, 1), cls_id), arr, np.full((n_blocks, 1), sep_id)], axis=1
        )
    return arr, len(stream)


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n\s*\n")


def split_sentences(text: str) -> list[str]:
    """A plain rule-based sentence splitter: good enough for NSP segment boundaries."""
    return [s.strip() for s in _SENTENCE_END.split(text) if s and s.strip()]


def build_nsp_pairs(
    docs: list[list[list[int]]], block_size: int, short_seq_prob: float, seed: int, cls_id: int, sep_id: int, pad_id: int
) -> dict[str, np.ndarray]:
    """BERT's next-sentence pairs from documents given as lists of tokenised sentences.

    Segments of whole sentences fill a target length; half the time B is the true
    continuation (label 0), otherwise B comes from another document (label 1) and the
    unused sentences of A's document are put back. Deterministic for a seed.
    """
    rng = random.Random(seed)
    max_tokens = block_size - 3
    input_ids, token_types, labels = [], [], []
    for d, sentences in enumerate(docs):
        target = rng.randint(2, max_tokens) if rng.random() < short_seq_prob else max_tokens
        chunk: list[list[int]] = []
        length = 0
        i = 0
        while i < len(sentences):
            chunk.append(sentences[i])
            length += len(sentences[i])
            if i == len(sentences) - 1 or length >= target:
                is_random = len(docs) > 1 and rng.random() < 0.5
                if len(chunk) >= 2:
                    a_end = rng.randint(1, len(chunk) - 1)
                    a = [t for s in chunk[:a_end] for t in s]
                    rest = [t for s in chunk[a_end:] for t in s]
                else:  # one long sentence: its second half is its true continuation
                    a_end = 1
                    half = len(chunk[0]) // 2
                    a, rest = chunk[0][:half], chunk[0][half:]
                if is_random:
                    other = d
                    while other == d:
                        other = rng.randrange(len(docs))
                    other_sents = docs[other]
                    b: list[int] = []
                    for s in other_sents[rng.randrange(len(other_sents)):]:
                        b.extend(s)
                        if len(b) >= target - len(a):
                            break
                    i -= len(chunk) - a_end  # put the unused sentences back
                else:
                    b = rest
                a, b = _truncate_pair(a, b, max_tokens, rng)
                if a and b:
                    ids = [cls_id, *a, sep_id, *b, sep_id]
                    types = [0] * (len(a) + 2) + [1] * (len(b) + 1)
                    pad = block_size - len(ids)
                    input_ids.append(ids + [pad_id] * pad)
                    token_types.append(types + [0] * pad)
                    labels.append(1 if is_random else 0)
                chunk, length = [], 0
                target = rng.randint(2, max_tokens) if rng.random() < short_seq_prob else max_tokens
            i += 1
    return {
        "input_ids": np.asarray(input_ids, dtype=np.int64).reshape(-1, block_size),
        "token_type_ids": np.asarray(token_types, dtype=np.uint8).reshape(-1, block_size),
        "nsp_labels": np.asarray(labels, dtype=np.uint8),
    }


def _truncate_pair(a: list[int], b: list[int], max_tokens: int, rng: random.Random):
    """Trim the longer side, from the front or back at random, until the pair fits."""
    bounds = [[0, len(a)], [0, len(b)]]
    while (bounds[0][1] - bounds[0][0]) + (bounds[1][1] - bounds[1][0]) > max_tokens:
        side = bounds[0] if bounds[0][1] - bounds[0][0] > bounds[1][1] - bounds[1][0] else bounds[1]
        if rng.random() < 0.5:
            side[0] += 1
        else:
            side[1] -= 1
    return a[bounds[0][0] : bounds[0][1]], b[bounds[1][0] : bounds[1][1]]


def tokenize_split(objective: str, tokenizer, texts: list[str], cfg: TokenizeConfig, seed: int) -> tuple[dict, dict]:
    """Arrays for one split and its stats, by objective."""
    dtype = token_dtype(len(tokenizer))
    if objective == "mlm_nsp":
        sent_texts = [split_sentences(t) for t in texts]
        flat = [s for sents in sent_texts for s in sents]
        flat_ids = iter(_encode_batches(tokenizer, flat, cfg.batch_size))
        docs = [[next(flat_ids) for _ in sents] for sents in sent_texts]
        docs = [[s for s in doc if s] for doc in docs]
        docs = [doc for doc in docs if doc]
        arrays = build_nsp_pairs(
            docs, cfg.block_size, cfg.short_seq_prob, seed,
            tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id,
        )
        arrays["input_ids"] = arrays["input_ids"].astype(dtype)
        real = int((arrays["input_ids"] != tokenizer.pad_token_id).sum())
        stats = {
            "examples": int(len(arrays["nsp_labels"])),
            "tokens": real,
            "packing_efficiency": real / max(1, arrays["input_ids"].size),
            "nsp_random_share": float(arrays["nsp_labels"].mean()) if len(arrays["nsp_labels"]) else 0.0,
        }
        return arrays, stats
    docs = _encode_batches(tokenizer, texts, cfg.batch_size)
    if objective == "clm":
        blocks, tokens = pack_documents(docs, cfg.block_size, tokenizer.eos_token_id)
    elif objective == "mlm":
        blocks, tokens = pack_documents(docs, cfg.block_size, tokenizer.sep_token_id, tokenizer.cls_token_id)
    else:
        raise ValueError(f"unknown objective {objective!r}; expected clm, mlm or mlm_nsp")
    stats = {"examples": int(len(blocks)), "tokens": int(tokens), "packing_efficiency": 1.0}
    return {"input_ids": blocks.astype(dtype)}, stats


def tokenize_corpus(objective: str, tokenizer, splits: dict[str, list[str]], cfg: TokenizeConfig, seed: int, out_dir: Path) -> dict:
    """Write `<split>.<array>.npy` per split plus meta.json into `out_dir` atomically."""
    meta: dict = {"objective": objective, "block_size": cfg.block_size, "vocab_size": len(tokenizer), "splits": {}}
    with atomic_dir(out_dir) as tmp:
        for split, texts in splits.items():
            arrays, stats = tokenize_split(objective, tokenizer, texts, cfg, seed)
            if stats["examples"] == 0:
                raise ValueError(
                    f"tokenize: the {split} split yields no {cfg.block_size}-token example; "
                    "lower tokenize.block_size or use a larger corpus"
                )
            for name, arr in arrays.items():
                np.save(tmp / f"{split}.{name}.npy", arr)
            meta["splits"][split] = stats
        meta["dtype"] = str(np.dtype(token_dtype(len(tokenizer))))
        write_json_atomic(tmp / "meta.json", meta)
    return meta
