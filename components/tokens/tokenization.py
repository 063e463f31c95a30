"""Tokenizers (trained or a local pretrained one) and the tokenize stage's arrays.

Training: byte-level BPE (GPT-2) or byte-level WordPiece (BERT), saved so
`AutoTokenizer.from_pretrained(dir)` works; which architecture trains which is in its spec
(components.objectives). Tokenizing streams the corpus through `components.tokens.packing`
(fixed blocks) or `components.tokens.nsp` (sentence pairs) into numpy arrays (uint16 when
the vocabulary fits) that training memory-maps, plus `meta.json`, the index of what each
split holds; nothing here needs torch.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, ContextManager, Iterable, Iterator

import numpy as np

from components import paths
from components.config import TokenizeConfig, TokenizerConfig
from components.io import atomic_dir, read_json, write_json_atomic
from components.tokens.nsp import PairRows, SentenceStore, sentences_of, write_nsp_pairs
from components.tokens.packing import encode_stream, encoder_threads, make_encoder, pack_stream, pipelined, token_dtype


def train_byte_level_bpe(texts: Iterable[str], cfg: TokenizerConfig, out_dir: Path, specials: dict[str, str]) -> dict:
    """GPT-2's tokenizer: byte-level BPE with `specials` (eos_token doubles as BOS), saved for AutoTokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=cfg.vocab_size,
        min_frequency=cfg.min_frequency,
        special_tokens=list(dict.fromkeys(specials.values())),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer)
    return _save_fast_tokenizer(tok, cfg, out_dir, {**specials, "bos_token": specials["eos_token"]})


def train_wordpiece(texts: Iterable[str], cfg: TokenizerConfig, out_dir: Path, specials: dict[str, str]) -> dict:
    """BERT's tokenizer: WordPiece over bytes with `specials` (pad, unk, cls, sep, mask)
    adding [CLS] ... [SEP] around each text, saved for AutoTokenizer.

    BERT's words (its normaliser and pre-tokenizer, so whole-word masking is unchanged),
    each spelled in GPT-2's 256 byte characters before WordPiece sees it, with every byte
    in the vocabulary both as a word start and as a '##' continuation. So any text in any
    script, digits and emoji included, has a spelling: [UNK] is never emitted. WordPiece
    over characters left every character the corpus lacked unknown (6.5% of held-out
    tokens on a small synthetic Chinese corpus, digits among them). The decoder undoes it: WordPiece
    joins the pieces, its inter-word spaces become the byte alphabet's 'Ġ', and ByteLevel
    turns the bytes back into text.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.WordPiece(unk_token=specials["unk_token"]))
    tok.normalizer = normalizers.BertNormalizer(lowercase=cfg.lowercase, strip_accents=cfg.lowercase)
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.BertPreTokenizer(),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),  # spell each word in bytes
    ])
    tok.decoder = decoders.Sequence([decoders.WordPiece(), decoders.Replace(" ", "Ġ"), decoders.ByteLevel()])
    # The alphabet as special tokens: every byte gets a piece, and fixed numbers. The trainer
    # numbers pieces in hash-map order and breaks ties between equally frequent merges by
    # those numbers, so two runs on the same corpus learned different vocabularies (seen:
    # 12 of 400 tokens on the test prose) until the alphabet was given first.
    trainer = trainers.WordPieceTrainer(
        vocab_size=cfg.vocab_size,
        min_frequency=cfg.min_frequency,
        special_tokens=[*specials.values(), *_byte_alphabet()],
    )
    tok.train_from_iterator(texts, trainer)
    # Ids carry no meaning for WordPiece (it matches greedily by string), so renumber
    # canonically, special tokens then sorted, and rebuild the tokenizer without the
    # alphabet registered as special tokens (it was there for coverage and tie order).
    vocab = tok.get_vocab()
    special = list(specials.values())
    ordered = special + sorted(t for t in vocab if t not in special)
    trained = tok
    # A word longer than 1,000 bytes (WordPiece's default: 100 characters) alone is still
    # [UNK]: matching is quadratic in the word's length.
    tok = Tokenizer(models.WordPiece(vocab={t: i for i, t in enumerate(ordered)}, unk_token=specials["unk_token"],
                                     max_input_chars_per_word=1000))
    tok.normalizer, tok.pre_tokenizer, tok.decoder = trained.normalizer, trained.pre_tokenizer, trained.decoder
    tok.add_special_tokens(special)
    cls, sep = specials["cls_token"], specials["sep_token"]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{cls} $A {sep}",
        pair=f"{cls} $A {sep} $B:1 {sep}:1",
        special_tokens=[(cls, tok.token_to_id(cls)), (sep, tok.token_to_id(sep))],
    )
    return _save_fast_tokenizer(tok, cfg, out_dir, specials)


def _byte_alphabet() -> list[str]:
    """Every byte piece a BERT word spelled in UTF-8 can need, in GPT-2's byte characters:
    as a word start, a printable ASCII character or a UTF-8 lead byte; as a '##'
    continuation, an ASCII letter or digit (BERT splits punctuation and whitespace off
    into words of their own), a UTF-8 continuation or lead byte. Bytes UTF-8 never uses
    (C0, C1, F5-FF) are left out: 322 pieces where all 256 twice would take 512
    of the vocabulary."""
    spelled = _gpt2_byte_chars()
    lead = [*range(0xC2, 0xF5)]
    starts = [*range(0x21, 0x7F), *lead]
    continues = [b for b in range(0x30, 0x7B) if chr(b).isalnum()] + [*range(0x80, 0xC0), *lead]
    return [spelled[b] for b in starts] + [f"##{spelled[b]}" for b in continues]


def _gpt2_byte_chars() -> dict[int, str]:
    """GPT-2's byte -> character table (ByteLevel's): printable Latin-1 bytes stand for
    themselves, the others take U+0100 on, in byte order."""
    printable = {*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)}
    extra = iter(range(0x100, 0x200))
    return {b: chr(b) if b in printable else chr(next(extra)) for b in range(256)}


def _save_fast_tokenizer(tok, cfg: TokenizerConfig, out_dir: Path, specials: dict[str, str]) -> dict:
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=cfg.model_max_length, **specials)
    with atomic_dir(out_dir) as tmp:
        fast.save_pretrained(tmp)
    return {"vocab_size": tok.get_vocab_size()}


def check_pretrained_dir(architecture: str, cfg: TokenizerConfig) -> None:
    """A pretrained directory that is set must exist (checked before any work starts)."""
    source = cfg.pretrained(architecture)
    if source and not Path(source).is_dir():
        raise FileNotFoundError(f"tokenizer.pretrained_{architecture}: no directory {source!r}; "
                                "give a local tokenizer directory or '' to train one")


def use_pretrained_tokenizer(architecture: str, source: Path, cfg: TokenizerConfig, out_dir: Path,
                             required: tuple[str, ...], pad_if_missing: str | None) -> dict:
    """Save a local tokenizer directory as this architecture's tokenizer.

    It must be a fast tokenizer with the `required` special tokens; one without a pad token
    (or padding with EOS) gets `pad_if_missing` added when that is set, because padding with
    EOS would take EOS's label away (HF #23530).
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
    if pad_if_missing is not None and (tok.pad_token is None or tok.pad_token_id == tok.eos_token_id):
        tok.add_special_tokens({"pad_token": pad_if_missing})
    missing = [name for name in required if getattr(tok, name) is None]
    if missing:
        raise ValueError(f"{param}: {source} has no {', '.join(missing)}; {architecture} needs {', '.join(required)}")
    tok.model_max_length = cfg.model_max_length
    with atomic_dir(out_dir) as tmp:
        tok.save_pretrained(tmp)
    return {"vocab_size": len(tok), "architecture": architecture, "pretrained": str(source)}


def load_tokenizer(path: str | Path):
    """Load a tokenizer saved by the train_tokenizer stage (or any local HF tokenizer directory).

    Ours are saved as `TokenizersBackend` (the tokenizers-library class): that class loads them
    directly, which is what AutoTokenizer resolves to, without AutoTokenizer's import of torch
    and of every architecture's tokenizer mapping (5 s against 1.6 s a process on a 2-core EPYC:
    the tokenize stage's whole work on the tiny profile is 0.3 s). Any other class goes through
    AutoTokenizer."""
    path = Path(path)
    config = path / "tokenizer_config.json"
    if not config.exists():
        raise FileNotFoundError(f"{path}: no tokenizer here; run the train_tokenizer stage first")
    if read_json(config).get("tokenizer_class") in ("TokenizersBackend", "PreTrainedTokenizerFast"):
        from transformers.tokenization_utils_tokenizers import TokenizersBackend

        return TokenizersBackend.from_pretrained(str(path))
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


def tokenize_packed(tokenizer, texts: Iterable[str], cfg: TokenizeConfig, out_prefix: str, sep_id: int,
                    cls_id: int | None, with_words: bool) -> dict:
    """Stream one split's documents, joined with `sep_id` into `cfg.block_size` blocks (each
    opened by `cls_id` when set), into `<out_prefix>.<array>.npy`; with `with_words`, also
    `word_starts` (from the tokenizer's own word ids) for whole-word masking. Returns its stats."""
    batches = encode_stream(tokenizer, texts, cfg.batch_size, with_words=with_words)
    return pack_stream(batches, cfg.block_size, sep_id, cls_id, tokenizer.pad_token_id, out_prefix,
                       token_dtype(len(tokenizer)), with_words=with_words)


def tokenize_nsp_pairs(tokenizer, texts: Iterable[str], cfg: TokenizeConfig, seed: int, out_prefix: str) -> dict:
    """Stream one split's documents into BERT sentence pairs (half of them with a random
    second segment) in `<out_prefix>.<array>.npy`, with `word_starts`; returns its stats."""
    dtype = token_dtype(len(tokenizer))
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


def tokenize_corpus(objective, tokenizer, splits: dict[str, Iterable[str]], cfg: TokenizeConfig, seed: int,
                    out_dir: Path) -> dict:
    """Write `<split>.<array>.npy` per split plus meta.json into `out_dir` atomically.

    `objective` is a spec from components.objectives: its `tokenize_split` makes the arrays
    (packed blocks or NSP pairs). `splits` maps a split name to its texts, any iterable (a
    parquet stream, a list).
    meta.json is the index: block size, vocabulary, dtype, every array's shape, and per
    split: documents; corpus_tokens (the tokenizer's output); blocks (rows); tokens (stored
    non-pad tokens, separators included); tokens_dropped (packed: the stream's tail shorter
    than a block; NSP: tokens cut by pair truncation); packing_efficiency (non-pad share of
    the stored slots); fertility (corpus tokens per whitespace word); nsp_random_share.
    """
    dtype = np.dtype(token_dtype(len(tokenizer)))
    meta: dict = {"objective": objective.name, "block_size": cfg.block_size, "vocab_size": len(tokenizer),
                  "dtype": str(dtype), "splits": {}, "arrays": {}}
    with atomic_dir(out_dir) as tmp:
        for split, texts in splits.items():
            stats = objective.tokenize_split(tokenizer, texts, cfg, seed, str(tmp / split))
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


def iter_texts(parquet_path: Path, batch_rows: int = 2048) -> Iterator[str]:
    """Texts streamed by record batch, so no stage ever holds the corpus in memory.

    `buffer_size` with `pre_buffer=False` makes pyarrow read a column chunk page by page;
    by default it loads a whole row group, and ingest writes the corpus as one (measured:
    peak RSS 218 MB instead of 130 MB reading a 200 MB corpus).
    """
    import pyarrow.parquet as pq

    if not parquet_path.exists():
        raise FileNotFoundError(f"{parquet_path}: missing; run the ingest stage first")
    reader = pq.ParquetFile(parquet_path, buffer_size=1 << 20, pre_buffer=False)
    for batch in reader.iter_batches(batch_size=batch_rows, columns=["text"], use_threads=False):
        yield from batch.column(0).to_pylist()


class CorpusTexts:
    """A parquet split's texts; every iteration streams the file again (WordPiece training reads twice)."""

    def __init__(self, parquet_path: Path):
        self.parquet_path = parquet_path

    def __iter__(self) -> Iterator[str]:
        return iter_texts(self.parquet_path)


TOKENIZED_SPLITS = ("train", "validation")


def tokenize_objective(objective, cfg: TokenizeConfig, seed: int, track: Callable[[], ContextManager],
                       log_metrics: Callable[[dict], None]) -> dict:
    """The tokenize stage: the corpus's splits, tokenized for `objective` (a spec from
    components.objectives) with its architecture's tokenizer, into data/tokenized/<objective>,
    and its report (stats per split, throughput) into reports/tokenize/<objective>.json.

    The corpus is streamed by parquet record batches, so memory does not grow with its size.
    `track()` opens the run `log_metrics` reports to (the stage's MLflow run).
    """
    tokenizer = load_tokenizer(paths.tokenizer_dir(objective.architecture.name))
    splits = {s: iter_texts(Path(paths.CORPUS_DIR) / f"{s}.parquet") for s in TOKENIZED_SPLITS}
    with track():
        start = time.perf_counter()
        meta = tokenize_corpus(objective, tokenizer, splits, cfg, seed, Path(paths.tokenized_dir(objective.name)))
        seconds = time.perf_counter() - start
        corpus_tokens = sum(st["corpus_tokens"] for st in meta["splits"].values())
        report = {"block_size": meta["block_size"], "vocab_size": meta["vocab_size"], "seconds": seconds,
                  "tokens_per_s": corpus_tokens / max(seconds, 1e-9), **meta["splits"]}
        write_json_atomic(paths.tokenize_report(objective.name), report)
        log_metrics({"seconds": seconds, "tokens_per_s": report["tokens_per_s"],
                     **{f"{s}_{k}": v for s, st in meta["splits"].items() for k, v in st.items()}})
    return report
