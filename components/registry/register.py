"""The register stage's work: every fine-tuned classifier and every pretrained base into the
MLflow registry, with lineage and a model card, `challenger` -> `champion` behind the gate."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, ContextManager, Sequence

from components import paths
from components.io import read_json, write_json_atomic
from components.registry import tracking
from components.registry.lineage import model_lineage, redact, weights_digest
from components.registry.model_card import render_model_card
from components.config import RegisterConfig
from components.registry.models import base_model_name, model_name, register_model

CLASSIFIER_METRICS = ("test_accuracy", "test_macro_f1", "test_macro_f1_seed_mean", "delta_macro_f1_vs_scratch", "delta_ci_low",
                      "delta_ci_high", "delta_ci_level")


def register_all(runs: Sequence, cfg: RegisterConfig, track: Callable[[], ContextManager]) -> dict:
    """Register every run's classifier (FinetuneRun specs from components.objectives), then the
    pretrained base of each pretrained one, from reports/comparison.json; writes
    reports/registry.json inside `track()` (the stage's MLflow run) and returns it."""
    import mlflow

    report = read_json(paths.COMPARISON_JSON)
    by_run = {r["run"]: r for r in report["runs"]}
    missing = [run.name for run in runs if run.name not in by_run]
    if missing:
        raise ValueError(f"{paths.COMPARISON_JSON}: no results for {', '.join(missing)}; run the evaluate stage")
    with track():
        classifiers = {run.name: register_run(run, by_run[run.name], report, cfg) for run in runs}
        bases = [register_run(run, by_run[run.name], report, cfg, classifiers[run.name])
                 for run in runs if run.pretrained]
        registry = {"models": list(classifiers.values()), "bases": bases}
        write_json_atomic(paths.REGISTRY_JSON, registry)
        mlflow.log_artifact(paths.REGISTRY_JSON)
        mlflow.log_text(redact(Path("params.yaml").read_text()), "lineage/params.yaml")
    return registry


def register_run(run, entry: dict, report: dict, cfg: RegisterConfig, classifier_version: dict | None = None) -> dict:
    """Register the classifier fine-tuned in `run`, or (with `classifier_version`) its pretrained base."""
    lineage = run_lineage(run, classifier=classifier_version is None)
    metrics = {k: entry[k] for k in CLASSIFIER_METRICS if k in entry}
    gate = (f"Promotion: `champion` only if the lower bound of the {cfg.confidence:.0%} paired-bootstrap CI of "
            f"(this version - the champion) on `{cfg.gate_metric}`, over one test split, exceeds "
            f"{cfg.min_improvement}; the version's `lmforge.promotion` and `lmforge.gate_ci_*` tags say why.")
    if classifier_version is None:
        # The primary model (the first seed at the chosen lr): the one whose test predictions
        # evaluate saved in the entry, so the gate judges exactly what is served.
        name, task, model_dir = model_name(cfg, run.name), "text-classification", Path(paths.primary_model_dir(run.name))
        metrics["majority_baseline_macro_f1"] = report["majority_baseline"]["test_macro_f1"]
        baselines = {"test_macro_f1": "majority_baseline_macro_f1"}
        labels = report["labels"]
        evidence = test_split_evidence(entry, labels, cfg, run.architecture.classifier_head)
    else:
        name, task, model_dir = base_model_name(cfg, run.name), run.objective.registry_task, run.pretrained_dir()
        metrics.update(entry.get("pretraining", {}))
        baselines = dict(run.objective.baselines)
        lineage["gate_source"] = (f"{classifier_version['name']} v{classifier_version['version']}: "
                                  f"the classifier fine-tuned from this base")
        gate += f" For a base, the evidence is that of {lineage['gate_source'].split(':')[0]} against its champion."
        labels = None
        evidence = base_evidence(classifier_version, lineage["gate_source"].split(":")[0])
    card = render_model_card(name, task, run.description, metrics, lineage, labels, parameter_count(model_dir), gate,
                             baselines)
    decision = register_model(name, model_dir, task, metrics, lineage, cfg, files=lineage_files(), card=card,
                              evidence=evidence)
    print(f"register: {decision['name']} v{decision['version']} @{','.join(decision['aliases'])}"
          f"{' (new)' if decision['new_version'] else ''}: {decision['reason']}")
    return {"objective": run.name, "run": run.name, "task": task, **decision}


def run_lineage(run, classifier: bool) -> dict[str, str]:
    """The lineage record, plus the MLflow runs that wrote the weights: the fine-tuning run
    (for a classifier) and the pretraining run (for a pretrained run's models)."""
    lineage = model_lineage(run.name, run.architecture.name, run.pretrained)
    if classifier:
        lineage["finetune_run_id"], lineage["finetune_run_match"] = tracking.find_stage_run(
            "finetune", run.name, weights_digest(paths.primary_model_dir(run.name)))
    if run.pretrained:
        lineage["pretrain_run_id"], lineage["pretrain_run_match"] = tracking.find_stage_run(
            "pretrain", run.name, weights_digest(run.pretrained_dir()))
    return lineage


def test_split_evidence(entry: dict, labels: list[str], cfg: RegisterConfig, head: Sequence[str] = ()) -> Callable:
    """The gate's `evidence(champion)` for a classifier: its test predictions saved by evaluate
    and the champion's, re-scored on the same test split, in a paired bootstrap (`head`: the
    architecture's `classifier_head`, run in fp32 as evaluate runs it)."""
    import numpy as np

    from components.train.finetuning import read_labelled

    test = read_labelled(Path(paths.DOWNSTREAM_DIR) / "test.parquet", labels)
    pred = np.asarray(entry.get("test_predictions", []))
    if len(pred) != len(test):
        raise ValueError(f"{paths.COMPARISON_JSON}: {entry['run']} has {len(pred)} test predictions for "
                         f"{len(test)} test examples; rerun the evaluate stage")
    return paired_evidence(pred, test["text"].tolist(), test["label"].to_numpy(), labels, cfg, head)


def paired_evidence(pred, texts: list[str], y, labels: list[str], cfg: RegisterConfig,
                    head: Sequence[str] = ()) -> Callable:
    """`evidence(champion)`: the paired-bootstrap CI of (pred - the champion's predictions on
    `texts`) on the gate metric; None when the champion's labels differ."""
    from components.evaluate.metrics import accuracy, bootstrap_diff_ci, macro_f1

    score = {"test_macro_f1": macro_f1, "test_accuracy": accuracy}[cfg.gate_metric]

    def evidence(champion):
        theirs = classifier_predictions(champion, texts, labels, head)
        if theirs is None:
            return None
        # A fixed seed: the same predictions always give the same decision.
        return bootstrap_diff_ci(y, pred, theirs, len(labels), cfg.bootstrap_samples, cfg.confidence, 0, score)

    return evidence


def base_evidence(classifier_decision: dict, source: str) -> Callable:
    """A base's `evidence(champion)`: the CI its classifier got against that classifier's champion."""
    ci = classifier_decision.get("ci")
    return lambda champion: None if ci is None else {**ci, "note": f" (evidence: {source})"}


def classifier_predictions(version, texts: list[str], labels: list[str], head: Sequence[str] = ()):
    """A registered classifier's label ids for `texts`, predicted as evaluate predicts (same
    device and precision, `head` in fp32, same encoding); None if its labels differ."""
    from components.registry.models import load_version
    from components.train.finetuning import encode_for_classifier, predict
    from components.train.loop import resolve_device_dtype

    parts = load_version(version, return_type="components")
    model, tokenizer = parts["model"], parts["tokenizer"]
    if [model.config.id2label[i] for i in range(model.config.num_labels)] != list(labels):
        return None
    device, dtype = resolve_device_dtype("auto", "auto")
    encoded = encode_for_classifier(tokenizer, texts, tokenizer.model_max_length)
    return predict(model.to(device), encoded, tokenizer.pad_token_id, 64, device, dtype, head).argmax(-1)


def rescore_classifier(champion, texts: list[str], y, labels: list[str], metric: str,
                       head: Sequence[str] = ()) -> float | None:
    """A registered classifier's `metric` on these texts (None if its labels differ)."""
    from components.evaluate.metrics import classification_metrics

    pred = classifier_predictions(champion, texts, labels, head)
    if pred is None:
        return None
    m = classification_metrics(y, pred, list(labels))
    return {"test_macro_f1": m["macro_f1"], "test_accuracy": m["accuracy"]}[metric]


def parameter_count(model_dir: Path) -> int:
    """Parameters in a model directory's safetensors weights (read from the headers, no tensors loaded)."""
    from safetensors import safe_open

    total = 0
    for file in Path(model_dir).glob("*.safetensors"):
        with safe_open(str(file), "pt") as f:
            for key in f.keys():
                n = 1
                for d in f.get_slice(key).get_shape():
                    n *= d
                total += n
    return total


def lineage_files() -> dict[str, str]:
    """Files stored next to each model: the params file itself, the DVC lock, the GX result."""
    return {"params.yaml": "params.yaml", "dvc.lock": "dvc.lock",
            "validation.json": str(Path(paths.VALIDATION_DIR) / "result.json")}
