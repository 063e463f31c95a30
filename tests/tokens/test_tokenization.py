"""Tokenizers, streaming packing, NSP pairs and the tokenize stage's arrays, on real tokenizers."""
from __future__ import annotations

import json
import random

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from components.tokens.nsp import build_nsp_pairs, plan_nsp_pairs, split_sentences
from components.tokens.packing import ArrayWriter, BlockPacker, EncodedBatch, make_encoder, pack_documents
from components.objectives import ARCHITECTURES, OBJECTIVES
from components.config import TokenizeConfig, TokenizerConfig
from components.tokens.tokenization import iter_texts, tokenize_corpus
from conftest import _prose

CLS, SEP, PAD = 1, 2, 0
# Text the stdlib corpus lacks: the WordPiece alphabet gets it only by seeing it in training.
WORLD = ["机器学习是人工智能的一个分支。", "emoji 🤖🎉 and a family 👩‍👩‍👧, accents café naïve"]


def test_gpt2_tokenizer_saves_a_loadable_byte_level_bpe(tmp_path):
    info = ARCHITECTURES["gpt2"].train_tokenizer(_prose(), TokenizerConfig(vocab_size=350, min_frequency=1), tmp_path / "gpt2")
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "gpt2"))
    assert info == {"vocab_size": 350, "architecture": "gpt2"}
    assert len(tok) == 350
    assert (tok.eos_token, tok.bos_token, tok.pad_token) == ("<|endoftext|>", "<|endoftext|>", "<|pad|>")
    assert tok.pad_token_id != tok.eos_token_id  # EOS keeps its label (HF #23530)
    assert tok.model_max_length == 128  # the default: model.max_positions' (demo)


def test_bert_tokenizer_saves_a_loadable_wordpiece(tmp_path):
    ARCHITECTURES["bert"].train_tokenizer(_prose(), TokenizerConfig(vocab_size=350, min_frequency=1, model_max_length=64),
                    tmp_path / "bert")
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "bert"))
    assert (tok.cls_token, tok.sep_token, tok.mask_token, tok.pad_token, tok.unk_token) == (
        "[CLS]", "[SEP]", "[MASK]", "[PAD]", "[UNK]")
    assert tok.model_max_length == 64
    ids = tok("the module", "a path")["input_ids"]
    assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id
    assert ids.count(tok.sep_token_id) == 2


@pytest.mark.parametrize("architecture", ["gpt2", "bert"])
def test_load_tokenizer_gives_what_autotokenizer_gives(architecture, tmp_path):
    """load_tokenizer takes our saved class directly (no torch, no auto mapping): the same class,
    specials, limits and encodings as AutoTokenizer's, single texts and pairs."""
    from components.tokens.tokenization import load_tokenizer

    ARCHITECTURES[architecture].train_tokenizer(_prose(), TokenizerConfig(vocab_size=400, min_frequency=1), tmp_path)
    ours, auto = load_tokenizer(tmp_path), AutoTokenizer.from_pretrained(str(tmp_path))
    assert type(ours) is type(auto) and type(ours).__name__ == "TokenizersBackend"
    assert ours.all_special_ids == auto.all_special_ids and ours.special_tokens_map == auto.special_tokens_map
    assert (len(ours), ours.model_max_length, ours.pad_token_id) == (len(auto), auto.model_max_length, auto.pad_token_id)
    texts = [*_prose()[:3], *WORLD, "  Spaced   OUT\ttext\n"]
    assert ours(texts)["input_ids"] == auto(texts)["input_ids"]
    assert ours(texts[0], texts[1])["input_ids"] == auto(texts[0], texts[1])["input_ids"]
    assert ours(texts, return_offsets_mapping=True)["offset_mapping"] == auto(texts, return_offsets_mapping=True)["offset_mapping"]


def test_wordpiece_training_is_byte_identical_across_runs(tmp_path):
    cfg = TokenizerConfig(vocab_size=400, min_frequency=1)
    ARCHITECTURES["bert"].train_tokenizer(_prose(), cfg, tmp_path / "a")
    ARCHITECTURES["bert"].train_tokenizer(_prose(), cfg, tmp_path / "b")
    assert (tmp_path / "a" / "tokenizer.json").read_bytes() == (tmp_path / "b" / "tokenizer.json").read_bytes()


@pytest.mark.parametrize("stage, argv", [("train_tokenizer", ["--architecture", "t5"]),
                                         ("tokenize", ["--objective", "seq2seq"])])
def test_stages_refuse_an_unknown_architecture_or_objective_in_one_line(stage, argv, tmp_path, monkeypatch,
                                                                       capsys):
    import importlib

    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("profile: tiny\n")
    with pytest.raises(SystemExit) as exit_:
        importlib.import_module(f"pipelines.{stage}").main(argv)
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and len(err.splitlines()) == 1
    # an architecture is an argparse choice; an objective is checked against the specs' names
    assert (f"invalid choice: '{argv[1]}'" in err and "choose from" in err
            or f"unknown objective '{argv[1]}'; valid: clm, mlm" in err), err
    assert [p.name for p in tmp_path.iterdir()] == ["params.yaml"]


@pytest.mark.parametrize("text", [
    "Hello, world! Tabs\tand\nnew lines.",
    "机器学习是人工智能的一个分支。",
    "emoji 🤖🎉 and a combined 👩‍👩‍👧 family, accents café",
])
def test_byte_level_round_trip_is_lossless(gpt2_tokenizer, text):
    # The fixture never saw Chinese or emoji in training: bytes cover them anyway.
    ids = gpt2_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert gpt2_tokenizer.unk_token_id is None or gpt2_tokenizer.unk_token_id not in ids
    assert gpt2_tokenizer.decode(ids) == text


def test_wordpiece_round_trip_is_lower_cased_on_ascii(bert_tokenizer):
    text = "The JSON Module encodes Python objects, and the Path class joins names."
    ids = bert_tokenizer(text)["input_ids"]
    assert bert_tokenizer.unk_token_id not in ids
    assert bert_tokenizer.decode(ids, skip_special_tokens=True) == text.lower()


@pytest.fixture(scope="module")
def world_bert(tmp_path_factory):
    out = tmp_path_factory.mktemp("world") / "bert"
    ARCHITECTURES["bert"].train_tokenizer(_prose() + WORLD * 3, TokenizerConfig(vocab_size=600, min_frequency=1), out)
    return AutoTokenizer.from_pretrained(str(out))


@pytest.mark.parametrize("text", [*WORLD, "Mixed 学习 and ASCII 🤖: json.dumps(x)."])
def test_wordpiece_round_trip_is_normalised_equality_with_chinese_and_emoji(world_bert, text):
    """WordPiece keeps no spacing (it splits CJK characters and punctuation into words), so
    equality is up to whitespace, after its own normalisation (lower case, no accents, no ZWJ)."""
    ids = world_bert(text)["input_ids"]
    assert world_bert.unk_token_id not in ids
    normalised = world_bert.backend_tokenizer.normalizer.normalize_str(text)
    assert "".join(world_bert.decode(ids, skip_special_tokens=True).split()) == "".join(normalised.split())


def _saved_fast_tokenizer(path, **specials):
    """A local HF tokenizer directory as someone might bring one: a trained BPE, other specials."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    tok.train_from_iterator(_prose(), trainers.BpeTrainer(vocab_size=320, special_tokens=list(specials.values()),
                                                          initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    PreTrainedTokenizerFast(tokenizer_object=tok, **specials).save_pretrained(path)
    return path


def test_pretrained_tokenizer_directory_is_used_instead_of_training(tmp_path):
    source = _saved_fast_tokenizer(tmp_path / "brought", eos_token="</s>")
    cfg = TokenizerConfig(model_max_length=256, pretrained_gpt2=str(source))
    info = ARCHITECTURES["gpt2"].train_tokenizer(iter(()), cfg, tmp_path / "gpt2")
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "gpt2"))
    assert info["pretrained"] == str(source) and info["vocab_size"] == len(tok) == 321
    assert tok.model_max_length == 256
    assert tok.eos_token == "</s>" and tok.pad_token == "<|pad|>"  # a pad is added, never EOS as pad
    assert tok.decode(tok("unchanged text")["input_ids"]) == "unchanged text"


def test_pretrained_tokenizer_errors_name_the_param_in_one_line(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"^tokenizer.pretrained_bert: no directory .*or '' to train one$"):
        ARCHITECTURES["bert"].train_tokenizer(iter(()), TokenizerConfig(pretrained_bert=str(tmp_path / "nope")), tmp_path / "out")
    source = _saved_fast_tokenizer(tmp_path / "gpt-ish", eos_token="</s>", pad_token="<pad>")
    with pytest.raises(ValueError) as err:
        ARCHITECTURES["bert"].train_tokenizer(iter(()), TokenizerConfig(pretrained_bert=str(source)), tmp_path / "out")
    assert str(err.value).startswith("tokenizer.pretrained_bert: ")
    assert "has no cls_token, sep_token, mask_token;" in str(err.value)
    assert "\n" not in str(err.value) and not (tmp_path / "out").exists()


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


def _batch(docs: list[list[int]]) -> EncodedBatch:
    flat = np.asarray([t for d in docs for t in d], dtype=np.uint16)
    starts = np.asarray([int(t % 3 == 0) for d in docs for t in d], dtype=np.uint8)
    return EncodedBatch(flat, np.asarray([len(d) for d in docs], dtype=np.int64), starts, 0)


def test_block_packer_gives_the_same_blocks_however_the_stream_is_batched():
    rng = random.Random(0)
    docs = [[rng.randrange(10, 500) for _ in range(rng.randint(0, 40))] for _ in range(300)]
    whole = BlockPacker(16, SEP, CLS, PAD, np.uint16)
    ids_all, starts_all = whole.add(_batch(docs))
    pieces = BlockPacker(16, SEP, CLS, PAD, np.uint16)
    ids, starts, i = [], [], 0
    while i < len(docs):
        n = rng.randint(1, 7)
        a, b = pieces.add(_batch(docs[i : i + n]))
        ids.append(a), starts.append(b)
        i += n
    np.testing.assert_array_equal(np.concatenate(ids), ids_all)
    np.testing.assert_array_equal(np.concatenate(starts), starts_all)
    assert pieces.stats() == whole.stats()
    stream = [t for d in docs if d for t in [*d, SEP]]  # empty documents add no separator
    assert ids_all[:, 1:-1].reshape(-1).tolist() == stream[: ids_all.shape[0] * 14]
    assert whole.stats()["tokens_dropped"] == len(stream) - ids_all.shape[0] * 14 < 14
    assert (starts_all[:, [0, -1]] == 1).all() and (starts_all[ids_all == SEP] == 1).all()


def test_array_writer_header_is_rewritten_in_place(tmp_path):
    writer = ArrayWriter(tmp_path / "x.npy", np.uint16, (4,))
    for n in (0, 3, 1000):
        writer.append(np.full((n, 4), n, dtype=np.uint16))
    writer.close()
    loaded = np.load(tmp_path / "x.npy", mmap_mode="r")
    assert loaded.shape == (1003, 4) and loaded.dtype == np.uint16
    assert loaded[:3].tolist() == [[3] * 4] * 3 and (loaded[3:] == 1000).all()
    empty = ArrayWriter(tmp_path / "e.npy", np.uint8)
    empty.close()
    assert np.load(tmp_path / "e.npy").shape == (0,)


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
    _assert_fair_coin(list(plan_nsp_pairs(lambda d: [len(s) for s in docs[d]], len(docs), block, 0.1, 3)), 0.05)
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


def _assert_fair_coin(pairs, tolerance: float) -> None:
    """BERT flips a fair coin for chunks of two or more sentences; one-sentence chunks are NotNext."""
    coin = [p.label for p in pairs if not p.single_sentence]
    assert abs(np.mean(coin) - 0.5) <= tolerance
    assert all(p.label == 1 for p in pairs if p.single_sentence)


def test_nsp_label_share_on_a_large_set():
    docs, _ = _synthetic_docs(10_000, seed=1)
    labels = build_nsp_pairs(docs, 64, 0.1, seed=11, cls_id=CLS, sep_id=SEP, pad_id=PAD)["nsp_labels"]
    assert len(labels) > 20_000
    pairs = list(plan_nsp_pairs(lambda d: [len(s) for s in docs[d]], len(docs), 64, 0.1, 11))
    assert [p.label for p in pairs] == labels.tolist()
    _assert_fair_coin(pairs, 0.02)


def test_nsp_pairs_are_deterministic_for_a_seed():
    docs, _ = _synthetic_docs(120)
    first = build_nsp_pairs(docs, 48, 0.1, seed=5, cls_id=CLS, sep_id=SEP, pad_id=PAD)
    again = build_nsp_pairs(docs, 48, 0.1, seed=5, cls_id=CLS, sep_id=SEP, pad_id=PAD)
    other = build_nsp_pairs(docs, 48, 0.1, seed=6, cls_id=CLS, sep_id=SEP, pad_id=PAD)
    for name in ("input_ids", "token_type_ids", "nsp_labels"):
        np.testing.assert_array_equal(first[name], again[name])
    assert first["input_ids"].shape != other["input_ids"].shape or not np.array_equal(
        first["input_ids"], other["input_ids"])


def test_no_random_next_segment_comes_from_its_own_document_on_a_large_set():
    rng = random.Random(2)
    lengths = [[rng.randint(1, 30) for _ in range(rng.randint(1, 12))] for _ in range(20_000)]
    pairs = list(plan_nsp_pairs(lambda d: lengths[d], len(lengths), 128, 0.1, seed=4))
    assert len(pairs) > 20_000
    _assert_fair_coin(pairs, 0.02)
    assert all((p.b_doc != p.a_doc) == bool(p.label) for p in pairs)
    assert all(p.a_end - p.a_start >= 1 and p.b_end - p.b_start >= 1 for p in pairs)
    assert all(p.a_end - p.a_start + p.b_end - p.b_start <= 125 for p in pairs)


def _stream(tokenizer, docs, sep):
    return [t for d in docs for t in tokenizer(d, add_special_tokens=False)["input_ids"] + [sep]]


def test_tokenize_corpus_clm_packs_documents_with_eos(gpt2_tokenizer, tmp_path):
    docs = _prose()[:6]
    cfg = TokenizeConfig(block_size=32)
    meta = tokenize_corpus(OBJECTIVES["clm"], gpt2_tokenizer, {"train": docs, "validation": docs[:2]}, cfg, 0, tmp_path / "clm")
    out = tmp_path / "clm"
    assert sorted(p.name for p in out.iterdir()) == ["meta.json", "train.input_ids.npy", "validation.input_ids.npy"]
    assert json.loads((out / "meta.json").read_text()) == meta
    assert meta["dtype"] == "uint16" and meta["block_size"] == 32 and meta["vocab_size"] == len(gpt2_tokenizer)
    train = np.load(out / "train.input_ids.npy", mmap_mode="r")
    assert train.dtype == np.uint16 and train.shape[1] == 32
    assert meta["arrays"]["train.input_ids.npy"] == {"shape": list(train.shape), "dtype": "uint16"}
    stats = meta["splits"]["train"]
    stream = _stream(gpt2_tokenizer, docs, gpt2_tokenizer.eos_token_id)
    assert train.reshape(-1).tolist() == stream[: train.size]
    assert stats["blocks"] == len(train) and stats["tokens"] == train.size and stats["packing_efficiency"] == 1.0
    assert stats["corpus_tokens"] + stats["documents"] == len(stream) == train.size + stats["tokens_dropped"]
    assert stats["fertility"] == pytest.approx(stats["corpus_tokens"] / sum(len(d.split()) for d in docs))


def test_tokenize_corpus_mlm_stores_blocks_and_the_tokenizers_word_starts(bert_tokenizer, tmp_path):
    docs = _prose()[:6]
    meta = tokenize_corpus(OBJECTIVES["mlm"], bert_tokenizer, {"train": docs}, TokenizeConfig(block_size=32), 0, tmp_path / "mlm")
    ids = np.load(tmp_path / "mlm" / "train.input_ids.npy")
    starts = np.load(tmp_path / "mlm" / "train.word_starts.npy")
    assert ids.shape == starts.shape and starts.dtype == np.uint8
    assert (ids[:, 0] == bert_tokenizer.cls_token_id).all() and (ids[:, -1] == bert_tokenizer.sep_token_id).all()
    sep = bert_tokenizer.sep_token_id
    assert ids[:, 1:-1].reshape(-1).tolist() == _stream(bert_tokenizer, docs, sep)[: ids.shape[0] * 30]
    expected = []
    for d in docs:
        words = bert_tokenizer(d, add_special_tokens=False).word_ids()
        expected += [int(i == 0 or w != words[i - 1]) for i, w in enumerate(words)] + [1]
    assert starts[:, 1:-1].reshape(-1).tolist() == expected[: ids.shape[0] * 30]
    # For WordPiece the tokenizer's word ids and the '##' rule agree exactly (BPE has no '##').
    tokens = bert_tokenizer.convert_ids_to_tokens(ids[:, 1:-1].reshape(-1).tolist())
    assert starts[:, 1:-1].reshape(-1).tolist() == [int(not t.startswith("##")) for t in tokens]
    assert 0 < (starts == 0).mean() < 0.5 and meta["splits"]["train"]["packing_efficiency"] == 1.0


def test_special_token_text_in_the_corpus_is_not_a_special_token(gpt2_tokenizer, bert_tokenizer, tmp_path):
    docs = ["a docstring quoting <|endoftext|> and <|pad|> " * 20, "and [SEP] [MASK] [CLS] [PAD] as text " * 20]
    tokenize_corpus(OBJECTIVES["clm"], gpt2_tokenizer, {"train": docs}, TokenizeConfig(block_size=16), 0, tmp_path / "clm")
    clm = np.load(tmp_path / "clm" / "train.input_ids.npy").reshape(-1).tolist()
    assert clm.count(gpt2_tokenizer.eos_token_id) == 1 and gpt2_tokenizer.pad_token_id not in clm
    tokenize_corpus(OBJECTIVES["mlm"], bert_tokenizer, {"train": docs}, TokenizeConfig(block_size=16), 0, tmp_path / "mlm")
    body = np.load(tmp_path / "mlm" / "train.input_ids.npy")[:, 1:-1].reshape(-1).tolist()
    assert body.count(bert_tokenizer.sep_token_id) == 1
    assert not set(body) & {bert_tokenizer.mask_token_id, bert_tokenizer.cls_token_id, bert_tokenizer.pad_token_id}


def test_tokenize_corpus_mlm_nsp_writes_pair_arrays(bert_tokenizer, tmp_path):
    docs = _prose()[:6]
    cfg = TokenizeConfig(block_size=32)
    meta = tokenize_corpus(OBJECTIVES["mlm_nsp"], bert_tokenizer, {"train": docs}, cfg, 0, tmp_path / "nsp")
    out = tmp_path / "nsp"
    assert sorted(p.name for p in out.iterdir()) == [
        "meta.json", "train.input_ids.npy", "train.nsp_labels.npy", "train.token_type_ids.npy", "train.word_starts.npy"]
    ids = np.load(out / "train.input_ids.npy")
    types = np.load(out / "train.token_type_ids.npy")
    labels = np.load(out / "train.nsp_labels.npy")
    assert ids.dtype == np.uint16 and ids.shape == types.shape and len(labels) == len(ids) > 0
    assert (ids[:, 0] == bert_tokenizer.cls_token_id).all()
    assert ((ids == bert_tokenizer.sep_token_id).sum(axis=1) == 2).all()
    stats = meta["splits"]["train"]
    assert stats["nsp_random_share"] == pytest.approx(labels.mean())
    assert stats["tokens"] == (ids != bert_tokenizer.pad_token_id).sum()
    assert stats["packing_efficiency"] == pytest.approx(stats["tokens"] / ids.size)


def test_mlm_nsp_from_disk_equals_the_in_memory_recipe(bert_tokenizer, tmp_path):
    """The streaming path (sentences on disk, pairs planned on lengths) builds exactly the
    pairs the in-memory builder makes from the same tokenised sentences."""
    docs = _prose()
    cfg = TokenizeConfig(block_size=48, batch_size=4)  # several batches, so batch joins are exercised
    tokenize_corpus(OBJECTIVES["mlm_nsp"], bert_tokenizer, {"train": docs}, cfg, 7, tmp_path / "nsp")
    encode = make_encoder(bert_tokenizer, with_words=False)
    tokenised = []
    for doc in docs:
        batch = encode(split_sentences(doc))
        tokenised.append(np.split(batch.ids, np.cumsum(batch.lengths)[:-1]))
    expected = build_nsp_pairs(tokenised, 48, cfg.short_seq_prob, 7, bert_tokenizer.cls_token_id,
                               bert_tokenizer.sep_token_id, bert_tokenizer.pad_token_id)
    for name in ("input_ids", "token_type_ids", "nsp_labels"):
        np.testing.assert_array_equal(np.load(tmp_path / "nsp" / f"train.{name}.npy"), expected[name])


@pytest.mark.parametrize("objective, arch", [("clm", "gpt2"), ("mlm", "bert"), ("mlm_nsp", "bert")])
def test_two_runs_with_the_same_seed_are_byte_identical(objective, arch, gpt2_tokenizer, bert_tokenizer, tmp_path):
    tokenizer = {"gpt2": gpt2_tokenizer, "bert": bert_tokenizer}[arch]
    parquet = tmp_path / "train.parquet"
    pq.write_table(pa.table({"text": _prose() * 2}), parquet)
    # A parquet stream in batches of 3 documents, then a list in one batch: the same bytes.
    runs = [(iter_texts(parquet), 3), (_prose() * 2, 1000)]
    for i, (texts, batch_size) in enumerate(runs):
        cfg = TokenizeConfig(block_size=32, batch_size=batch_size)
        tokenize_corpus(OBJECTIVES[objective], tokenizer, {"train": texts, "validation": _prose()[:3]}, cfg, 5, tmp_path / str(i))
    names = sorted(p.name for p in (tmp_path / "0").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "1").iterdir()) and len(names) >= 3
    for name in names:
        assert (tmp_path / "0" / name).read_bytes() == (tmp_path / "1" / name).read_bytes(), name


def test_tokenize_corpus_fails_clearly_on_an_empty_split(gpt2_tokenizer, tmp_path):
    splits = {"train": _prose(), "validation": ["too short"]}
    with pytest.raises(ValueError, match="the validation split yields no 64-token example"):
        tokenize_corpus(OBJECTIVES["clm"], gpt2_tokenizer, splits, TokenizeConfig(block_size=64), 0, tmp_path / "clm")
    assert not (tmp_path / "clm").exists()
    assert list(tmp_path.iterdir()) == []  # no half-written temporary directory either


def test_tokenize_stage_writes_metrics_and_a_pretrained_dir_error_is_one_line(gpt2_tokenizer, tmp_path,
                                                                               monkeypatch, capsys):
    from pipelines import tokenize as tokenize_stage
    from pipelines import train_tokenizer as tokenizer_stage

    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("profile: tiny\n")
    (tmp_path / "data" / "corpus").mkdir(parents=True)
    for split, docs in (("train", _prose()), ("validation", _prose()[:3])):
        pq.write_table(pa.table({"text": docs}), tmp_path / "data" / "corpus" / f"{split}.parquet")
    gpt2_tokenizer.save_pretrained(tmp_path / "data" / "tokenizers" / "gpt2")

    tokenize_stage.main(["--objective", "clm"])
    report = json.loads((tmp_path / "reports" / "tokenize" / "clm.json").read_text())
    meta = json.loads((tmp_path / "data" / "tokenized" / "clm" / "meta.json").read_text())
    assert report["train"] == meta["splits"]["train"] and report["validation"] == meta["splits"]["validation"]
    assert set(report["train"]) == {"documents", "corpus_tokens", "blocks", "tokens", "tokens_dropped",
                                    "packing_efficiency", "fertility"}
    assert report["tokens_per_s"] > 0 and report["block_size"] == 64

    # A missing pretrained directory is a params error (exit 2), refused by every stage's
    # check of the whole params.yaml before any work.
    (tmp_path / "params.yaml").write_text("profile: tiny\ntokenizer:\n  pretrained_bert: no/such/dir\n")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        tokenizer_stage.main(["--architecture", "bert"])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and len(err.splitlines()) == 1
    assert err.startswith("error: params.yaml: tokenizer.pretrained_bert: no directory 'no/such/dir'")
    assert not (tmp_path / "data" / "tokenizers" / "bert").exists()


def _chinese(n: int, seed: int) -> list[str]:
    """Zipf-distributed CJK sentences with numbers: a held-out sample holds rare characters
    (and digit strings) the training sample never had."""
    rng = random.Random(seed)
    chars = [chr(0x4E00 + 7 * k) for k in range(2500)]
    weights = [1 / (k + 1) for k in range(len(chars))]
    out = []
    for _ in range(n):
        s = "".join(rng.choices(chars, weights, k=rng.randint(8, 30)))
        out.append(f"{s[:5]}{rng.randint(0, 9999)}年{s[5:]}，{rng.choice(chars)}{rng.randint(10, 99)}。")
    return out


@pytest.mark.parametrize("corpus, held_out", [
    (_prose, ["机器学习是人工智能的一个分支。", "مرحبا بالعالم ١٢٣", "emoji 🤖🎉 👩‍👩‍👧", "digits 0123456789 ٣٤ ４５ x²"]),
    (lambda: _chinese(400, 1), _chinese(100, 2)),  # character WordPiece: 6.5% [UNK] here
])
def test_bert_tokenizer_never_emits_unk_on_unseen_scripts_or_digits(tmp_path, corpus, held_out):
    ARCHITECTURES["bert"].train_tokenizer(corpus(), TokenizerConfig(vocab_size=1000), tmp_path / "bert")
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "bert"))
    for text in held_out:
        ids = tok(text)["input_ids"]
        assert tok.unk_token_id not in ids, (text, tok.convert_ids_to_tokens(ids))
        normalised = tok.backend_tokenizer.normalizer.normalize_str(text)
        assert "".join(tok.decode(ids, skip_special_tokens=True).split()) == "".join(normalised.split())
