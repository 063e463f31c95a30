"""BERT's 80/10/10 masking, measured over a quarter of a million tokens."""
from __future__ import annotations

import pytest
import torch

from components.collators import IGNORE_INDEX, mask_tokens

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
