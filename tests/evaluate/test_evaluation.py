"""Downstream metrics, bootstrap CIs, the labelled-data reader and fine-tuning."""
from __future__ import annotations

import copy

import random

import numpy as np
import pandas as pd
import pytest
import torch

from components.config import EvaluateConfig
from components.evaluate.metrics import bootstrap_diff_ci, classification_metrics, majority_baseline
from components.objectives import ARCHITECTURES
from components.config import FinetuneConfig
from components.train.finetuning import encode_for_classifier, finetune, finetune_steps, predict, read_labelled
from components.config import ModelConfig
from components.train.scores import macro_f1

TINY = ModelConfig(n_layers=1, n_heads=2, d_model=32, d_ff=64, max_positions=32)


pytestmark = pytest.mark.usefixtures("one_thread")

# Three classes, six examples; rows of the confusion matrix are the truth.
Y_TRUE = np.array([0, 0, 0, 1, 1, 2])
Y_PRED = np.array([0, 0, 1, 1, 2, 2])
# class 0: tp 2, fp 0, fn 1 -> P 2/2 = 1,   R 2/3, F1 2*2/(2*2+0+1) = 4/5
# class 1: tp 1, fp 1, fn 1 -> P 1/2,       R 1/2, F1 2*1/(2*1+1+1) = 1/2
# class 2: tp 1, fp 1, fn 0 -> P 1/2,       R 1/1, F1 2*1/(2*1+1+0) = 2/3
# macro-F1 = (4/5 + 1/2 + 2/3) / 3 = (24 + 15 + 20) / 90 = 59/90; accuracy 4/6
MACRO_F1 = 59 / 90


def test_macro_f1_by_hand():
    assert macro_f1(Y_TRUE, Y_PRED, 3) == pytest.approx(MACRO_F1)
    assert macro_f1(Y_TRUE, Y_TRUE, 3) == 1.0


def test_macro_f1_counts_an_absent_class_as_zero():
    y = np.array([0, 0, 1, 1])
    # classes 0 and 1 are perfect (F1 1), class 2 never occurs nor is predicted (F1 0): 2/3
    assert macro_f1(y, y, 3) == pytest.approx(2 / 3)


def test_classification_metrics_by_hand():
    m = classification_metrics(Y_TRUE, Y_PRED, ["neg", "neu", "pos"])
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["macro_f1"] == pytest.approx(MACRO_F1)
    assert m["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    expected = {"neg": (1.0, 2 / 3, 4 / 5, 3), "neu": (1 / 2, 1 / 2, 1 / 2, 2), "pos": (1 / 2, 1.0, 2 / 3, 1)}
    for name, (precision, recall, f1, support) in expected.items():
        got = m["per_class"][name]
        assert got["precision"] == pytest.approx(precision)
        assert got["recall"] == pytest.approx(recall)
        assert got["f1"] == pytest.approx(f1)
        assert got["support"] == support
    # per-class F1 from precision/recall agrees with macro_f1's tp/fp/fn form
    assert np.mean([c["f1"] for c in m["per_class"].values()]) == pytest.approx(m["macro_f1"])


def test_bootstrap_of_identical_predictions_is_zero():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 100)
    pred = np.where(rng.random(100) < 0.7, y, rng.integers(0, 3, 100))
    ci = bootstrap_diff_ci(y, pred, pred.copy(), 3, samples=200, confidence=0.95, seed=0)
    assert ci == {"diff": 0.0, "ci_low": 0.0, "ci_high": 0.0}


def test_bootstrap_ci_of_a_clearly_better_model_is_above_zero():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 300)
    good = np.where(rng.random(300) < 0.9, y, rng.integers(0, 3, 300))
    chance = rng.integers(0, 3, 300)
    ci = bootstrap_diff_ci(y, good, chance, 3, samples=300, confidence=0.95, seed=0)
    assert ci["diff"] == pytest.approx(macro_f1(y, good, 3) - macro_f1(y, chance, 3))
    assert 0.0 < ci["ci_low"] < ci["diff"] < ci["ci_high"]
    flipped = bootstrap_diff_ci(y, chance, good, 3, samples=300, confidence=0.95, seed=0)
    assert flipped["ci_high"] < 0.0
    assert bootstrap_diff_ci(y, good, chance, 3, 300, 0.95, seed=0) == ci  # seeded
    narrow = bootstrap_diff_ci(y, good, chance, 3, samples=300, confidence=0.6, seed=0)
    assert ci["ci_low"] < narrow["ci_low"] < narrow["ci_high"] < ci["ci_high"]  # lower confidence, tighter CI


def test_majority_baseline():
    result = majority_baseline(np.array([0, 1, 1, 2, 1]), np.array([1, 0, 1, 2]), 3)
    # always predicts 1: accuracy 2/4; class 1 F1 = 2*2/(2*2+2+0) = 2/3, others 0 -> macro 2/9
    assert result["label"] == 1
    assert result["test_accuracy"] == pytest.approx(0.5)
    assert result["test_macro_f1"] == pytest.approx(2 / 9)


@pytest.mark.parametrize("field, value", [("bootstrap_samples", 10), ("confidence", 1.0), ("batch_size", 0)])
def test_evaluate_config_rejects_bad_values(field, value):
    with pytest.raises(ValueError, match=rf"evaluate\.{field}"):
        EvaluateConfig(**{field: value})


def test_read_labelled_accepts_a_valid_split(tmp_path):
    path = tmp_path / "train.parquet"
    pd.DataFrame({"text": ["a", "b", "c"], "label": [0, 1, 1]}).to_parquet(path)
    frame = read_labelled(path, ["neg", "pos"])
    assert frame["label"].tolist() == [0, 1, 1] and frame["text"].tolist() == ["a", "b", "c"]


def test_read_labelled_rejects_a_label_outside_the_set(tmp_path):
    path = tmp_path / "validation.parquet"
    pd.DataFrame({"text": ["a", "b", "c"], "label": [0, 2, 1]}).to_parquet(path)
    with pytest.raises(ValueError, match=r"validation\.parquet: row 1 has label 2 outside the 2 labels"):
        read_labelled(path, ["neg", "pos"])


def test_read_labelled_rejects_missing_files_and_columns(tmp_path):
    with pytest.raises(FileNotFoundError, match="test.parquet"):
        read_labelled(tmp_path / "test.parquet", ["neg", "pos"])
    path = tmp_path / "nolabel.parquet"
    pd.DataFrame({"text": ["a"]}).to_parquet(path)
    with pytest.raises(ValueError, match=r"nolabel\.parquet: no 'label' column"):
        read_labelled(path, ["neg", "pos"])


SERIALISE = ["json", "encoder", "decoder", "object", "string", "number"]
FILESYSTEM = ["path", "file", "directory", "name", "parts", "suffix"]


def _toy_task(n: int, seed: int) -> pd.DataFrame:
    """Label 0: serialisation words; label 1: file-system words. Separable by vocabulary alone."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        words = SERIALISE if i % 2 == 0 else FILESYSTEM
        rows.append({"text": " ".join(rng.choice(words) for _ in range(rng.randint(3, 8))), "label": i % 2})
    return pd.DataFrame(rows)


def _cfg(**kw) -> FinetuneConfig:
    return FinetuneConfig(**{"lr": 1e-2, "warmup_steps": 2, "batch_size": 8, "max_length": 16,
                             "device": "cpu", "dtype": "float32", **kw})


@pytest.mark.parametrize("architecture", ["bert", "gpt2"])
def test_finetune_learns_a_separable_task_and_restores_the_best_epoch(architecture, request):
    # A copy: preparing adds GPT-2's EOS post-processor, which the shared fixture must not get.
    tokenizer = ARCHITECTURES[architecture].prepare_classifier_tokenizer(
        copy.deepcopy(request.getfixturevalue(f"{architecture}_tokenizer")), 16)
    torch.manual_seed(0)
    model = ARCHITECTURES[architecture].build_classifier(TINY, tokenizer, ["serialise", "filesystem"], None)
    head = model.classifier if architecture == "bert" else model.score
    train, val = _toy_task(64, seed=0), _toy_task(32, seed=1)
    cfg = _cfg(epochs=4, patience=10)
    total_steps = cfg.epochs * 64 // cfg.batch_size

    def sabotage_last_step(step, metrics):
        # Just before the final evaluation, make the model predict class 0 for everything:
        # the last epoch is then the worst, and only restoring the best weights undoes it.
        if "train_loss" in metrics and step == total_steps:
            with torch.no_grad():
                head.weight.zero_()
                if getattr(head, "bias", None) is not None:
                    head.bias.copy_(torch.tensor([50.0, -50.0]))
                else:  # GPT-2's score head has no bias: push class 0 through the weights instead
                    head.weight[0].fill_(50.0)

    result = finetune(model, tokenizer, train, val, 2, cfg, seed=0, on_log=sabotage_last_step)

    scores = [h["val_macro_f1"] for h in result["history"]]
    assert len(scores) == 4 and result["epochs_run"] == 4
    assert scores[-1] <= 1 / 3 + 1e-9  # the sabotage took effect (constant prediction)
    assert result["val_macro_f1"] == max(scores) >= 0.9  # chance is about 0.5
    assert result["best_epoch"] == scores.index(max(scores)) + 1 < 4
    val_x = encode_for_classifier(tokenizer, val["text"].tolist(), cfg.max_length)
    preds = predict(model, val_x, tokenizer.pad_token_id, 16, torch.device("cpu"), torch.float32).argmax(-1)
    assert macro_f1(val["label"].to_numpy(), preds, 2) == pytest.approx(result["val_macro_f1"])


@pytest.mark.parametrize("n, cfg, expected", [
    (400, dict(epochs=20, batch_size=32), (260, 13)),  # the cap in epochs: 20 of 13 steps
    (400, dict(epochs=20, max_steps=120, batch_size=32), (120, 13)),  # the step cap is smaller
    (4165, dict(epochs=20, max_steps=120, batch_size=32), (120, 120)),  # under an epoch: one evaluation
    (4165, dict(epochs=3, eval_every=50, batch_size=32), (393, 50)),
    (100, dict(epochs=2, batch_size=16, grad_accum=2), (8, 4)),
])
def test_fine_tuning_length_follows_the_labels_by_one_rule(n, cfg, expected):
    assert finetune_steps(n, _cfg(**cfg)) == expected


def test_patience_counts_evaluations_and_max_steps_caps_a_run(bert_tokenizer):
    torch.manual_seed(0)
    tokenizer = copy.deepcopy(bert_tokenizer)
    model = ARCHITECTURES["bert"].build_classifier(TINY, tokenizer, ["serialise", "filesystem"], None)
    result = finetune(model, tokenizer, _toy_task(64, 0), _toy_task(32, 1), 2,
                      _cfg(epochs=50, max_steps=12, eval_every=3, patience=50), seed=0)
    assert [h["step"] for h in result["history"]] == [3, 6, 9, 12] and result["steps_run"] == 12
    assert result["best_step"] in (3, 6, 9, 12)


def test_finetune_stops_early_after_patience(bert_tokenizer):
    torch.manual_seed(0)
    tokenizer = copy.deepcopy(bert_tokenizer)  # encoding with truncation changes the shared one
    model = ARCHITECTURES["bert"].build_classifier(TINY, tokenizer, ["serialise", "filesystem"], None)
    result = finetune(model, tokenizer, _toy_task(64, 0), _toy_task(32, 1), 2,
                      _cfg(epochs=10, patience=1), seed=0)
    epochs = [h["epoch"] for h in result["history"]]
    assert epochs == list(range(1, result["epochs_run"] + 1))
    assert result["epochs_run"] == result["best_epoch"] + 1 < 10
    assert all(h["val_macro_f1"] <= result["val_macro_f1"] for h in result["history"])
