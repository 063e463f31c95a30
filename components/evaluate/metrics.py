"""Downstream metrics, bootstrap confidence intervals and the objective comparison report."""
from __future__ import annotations

import numpy as np

from components.train.scores import confusion_matrix, f1_per_class, macro_f1


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, labels: list[str]) -> dict:
    """Accuracy, macro-F1, per-class precision/recall/F1 and the confusion matrix (rows = truth)."""
    confusion = confusion_matrix(y_true, y_pred, len(labels))
    per_class = {}
    for c, name in enumerate(labels):
        tp = confusion[c, c]
        predicted, actual = confusion[:, c].sum(), confusion[c, :].sum()
        precision = float(tp / predicted) if predicted else 0.0
        recall = float(tp / actual) if actual else 0.0
        # The harmonic mean of the precision and recall shown; it equals f1_per_class's
        # count form up to float rounding, and the report has always printed this one.
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = {"precision": precision, "recall": recall, "f1": f1, "support": int(actual)}
    return {
        "accuracy": float(np.mean(y_true == y_pred)) if len(y_true) else 0.0,
        "macro_f1": float(np.mean(f1_per_class(confusion))),
        "per_class": per_class,
        "confusion_matrix": confusion.tolist(),
    }


def accuracy(y_true: np.ndarray, y_pred: np.ndarray, n_labels: int) -> float:
    return float(np.mean(y_true == y_pred)) if len(y_true) else 0.0


def bootstrap_diff_ci(y_true: np.ndarray, pred_a: np.ndarray, pred_b: np.ndarray, n_labels: int,
                      samples: int, confidence: float, seed: int, score=macro_f1) -> dict:
    """Paired bootstrap CI of score(a) - score(b) over test examples (score: macro-F1 unless given)."""
    rng = np.random.default_rng(seed)
    n = len(y_true)
    diffs = np.empty(samples)
    for i in range(samples):
        idx = rng.integers(0, n, n)
        diffs[i] = score(y_true[idx], pred_a[idx], n_labels) - score(y_true[idx], pred_b[idx], n_labels)
    alpha = (1.0 - confidence) / 2
    return {
        "diff": score(y_true, pred_a, n_labels) - score(y_true, pred_b, n_labels),
        "ci_low": float(np.quantile(diffs, alpha)),
        "ci_high": float(np.quantile(diffs, 1 - alpha)),
    }


def majority_baseline(train_labels: np.ndarray, y_test: np.ndarray, n_labels: int) -> dict:
    majority = int(np.bincount(train_labels, minlength=n_labels).argmax())
    pred = np.full_like(y_test, majority)
    return {"label": majority, "test_accuracy": float(np.mean(pred == y_test)),
            "test_macro_f1": macro_f1(y_test, pred, n_labels)}


def markdown_table(runs: list[dict], majority: dict) -> str:
    lines = [
        "| objective | architecture | pretrained | test accuracy | test macro-F1 | Δ macro-F1 vs scratch (95% CI) | pretraining metric |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        delta = "—"
        if r.get("delta_macro_f1_vs_scratch") is not None:
            delta = f"{r['delta_macro_f1_vs_scratch']:+.3f} [{r['delta_ci_low']:+.3f}, {r['delta_ci_high']:+.3f}]"
        lines.append(
            f"| {r['objective']} | {r['architecture']} | {'yes' if r['pretrained'] else 'no'} | "
            f"{r['test_accuracy']:.3f} | {r['test_macro_f1']:.3f} | {delta} | {r.get('pretraining_metric', '—')} |"
        )
    lines.append(
        f"| majority class | — | — | {majority['test_accuracy']:.3f} | {majority['test_macro_f1']:.3f} | — | — |"
    )
    return "\n".join(lines) + "\n"
