"""Tokenizer training, packing, NSP pairs and the tokenize stage's arrays."""
from __future__ import annotations

import json
import random

import numpy as np
import pytest
from transformers import AutoTokenizer

from components.tokenization import (
    TokenizeConfig,
    TokenizerConfig,
    build_nsp_pairs,
    pack_documents,
    split_sentences,
    tokenize_corpus,
    train_tokenizer,
)
from conftest import _prose

CLS, SEP, PAD = 1, 2, 0


def test_gpt2_tokenizer_saves_a_loadable_byte_level_bpe(tmp_path):
    info = train_tokenizer("gpt2", _prose(), TokenizerConfig(vocab_size=350, min_frequency=1), tmp_path / "gpt2")
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "gpt2"))
    assert info == {"vocab_size": 350, "architecture": "gpt2"}
    assert len(tok) == 350
    assert (tok.eos_token, tok.bos_token, tok.pad_token) == ("<|endoftext|>", "<|endoftext|>", "<|pad|>")
    assert tok.pad_token_id != tok.eos_token_id  # EOS keeps its label (HF #23530)
    assert tok.model_max_length == 512


def test_bert_tokenizer_saves_a_loadable_wordpiece(tmp_path):
    train_tokenizer("bert", _prose(), TokenizerConfig(vocab_size=350, min_frequency=1), tmp_path / "bert")
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "bert"))
    assert (tok.cls_token, tok.sep_token, tok.mask_token, tok.pad_token, tok.unk_token) == (
        "[CLS]", "[SEP]", "[MASK]", "[PAD]", "[UNK]")
    ids = tok("the module", "a path")["input_ids"]
    assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id
    assert ids.count(tok.sep_token_id) == 2


def test_train_tokenizer_rejects_unknown_architecture(tmp_path):
    with pytest.raises(ValueError, match="unknown architecture 't5'"):
        train_tokenizer("t5", _prose(), TokenizerConfig(), tmp_path / "t5")
    assert not (tmp_path / "t5").exists()


@pytest.mark.parametrize("text", [
    "Hello, world! Tabs\tand\nnew lines.",
    "机器学习是人工智能的一个分支。",
    "emoji 🤖🎉 and a combined 👩‍👩‍👧 family, accents café",
])
def test_byte_level_round_trip_is_lossless(gpt2_tokenizer, text):
    ids = gpt2_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert gpt2_tokenizer.decode(ids) == text


def test_wordpiece_round_trip_is_lower_cased_on_ascii(bert_tokenizer):
    text = "The JSON Module encodes Python objects, and the Path class joins names."
    ids = bert_tokenizer(text)["input_ids"]
    assert bert_tokenizer.unk_token_id not in ids
    assert bert_tokenizer.decode(ids, skip_special_tokens=True) == text.lower()


def test_pack_documents_separates_every_document_and_keeps_full_blocks():
    docs = [[10, 11, 12], [20], [30, 31, 32, 33], [40, 41]]
    blocks, tokens = pack_documents(docs, block_size=4, sep_id=SEP)
    # stream: 10 11 12 S | 20 S 30 31 | 32 33 S 40 | 41 S  (ragged tail of 2 dropped)
    assert tokens == 14
    assert blocks.tolist() == [[10, 11, 12, SEP], [20, SEP, 30, 31], [32, 33, SEP, 40]]


def test_pack_documents_with_cls_wraps_each_block():
    docs = [[10, 11, 12], [20], [30, 31, 32, 33], [40, 41]]
    blocks, tokens = pack_documents(docs, block_size=5, sep_id=SEP, cls_id=CLS)
    # body of 3 per block: 10 11 12 | S 20 S | 30 31 32 | 33 S 40 | (41 S dropped)
    assert tokens == 14
    assert blocks.tolist() == [
        [CLS, 10, 11, 12, SEP], [CLS, SEP, 20, SEP, SEP], [CLS, 30, 31, 32, SEP], [CLS, 33, SEP, 40, SEP]]


def test_pack_documents_shorter_than_a_block_gives_no_block():
    blocks, tokens = pack_documents([[5, 6]], block_size=8, sep_id=SEP)
    assert blocks.shape == (0, 8) and tokens == 3


def test_split_sentences():
    text = "First one. Second one!  Third?\nA wrapped\nline.\n\nNew paragraph without end\n\n  Last"
    assert split_sentences(text) == [
        "First one.", "Second one!", "Third?", "A wrapped\nline.", "New paragraph without end", "Last"]
    assert split_sentences("  \n\n ") == []
    assert split_sentences("no terminator") == ["no terminator"]


def _synthetic_docs(n_docs: int, seed: int = 0):
    """Documents of sentences whose token ids are unique: each id tells its document and position."""
    rng = random.Random(seed)
    docs, where, next_id = [], {}, 10
    for d in range(n_docs):
        sentences, pos = [], 0
        for _ in range(rng.randint(2, 10)):
            length = rng.randint(1, 20)
            sentence = list(range(next_id, next_id + length))
            for t in sentence:
                where[t] = (d, pos)
                pos += 1
            next_id += length
            sentences.append(sentence)
        docs.append(sentences)
    return docs, where


def _split_row(ids: list[int], types: list[int]):
    """[CLS] A [SEP] B [SEP] PAD... -> (A, B), checking the layout and token types on the way."""
    assert ids[0] == CLS
    first_sep = ids.index(SEP)
    second_sep = ids.index(SEP, first_sep + 1)
    a, b = ids[1:first_sep], ids[first_sep + 1 : second_sep]
    assert a and b
    assert all(t == PAD for t in ids[second_sep + 1 :])
    assert types == [0] * (len(a) + 2) + [1] * (len(b) + 1) + [0] * (len(ids) - second_sep - 1)
    return a, b


def _contiguous_span(segment: list[int], where: dict) -> tuple[int, int, int]:
    """(document, first position, last position) of a segment that must be one unbroken run."""
    places = [where[t] for t in segment]
    doc = places[0][0]
    assert all(d == doc for d, _ in places), "a segment mixes documents"
    positions = [p for _, p in places]
    assert positions == list(range(positions[0], positions[0] + len(positions))), "a segment is not contiguous"
    return doc, positions[0], positions[-1]


def test_nsp_pairs_layout_and_sources():
    docs, where = _synthetic_docs(150)
    block = 48
    out = build_nsp_pairs(docs, block, short_seq_prob=0.1, seed=3, cls_id=CLS, sep_id=SEP, pad_id=PAD)
    ids, types, labels = out["input_ids"], out["token_type_ids"], out["nsp_labels"]
    assert ids.shape[1] == types.shape[1] == block
    assert len(ids) == len(types) == len(labels) >= 300
    assert abs(labels.mean() - 0.5) <= 0.05
    continuations = 0
    for row, row_types, label in zip(ids.tolist(), types.tolist(), labels.tolist()):
        a, b = _split_row(row, row_types)
        assert len(a) + len(b) <= block - 3
        a_doc, _, a_last = _contiguous_span(a, where)
        b_doc, b_first, _ = _contiguous_span(b, where)
        if label == 0:
            assert b_doc == a_doc and b_first > a_last
            if len(a) + len(b) < block - 3:  # nothing truncated: B starts right after A
                assert b_first == a_last + 1
                continuations += 1
        else:
            assert b_doc != a_doc
    assert continuations > 50  # the untruncated check above really ran


def test_nsp_label_share_on_a_large_set():
    docs, _ = _synthetic_docs(10_000, seed=1)
    labels = build_nsp_pairs(docs, 64, 0.1, seed=11, cls_id=CLS, sep_id=SEP, pad_id=PAD)["nsp_labels"]
    assert len(labels) > 20_000
    assert abs(labels.mean() - 0.5) <= 0.02


def test_nsp_pairs_are_deterministic_for_a_seed():
    docs, _ = _synthetic_docs(120)
    first = build_nsp_pairs(docs, 48, 0.1, seed=5, cls_id=CLS, sep_id=SEP, pad_id=PAD)
    again = build_nsp_pairs(docs, 48, 0.1, seed=5, cls_id=CLS, sep_id=SEP, pad_id=PAD)
    other = build_nsp_pairs(docs, 48, 0.1, seed=6, cls_id=CLS, sep_id=SEP, pad_id=PAD)
    for name in ("input_ids", "token_type_ids", "nsp_labels"):
        np.testing.assert_array_equal(first[name], again[name])
    assert first["input_ids"].shape != other["input_ids"].shape or not np.array_equal(
        first["input_ids"], other["input_ids"])


def test_tokenize_corpus_clm_packs_documents_with_eos(gpt2_tokenizer, tmp_path):
    docs = _prose()[:6]
    cfg = TokenizeConfig(block_size=32)
    meta = tokenize_corpus("clm", gpt2_tokenizer, {"train": docs, "validation": docs[:2]}, cfg, 0, tmp_path / "clm")
    out = tmp_path / "clm"
    assert sorted(p.name for p in out.iterdir()) == ["meta.json", "train.input_ids.npy", "validation.input_ids.npy"]
    assert json.loads((out / "meta.json").read_text()) == meta
    assert meta["dtype"] == "uint16" and meta["block_size"] == 32 and meta["vocab_size"] == len(gpt2_tokenizer)
    train = np.load(out / "train.input_ids.npy")
    assert train.dtype == np.uint16 and train.shape[1] == 32
    assert meta["splits"]["train"]["examples"] == len(train)
    stream = [t for d in docs for t in gpt2_tokenizer(d, add_special_tokens=False)["input_ids"] + [gpt2_tokenizer.eos_token_id]]
    assert meta["splits"]["train"]["tokens"] == len(stream)
    assert train.reshape(-1).tolist() == stream[: train.size]


def test_tokenize_corpus_mlm_nsp_writes_pair_arrays(bert_tokenizer, tmp_path):
    docs = _prose()[:6]
    meta = tokenize_corpus("mlm_nsp", bert_tokenizer, {"train": docs}, TokenizeConfig(block_size=32), 0, tmp_path / "nsp")
    out = tmp_path / "nsp"
    ids = np.load(out / "train.input_ids.npy")
    types = np.load(out / "train.token_type_ids.npy")
    labels = np.load(out / "train.nsp_labels.npy")
    assert ids.dtype == np.uint16 and ids.shape == types.shape and len(labels) == len(ids) > 0
    assert (ids[:, 0] == bert_tokenizer.cls_token_id).all()
    assert ((ids == bert_tokenizer.sep_token_id).sum(axis=1) == 2).all()
    assert meta["splits"]["train"]["nsp_random_share"] == pytest.approx(labels.mean())


def test_tokenize_corpus_fails_clearly_on_an_empty_split(gpt2_tokenizer, tmp_path):
    splits = {"train": _prose(), "validation": ["too short"]}
    with pytest.raises(ValueError, match="the validation split yields no 64-token example"):
        tokenize_corpus("clm", gpt2_tokenizer, splits, TokenizeConfig(block_size=64), 0, tmp_path / "clm")
    assert not (tmp_path / "clm").exists()
    assert list(tmp_path.iterdir()) == []  # no half-written temporary directory either


def test_tokenize_corpus_rejects_unknown_objective(gpt2_tokenizer, tmp_path):
    with pytest.raises(ValueError, match="unknown objective 'seq2seq'"):
        tokenize_corpus("seq2seq", gpt2_tokenizer, {"train": _prose()}, TokenizeConfig(), 0, tmp_path / "x")
