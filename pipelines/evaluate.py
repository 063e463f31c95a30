"""Stage evaluate: every fine-tuned model on the held-out test split, against scratch -> comparison report."""
from __future__ import annotations

from pathlib import Path

from components import paths
from components.registry import tracking
from components.evaluate.metrics import bootstrap_diff_ci, classification_metrics, majority_baseline, markdown_table
from components.train.finetuning import encode_texts, predict, read_labelled
from components.io import read_json, write_json_atomic, write_text_atomic
from components.evaluate.report import (fill_mask_samples, generation_samples, plot_loss_curves, plot_macro_f1, read_curve,
                               samples_markdown)
from components.train.loop import resolve_device_dtype
from pipelines._stage import run_stage


def pretraining_summary(objective: str) -> tuple[dict, str]:
    metrics = read_json(Path(paths.PRETRAIN_REPORTS) / objective / "metrics.json")
    keep = {k: metrics[k] for k in ("val_loss", "val_perplexity", "val_mlm_accuracy", "val_nsp_accuracy") if k in metrics}
    if objective == "clm":
        text = f"perplexity {metrics['val_perplexity']:.1f}"
    else:
        text = f"MLM acc {metrics['val_mlm_accuracy']:.3f}"
        if "val_nsp_accuracy" in metrics:
            text += f", NSP acc {metrics['val_nsp_accuracy']:.3f}"
    return keep, text


def main(argv=None) -> None:
    def body(cfg: dict, _item) -> None:
        from transformers import AutoModelForSequenceClassification

        from components.tokens.tokenization import load_tokenizer

        ev = cfg["evaluate"]
        downstream = Path(paths.DOWNSTREAM_DIR)
        labels = read_json(downstream / "labels.json")["labels"]
        test = read_labelled(downstream / "test.parquet", labels)
        train_labels = read_labelled(downstream / "train.parquet", labels)["label"].to_numpy()
        y = test["label"].to_numpy()
        device, dtype = resolve_device_dtype("auto", "auto")
        predictions, runs = {}, []
        with tracking.stage_run("evaluate", cfg):
            for run in paths.FINETUNE_RUNS:
                model_dir = Path(paths.finetuned_dir(run))
                if not (model_dir / "config.json").exists():
                    raise FileNotFoundError(f"{model_dir}: no fine-tuned model; run the finetune stage first")
                architecture = paths.run_architecture(run)
                model = AutoModelForSequenceClassification.from_pretrained(str(model_dir)).to(device)
                tokenizer = load_tokenizer(model_dir)
                encoded = encode_texts(tokenizer, test["text"].tolist(), tokenizer.model_max_length)
                predictions[run] = predict(model, encoded, tokenizer.pad_token_id, ev.batch_size, device, dtype).argmax(-1)
                m = classification_metrics(y, predictions[run], labels)
                entry = {"objective": "scratch" if run.startswith("scratch-") else run, "run": run,
                         "architecture": architecture, "pretrained": not run.startswith("scratch-"),
                         "test_accuracy": m["accuracy"], "test_macro_f1": m["macro_f1"],
                         "per_class": m["per_class"], "confusion_matrix": m["confusion_matrix"]}
                if entry["pretrained"]:
                    entry["pretraining"], entry["pretraining_metric"] = pretraining_summary(run)
                runs.append(entry)
            for entry in runs:
                if entry["pretrained"]:
                    ci = bootstrap_diff_ci(y, predictions[entry["run"]], predictions[f"scratch-{entry['architecture']}"],
                                           len(labels), ev.bootstrap_samples, ev.confidence, cfg["seed"])
                    entry.update(delta_macro_f1_vs_scratch=ci["diff"], delta_ci_low=ci["ci_low"], delta_ci_high=ci["ci_high"],
                                 beats_scratch=ci["diff"] > 0)
                    tracking.log_metrics({f"{entry['run']}_delta_macro_f1": ci["diff"]})
                tracking.log_metrics({f"{entry['run']}_test_accuracy": entry["test_accuracy"],
                                      f"{entry['run']}_test_macro_f1": entry["test_macro_f1"]})
            majority = majority_baseline(train_labels, y, len(labels))
            report = {"labels": labels, "test_examples": int(len(y)), "confidence": ev.confidence,
                      "majority_baseline": majority, "runs": runs}
            # Flat numbers for `dvc metrics show/diff` (nested per-class tables stay in comparison.json).
            write_json_atomic(paths.COMPARISON_METRICS, {
                r["run"]: {"test_accuracy": round(r["test_accuracy"], 6), "test_macro_f1": round(r["test_macro_f1"], 6)}
                for r in runs})
            samples = {"clm": generation_samples(Path(paths.pretrained_dir("clm"))),
                       "mlm": fill_mask_samples(Path(paths.pretrained_dir("mlm"))),
                       "mlm_nsp": fill_mask_samples(Path(paths.pretrained_dir("mlm_nsp")))}
            report["samples"] = samples
            write_json_atomic(paths.COMPARISON_JSON, report)
            table = markdown_table(runs, majority)
            verdicts = "\n".join(
                f"- **{r['objective']}** {'beats' if r['delta_ci_low'] > 0 else 'does not clearly beat' if r['delta_macro_f1_vs_scratch'] > 0 else 'does not beat'} "
                f"scratch {r['architecture']}: {r['delta_macro_f1_vs_scratch']:+.3f} macro-F1 "
                f"(95% CI {r['delta_ci_low']:+.3f} to {r['delta_ci_high']:+.3f})"
                for r in runs if r["pretrained"])
            write_text_atomic(paths.COMPARISON_MD, f"# Objective comparison ({len(y)} test examples)\n\n{table}\n"
                              f"{verdicts}\n\n![macro-F1](comparison.png)\n![loss](pretraining_loss.png)\n\n"
                              f"{samples_markdown(samples)}")
            plot_macro_f1(runs, Path(paths.COMPARISON_PNG))
            plot_loss_curves({o: read_curve(Path(paths.PRETRAIN_REPORTS) / o / "train_loss.csv") for o in paths.OBJECTIVES},
                             Path(paths.LOSS_PNG))
            import mlflow

            for p in (paths.COMPARISON_JSON, paths.COMPARISON_MD, paths.COMPARISON_PNG, paths.LOSS_PNG):
                mlflow.log_artifact(p, artifact_path="report")
        print(table)

    run_stage("evaluate", body, argv=argv)


if __name__ == "__main__":
    main()
