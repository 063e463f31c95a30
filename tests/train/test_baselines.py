"""The pretraining metrics' trivial baselines: counted by hand on a tiny array, and scored
exactly by a model that ignores its input and predicts what the baseline predicts."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from components.config import ModelConfig, PretrainConfig, TokenizeConfig
from components.objectives import OBJECTIVES
from components.tokens.tokenization import tokenize_corpus
from components.train.pretraining import PretrainData, TokenBaseline, evaluate_pretraining, token_counts
from conftest import _prose

TINY = ModelConfig(n_layers=1, n_heads=2, d_model=32, d_ff=64, max_positions=32)

pytestmark = pytest.mark.usefixtures("one_thread")


def _write_split(tmp_path, ids: list[list[int]], vocab_size: int) -> PretrainData:
    (tmp_path / "meta.json").write_text(json.dumps({"vocab_size": vocab_size}))
    np.save(tmp_path / "train.input_ids.npy", np.asarray(ids, dtype=np.uint16))
    return PretrainData(tmp_path, "train")


def test_counts_and_baselines_equal_a_hand_count(tmp_path):
    data = _write_split(tmp_path, [[5, 1, 1, 2], [1, 3, 0, 0]], vocab_size=6)
    counts = token_counts(data, 6, excluded=(0,))
    assert counts.tolist() == [0, 3, 1, 1, 0, 1]  # id 0 (say, pad) excluded; id 4 never seen
    assert token_counts(data, 6, excluded=(0,), chunk_tokens=4).tolist() == counts.tolist()  # row by row
    baseline = TokenBaseline.of(data, excluded=(0,))
    assert baseline.most_frequent == 1
    # Add-one over the 6-token vocabulary: (count + 1) / (6 tokens + 6).
    sums = baseline.sums(torch.tensor([1, 2, 4, 1]))
    assert sums["baseline_correct"] == 2
    assert sums["unigram_nll_sum"] == pytest.approx(-(2 * math.log(4 / 12) + math.log(2 / 12) + math.log(1 / 12)))


def test_an_id_outside_the_vocabulary_names_the_file_and_the_fix(tmp_path):
    data = _write_split(tmp_path, [[5, 1, 7, 2]], vocab_size=6)
    with pytest.raises(ValueError, match=r"train\.input_ids\.npy: token id 7 .* re-run the tokenize stage"):
        token_counts(data, 6)


@pytest.fixture(scope="module")
def tokenized(tmp_path_factory, gpt2_tokenizer, bert_tokenizer):
    """Real tokenized arrays per objective: (tokenizer, train, validation)."""
    root = tmp_path_factory.mktemp("baselines")
    tokenizers = {"gpt2": gpt2_tokenizer, "bert": bert_tokenizer}
    out = {}
    for name, spec in OBJECTIVES.items():
        tokenizer = tokenizers[spec.architecture.name]
        tokenize_corpus(spec, tokenizer, {"train": _prose(), "validation": _prose()[:6]},
                        TokenizeConfig(block_size=32), 0, root / name)
        out[name] = (tokenizer, PretrainData(root / name, "train"), PretrainData(root / name, "validation"))
    return out


def _unigram_model(name: str, tokenizer, baseline: TokenBaseline, majority_nsp: int):
    """A model whose every output is the baseline's: unigram log-probabilities over the
    vocabulary (so its argmax is the most frequent token) whatever the input, and, for NSP,
    the majority class."""
    torch.manual_seed(0)
    model = OBJECTIVES[name].build_model(TINY, tokenizer).eval()
    log_probs = torch.full((model.config.vocab_size,), -1e4)
    log_probs[:len(baseline.log_probs)] = baseline.log_probs.float()
    with torch.no_grad():
        if name == "clm":
            # Final hidden state = e_0 at every position; the (tied) head's column 0 = the log-probs.
            model.transformer.ln_f.weight.zero_()
            model.transformer.ln_f.bias.zero_()
            model.transformer.ln_f.bias[0] = 1.0
            model.lm_head.weight.zero_()
            model.lm_head.weight[:, 0] = log_probs
        else:
            head = model.cls.predictions
            head.transform.LayerNorm.weight.zero_()
            head.transform.LayerNorm.bias.zero_()
            head.decoder.bias.copy_(log_probs)
            head.bias.copy_(log_probs)
            if name == "mlm_nsp":
                model.cls.seq_relationship.weight.zero_()
                model.cls.seq_relationship.bias.copy_(torch.tensor([0.0, 0.0]))
                model.cls.seq_relationship.bias[majority_nsp] = 1.0
    return model


@pytest.mark.parametrize("name", ["clm", "mlm", "mlm_nsp"])
def test_a_model_that_predicts_the_baseline_scores_exactly_the_baseline(name, tokenized):
    tokenizer, train, val = tokenized[name]
    training = OBJECTIVES[name].training(tokenizer, PretrainConfig())
    baseline = TokenBaseline.of(train, training.baseline_excluded)
    nsp = np.asarray(val.arrays["nsp_labels"]) if "nsp_labels" in val.arrays else np.zeros(1)
    majority = int(nsp.mean() > 0.5)
    model = _unigram_model(name, tokenizer, baseline, majority)
    metrics = evaluate_pretraining(model, training, val, 8, 4, 0, torch.device("cpu"), torch.float32, baseline)
    if name == "clm":
        assert metrics["val_perplexity"] == pytest.approx(metrics["val_unigram_perplexity"], rel=1e-4)
        assert metrics["val_unigram_perplexity"] > 1.0
    else:
        assert metrics["val_mlm_accuracy"] == metrics["val_mlm_baseline_accuracy"] > 0
        assert metrics["val_mlm_loss"] == pytest.approx(metrics["val_mlm_unigram_loss"], rel=1e-4)
        # The most frequent *training* token: a special id would never be a target.
        assert baseline.most_frequent not in training.special_ids
    if name == "mlm_nsp":
        assert metrics["val_nsp_accuracy"] == metrics["val_nsp_baseline_accuracy"]
        assert metrics["val_nsp_baseline_accuracy"] == pytest.approx(max(nsp[:32].mean(), 1 - nsp[:32].mean()))
        assert metrics["val_nsp_baseline_accuracy"] >= 0.5
        assert metrics["val_loss"] == pytest.approx(metrics["val_mlm_loss"] + metrics["val_nsp_loss"])


def test_mlm_baseline_counts_the_masked_positions_of_evaluation(tokenized):
    """The baseline's accuracy is over exactly the positions evaluation masks (same seed, same
    masks): recomputed here from the masks themselves, original tokens as the targets."""
    tokenizer, train, val = tokenized["mlm"]
    training = OBJECTIVES["mlm"].training(tokenizer, PretrainConfig())
    baseline = TokenBaseline.of(train, training.baseline_excluded)
    model = OBJECTIVES["mlm"].build_model(TINY, tokenizer).eval()
    metrics = evaluate_pretraining(model, training, val, 8, 2, 3, torch.device("cpu"), torch.float32, baseline)
    generator = torch.Generator().manual_seed(3)
    hits = total = 0
    for b in range(2):
        raw = val.batch(np.arange(b * 8, min(val.n, (b + 1) * 8)), torch.device("cpu"))
        batch = training.prepare(raw, generator)
        chosen = batch["labels"] != -100
        hits += int((raw["input_ids"][chosen] == baseline.most_frequent).sum())
        total += int(chosen.sum())
    assert metrics["val_mlm_baseline_accuracy"] == hits / total
    # A random-init model is no better than the unigram model on the masked tokens.
    assert metrics["val_mlm_loss"] > metrics["val_mlm_unigram_loss"]
