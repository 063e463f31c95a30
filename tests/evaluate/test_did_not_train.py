"""An objective whose pretraining metric sits at its trivial baseline did not train at this
budget: each spec's rule (components/objectives.py: at_baseline) on synthetic pretraining
metrics, and what the comparison, metrics.json, the sweep and `lmforge summary` make of it."""
from __future__ import annotations

import json

import numpy as np
import pytest

from cli.main import main as lmforge
from components import paths
from components.config import EvaluateConfig
from components.evaluate.comparison import _delta_metrics, pretrained_verdict, versus_rival
from components.evaluate.metrics import NOT_TRAINED
from components.objectives import OBJECTIVES

MLM = {"val_mlm_accuracy": 0.135, "val_mlm_baseline_accuracy": 0.056}


@pytest.mark.parametrize("name, metrics, untrained", [
    # clm: perplexity >= 0.9x the unigram model's
    ("clm", {"val_perplexity": 150.1, "val_unigram_perplexity": 705.3}, None),
    ("clm", {"val_perplexity": 640.0, "val_unigram_perplexity": 705.3}, "perplexity 640.0 >= 0.9x the unigram "
                                                                         "model's 705.3"),
    ("clm", {"val_perplexity": 634.0, "val_unigram_perplexity": 705.3}, None),  # 0.899x: just trained
    ("clm", {"val_perplexity": 900.0}, None),  # metrics.json from before the baselines: cannot tell
    # mlm (and mlm_nsp, whose NSP head does not decide): accuracy < 1.2x the most-frequent token's
    ("mlm", MLM, None),
    ("mlm", {"val_mlm_accuracy": 0.060, "val_mlm_baseline_accuracy": 0.056},
     "MLM acc 0.060 < 1.2x the most-frequent token's 0.056"),
    ("mlm", {"val_mlm_accuracy": 0.0672, "val_mlm_baseline_accuracy": 0.056}, None),  # exactly 1.2x
    ("mlm_nsp", {**MLM, "val_nsp_accuracy": 0.5, "val_nsp_baseline_accuracy": 0.53}, None),
    ("mlm_nsp", {"val_mlm_accuracy": 0.05, "val_mlm_baseline_accuracy": 0.052, "val_nsp_accuracy": 0.9,
                 "val_nsp_baseline_accuracy": 0.53}, "MLM acc 0.050 < 1.2x the most-frequent token's 0.052"),
    # rtd: accuracy within 0.01 of the unreplaced share (the demo's 0.854 = 0.854), whatever its generator did
    ("rtd", {"val_rtd_accuracy": 0.854, "val_rtd_baseline_accuracy": 0.854, **MLM},
     "RTD acc 0.854 within 0.01 of the unreplaced share 0.854 (its prior)"),
    ("rtd", {"val_rtd_accuracy": 0.846, "val_rtd_baseline_accuracy": 0.854, **MLM},
     "RTD acc 0.846 within 0.01 of the unreplaced share 0.854 (its prior)"),
    ("rtd", {"val_rtd_accuracy": 0.912, "val_rtd_baseline_accuracy": 0.889, **MLM}, None),
])
def test_each_spec_says_when_pretraining_sat_at_its_trivial_baseline(name, metrics, untrained):
    assert OBJECTIVES[name].at_baseline(metrics) == untrained


def test_an_untrained_objective_gets_no_verdict_whatever_its_ci():
    untrained = {"did_not_train": "RTD acc 0.854 within 0.01 of the unreplaced share 0.854 (its prior)"}
    assert pretrained_verdict(untrained, -0.128, -0.056) == NOT_TRAINED == "did not train at this budget"
    assert pretrained_verdict({"did_not_train": None}, -0.128, -0.056) == "hurts"
    assert pretrained_verdict({"did_not_train": None}, 0.01, 0.05) == "pays off"


def test_the_equal_flops_comparison_with_an_untrained_objective_is_not_judged():
    y = np.array([0, 1, 2, 0, 1, 2, 0, 1] * 4)
    predictions = {"rtd": np.stack([np.zeros_like(y)] * 2), "mlm": np.stack([y, y])}
    cfg = EvaluateConfig(bootstrap_samples=100)
    rtd = {"run": "rtd", "did_not_train": "RTD acc at its prior"}
    mlm = {"run": "mlm", "did_not_train": None}
    assert versus_rival(rtd, mlm, predictions, y, 3, cfg, 0)["verdict"] == \
        "not judged against mlm: rtd did not train at this budget"
    trained = versus_rival({**rtd, "did_not_train": None}, mlm, predictions, y, 3, cfg, 0)
    assert trained["verdict"] == "loses to mlm"


def _entry(run: str, did_not_train: str | None) -> dict:
    return {"objective": run, "run": run, "architecture": "bert", "pretrained": True, "test_accuracy": 0.2,
            "test_macro_f1": 0.2, "test_macro_f1_seed_mean": 0.2, "per_seed": [{"seed": 7, "test_macro_f1": 0.2}],
            "delta_macro_f1_vs_scratch": -0.09, "delta_ci_low": -0.13, "delta_ci_high": -0.05,
            "delta_ci_level": 0.99, "did_not_train": did_not_train, "pretraining_metric": "RTD acc 0.854",
            "verdict": pretrained_verdict({"did_not_train": did_not_train}, -0.13, -0.05)}


def test_metrics_json_and_lmforge_summary_say_it(tmp_path, capsys):
    reason = "RTD acc 0.854 within 0.01 of the unreplaced share 0.854 (its prior)"
    assert _delta_metrics(_entry("rtd", reason))["did_not_train"] is True
    assert _delta_metrics(_entry("mlm", None))["did_not_train"] is False
    scratch = {**_entry("scratch-bert", None), "objective": "scratch", "pretrained": False}
    report = tmp_path / paths.COMPARISON_JSON
    report.parent.mkdir(parents=True)
    report.write_text(json.dumps({"runs": [_entry("mlm", None), _entry("rtd", reason), scratch], "seeds": [7],
                                  "ci_method": "Two-level bootstrap, Holm."}))
    assert lmforge(["--repo", str(tmp_path), "summary"]) == 0
    shown = capsys.readouterr().out
    rows = {line.split()[0]: line for line in shown.splitlines() if line.startswith(("mlm ", "rtd "))}
    assert "hurts" in rows["mlm"] and NOT_TRAINED in rows["rtd"] and "hurts" not in rows["rtd"]
    assert f"rtd: {NOT_TRAINED}: {reason}; its Δ is no verdict on the objective" in shown
