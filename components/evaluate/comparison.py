"""The evaluate stage's work: every fine-tuned model scored on the held-out test split, each
pretrained one against its architecture's scratch twin (a paired bootstrap CI of the
macro-F1 difference), written as the comparison report (json, markdown, plots, samples)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, ContextManager, Sequence

import numpy as np

from components import paths
from components.config import EvaluateConfig
from components.evaluate.metrics import bootstrap_diff_ci, classification_metrics, majority_baseline, markdown_table
from components.evaluate.report import BASELINES_NOTE, plot_loss_curves, plot_macro_f1, read_curve, samples_markdown
from components.io import read_json, write_json_atomic, write_text_atomic
from components.tokens.tokenization import load_tokenizer
from components.train.finetuning import encode_for_classifier, predict, read_labelled
from components.train.loop import resolve_device_dtype

REPORT_FILES = (paths.COMPARISON_JSON, paths.COMPARISON_MD, paths.COMPARISON_PNG, paths.LOSS_PNG)


def compare_runs(runs: Sequence, cfg: EvaluateConfig, seed: int, track: Callable[[], ContextManager],
                 log_metrics: Callable[[dict], None], log_artifacts: Callable[[Sequence[str]], None]) -> str:
    """Score every fine-tuning run (FinetuneRun specs from components.objectives) and write the
    comparison report; returns its markdown table.

    The downstream splits are read before `track()` opens the run that `log_metrics` and
    `log_artifacts` report to (the stage's MLflow run).
    """
    downstream = Path(paths.DOWNSTREAM_DIR)
    labels = read_json(downstream / "labels.json")["labels"]
    test = read_labelled(downstream / "test.parquet", labels)
    train_labels = read_labelled(downstream / "train.parquet", labels)["label"].to_numpy()
    y = test["label"].to_numpy()
    device, dtype = resolve_device_dtype("auto", "auto")
    with track():
        scored = [score_run(run, test, labels, cfg.batch_size, device, dtype) for run in runs]
        entries = [entry for entry, _ in scored]
        predictions = {entry["run"]: pred for entry, pred in scored}
        scratch = {run.architecture.name: run.architecture.scratch_run for run in runs}
        for entry in entries:
            if entry["pretrained"]:
                ci = bootstrap_diff_ci(y, predictions[entry["run"]], predictions[scratch[entry["architecture"]]],
                                       len(labels), cfg.bootstrap_samples, cfg.confidence, seed)
                entry.update(delta_macro_f1_vs_scratch=ci["diff"], delta_ci_low=ci["ci_low"],
                             delta_ci_high=ci["ci_high"], beats_scratch=ci["diff"] > 0)
                log_metrics({f"{entry['run']}_delta_macro_f1": ci["diff"]})
            log_metrics({f"{entry['run']}_test_accuracy": entry["test_accuracy"],
                         f"{entry['run']}_test_macro_f1": entry["test_macro_f1"]})
        majority = majority_baseline(train_labels, y, len(labels))
        report = {"labels": labels, "test_examples": int(len(y)), "confidence": cfg.confidence,
                  "majority_baseline": majority, "runs": entries}
        table = write_report(report, [run.objective for run in runs if run.pretrained])
        log_artifacts(REPORT_FILES)
    return table


def score_run(run, test, labels: list[str], batch_size: int, device, dtype) -> tuple[dict, np.ndarray]:
    """(the run's report entry, its test predictions) from its saved classifier."""
    from transformers import AutoModelForSequenceClassification

    model_dir = Path(paths.finetuned_dir(run.name))
    if not (model_dir / "config.json").exists():
        raise FileNotFoundError(f"{model_dir}: no fine-tuned model; run the finetune stage first")
    model = AutoModelForSequenceClassification.from_pretrained(str(model_dir)).to(device)
    tokenizer = load_tokenizer(model_dir)
    encoded = encode_for_classifier(tokenizer, test["text"].tolist(), tokenizer.model_max_length)
    pred = predict(model, encoded, tokenizer.pad_token_id, batch_size, device, dtype,
                   head=run.architecture.classifier_head).argmax(-1)
    m = classification_metrics(test["label"].to_numpy(), pred, labels)
    entry = {"objective": run.report_objective, "run": run.name, "architecture": run.architecture.name,
             "pretrained": run.pretrained, "test_accuracy": m["accuracy"], "test_macro_f1": m["macro_f1"],
             "per_class": m["per_class"], "confusion_matrix": m["confusion_matrix"],
             "test_predictions": pred.tolist()}  # the register gate's paired bootstrap needs them
    if run.pretrained:
        metrics = read_json(Path(paths.PRETRAIN_REPORTS) / run.objective.name / "metrics.json")
        entry["pretraining"], entry["pretraining_metric"] = run.objective.pretraining_summary(metrics)
    return entry, pred


def write_report(report: dict, objectives: Sequence) -> str:
    """comparison.json (with each objective's samples), metrics.json (flat, for `dvc metrics`),
    comparison.md and the two plots; returns the markdown table."""
    runs = report["runs"]
    # Flat numbers for `dvc metrics show/diff` (nested per-class tables stay in comparison.json).
    write_json_atomic(paths.COMPARISON_METRICS, {
        r["run"]: {"test_accuracy": round(r["test_accuracy"], 6), "test_macro_f1": round(r["test_macro_f1"], 6)}
        for r in runs})
    report["samples"] = {o.name: o.samples(Path(paths.pretrained_dir(o.name))) for o in objectives}
    write_json_atomic(paths.COMPARISON_JSON, report)
    table = markdown_table(runs, report["majority_baseline"])
    verdicts = "\n".join(
        f"- **{r['objective']}** {_verdict(r)} scratch {r['architecture']}: {r['delta_macro_f1_vs_scratch']:+.3f} "
        f"macro-F1 (95% CI {r['delta_ci_low']:+.3f} to {r['delta_ci_high']:+.3f})"
        for r in runs if r["pretrained"])
    write_text_atomic(paths.COMPARISON_MD, f"# Objective comparison ({report['test_examples']} test examples)\n\n"
                      f"{table}\n{BASELINES_NOTE}\n\n{verdicts}\n\n"
                      "![macro-F1](comparison.png)\n![loss](pretraining_loss.png)\n\n"
                      f"{samples_markdown(report['samples'])}")
    plot_macro_f1(runs, Path(paths.COMPARISON_PNG))
    plot_loss_curves({o.name: read_curve(Path(paths.PRETRAIN_REPORTS) / o.name / "train_loss.csv")
                      for o in objectives}, Path(paths.LOSS_PNG))
    return table


def _verdict(r: dict) -> str:
    if r["delta_ci_low"] > 0:
        return "beats"
    return "does not clearly beat" if r["delta_macro_f1_vs_scratch"] > 0 else "does not beat"
