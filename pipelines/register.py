"""Stage register: every fine-tuned classifier and every pretrained base into the MLflow registry,
with lineage and a model card, `challenger` -> `champion` behind the gate."""
from __future__ import annotations

from pathlib import Path

from components import paths
from components.registry import tracking
from components.io import read_json, write_json_atomic
from components.registry.lineage import model_lineage, redact, weights_digest
from components.registry.model_card import render_model_card
from components.config import RegisterConfig
from components.registry.models import base_model_name, model_name, register_model
from pipelines._stage import run_stage

BASE_TASK = {"clm": "text-generation", "mlm": "fill-mask", "mlm_nsp": "fill-mask"}
CLASSIFIER_METRICS = ("test_accuracy", "test_macro_f1", "delta_macro_f1_vs_scratch", "delta_ci_low", "delta_ci_high")


def parameter_count(model_dir: Path) -> int:
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


def rescore_classifier(champion, texts: list[str], y, labels: list[str], metric: str) -> float | None:
    """The champion classifier's gate metric on this test split (None if its labels differ)."""
    from components.evaluate.metrics import classification_metrics
    from components.train.finetuning import encode_texts, predict
    from components.registry.models import load_version
    from components.train.loop import resolve_device_dtype

    parts = load_version(champion, return_type="components")
    model, tokenizer = parts["model"], parts["tokenizer"]
    if [model.config.id2label[i] for i in range(model.config.num_labels)] != list(labels):
        return None
    device, dtype = resolve_device_dtype("auto", "auto")
    encoded = encode_texts(tokenizer, texts, tokenizer.model_max_length)
    pred = predict(model.to(device), encoded, tokenizer.pad_token_id, 64, device, dtype).argmax(-1)
    m = classification_metrics(y, pred, list(labels))
    return {"test_macro_f1": m["macro_f1"], "test_accuracy": m["accuracy"]}[metric]


def lineage_files() -> dict[str, str]:
    """Files stored next to each model: the params file itself, the DVC lock, the GX result."""
    return {"params.yaml": "params.yaml", "dvc.lock": "dvc.lock",
            "validation.json": str(Path(paths.VALIDATION_DIR) / "result.json")}


def register_run(run: str, entry: dict, report: dict, cfg: RegisterConfig, classifier_version: dict | None = None):
    """Register the classifier fine-tuned in `run`, or (with `classifier_version`) its pretrained base."""
    lineage = model_lineage(run)
    ft_dir = Path(paths.finetuned_dir(run))
    if classifier_version is None:
        lineage["finetune_run_id"], lineage["finetune_run_match"] = tracking.find_stage_run(
            "finetune", run, weights_digest(ft_dir))
    if run in paths.OBJECTIVES:
        lineage["pretrain_run_id"], lineage["pretrain_run_match"] = tracking.find_stage_run(
            "pretrain", run, weights_digest(paths.pretrained_dir(run)))
    metrics = {k: entry[k] for k in CLASSIFIER_METRICS if k in entry}
    gate = (f"Promotion: `champion` only if `{cfg.gate_metric}` beats the current champion's by more than "
            f"{cfg.min_improvement} on the same test split; the version's `lmforge.promotion` tag says why.")
    if classifier_version is None:
        name, task, model_dir = model_name(cfg, run), "text-classification", ft_dir
        metrics["majority_baseline_macro_f1"] = report["majority_baseline"]["test_macro_f1"]
        labels = report["labels"]
    else:
        name, task, model_dir = base_model_name(cfg, run), BASE_TASK[run], Path(paths.pretrained_dir(run))
        metrics.update(entry.get("pretraining", {}))
        lineage["gate_source"] = (f"{classifier_version['name']} v{classifier_version['version']}: "
                                  f"the classifier fine-tuned from this base")
        gate += f" For a base, the metric is that of {lineage['gate_source'].split(':')[0]}."
        labels = None
    card = render_model_card(name, task, run, metrics, lineage, labels, parameter_count(model_dir), gate)
    rescore = None
    if classifier_version is None:
        def rescore(champion):
            from components.train.finetuning import read_labelled

            test = read_labelled(Path(paths.DOWNSTREAM_DIR) / "test.parquet", labels)
            return rescore_classifier(champion, test["text"].tolist(), test["label"].to_numpy(), labels,
                                      cfg.gate_metric)
    decision = register_model(name, model_dir, task, metrics, lineage, cfg, files=lineage_files(), card=card,
                              rescore=rescore)
    print(f"register: {decision['name']} v{decision['version']} @{','.join(decision['aliases'])}"
          f"{' (new)' if decision['new_version'] else ''}: {decision['reason']}")
    return {"objective": run, "run": run, "task": task, **decision}


def main(argv=None) -> None:
    def body(cfg: dict, _item) -> None:
        import mlflow

        reg_cfg = cfg["register"]
        report = read_json(paths.COMPARISON_JSON)
        by_run = {r["run"]: r for r in report["runs"]}
        missing = [r for r in paths.FINETUNE_RUNS if r not in by_run]
        if missing:
            raise ValueError(f"{paths.COMPARISON_JSON}: no results for {', '.join(missing)}; run the evaluate stage")
        with tracking.stage_run("register", cfg):
            classifiers = {run: register_run(run, by_run[run], report, reg_cfg) for run in paths.FINETUNE_RUNS}
            bases = [register_run(o, by_run[o], report, reg_cfg, classifiers[o]) for o in paths.OBJECTIVES]
            write_json_atomic(paths.REGISTRY_JSON, {"models": list(classifiers.values()), "bases": bases})
            mlflow.log_artifact(paths.REGISTRY_JSON)
            mlflow.log_text(redact(Path("params.yaml").read_text()), "lineage/params.yaml")

    run_stage("register", body, argv=argv)


if __name__ == "__main__":
    main()
