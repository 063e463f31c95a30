"""The evaluate stage's work: every seed's fine-tuned model scored on the held-out test split,
each pretrained run against its architecture's scratch twin (seed-paired mean macro-F1
difference, a two-level bootstrap CI corrected by Holm across objectives, a verdict), written
as the comparison report (json, markdown, plots, samples)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, ContextManager, Sequence

import numpy as np

from components import paths
from components.config import EvaluateConfig
from components.evaluate.metrics import (NOT_TRAINED, classification_metrics, holm, majority_baseline, markdown_table, percentile_ci,
                                         seeds_and_examples_bootstrap, verdict, verdict_table)
from components.evaluate.report import BASELINES_NOTE, plot_loss_curves, plot_macro_f1, read_curve, samples_markdown
from components.io import read_json, write_json_atomic, write_text_atomic
from components.tokens.tokenization import load_tokenizer
from components.train.finetuning import encode_for_classifier, predict, read_labelled
from components.train.loop import resolve_device_dtype

REPORT_FILES = (paths.COMPARISON_JSON, paths.COMPARISON_MD, paths.COMPARISON_PNG, paths.LOSS_PNG)


def compare_runs(runs: Sequence, cfg: EvaluateConfig, seed: int, track: Callable[[], ContextManager],
                 log_metrics: Callable[[dict], None], log_artifacts: Callable[[Sequence[str]], None]) -> str:
    """Score every seed's classifier of every fine-tuning run (FinetuneRun specs from
    components.objectives) and write the comparison report; returns its markdown table.

    Each objective is compared with its architecture's scratch twin, seed by seed (the same
    seed values in every run): the mean paired difference of test macro-F1, a two-level
    bootstrap CI (seeds and test examples) corrected across the objectives by Holm, and a
    verdict. This is the only stage that reads the test split. The downstream splits are
    read before `track()` opens the run that `log_metrics` and `log_artifacts` report to.
    """
    downstream = Path(paths.DOWNSTREAM_DIR)
    labels = read_json(downstream / "labels.json")["labels"]
    test = read_labelled(downstream / "test.parquet", labels)
    train_labels = read_labelled(downstream / "train.parquet", labels)["label"].to_numpy()
    y = test["label"].to_numpy()
    selections = {run.name: read_selection(run.name) for run in runs}
    seeds = common_seeds(selections)
    device, dtype = resolve_device_dtype("auto", "auto")
    with track():
        entries, predictions = [], {}
        for run in runs:
            entry, predictions[run.name] = score_run(run, selections[run.name], test, labels, cfg.batch_size,
                                                     device, dtype)
            entries.append(entry)
            log_metrics({f"{run.name}_test_accuracy": entry["test_accuracy"],
                         f"{run.name}_test_macro_f1": entry["test_macro_f1"],
                         f"{run.name}_test_macro_f1_seed_mean": entry["test_macro_f1_seed_mean"]})
        scratch = {run.architecture.name: run.architecture.scratch_run for run in runs}
        compared = [e for e in entries if e["pretrained"]]
        boots = [seeds_and_examples_bootstrap(y, predictions[e["run"]], predictions[scratch[e["architecture"]]],
                                              len(labels), cfg.bootstrap_samples, seed) for e in compared]
        alpha = 1.0 - cfg.confidence
        for entry, boot, holm_result in zip(compared, boots, holm([b["p_value"] for b in boots], alpha)):
            level = 1.0 - holm_result["level"]
            low, high = percentile_ci(boot["replicates"], level)
            entry.update(delta_macro_f1_vs_scratch=boot["diff"], delta_per_seed=dict(zip(map(str, seeds),
                                                                                         boot["per_seed"])),
                         delta_ci_low=low, delta_ci_high=high, delta_ci_level=level,
                         delta_p_value=boot["p_value"], delta_p_holm=holm_result["p_adjusted"],
                         verdict=pretrained_verdict(entry, low, high), beats_scratch=low > 0)
            log_metrics({f"{entry['run']}_delta_macro_f1": boot["diff"], f"{entry['run']}_delta_ci_low": low,
                         f"{entry['run']}_delta_ci_high": high})
        specs = {run.name: run for run in runs}
        for entry in compared:
            rival = specs[entry["run"]].objective.rival
            if rival and rival in predictions:
                entry["versus_rival"] = versus_rival(entry, next(e for e in entries if e["run"] == rival),
                                                     predictions, y, len(labels), cfg, seed)
                log_metrics({f"{entry['run']}_minus_{rival}_macro_f1": entry["versus_rival"]["delta_macro_f1"]})
        majority = majority_baseline(train_labels, y, len(labels))
        report = {"labels": labels, "test_examples": int(len(y)), "train_examples": int(len(train_labels)),
                  "confidence": cfg.confidence, "seeds": seeds,
                  "ci_method": ci_method(len(seeds), cfg, len(compared)),
                  "majority_baseline": majority, "runs": entries}
        table = write_report(report, [run.objective for run in runs if run.pretrained])
        log_artifacts(REPORT_FILES)
    return table


def pretrained_verdict(entry: dict, ci_low: float, ci_high: float) -> str:
    """The verdict on a pretrained run against scratch, from its corrected CI; none on the
    objective when its pretraining sat at its trivial baseline (`did_not_train`, the spec's rule)."""
    return NOT_TRAINED if entry.get("did_not_train") else verdict(ci_low, ci_high)


def versus_rival(entry: dict, rival: dict, predictions: dict, y: np.ndarray, n_labels: int, cfg: EvaluateConfig,
                 seed: int) -> dict:
    """An objective against the objective it is judged with at equal pretraining FLOPs (its
    spec's `rival`: rtd against mlm): the same seed-paired two-level bootstrap as against
    scratch, one planned comparison at the report's confidence, and both runs' FLOPs."""
    boot = seeds_and_examples_bootstrap(y, predictions[entry["run"]], predictions[rival["run"]], n_labels,
                                        cfg.bootstrap_samples, seed)
    low, high = percentile_ci(boot["replicates"], cfg.confidence)
    ours, theirs = (e.get("pretraining_compute", {}).get("flops") for e in (entry, rival))
    said = f"{'beats' if low > 0 else 'loses to' if high < 0 else 'cannot be told from'} {rival['run']}"
    untrained = [e["run"] for e in (entry, rival) if e.get("did_not_train")]
    if untrained:  # no verdict on objectives that did not train
        said = f"not judged against {rival['run']}: {' and '.join(untrained)} {NOT_TRAINED}"
    return {"rival": rival["run"], "delta_macro_f1": boot["diff"], "ci_low": low, "ci_high": high,
            "ci_level": cfg.confidence, "p_value": boot["p_value"], "verdict": said,
            "flops": ours, "rival_flops": theirs, "flops_ratio": ours / theirs if ours and theirs else None}


def ci_method(n_seeds: int, cfg: EvaluateConfig, family: int) -> str:
    """The report's sentence on how the CIs and verdicts were made."""
    alpha = 1.0 - cfg.confidence
    return (f"Δ = mean over {n_seeds} fine-tuning seeds (paired by seed) of test macro-F1(pretrained) - "
            f"macro-F1(scratch twin). CI: two-level paired bootstrap ({cfg.bootstrap_samples} replicates; each "
            f"draws seeds with replacement and test examples with replacement, the same examples for both "
            f"arms), so it covers seed and test-set variance. Multiplicity: Holm over the {family} objectives "
            f"at family-wise α = {alpha:.2g} on two-sided bootstrap p-values; each CI is at the level Holm "
            f"tests that objective at (1 - α/{family} for the smallest p, then 1 - α/{max(family - 1, 1)}, ...), "
            f"so its excluding 0 is Holm's decision. Verdict: pays off if the CI's lower bound > 0, hurts if "
            f"its upper bound < 0, else cannot tell at this budget.")


def read_selection(run: str) -> dict:
    """The finetune stage's selection.json of `run`: its seeds, chosen lr and primary model."""
    path = Path(paths.selection_json(run))
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing; run the finetune stage for {run} first")
    return read_json(path)


def common_seeds(selections: dict[str, dict]) -> list[int]:
    """The seed values every run was fine-tuned with (pairing needs the same ones)."""
    seeds = {run: s["seeds"] for run, s in selections.items()}
    first = next(iter(seeds.values()))
    for run, values in seeds.items():
        if values != first:
            raise ValueError(f"{paths.selection_json(run)}: seeds {values} differ from another run's {first}; "
                             f"rerun the finetune stages with the same finetune.seeds and seed")
    return first


def score_run(run, selection: dict, test, labels: list[str], batch_size: int, device,
              dtype) -> tuple[dict, np.ndarray]:
    """(the run's report entry, its test predictions per seed, a (seeds, examples) array) from
    every seed's saved classifier. The entry's test metrics, per-class table and predictions
    are the primary model's (what the registry logs and serves); per_seed has them all."""
    y = test["label"].to_numpy()
    per_seed, predictions, primary = [], [], None
    for s in selection["seeds"]:
        pred = predict_saved(run, Path(paths.seed_model_dir(run.name, s)), test, batch_size, device, dtype)
        m = classification_metrics(y, pred, labels)
        per_seed.append({"seed": s, "test_accuracy": m["accuracy"], "test_macro_f1": m["macro_f1"]})
        predictions.append(pred)
        if f"seed-{s}" == selection["primary"]:
            primary = (m, pred)
    if primary is None:
        raise ValueError(f"{paths.selection_json(run.name)}: primary {selection['primary']!r} is not one of its "
                         f"seeds; rerun the finetune stage for {run.name}")
    m, pred = primary
    f1s = [p["test_macro_f1"] for p in per_seed]
    entry = {"objective": run.report_objective, "run": run.name, "architecture": run.architecture.name,
             "pretrained": run.pretrained, "primary_seed": selection["primary_seed"], "chosen_lr": selection["chosen_lr"],
             "test_accuracy": m["accuracy"], "test_macro_f1": m["macro_f1"],
             "test_macro_f1_seed_mean": float(np.mean(f1s)),
             "test_macro_f1_seed_std": float(np.std(f1s, ddof=1)) if len(f1s) > 1 else 0.0,
             "per_seed": per_seed, "per_class": m["per_class"], "confusion_matrix": m["confusion_matrix"],
             "test_predictions": pred.tolist()}  # the register gate's paired bootstrap needs them
    if run.pretrained:
        metrics = read_json(Path(paths.PRETRAIN_REPORTS) / run.objective.name / "metrics.json")
        entry["pretraining"], entry["pretraining_metric"] = run.objective.pretraining_summary(metrics)
        # At its trivial baseline: the objective did not train at this budget (the spec's rule).
        entry["did_not_train"] = run.objective.at_baseline(metrics)
        entry["pretraining_compute"] = metrics.get("compute", {})
    return entry, np.stack(predictions)


def predict_saved(run, model_dir: Path, test, batch_size: int, device, dtype) -> np.ndarray:
    """Label ids for the test texts from one saved classifier, encoded as it was trained."""
    from transformers import AutoModelForSequenceClassification

    if not (model_dir / "config.json").exists():
        raise FileNotFoundError(f"{model_dir}: no fine-tuned model; run the finetune stage first")
    model = AutoModelForSequenceClassification.from_pretrained(str(model_dir)).to(device)
    tokenizer = load_tokenizer(model_dir)
    encoded = encode_for_classifier(tokenizer, test["text"].tolist(), tokenizer.model_max_length)
    return predict(model, encoded, tokenizer.pad_token_id, batch_size, device, dtype,
                   head=run.architecture.classifier_head).argmax(-1)


def _delta_metrics(run: dict) -> dict:
    """A pretrained run's delta against scratch, its CI and its pretraining compute, flat: what
    `dvc exp show` and `lmforge sweep` read per experiment."""
    compute = run.get("pretraining_compute", {})
    return {"did_not_train": bool(run.get("did_not_train")),
            "delta_macro_f1_vs_scratch": round(run["delta_macro_f1_vs_scratch"], 6),
            "delta_ci_low": round(run["delta_ci_low"], 6), "delta_ci_high": round(run["delta_ci_high"], 6),
            **{k: compute[k] for k in ("tokens_seen", "supervised_targets", "flops") if k in compute},
            **({f"minus_{run['versus_rival']['rival']}_macro_f1": round(run["versus_rival"]["delta_macro_f1"], 6),
                f"minus_{run['versus_rival']['rival']}_ci_low": round(run["versus_rival"]["ci_low"], 6),
                f"minus_{run['versus_rival']['rival']}_ci_high": round(run["versus_rival"]["ci_high"], 6)}
               if "versus_rival" in run else {})}


def _flops(value: float | None) -> str:
    return f"{value:.3g} FLOPs" if value else "FLOPs unknown"


def write_report(report: dict, objectives: Sequence) -> str:
    """comparison.json (with each objective's samples), metrics.json (flat, for `dvc metrics`),
    comparison.md and the two plots; returns the markdown tables."""
    runs = report["runs"]
    # Flat numbers for `dvc metrics show/diff` (nested per-class tables stay in comparison.json).
    write_json_atomic(paths.COMPARISON_METRICS, {
        r["run"]: {"test_accuracy": round(r["test_accuracy"], 6), "test_macro_f1": round(r["test_macro_f1"], 6),
                   "test_macro_f1_seed_mean": round(r["test_macro_f1_seed_mean"], 6),
                   **(_delta_metrics(r) if r["pretrained"] else {})}
        for r in runs})
    report["samples"] = {o.name: o.samples(Path(paths.pretrained_dir(o.name))) for o in objectives}
    write_json_atomic(paths.COMPARISON_JSON, report)
    table = (f"{markdown_table(runs, report['majority_baseline'])}\n{verdict_table(runs)}\n"
             f"Seeds {', '.join(map(str, report['seeds']))}; the primary model (seed {runs[0]['primary_seed']}, "
             f"registered and served) is the first. {report['ci_method']}\n")
    verdicts = "\n".join(
        f"- **{r['objective']}** vs scratch {r['architecture']}: {r['verdict']} ({r['delta_macro_f1_vs_scratch']:+.3f} "
        f"macro-F1, {r['delta_ci_level']:.1%} CI {r['delta_ci_low']:+.3f} to {r['delta_ci_high']:+.3f})"
        + (f"; pretraining sits at its trivial baseline: {r['did_not_train']}, so this is no verdict on "
           f"{r['objective']}" if r.get("did_not_train") else "")
        for r in runs if r["pretrained"])
    verdicts += "".join(
        f"\n- **{r['objective']}** vs **{v['rival']}** at equal pretraining FLOPs ({_flops(v['flops'])} vs "
        f"{_flops(v['rival_flops'])}, generator included): {r['objective']} {v['verdict']} "
        f"({v['delta_macro_f1']:+.3f} macro-F1, {v['ci_level']:.0%} CI {v['ci_low']:+.3f} to {v['ci_high']:+.3f})"
        for r in runs if "versus_rival" in r for v in [r["versus_rival"]])
    write_text_atomic(paths.COMPARISON_MD, f"# Objective comparison ({report['test_examples']} test examples; "
                      f"fine-tuned on {report['train_examples']} labelled examples)\n\n"
                      f"{table}\n{BASELINES_NOTE}\n\n{verdicts}\n\n"
                      "![macro-F1](comparison.png)\n![loss](pretraining_loss.png)\n\n"
                      f"{samples_markdown(report['samples'])}")
    plot_macro_f1(runs, Path(paths.COMPARISON_PNG))
    plot_loss_curves({o.name: read_curve(Path(paths.PRETRAIN_REPORTS) / o.name / "train_loss.csv")
                      for o in objectives}, Path(paths.LOSS_PNG))
    return table
