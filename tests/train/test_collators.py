"""BERT's 80/10/10 masking, token-level and whole-word, measured over >= 100k tokens."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from components.train.collators import IGNORE_INDEX, mask_tokens, word_index

MASK, PAD, CLS, SEP, UNK = 4, 0, 2, 3, 1
SPECIALS = [MASK, PAD, CLS, SEP, UNK]  # mask id first, as mask_tokens requires
VOCAB = 1000


def _batch(rows: int = 1024, width: int = 256) -> torch.Tensor:
    """Rows like packed BERT input: [CLS] tokens [SEP] with a padded tail, plus stray [UNK]s."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, VOCAB, (rows, width), generator=g)
    ids[:, 0], ids[:, -1] = CLS, SEP
    lengths = torch.randint(width // 2, width, (rows,), generator=g)
    ids[torch.arange(width) >= lengths[:, None]] = PAD
    ids[torch.rand(rows, width, generator=g) < 0.01] = UNK
    return ids


@pytest.fixture(scope="module")
def masked():
    ids = _batch()
    inputs, labels = mask_tokens(ids, SPECIALS, VOCAB, 0.15, torch.Generator().manual_seed(1))
    return ids, inputs, labels


def test_fifteen_percent_of_ordinary_tokens_are_chosen(masked):
    ids, _, labels = masked
    ordinary = ~torch.isin(ids, torch.tensor(SPECIALS))
    assert ordinary.sum() > 100_000
    chosen = labels != IGNORE_INDEX
    assert abs(chosen.sum().item() / ordinary.sum().item() - 0.15) <= 0.005


def test_chosen_tokens_split_80_10_10(masked):
    ids, inputs, labels = masked
    chosen = labels != IGNORE_INDEX
    n = chosen.sum().item()
    to_mask = (chosen & (inputs == MASK)).sum().item() / n
    unchanged = (chosen & (inputs == ids)).sum().item() / n
    random = (chosen & (inputs != MASK) & (inputs != ids)).sum().item() / n
    assert abs(to_mask - 0.8) <= 0.01
    assert abs(random - 0.1) <= 0.01
    assert abs(unchanged - 0.1) <= 0.01


def test_special_tokens_are_never_chosen_nor_labelled(masked):
    ids, inputs, labels = masked
    special = torch.isin(ids, torch.tensor(SPECIALS))
    assert special.sum() > 50_000  # pads, [CLS], [SEP] and [UNK] are all present
    assert (labels[special] == IGNORE_INDEX).all()
    assert torch.equal(inputs[special], ids[special])


def test_labels_are_the_original_ids_exactly_where_chosen(masked):
    ids, inputs, labels = masked
    chosen = labels != IGNORE_INDEX
    assert torch.equal(labels[chosen], ids[chosen])
    assert torch.equal(inputs[~chosen], ids[~chosen])  # nothing outside the chosen set changes


def test_random_replacements_are_never_special(masked):
    ids, inputs, labels = masked
    replaced = (labels != IGNORE_INDEX) & (inputs != MASK) & (inputs != ids)
    assert replaced.sum() > 1000
    assert not torch.isin(inputs[replaced], torch.tensor(SPECIALS)).any()
    assert ((inputs[replaced] >= 0) & (inputs[replaced] < VOCAB)).all()
    assert inputs.dtype == ids.dtype and labels.dtype == ids.dtype


def test_masking_is_deterministic_for_a_generator_seed():
    ids = _batch(rows=64)
    a = mask_tokens(ids, SPECIALS, VOCAB, 0.15, torch.Generator().manual_seed(7))
    b = mask_tokens(ids, SPECIALS, VOCAB, 0.15, torch.Generator().manual_seed(7))
    c = mask_tokens(ids, SPECIALS, VOCAB, 0.15, torch.Generator().manual_seed(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])
    assert torch.equal(ids, _batch(rows=64))  # the input is not modified in place


# Whole-word masking, on word starts computed by real tokenizers at tokenize time.

def _real_blocks(tokenizer, sep_id: int, cls_id, rows: int = 1200, width: int = 128):
    """Packed blocks and word starts from a real tokenizer over real prose, tiled to
    `rows` rows (>= 100k ordinary tokens): what the tokenize stage stores."""
    from components.tokens.packing import BlockPacker, make_encoder
    from conftest import _prose

    packer = BlockPacker(width, sep_id, cls_id, None, np.int64)
    ids, starts = packer.add(make_encoder(tokenizer, with_words=True)(_prose()))
    reps = -(-rows // len(ids))
    return torch.from_numpy(np.tile(ids, (reps, 1))[:rows]), torch.from_numpy(np.tile(starts, (reps, 1))[:rows])


@pytest.fixture(scope="module", params=["wordpiece", "byte_level_bpe"])
def whole_word(request, bert_tokenizer, gpt2_tokenizer):
    if request.param == "wordpiece":
        tok = bert_tokenizer
        ids, starts = _real_blocks(tok, tok.sep_token_id, tok.cls_token_id)
        specials = [tok.mask_token_id, *sorted(set(tok.all_special_ids) - {tok.mask_token_id})]
    else:  # BPE has no mask token of its own: borrow the pad id as [MASK] for the test
        tok = gpt2_tokenizer
        ids, starts = _real_blocks(tok, tok.eos_token_id, None)
        specials = [tok.pad_token_id, tok.eos_token_id]
    inputs, labels = mask_tokens(ids, specials, len(tok), 0.15, torch.Generator().manual_seed(3), starts)
    return tok, ids, starts, specials, inputs, labels


def test_whole_word_masking_keeps_the_rates(whole_word):
    _, ids, _, specials, inputs, labels = whole_word
    ordinary = ~torch.isin(ids, torch.tensor(specials))
    assert ordinary.sum() > 100_000
    chosen = labels != IGNORE_INDEX
    assert abs(chosen.sum().item() / ordinary.sum().item() - 0.15) <= 0.005
    n = chosen.sum().item()
    to_mask = (chosen & (inputs == specials[0])).sum().item() / n
    unchanged = (chosen & (inputs == ids)).sum().item() / n
    assert abs(to_mask - 0.8) <= 0.01 and abs(unchanged - 0.1) <= 0.01
    assert abs(1 - to_mask - unchanged - 0.1) <= 0.01


def test_whole_word_masking_chooses_every_piece_of_a_word_or_none(whole_word):
    _, ids, starts, specials, _, labels = whole_word
    special = torch.isin(ids, torch.tensor(specials))
    assert not (labels[special] != IGNORE_INDEX).any()
    words = word_index(starts, special)
    chosen = (labels != IGNORE_INDEX).long().reshape(-1)
    flat = words.reshape(-1)
    size = torch.bincount(flat)
    picked = torch.bincount(flat, weights=chosen.double()).long()
    assert ((picked == 0) | (picked == size)).all()  # no word is ever partly chosen
    assert ((picked == size) & (size >= 2)).sum() > 1000  # and many multi-token words were chosen whole


def test_token_level_masking_splits_words_that_whole_word_masking_keeps(whole_word):
    tok, ids, starts, specials, _, _ = whole_word
    _, labels = mask_tokens(ids, specials, len(tok), 0.15, torch.Generator().manual_seed(3))
    words = word_index(starts, torch.isin(ids, torch.tensor(specials))).reshape(-1)
    picked = torch.bincount(words, weights=(labels != IGNORE_INDEX).double().reshape(-1)).long()
    assert ((picked > 0) & (picked < torch.bincount(words))).sum() > 1000  # so the test above can fail


def test_word_index_starts_a_word_at_every_special_token_and_row():
    starts = torch.tensor([[0, 0, 1, 0, 0, 0], [0, 1, 0, 0, 1, 0]])
    special = torch.tensor([[1, 0, 0, 0, 1, 0], [0, 0, 0, 1, 0, 0]]).bool()
    assert word_index(starts, special).tolist() == [[0, 1, 2, 2, 3, 4], [5, 6, 6, 7, 8, 8]]


def test_objective_masks_whole_words_when_asked(bert_tokenizer, tmp_path):
    from components.config import TokenizeConfig
    from components.tokens.tokenization import tokenize_corpus
    from components.objectives import OBJECTIVES
    from components.config import PretrainConfig
    from components.train.pretraining import PretrainData
    from conftest import _prose

    tokenize_corpus(OBJECTIVES["mlm"], bert_tokenizer, {"train": _prose()}, TokenizeConfig(block_size=64), 0, tmp_path / "mlm")
    data = PretrainData(tmp_path / "mlm", "train")
    raw = data.batch(np.arange(data.n), torch.device("cpu"))
    objective = OBJECTIVES["mlm"].training(bert_tokenizer, PretrainConfig(whole_word_masking=True))
    batch = objective.prepare(raw, torch.Generator().manual_seed(0))
    specials = torch.tensor(bert_tokenizer.all_special_ids)
    words = word_index(raw["word_starts"], torch.isin(raw["input_ids"], specials)).reshape(-1)
    picked = torch.bincount(words, weights=(batch["labels"] != IGNORE_INDEX).double().reshape(-1)).long()
    assert picked.sum() > 0 and ((picked == 0) | (picked == torch.bincount(words))).all()
    del raw["word_starts"]
    with pytest.raises(ValueError, match="^pretrain.whole_word_masking: .*re-run the tokenize stage$"):
        OBJECTIVES["mlm"].training(bert_tokenizer, PretrainConfig(whole_word_masking=True)).prepare(raw, torch.Generator())
