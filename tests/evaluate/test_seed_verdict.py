"""A verdict that survives the seed: the two-level (seeds x test examples) paired bootstrap,
Holm's correction, the verdict, and the fine-tuning search that feeds them (the same grid and
seeds for every run, the lr chosen on validation without reading the test split)."""
from __future__ import annotations

import contextlib
import copy
import json

import numpy as np
import pandas as pd
import pytest

from components import paths
from components.config import FinetuneConfig, ModelConfig
from components.evaluate.metrics import holm, percentile_ci, seeds_and_examples_bootstrap, verdict

pytestmark = pytest.mark.usefixtures("one_thread")


def _noisy(y: np.ndarray, accuracy: float, rng) -> np.ndarray:
    return np.where(rng.random(len(y)) < accuracy, y, rng.integers(0, 3, len(y)))


def test_zero_effect_ci_covers_zero_about_95_percent_of_the_time():
    # Both arms draw from the same accuracy per seed (seed effects included): the true delta is 0.
    rng = np.random.default_rng(0)
    covered, trials = 0, 60
    for t in range(trials):
        y = rng.integers(0, 3, 80)
        a = np.stack([_noisy(y, rng.uniform(0.4, 0.7), rng) for _ in range(3)])
        b = np.stack([_noisy(y, rng.uniform(0.4, 0.7), rng) for _ in range(3)])
        boot = seeds_and_examples_bootstrap(y, a, b, 3, samples=200, seed=t)
        low, high = percentile_ci(boot["replicates"], 0.95)
        covered += low <= 0 <= high
    assert covered / trials >= 0.85  # nominal 0.95; 60 trials: binomial sd ~0.03


def test_a_big_effect_is_detected_and_its_sign_read():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 300)
    good = np.stack([_noisy(y, 0.9, rng) for _ in range(3)])
    chance = np.stack([rng.integers(0, 3, 300) for _ in range(3)])
    boot = seeds_and_examples_bootstrap(y, good, chance, 3, samples=300, seed=0)
    low, high = percentile_ci(boot["replicates"], 0.95)
    assert 0 < low < boot["diff"] < high
    assert boot["p_value"] == pytest.approx(2 / 301)  # no replicate at or below 0: the smallest p
    assert verdict(low, high) == "pays off"
    flipped = seeds_and_examples_bootstrap(y, chance, good, 3, samples=300, seed=0)
    assert verdict(*percentile_ci(flipped["replicates"], 0.95)) == "hurts"
    same = seeds_and_examples_bootstrap(y, good, good.copy(), 3, samples=100, seed=0)
    assert same["diff"] == 0 and same["p_value"] == 1.0
    assert verdict(*percentile_ci(same["replicates"], 0.95)) == "cannot tell at this budget"


def test_the_point_estimate_is_the_mean_over_seeds_paired_by_seed():
    from components.train.scores import macro_f1

    rng = np.random.default_rng(2)
    y = rng.integers(0, 3, 50)
    a = np.stack([_noisy(y, p, rng) for p in (0.5, 0.7, 0.9)])
    b = np.stack([_noisy(y, p, rng) for p in (0.4, 0.6, 0.8)])
    boot = seeds_and_examples_bootstrap(y, a, b, 3, samples=100, seed=0)
    expected = [macro_f1(y, a[s], 3) - macro_f1(y, b[s], 3) for s in range(3)]
    assert boot["per_seed"] == pytest.approx(expected)
    assert boot["diff"] == pytest.approx(np.mean(expected))
    with pytest.raises(ValueError, match=r"must both be \(seeds, 50\)"):
        seeds_and_examples_bootstrap(y, a, b[:2], 3, samples=100, seed=0)


def test_seeds_matter_the_ci_widens_when_seeds_disagree():
    # The same mean gain; once every seed agrees, once they disagree widely. Resampling seeds
    # must show the disagreement: a test-examples-only bootstrap would not.
    rng = np.random.default_rng(3)
    y = rng.integers(0, 3, 400)
    base = np.stack([_noisy(y, 0.5, rng) for _ in range(4)])
    agree = np.stack([_noisy(y, 0.65, rng) for _ in range(4)])
    disagree = np.stack([_noisy(y, p, rng) for p in (0.35, 0.95, 0.4, 0.9)])
    width = {}
    for name, arm in (("agree", agree), ("disagree", disagree)):
        boot = seeds_and_examples_bootstrap(y, arm, base, 3, samples=400, seed=0)
        low, high = percentile_ci(boot["replicates"], 0.95)
        width[name] = high - low
    assert width["disagree"] > 2 * width["agree"]


def test_holm_against_a_hand_example():
    # m = 3, alpha 0.05. Sorted p: 0.01 (x3 = 0.03 <= 0.05: rejected), 0.02 (x2 = 0.04 <= 0.05:
    # rejected), 0.04 (x1 = 0.04 <= 0.05: rejected). Adjusted: 0.03, max(0.03, 0.04), max(0.04, 0.04).
    out = holm([0.04, 0.01, 0.02], 0.05)
    assert [o["p_adjusted"] for o in out] == pytest.approx([0.04, 0.03, 0.04])
    assert [o["rejected"] for o in out] == [True, True, True]
    assert [o["level"] for o in out] == pytest.approx([0.05, 0.05 / 3, 0.05 / 2])
    # 0.02 x 2 = 0.04 > 0.03: the step-down stops at rank 2; rank 3 keeps rank 2's level.
    out = holm([0.005, 0.02, 0.025], 0.03)
    assert [o["rejected"] for o in out] == [True, False, False]
    assert [o["p_adjusted"] for o in out] == pytest.approx([0.015, 0.04, 0.04])
    assert [o["level"] for o in out] == pytest.approx([0.01, 0.015, 0.015])
    # Bonferroni would reject only p <= alpha / m; Holm is never less powerful.
    assert holm([0.5], 0.05) == [{"p_adjusted": 0.5, "rejected": False, "level": 0.05}]


@pytest.mark.parametrize("grid, message", [
    ("5e-4,abc", "finetune.lr_grid: 'abc' is not a number"),
    ("5e-4,-1e-3", "finetune.lr_grid: every learning rate must be > 0"),
    ("1e-3,1e-3", "repeats a learning rate"),
])
def test_a_bad_lr_grid_is_a_one_line_error(grid, message):
    with pytest.raises(ValueError, match=message):
        FinetuneConfig(lr_grid=grid)


def test_lr_grid_parses_in_order_and_an_empty_grid_is_lr():
    assert FinetuneConfig(lr_grid=" 1e-3, 5e-4 ").learning_rates == (1e-3, 5e-4)
    assert FinetuneConfig(lr_grid="", lr=2e-4).learning_rates == (2e-4,)
    with pytest.raises(ValueError, match="finetune.seeds must be >= 1"):
        FinetuneConfig(seeds=0)


TINY = ModelConfig(n_layers=1, n_heads=2, d_model=32, d_ff=64, max_positions=32, dropout=0.0)
WORDS = {0: "json encode decode object string number".split(), 1: "path file directory name parts suffix".split()}


def _split(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    labels = [i % 2 for i in range(n)]
    return pd.DataFrame({"text": [" ".join(rng.choice(WORDS[y], 5)) for y in labels], "label": labels})


@pytest.fixture
def finetune_workspace(tmp_path, monkeypatch, bert_tokenizer):
    """A repository with train and validation splits and NO test split (so reading it would
    fail), the BERT tokenizer and a pretrained tiny mlm model."""
    from components.objectives import OBJECTIVES

    monkeypatch.chdir(tmp_path)
    downstream = tmp_path / paths.DOWNSTREAM_DIR
    downstream.mkdir(parents=True)
    (downstream / "labels.json").write_text(json.dumps({"labels": ["json", "paths"]}))
    _split(48, 0).to_parquet(downstream / "train.parquet")
    _split(24, 1).to_parquet(downstream / "validation.parquet")
    tokenizer = copy.deepcopy(bert_tokenizer)
    tokenizer.save_pretrained(tmp_path / paths.tokenizer_dir("bert"))
    model = OBJECTIVES["mlm"].build_model(TINY, tokenizer)
    model.save_pretrained(tmp_path / paths.pretrained_dir("mlm"))
    tokenizer.save_pretrained(tmp_path / paths.pretrained_dir("mlm"))
    return tmp_path


def test_pretrained_and_scratch_get_the_same_grid_and_seeds_and_the_test_split_is_never_read(finetune_workspace):
    from components.objectives import FINETUNE_RUNS
    from components.train.finetuning import finetune_run

    cfg = FinetuneConfig(lr_grid="1e-3,1e-2", seeds=2, epochs=1, batch_size=8, warmup_steps=1, max_length=16,
                         device="cpu", dtype="float32")
    reports = {}
    for run in ("mlm", "scratch-bert"):
        # No data/downstream/test.parquet exists: the search can only have used validation.
        reports[run] = finetune_run(FINETUNE_RUNS[run], TINY, cfg, 7, track=contextlib.nullcontext,
                                    log_metrics=lambda *a, **k: None)
    assert not (finetune_workspace / paths.DOWNSTREAM_DIR / "test.parquet").exists()
    for run, report in reports.items():
        assert [(g["lr"], g["seed"]) for g in report["grid"]] == [(1e-3, 7), (1e-2, 7)]
        best = max(report["grid"], key=lambda g: g["val_macro_f1"])
        assert report["chosen_lr"] == best["lr"] and report["val_macro_f1"] == best["val_macro_f1"]
        assert [(s["seed"], s["lr"]) for s in report["per_seed"]] == [(7, best["lr"]), (8, best["lr"])]
        selection = json.loads((finetune_workspace / paths.selection_json(run)).read_text())
        assert selection["primary"] == "seed-7" and selection["seeds"] == [7, 8]
        assert paths.primary_model_dir(run) == paths.seed_model_dir(run, 7)
        for s in (7, 8):
            assert (finetune_workspace / paths.seed_model_dir(run, s) / "model.safetensors").exists()
        saved = json.loads((finetune_workspace / paths.FINETUNE_REPORTS / f"{run}.json").read_text())
        assert saved["lr_grid"] == [1e-3, 1e-2] and len(saved["grid"]) == 2 and len(saved["per_seed"]) == 2
    assert reports["mlm"]["lr_grid"] == reports["scratch-bert"]["lr_grid"]
    assert reports["mlm"]["seeds"] == reports["scratch-bert"]["seeds"]


def test_pretraining_compute_counts_each_objectives_supervised_targets(bert_tokenizer):
    from components.train.flops import pretraining_compute
    from components.train.pretraining import CausalLMTraining, MaskedLMTraining

    # 10 rows of 8 positions, 70 of them real tokens.
    clm = pretraining_compute(2.0, 10, 8, 0.875, CausalLMTraining().supervised_targets(10, 8, 70))
    assert clm == {"rows": 10, "tokens_seen": 80, "real_tokens_seen": 70, "supervised_targets": 70,
                   "target_kind": "predicted tokens", "flops": 160.0}  # 7 next tokens per row
    mlm = MaskedLMTraining(bert_tokenizer, 0.2).supervised_targets(10, 8, 70)
    assert mlm == {"supervised_targets": 14, "target_kind": "masked positions (expected)"}
    nsp = MaskedLMTraining(bert_tokenizer, 0.2, next_sentence=True).supervised_targets(10, 8, 70)
    assert nsp["nsp_pairs"] == 10 and nsp["supervised_targets"] == 14


def _entry(objective: str, run: str, architecture: str, f1s: list[float], **extra) -> dict:
    return {"objective": objective, "run": run, "architecture": architecture, "pretrained": objective != "scratch",
            "chosen_lr": 1e-3, "primary_seed": 7, "test_accuracy": 0.5, "test_macro_f1": f1s[0],
            "test_macro_f1_seed_mean": float(np.mean(f1s)), "test_macro_f1_seed_std": float(np.std(f1s, ddof=1)),
            "per_seed": [{"seed": 7 + i, "test_accuracy": 0.5, "test_macro_f1": f} for i, f in enumerate(f1s)],
            **extra}


def test_the_tables_and_the_summary_show_seeds_ci_level_verdict_and_compute(tmp_path, capsys):
    from cli.main import main
    from components.evaluate.metrics import markdown_table, verdict_table

    compute = {"tokens_seen": 1.2e6, "supervised_targets": 1.8e5, "target_kind": "masked positions (expected)",
               "nsp_pairs": 9000, "flops": 3.4e13}
    runs = [
        _entry("mlm_nsp", "mlm_nsp", "bert", [0.31, 0.29], pretraining_metric="MLM acc 0.1", pretraining_compute=compute,
               delta_macro_f1_vs_scratch=-0.1, delta_per_seed={"7": -0.09, "8": -0.11}, delta_ci_low=-0.2,
               delta_ci_high=-0.01, delta_ci_level=1 - 0.05 / 3, delta_p_holm=0.012, verdict="hurts"),
        _entry("scratch", "scratch-bert", "bert", [0.40, 0.40]),
    ]
    table = markdown_table(runs, {"test_accuracy": 0.3, "test_macro_f1": 0.1})
    assert "| mlm_nsp | bert | yes | 0.001 | 0.310, 0.290 | 0.300 ± 0.014 | 0.500 / 0.310 |" in table
    verdicts = verdict_table(runs)
    assert "| mlm_nsp | scratch-bert | -0.100 | -0.090, -0.110 | [-0.200, -0.010] (98.3%) | 0.012 | **hurts** |" in verdicts
    assert "1.8e+05 masked positions (expected) + 9e+03 NSP pairs | 3.4e+13 |" in verdicts
    (tmp_path / "reports").mkdir()
    (tmp_path / paths.COMPARISON_JSON).write_text(json.dumps({"runs": runs, "seeds": [7, 8],
                                                               "ci_method": "Two-level bootstrap, Holm."}))
    assert main(["--repo", str(tmp_path), "summary"]) == 0
    out = capsys.readouterr().out
    assert "0.310, 0.290" in out and "[-0.200, -0.010] 98.3%" in out and "hurts" in out
    assert "1.2e+06 / 3.4e+13" in out and "Seeds 7, 8" in out and "Two-level bootstrap, Holm." in out
