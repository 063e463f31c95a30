"""Fine-tuning a sequence classifier on the downstream task, through the shared `fit` loop."""
from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from components.config import FinetuneConfig
from components.train.loop import autocast, fit, resolve_device_dtype


def read_labelled(path: Path, labels: list[str]) -> pd.DataFrame:
    """A downstream split with `text` and integer `label` columns, checked against the label set."""
    if not Path(path).exists():
        raise FileNotFoundError(f"{path}: missing; run the ingest stage first")
    frame = pd.read_parquet(path)
    for column in ("text", "label"):
        if column not in frame.columns:
            raise ValueError(f"{path}: no '{column}' column; expected columns text and label")
    bad = frame[frame["label"].isna() | ~frame["label"].isin(range(len(labels)))]
    if len(bad):
        raise ValueError(
            f"{path}: row {bad.index[0]} has label {bad['label'].tolist()[0]!r} outside the {len(labels)} "
            f"labels in labels.json; fix the data or the label set"
        )
    return frame.reset_index(drop=True)


def prepare_classifier_tokenizer(tokenizer, architecture: str, max_length: int):
    """Make the tokenizer add what the classifier reads, so training, evaluation and the
    served pipeline encode a text identically: BERT already adds [CLS] ... [SEP]; GPT-2
    gets an EOS appended (its classifier reads the last non-pad token)."""
    if architecture == "gpt2":
        from tokenizers import processors

        eos = tokenizer.eos_token
        tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
            single=f"$A {eos}", pair=f"$A {eos} $B:1 {eos}:1", special_tokens=[(eos, tokenizer.eos_token_id)]
        )
    tokenizer.model_max_length = max_length
    return tokenizer


def encode_texts(tokenizer, texts: list[str], max_length: int) -> list[list[int]]:
    """Token ids per text, truncated to `max_length` including the special tokens."""
    return tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]


def collate(encoded: list[list[int]], pad_id: int, device: torch.device) -> dict:
    """Right-pad to the longest sequence in the batch."""
    width = max(len(x) for x in encoded)
    ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
    for i, x in enumerate(encoded):
        ids[i, : len(x)] = torch.tensor(x)
    return {"input_ids": ids.to(device), "attention_mask": (ids != pad_id).long().to(device)}


@torch.no_grad()
def predict(model, encoded: list[list[int]], pad_id: int, batch_size: int, device, dtype) -> np.ndarray:
    """Class probabilities for each encoded text, batch by batch (sorted by length for speed)."""
    model.eval()
    order = np.argsort([len(x) for x in encoded], kind="stable")
    probs = np.zeros((len(encoded), model.config.num_labels), dtype=np.float32)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        batch = collate([encoded[i] for i in idx], pad_id, device)
        with autocast(device, dtype):
            logits = model(**batch).logits
        probs[idx] = torch.softmax(logits.float(), -1).cpu().numpy()
    return probs


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, n_labels: int) -> float:
    """Unweighted mean of per-class F1 over all `n_labels` classes (absent classes count 0)."""
    f1s = []
    for c in range(n_labels):
        tp = np.sum((y_pred == c) & (y_true == c))
        fp = np.sum((y_pred == c) & (y_true != c))
        fn = np.sum((y_pred != c) & (y_true == c))
        f1s.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return float(np.mean(f1s))


def finetune(model, tokenizer, architecture: str, train: pd.DataFrame, val: pd.DataFrame, n_labels: int,
             cfg: FinetuneConfig, seed: int, on_log=None) -> dict:
    """Fine-tune with early stopping on validation macro-F1; the best epoch's weights are kept.

    `tokenizer` must have been through `prepare_classifier_tokenizer`."""
    torch.manual_seed(seed)
    device, dtype = resolve_device_dtype(cfg.device, cfg.dtype)
    model.to(device)
    pad_id = tokenizer.pad_token_id
    train_x = encode_texts(tokenizer, train["text"].tolist(), cfg.max_length)
    train_y = torch.tensor(train["label"].to_numpy(), dtype=torch.long)
    val_x = encode_texts(tokenizer, val["text"].tolist(), cfg.max_length)
    val_y = val["label"].to_numpy()
    counts = np.bincount(train_y.numpy(), minlength=n_labels).astype(np.float64)
    weights = None
    if cfg.class_weighting:
        w = counts.sum() / (n_labels * np.maximum(counts, 1.0))
        weights = torch.tensor(w, dtype=torch.float32, device=device)

    steps_per_epoch = math.ceil(len(train_x) / (cfg.batch_size * cfg.grad_accum))
    orders: dict[int, np.ndarray] = {}

    def next_batch(step: int, micro: int) -> dict:
        epoch, pos = divmod(step, steps_per_epoch)
        if epoch not in orders:
            orders[epoch] = np.random.default_rng([seed, epoch]).permutation(len(train_x))
        start = (pos * cfg.grad_accum + micro) * cfg.batch_size
        idx = orders[epoch][start : start + cfg.batch_size]
        if len(idx) == 0:  # last step of an epoch with grad_accum: reuse the epoch's head
            idx = orders[epoch][: cfg.batch_size]
        batch = collate([train_x[i] for i in idx], pad_id, device)
        batch["labels"] = train_y[idx].to(device)
        return batch

    def loss_fn(m, batch):
        logits = m(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        return F.cross_entropy(logits.float(), batch["labels"], weight=weights)

    best = {"val_macro_f1": -1.0, "epoch": 0, "state": None}
    history: list[dict] = []

    def evaluate(step: int) -> bool:
        epoch = math.ceil(step / steps_per_epoch)
        preds = predict(model, val_x, pad_id, cfg.batch_size * 2, device, dtype).argmax(-1)
        score = macro_f1(val_y, preds, n_labels)
        acc = float(np.mean(preds == val_y))
        history.append({"epoch": epoch, "val_macro_f1": score, "val_accuracy": acc})
        if on_log:
            on_log(step, {"val_macro_f1": score, "val_accuracy": acc})
        if score > best["val_macro_f1"]:
            best.update(val_macro_f1=score, val_accuracy=acc, epoch=epoch,
                        state=copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()}))
        return epoch - best["epoch"] >= cfg.patience

    timing = fit(model, cfg, cfg.epochs * steps_per_epoch, next_batch, loss_fn,
                 evaluate=evaluate, eval_every=steps_per_epoch, on_log=on_log, log_every=max(1, steps_per_epoch // 4))
    model.load_state_dict(best["state"])
    return {"best_epoch": best["epoch"], "val_macro_f1": best["val_macro_f1"], "val_accuracy": best["val_accuracy"],
            "epochs_run": history[-1]["epoch"], "seconds": timing["seconds"], "history": history}
