"""Every pretraining metric is shown beside its trivial baseline: in the objective's summary
line (the report table, `lmforge summary`, the progress line) and in the model card."""
from __future__ import annotations

import json

import pytest

from cli.main import main as lmforge
from components import paths
from components.evaluate.metrics import markdown_table
from components.objectives import OBJECTIVES
from components.registry.model_card import render_model_card

# What pretraining's metrics.json holds (the numbers are made up, the keys are not).
METRICS = {
    "clm": {"val_loss": 4.557, "val_perplexity": 95.3, "val_unigram_perplexity": 310.2, "steps": 150},
    "mlm": {"val_loss": 5.1, "val_mlm_loss": 5.1, "val_mlm_accuracy": 0.12, "val_mlm_baseline_accuracy": 0.061,
            "val_mlm_unigram_loss": 5.9, "steps": 150},
    "mlm_nsp": {"val_loss": 5.8, "val_mlm_loss": 5.1, "val_mlm_accuracy": 0.12, "val_mlm_baseline_accuracy": 0.061,
                "val_mlm_unigram_loss": 5.9, "val_nsp_loss": 0.7, "val_nsp_accuracy": 0.6,
                "val_nsp_baseline_accuracy": 0.571, "steps": 150},
    "rtd": {"val_loss": 20.1, "val_rtd_accuracy": 0.912, "val_rtd_baseline_accuracy": 0.889,
            "val_rtd_replaced_recall": 0.31, "val_rtd_loss": 0.3, "val_mlm_loss": 5.1, "val_mlm_accuracy": 0.12,
            "val_mlm_baseline_accuracy": 0.061, "val_mlm_unigram_loss": 5.9, "steps": 120},
}
LINES = {
    "clm": "perplexity 95.3 (unigram 310.2: 3.25x lower)",
    "mlm": "MLM acc 0.120 (most-frequent token 0.061: 1.97x), MLM loss 5.10 (unigram 5.90)",
    "mlm_nsp": "MLM acc 0.120 (most-frequent token 0.061: 1.97x), MLM loss 5.10 (unigram 5.90), "
               "NSP acc 0.600 (majority class 0.571)",
    "rtd": "RTD acc 0.912 (unreplaced share 0.889), replaced found 0.310, generator MLM acc 0.120 "
           "(most-frequent token 0.061), MLM loss 5.10 (unigram 5.90)",
}


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_the_summary_line_puts_each_metric_beside_its_baseline(name):
    spec = OBJECTIVES[name]
    kept, line = spec.pretraining_summary(METRICS[name])
    assert line == LINES[name]
    for metric, baseline in spec.baselines.items():  # both reach the report and the registry
        assert metric in kept and baseline in kept


def test_a_perplexity_above_the_unigram_one_says_so():
    line = OBJECTIVES["clm"].summary_line({"val_perplexity": 554.1, "val_unigram_perplexity": 211.7})
    assert line == "perplexity 554.1 (unigram 211.7: 2.62x higher: not yet past the unigram model)"


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_metrics_from_before_the_baselines_still_summarise(name):
    old = {k: v for k, v in METRICS[name].items() if k not in OBJECTIVES[name].baselines.values()}
    line = OBJECTIVES[name].pretraining_summary(old)[1]
    assert not any(word in line for word in ("unigram", "most-frequent", "majority", "unreplaced"))


def _run(name: str, architecture: str, pretrained: bool) -> dict:
    entry = {"objective": name if pretrained else "scratch", "run": name, "architecture": architecture,
             "pretrained": pretrained, "chosen_lr": 1e-3, "primary_seed": 7, "test_accuracy": 0.5,
             "test_macro_f1": 0.45, "test_macro_f1_seed_mean": 0.45, "test_macro_f1_seed_std": 0.0,
             "per_seed": [{"seed": 7, "test_accuracy": 0.5, "test_macro_f1": 0.45}]}
    if pretrained:
        entry["pretraining"], entry["pretraining_metric"] = OBJECTIVES[name].pretraining_summary(METRICS[name])
        entry.update(delta_macro_f1_vs_scratch=0.01, delta_per_seed={"7": 0.01}, delta_ci_low=-0.02,
                     delta_ci_high=0.04, delta_ci_level=0.95, delta_p_holm=0.5, verdict="cannot tell at this budget")
    return entry


def test_the_report_table_and_lmforge_summary_show_metric_and_baseline(tmp_path, capsys):
    runs = [_run("clm", "gpt2", True), _run("mlm", "bert", True), _run("mlm_nsp", "bert", True),
            _run("rtd", "bert", True), _run("scratch-gpt2", "gpt2", False), _run("scratch-bert", "bert", False)]
    table = markdown_table(runs, {"test_accuracy": 0.3, "test_macro_f1": 0.1})
    for name in OBJECTIVES:
        assert f"| {LINES[name]} |" in table
    report = tmp_path / paths.COMPARISON_JSON
    report.parent.mkdir(parents=True)
    report.write_text(json.dumps({"runs": runs, "seeds": [7], "ci_method": "Two-level bootstrap, Holm."}))
    assert lmforge(["--repo", str(tmp_path), "summary"]) == 0
    shown = capsys.readouterr().out
    for name in OBJECTIVES:
        assert LINES[name] in shown


def test_the_model_card_puts_each_metric_beside_its_baseline():
    spec = OBJECTIVES["mlm_nsp"]
    kept = spec.pretraining_summary(METRICS["mlm_nsp"])[0]
    card = render_model_card("lmforge-mlm_nsp-base", "fill-mask", spec.description, kept, {}, baselines=spec.baselines)
    rows = [line for line in card.splitlines() if line.startswith("| val_")]
    assert "| val_mlm_accuracy | 0.1200 | 0.0610 (`val_mlm_baseline_accuracy`) |" in rows
    assert "| val_mlm_loss | 5.1000 | 5.9000 (`val_mlm_unigram_loss`) |" in rows
    assert "| val_nsp_accuracy | 0.6000 | 0.5710 (`val_nsp_baseline_accuracy`) |" in rows
    assert "| val_loss | 5.8000 |  |" in rows  # no baseline: an empty cell
    assert not any(row.startswith(("| val_mlm_baseline_accuracy", "| val_mlm_unigram_loss",
                                   "| val_nsp_baseline_accuracy")) for row in rows)  # beside, not below
    assert "type: val_nsp_baseline_accuracy" in card  # the front matter keeps every number


def test_a_classifier_card_shows_the_majority_baseline_beside_macro_f1():
    card = render_model_card("lmforge-clm", "text-classification", "x",
                             {"test_macro_f1": 0.45, "majority_baseline_macro_f1": 0.1}, {},
                             baselines={"test_macro_f1": "majority_baseline_macro_f1"})
    assert "| test_macro_f1 | 0.4500 | 0.1000 (`majority_baseline_macro_f1`) |" in card
