"""Tokenizers (trained or a local pretrained one) and the tokenize stage's arrays.

Training: byte-level BPE for gpt2 (clm), WordPiece for bert (mlm, mlm_nsp), saved so
`AutoTokenizer.from_pretrained(dir)` works. Tokenizing streams the corpus through
`components.tokens.packing` (fixed blocks) or `components.tokens.nsp` (sentence pairs) into numpy
arrays (uint16 when the vocabulary fits) that training memory-maps, plus `meta.json`,
the index of what each split holds; nothing here needs torch.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np

from components.config import TokenizeConfig, TokenizerConfig
from components.io import atomic_dir, write_json_atomic
from components.tokens.nsp import PairRows, SentenceStore, sentences_of, write_nsp_pairs
from components.tokens.packing import encode_stream, encoder_threads, make_encoder, pack_stream, pipelined, token_dtype

GPT2_SPECIALS = {"eos_token": "<|endoftext|>", "pad_token": "<|pad|>"}
BERT_SPECIALS = {
    "pad_token": "[PAD]",
    "unk_token": "[UNK]",
    "cls_token": "[CLS]",
    "sep_token": "[SEP]",
    "mask_token": "[MASK]",
}
# What each architecture's pipeline needs from a tokenizer, trained or brought.
REQUIRED_SPECIALS = {"gpt2": ("eos_token", "pad_token"), "bert": ("cls_token", "sep_token", "mask_token", "pad_token")}


def train_tokenizer(architecture: str, texts: Iterable[str], cfg: TokenizerConfig, out_dir: Path) -> dict:
    """Train byte-level BPE (gpt2) or WordPiece (bert), or take `cfg`'s pretrained
    directory for this architecture, and save it for AutoTokenizer."""
    if architecture not in REQUIRED_SPECIALS:
        raise ValueError(f"unknown architecture {architecture!r}; expected gpt2 or bert")
    if cfg.pretrained(architecture):
        return use_pretrained_tokenizer(architecture, Path(cfg.pretrained(architecture)), cfg, out_dir)
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
    else:
        specials = BERT_SPECIALS
        tok = Tokenizer(models.WordPiece(unk_token=specials["unk_token"]))
        tok.normalizer = normalizers.BertNormalizer(lowercase=cfg.lowercase, strip_accents=cfg.lowercase)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        if iter(texts) is texts:  # one pass for the alphabet, one for training
            texts = list(texts)
        trainer = trainers.WordPieceTrainer(
            vocab_size=cfg.vocab_size,
            min_frequency=cfg.min_frequency,
            special_tokens=[*specials.values(), *_continuation_alphabet(texts, tok.normalizer, tok.pre_tokenizer)],
        )

    tok.train_from_iterator(texts, trainer)
    if architecture == "bert":
        # Ids carry no meaning for WordPiece (it matches greedily by string), so renumber
        # canonically, special tokens then sorted, and rebuild the tokenizer without the
        # '##' alphabet registered as special tokens (it was only there to fix tie order).
        vocab = tok.get_vocab()
        special = list(specials.values())
        ordered = special + sorted(t for t in vocab if t not in special)
        trained = tok
        tok = Tokenizer(models.WordPiece(vocab={t: i for i, t in enumerate(ordered)}, unk_token=specials["unk_token"]))
        tok.normalizer, tok.pre_tokenizer, tok.decoder = trained.normalizer, trained.pre_tokenizer, trained.decoder
        tok.add_special_tokens(special)
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


def _continuation_alphabet(texts: Iterable[str], normalizer, pre_tokenizer) -> list[str]:
    """'##c' for every normalised character c that can continue a word, sorted.

    The WordPiece trainer numbers '##c' pieces in hash-map order and breaks ties between
    equally frequent merges by those numbers, so two runs on the same corpus learned
    different vocabularies (seen: 12 of 400 tokens on the test prose, 2 of 875 on the
    built-in corpus). Given to the trainer first, the pieces get fixed numbers and every
    tie breaks the same way. Characters the pre-tokenizer always isolates (punctuation,
    CJK) never continue a word, so they get no '##' piece to waste vocabulary on.
    """
    raw: set[str] = set()
    for text in texts:
        raw.update(text)
    chars = set("".join(normalizer.normalize_str(c) for c in raw))

    def continues_a_word(c: str) -> bool:
        pieces = pre_tokenizer.pre_tokenize_str(normalizer.normalize_str("a" + c))
        return [w for w, _ in pieces] == ["a" + c]

    return sorted(f"##{c}" for c in chars if continues_a_word(c))


def check_pretrained_dir(architecture: str, cfg: TokenizerConfig) -> None:
    """A pretrained directory that is set must exist (checked before any work starts)."""
    source = cfg.pretrained(architecture)
    if source and not Path(source).is_dir():
        raise FileNotFoundError(f"tokenizer.pretrained_{architecture}: no directory {source!r}; "
                                "give a local tokenizer directory or '' to train one")


def use_pretrained_tokenizer(architecture: str, source: Path, cfg: TokenizerConfig, out_dir: Path) -> dict:
    """Save a local tokenizer directory as this architecture's tokenizer.

    It must be a fast tokenizer with the special tokens the objectives need; a gpt2-style
    one without a pad token gets `<|pad|>` added, because padding with EOS would take EOS's
    label away (HF #23530).
    """
    from transformers import AutoTokenizer

    check_pretrained_dir(architecture, cfg)
    param = f"tokenizer.pretrained_{architecture}"
    try:
        tok = AutoTokenizer.from_pretrained(str(source), local_files_only=True)
    except (OSError, ValueError) as e:
        raise ValueError(f"{param}: {source} is not a loadable tokenizer ({str(e).splitlines()[0]})") from None
    if not tok.is_fast:
        raise ValueError(f"{param}: {source} has no fast (Rust) tokenizer; save it with tokenizer.json")
    if architecture == "gpt2" and (tok.pad_token is None or tok.pad_token_id == tok.eos_token_id):
        tok.add_special_tokens({"pad_token": GPT2_SPECIALS["pad_token"]})
    missing = [name for name in REQUIRED_SPECIALS[architecture] if getattr(tok, name) is None]
    if missing:
        raise ValueError(f"{param}: {source} has no {', '.join(missing)}; {architecture} needs "
                         f"{', '.join(REQUIRED_SPECIALS[architecture])}")
    tok.model_max_length = cfg.model_max_length
    with atomic_dir(out_dir) as tmp:
        tok.save_pretrained(tmp)
    return {"vocab_size": len(tok), "architecture": architecture, "pretrained": str(source)}


def load_tokenizer(path: str | Path):
    """Load a tokenizer saved by `train_tokenizer` (or any local HF tokenizer directory)."""
    from transformers import AutoTokenizer

    path = Path(path)
    if not (path / "tokenizer_config.json").exists():
        raise FileNotFoundError(f"{path}: no tokenizer here; run the train_tokenizer stage first")
    return AutoTokenizer.from_pretrained(str(path))


def tokenize_split(objective: str, tokenizer, texts: Iterable[str], cfg: TokenizeConfig, seed: int,
                   out_prefix: str) -> dict:
    """Stream one split's texts into `<out_prefix>.<array>.npy` files; returns its stats.

    clm: documents joined with EOS into blocks. mlm: joined with [SEP] into [CLS] ... [SEP]
    blocks. mlm_nsp: BERT sentence pairs. mlm and mlm_nsp also store `word_starts` (from
    the tokenizer's own word ids) for whole-word masking.
    """
    dtype = token_dtype(len(tokenizer))
    if objective == "clm":
        batches = encode_stream(tokenizer, texts, cfg.batch_size, with_words=False)
        return pack_stream(batches, cfg.block_size, tokenizer.eos_token_id, None, tokenizer.pad_token_id,
                           out_prefix, dtype, with_words=False)
    if objective == "mlm":
        batches = encode_stream(tokenizer, texts, cfg.batch_size, with_words=True)
        return pack_stream(batches, cfg.block_size, tokenizer.sep_token_id, tokenizer.cls_token_id,
                           tokenizer.pad_token_id, out_prefix, dtype, with_words=True)
    if objective == "mlm_nsp":
        encode = make_encoder(tokenizer, with_words=True)
        store = SentenceStore(Path(f"{out_prefix}.sentences"), dtype, with_words=True)
        try:
            # Each item is a batch of documents' sentences and the sentence count of each document.
            for batch, per_doc in pipelined(sentences_of(texts, cfg.batch_size),
                                            lambda item: (encode(item[0]), item[1]), encoder_threads()):
                store.add(batch, per_doc)
            store.finish()
            rows = PairRows(cfg.block_size, tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id,
                            dtype, with_words=True)
            return write_nsp_pairs(store, cfg.block_size, cfg.short_seq_prob, seed, rows, out_prefix)
        finally:
            store.close()
    raise ValueError(f"unknown objective {objective!r}; expected clm, mlm or mlm_nsp")


OBJECTIVES = ("clm", "mlm", "mlm_nsp")


def tokenize_corpus(objective: str, tokenizer, splits: dict[str, Iterable[str]], cfg: TokenizeConfig, seed: int,
                    out_dir: Path) -> dict:
    """Write `<split>.<array>.npy` per split plus meta.json into `out_dir` atomically.

    `splits` maps a split name to its texts, any iterable (a parquet stream, a list).
    meta.json is the index: block size, vocabulary, dtype, every array's shape, and per
    split: documents; corpus_tokens (the tokenizer's output); blocks (rows); tokens (stored
    non-pad tokens, separators included); tokens_dropped (packed: the stream's tail shorter
    than a block; NSP: tokens cut by pair truncation); packing_efficiency (non-pad share of
    the stored slots); fertility (corpus tokens per whitespace word); nsp_random_share.
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; expected clm, mlm or mlm_nsp")
    dtype = np.dtype(token_dtype(len(tokenizer)))
    meta: dict = {"objective": objective, "block_size": cfg.block_size, "vocab_size": len(tokenizer),
                  "dtype": str(dtype), "splits": {}, "arrays": {}}
    with atomic_dir(out_dir) as tmp:
        for split, texts in splits.items():
            stats = tokenize_split(objective, tokenizer, texts, cfg, seed, str(tmp / split))
            if stats["blocks"] == 0:
                raise ValueError(
                    f"tokenize: the {split} split yields no {cfg.block_size}-token example; "
                    "lower tokenize.block_size or use a larger corpus"
                )
            meta["splits"][split] = stats
            for path in sorted(tmp.glob(f"{split}.*.npy")):
                arr = np.load(path, mmap_mode="r")
                meta["arrays"][path.name] = {"shape": list(arr.shape), "dtype": str(arr.dtype)}
                del arr
        write_json_atomic(tmp / "meta.json", meta)
    return meta
