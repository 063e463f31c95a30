"""Classification scores: the home of macro-F1, which fine-tuning selects epochs by and
evaluation reports (components.evaluate.metrics builds on these)."""
from __future__ import annotations

import numpy as np


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_labels: int) -> np.ndarray:
    """Counts of (true class, predicted class): rows are the truth."""
    confusion = np.zeros((n_labels, n_labels), dtype=np.int64)
    np.add.at(confusion, (y_true, y_pred), 1)
    return confusion


def f1_per_class(confusion: np.ndarray) -> list[float]:
    """F1 of each class from a confusion matrix, as 2·tp / (2·tp + fp + fn); 0 for a class never
    predicted correctly (absent classes included)."""
    f1s = []
    for c in range(len(confusion)):
        tp = confusion[c, c]
        fp = confusion[:, c].sum() - tp
        fn = confusion[c, :].sum() - tp
        f1s.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return f1s


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, n_labels: int) -> float:
    """Unweighted mean of per-class F1 over all `n_labels` classes (absent classes count 0)."""
    return float(np.mean(f1_per_class(confusion_matrix(y_true, y_pred, n_labels))))
