"""NSP pairs as BERT's create_instances_from_document makes them: a one-sentence chunk gets
a random B (NotNext), so where B starts can never give the label away."""
from __future__ import annotations

import importlib

import numpy as np
import pytest

from components.objectives import OBJECTIVES
from components.tokens.nsp import plan_nsp_pairs, split_sentences
from components.tokens.packing import make_encoder
from components.config import TokenizeConfig
from components.tokens.tokenization import tokenize_corpus

MODULES = ("argparse", "ast", "bisect", "collections", "dataclasses", "decimal", "difflib", "enum", "fractions",
           "functools", "heapq", "inspect", "itertools", "json", "logging", "pathlib", "pickle", "random", "re",
           "shutil", "statistics", "string", "tempfile", "textwrap", "threading", "typing", "unittest", "zipfile")


def _stdlib_prose() -> list[str]:
    """Real English: module docstrings of the standard library, long and short sentences mixed."""
    docs = [importlib.import_module(m).__doc__ for m in MODULES]
    return [d for d in docs if d and d.strip()]


@pytest.fixture(scope="module")
def corpus(bert_tokenizer):
    """Each document's tokens and its sentence starts, as the tokenize stage splits and encodes them."""
    encode = make_encoder(bert_tokenizer, with_words=False)
    docs = []
    for text in _stdlib_prose():
        batch = encode(split_sentences(text))
        lengths = batch.lengths[batch.lengths > 0].tolist()
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).tolist()
        docs.append((np.asarray(batch.ids, dtype=np.int64), lengths, set(starts)))
    return docs


@pytest.mark.parametrize("block_size", [24, 48, 128])
def test_every_b_segment_starts_at_a_sentence_start(corpus, block_size):
    pairs = list(plan_nsp_pairs(lambda d: corpus[d][1], len(corpus), block_size, 0.1, seed=1))
    is_next = [p for p in pairs if p.label == 0]
    assert len(is_next) >= 20 and len(pairs) > len(is_next)
    for p in pairs:
        assert p.b_start in corpus[p.b_doc][2], f"B of {p} starts mid-sentence"
    for p in is_next:
        assert p.b_doc == p.a_doc and p.b_start == p.a_end, f"IsNext B of {p} is not A's continuation"


def test_is_next_rows_of_the_tokenize_stage_start_b_at_a_sentence(bert_tokenizer, corpus, tmp_path):
    tokenize_corpus(OBJECTIVES["mlm_nsp"], bert_tokenizer, {"train": _stdlib_prose()}, TokenizeConfig(block_size=32), 3,
                    tmp_path / "nsp")
    ids = np.load(tmp_path / "nsp" / "train.input_ids.npy")
    labels = np.load(tmp_path / "nsp" / "train.nsp_labels.npy")
    sentence_heads = [tokens[s:] for tokens, _, starts in corpus for s in sorted(starts)]
    checked = 0
    for row, label in zip(ids.tolist(), labels.tolist()):
        if label:
            continue
        first_sep = row.index(bert_tokenizer.sep_token_id)
        b = row[first_sep + 1 : row.index(bert_tokenizer.sep_token_id, first_sep + 1)]
        assert any(len(head) >= len(b) and head[: len(b)].tolist() == b for head in sentence_heads), \
            f"an IsNext row's B starts mid-sentence: {bert_tokenizer.decode(b)!r}"
        checked += 1
    assert checked >= 20


def test_one_sentence_chunks_become_not_next():
    # Every document is one sentence, so every chunk is one sentence: BERT gives each a random B.
    rng = np.random.default_rng(0)
    lengths = [[int(n)] for n in rng.integers(2, 200, size=300)]
    pairs = list(plan_nsp_pairs(lambda d: lengths[d], len(lengths), 64, 0.1, seed=2))
    assert len(pairs) == len(lengths)
    assert all(p.label == 1 and p.b_doc != p.a_doc for p in pairs)
    assert all(p.a_end == lengths[p.a_doc][0] for p in pairs)  # A is the sentence (cut from its front only)


def test_a_lone_one_sentence_document_makes_no_pair():
    # No other document to draw a random B from, and a true B would start mid-sentence.
    assert list(plan_nsp_pairs(lambda d: [40], 1, 64, 0.0, seed=0)) == []
    pairs = list(plan_nsp_pairs(lambda d: [10, 12, 9], 1, 64, 0.0, seed=0))
    assert pairs and all(p.label == 0 for p in pairs)
