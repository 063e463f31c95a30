"""Tiny models saved the way the pipeline saves them, for the registry tests.

A toy two-class task (docstring-like sentences about JSON vs about paths) that a 1-layer BERT
learns in a few dozen steps, so "trained" and "under-trained" are real, measured differences.
"""
from __future__ import annotations

import copy
import random
from pathlib import Path

import numpy as np
import torch

from components.evaluate.metrics import classification_metrics
from components.objectives import ARCHITECTURES, OBJECTIVES
from components.config import ModelConfig

LABELS = ["json", "paths"]
TINY = ModelConfig(n_layers=1, n_heads=2, d_model=32, d_ff=64, max_positions=32, dropout=0.0)
_WORDS = {
    0: "json encode decode object string serialize dump load number array value".split(),
    1: "path file directory join name folder glob parent suffix home root".split(),
}


def toy_task(n: int, seed: int) -> tuple[list[str], np.ndarray]:
    rng = random.Random(seed)
    y = np.array([i % 2 for i in range(n)])
    texts = [" ".join(rng.choice(_WORDS[int(label)]) for _ in range(6)) for label in y]
    return texts, y


def _encode(tokenizer, texts):
    return tokenizer(texts, padding=True, truncation=True, max_length=TINY.max_positions, return_tensors="pt")


def evaluate(model, tokenizer, texts, y) -> dict[str, float]:
    model.eval()
    with torch.no_grad():
        pred = model(**_encode(tokenizer, texts)).logits.argmax(-1).numpy()
    m = classification_metrics(y, pred, LABELS)
    return {"test_accuracy": m["accuracy"], "test_macro_f1": m["macro_f1"]}


def trained_classifier(root: Path, tokenizer, steps: int, seed: int = 0) -> tuple[Path, dict[str, float]]:
    """A tiny BERT classifier trained for `steps` steps on the toy task, saved, and its test metrics."""
    tokenizer = copy.deepcopy(tokenizer)  # encoding with padding changes it, and it is saved so
    torch.manual_seed(seed)
    model = ARCHITECTURES["bert"].build_classifier(TINY, tokenizer, LABELS, None)
    texts, y = toy_task(256, seed=1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for step in range(steps):
        idx = slice((step * 32) % 256, (step * 32) % 256 + 32)
        loss = model(**_encode(tokenizer, texts[idx]), labels=torch.tensor(y[idx])).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    out = root / f"classifier-{steps}-{seed}"
    model.save_pretrained(out)
    save_classifier_tokenizer(tokenizer, out)
    test_texts, test_y = toy_task(128, seed=2)
    return out, evaluate(model, tokenizer, test_texts, test_y)


def save_classifier_tokenizer(tokenizer, out: Path) -> None:
    """Saved as the finetune stage saves it: `model_max_length` is the length it was trained at."""
    import copy

    ARCHITECTURES["bert"].prepare_classifier_tokenizer(copy.deepcopy(tokenizer), TINY.max_positions).save_pretrained(out)


def saved_classifier(root: Path, seed: int, tokenizer) -> Path:
    """An untrained tiny classifier (distinct weights per seed)."""
    torch.manual_seed(seed)
    model = ARCHITECTURES["bert"].build_classifier(TINY, tokenizer, LABELS, None)
    out = root / f"classifier-{seed}"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def saved_pretrained(root: Path, objective: str, tokenizer, seed: int = 0) -> Path:
    """An untrained tiny pretraining model (GPT2LMHeadModel, BertForMaskedLM or BertForPreTraining)."""
    torch.manual_seed(seed)
    model = OBJECTIVES[objective].build_model(TINY, tokenizer)
    out = root / f"pretrained-{objective}-{seed}"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def toy_test_predictions(model_dir: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(texts, labels, predictions) of a saved toy classifier on the split its metrics come from."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    texts, y = toy_task(128, seed=2)
    model = AutoModelForSequenceClassification.from_pretrained(str(model_dir)).eval()
    with torch.no_grad():
        pred = model(**_encode(AutoTokenizer.from_pretrained(str(model_dir)), texts)).logits.argmax(-1).numpy()
    return texts, y, pred


def toy_evidence(model_dir: Path, cfg, pred: np.ndarray | None = None):
    """The gate's evidence for a toy classifier on the toy test split (its own predictions unless given)."""
    from components.registry.register import paired_evidence

    texts, y, own = toy_test_predictions(model_dir)
    return paired_evidence(own if pred is None else pred, texts, y, LABELS, cfg)
