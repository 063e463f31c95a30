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


def seeds_and_examples_bootstrap(y_true: np.ndarray, pred_a: np.ndarray, pred_b: np.ndarray, n_labels: int,
                                 samples: int, seed: int, score=macro_f1) -> dict:
    """The two-level paired bootstrap of mean over seeds of score(a) - score(b).

    `pred_a` and `pred_b` are (seeds, examples) arrays, row s of each from the same fine-tuning
    seed. Each replicate draws seeds with replacement (the seed-to-seed spread of fine-tuning)
    and test examples with replacement (the test set's sampling noise), the same example indices
    for both arms and every drawn seed (paired), and takes the mean over the drawn seeds of the
    difference. Returns the observed mean difference, the replicates and a two-sided bootstrap
    p-value of "no difference": twice the smaller share of replicates on either side of 0, with
    the +1 correction so it is never 0 (Davison & Hinkley 1997, eq. 4.11).
    """
    pred_a, pred_b = np.atleast_2d(pred_a), np.atleast_2d(pred_b)
    if pred_a.shape != pred_b.shape or pred_a.shape[1] != len(y_true):
        raise ValueError(f"seeds_and_examples_bootstrap: predictions {pred_a.shape} and {pred_b.shape} must both be "
                         f"(seeds, {len(y_true)})")
    n_seeds, n = pred_a.shape
    per_seed = np.array([score(y_true, a, n_labels) - score(y_true, b, n_labels) for a, b in zip(pred_a, pred_b)])
    rng = np.random.default_rng(seed)
    replicates = np.empty(samples)
    for i in range(samples):
        drawn = rng.integers(0, n_seeds, n_seeds)
        idx = rng.integers(0, n, n)
        y = y_true[idx]
        # A seed drawn twice counts twice, but is scored once.
        diff = {s: score(y, pred_a[s, idx], n_labels) - score(y, pred_b[s, idx], n_labels) for s in set(drawn.tolist())}
        replicates[i] = np.mean([diff[s] for s in drawn.tolist()])
    tail = min(np.sum(replicates <= 0), np.sum(replicates >= 0))
    return {"diff": float(per_seed.mean()), "per_seed": per_seed.tolist(), "replicates": replicates,
            "p_value": float(min(1.0, 2 * (tail + 1) / (samples + 1)))}


def percentile_ci(replicates: np.ndarray, confidence: float) -> tuple[float, float]:
    alpha = (1.0 - confidence) / 2
    return float(np.quantile(replicates, alpha)), float(np.quantile(replicates, 1 - alpha))


def holm(p_values: list[float], alpha: float) -> list[dict]:
    """Holm's step-down correction of `p_values` (one per hypothesis) at family-wise level `alpha`.

    Sorted ascending, the r-th smallest (r = 1..m) is tested at alpha / (m - r + 1) until the
    first that fails; it and every larger one are not rejected. Per hypothesis: its adjusted
    p-value (max over j <= r of min(1, (m - j + 1) p_(j))), whether it is rejected, and the
    level it was tested at, `alpha / (m - r + 1)`, where the hypotheses past the first failure
    keep that failure's level: a CI at confidence 1 - level is then the one whose exclusion of
    0 is Holm's decision.
    """
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    out: list[dict] = [{} for _ in range(m)]
    adjusted, stopped_at = 0.0, None
    for rank, i in enumerate(order):
        adjusted = max(adjusted, min(1.0, (m - rank) * p_values[i]))
        if stopped_at is None and p_values[i] > alpha / (m - rank):
            stopped_at = rank
        level_rank = rank if stopped_at is None else stopped_at
        out[i] = {"p_adjusted": adjusted, "rejected": stopped_at is None, "level": alpha / (m - level_rank)}
    return out


NOT_TRAINED = "did not train at this budget"
"""The verdict of an objective whose pretraining metric sits at its trivial baseline
(components.objectives: Objective.at_baseline): its Δ against scratch says nothing about it."""


def verdict(ci_low: float, ci_high: float) -> str:
    """The one-line verdict of a corrected CI of (pretrained - scratch)."""
    if ci_low > 0:
        return "pays off"
    if ci_high < 0:
        return "hurts"
    return "cannot tell at this budget"


def majority_baseline(train_labels: np.ndarray, y_test: np.ndarray, n_labels: int) -> dict:
    majority = int(np.bincount(train_labels, minlength=n_labels).argmax())
    pred = np.full_like(y_test, majority)
    return {"label": majority, "test_accuracy": float(np.mean(pred == y_test)),
            "test_macro_f1": macro_f1(y_test, pred, n_labels)}


def markdown_table(runs: list[dict], majority: dict) -> str:
    """Every run's test scores: per fine-tuning seed, their mean ± sd, and the primary model's
    (the registered one), beside the majority-class baseline."""
    lines = [
        "| objective | architecture | pretrained | lr | test macro-F1 per seed | macro-F1 mean ± sd | "
        "primary acc / macro-F1 | pretraining metric |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        per_seed = ", ".join(f"{p['test_macro_f1']:.3f}" for p in r["per_seed"])
        lines.append(
            f"| {r['objective']} | {r['architecture']} | {'yes' if r['pretrained'] else 'no'} | {r['chosen_lr']:g} | "
            f"{per_seed} | {r['test_macro_f1_seed_mean']:.3f} ± {r['test_macro_f1_seed_std']:.3f} | "
            f"{r['test_accuracy']:.3f} / {r['test_macro_f1']:.3f} | {r.get('pretraining_metric', '—')} |"
        )
    lines.append(f"| majority class | — | — | — | — | {majority['test_macro_f1']:.3f} | "
                 f"{majority['test_accuracy']:.3f} / {majority['test_macro_f1']:.3f} | — |")
    return "\n".join(lines) + "\n"


def verdict_table(runs: list[dict]) -> str:
    """Each objective against its scratch twin: the seed-paired Δ macro-F1, its corrected CI
    and verdict, beside the compute its pretraining used."""
    lines = [
        "| objective | vs | Δ macro-F1 (mean over seeds) | Δ per seed | CI (level) | Holm p | verdict | "
        "pretraining tokens | supervised targets | FLOPs |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        if not r["pretrained"]:
            continue
        compute = r.get("pretraining_compute", {})
        per_seed = ", ".join(f"{d:+.3f}" for d in r["delta_per_seed"].values())
        lines.append(
            f"| {r['objective']} | scratch-{r['architecture']} | {r['delta_macro_f1_vs_scratch']:+.3f} | {per_seed} | "
            f"[{r['delta_ci_low']:+.3f}, {r['delta_ci_high']:+.3f}] ({r['delta_ci_level']:.1%}) | "
            f"{r['delta_p_holm']:.3f} | **{r['verdict']}** | {_count(compute.get('tokens_seen'))} | "
            f"{_targets(compute)} | {_count(compute.get('flops'))} |"
        )
    return "\n".join(lines) + "\n"


def _count(value) -> str:
    return "—" if value is None else f"{value:.3g}"


def _targets(compute: dict) -> str:
    """The supervised targets: predicted tokens (CLM) or masked positions (MLM), + NSP pairs."""
    if compute.get("supervised_targets") is None:
        return "—"
    text = f"{compute['supervised_targets']:.3g} {compute.get('target_kind', '')}".strip()
    if compute.get("nsp_pairs"):
        text += f" + {compute['nsp_pairs']:.3g} NSP pairs"
    return text
