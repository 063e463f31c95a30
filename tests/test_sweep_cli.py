"""`lmforge sweep`'s input checks: bad budgets and params stop it before anything is queued
(the sweep itself runs on the tiny pipeline in tests/pipeline/test_pipeline.py)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def sweep(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cli.main", "--repo", str(ROOT), "sweep", *args],
                          cwd=ROOT, capture_output=True, text=True)


@pytest.mark.parametrize("args, message", [
    (["--max-steps", "150,x"], "--max-steps: '150,x' is not a comma-separated list"),
    (["--max-steps", "0"], "--max-steps: give at least one value >= 1"),
    (["--train-examples", "100,-4"], "--train-examples: give at least one value >= 0"),
    (["--train-examples", "a"], "--train-examples: 'a' is not a comma-separated list"),
    (["--max-steps", "10", "--train-examples", "100"], "give one of --max-steps (the budget curve) or --train-examples"),
    ([], "give one of --max-steps (the budget curve) or --train-examples"),
    (["--train-examples", "4"], "downstream.train_examples=4 is fewer than"),
    (["--max-steps", "10", "-S", "nokey"], "-S 'nokey': write a dotted param and a value"),
    # -S values are read as YAML, as `dvc exp run -S` reads them: a typed value is checked as one
    (["--max-steps", "10", "-S", "finetune.seeds=5", "-S", "pretrain.lr=-1"], "pretrain.lr must be > 0, got -1.0"),
])
def test_bad_sweep_input_is_one_line_exit_2_before_anything_is_queued(args, message):
    proc = sweep(*args)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and message in proc.stderr, proc.stderr
    assert "queued" not in proc.stdout


def test_results_not_committed_are_named_before_a_sweep(tmp_path):
    """After `make demo` dvc.lock and reports/ are loose; the sweep warns that its experiments,
    which start from the last commit, would run those stages again."""
    from cli.sweep import uncommitted_results

    def git(*a: str) -> None:
        subprocess.run(["git", *a], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "reports").mkdir()
    (tmp_path / "dvc.lock").write_text("schema: '2.0'\n")
    (tmp_path / "reports" / "kept.json").write_text("{}")
    (tmp_path / "params.yaml").write_text("seed: 1\n")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "c")
    assert uncommitted_results(tmp_path) == []
    (tmp_path / "dvc.lock").write_text("schema: '2.0'\nstages: {}\n")
    (tmp_path / "reports" / "pretrain").mkdir()
    (tmp_path / "reports" / "pretrain" / "validation.json").write_text("{}")
    (tmp_path / "params.yaml").write_text("seed: 2\n")  # a param change is the sweep's business, not a loose result
    assert sorted(uncommitted_results(tmp_path)) == ["dvc.lock", "reports/pretrain/validation.json"]


def test_a_failed_experiment_is_an_error_not_the_numbers_of_the_commit_it_started_from(monkeypatch):
    """`dvc exp run --run-all` exits 0 when a queued experiment fails, and `dvc exp show` lists the
    failed one with an `error` and its base commit's metrics (seen with DVC 3: a corpus that
    failed validation); reading those as its result would report the base commit's verdicts."""
    import json

    from cli import sweep as sweep_cli

    shown = [{"rev": "workspace", "name": None, "data": {}, "error": None, "experiments": [
        {"revs": [{"rev": "cbffdaa", "name": "corpus-pydocs-steps-450", "experiments": None,
                   "error": {"msg": "Experiment run failed", "type": ""},
                   "data": {"params": {}, "metrics": {"reports/metrics.json": {"data": {}}}}}]}]}]
    monkeypatch.setattr(sweep_cli, "_dvc", lambda repo, *args: subprocess.CompletedProcess(
        args, 0, stdout=json.dumps(shown), stderr=""))
    with pytest.raises(RuntimeError, match=r"corpus-pydocs-steps-450 failed .*dvc queue logs corpus-pydocs-steps-450"):
        sweep_cli.collect(ROOT, ["corpus-pydocs-steps-450"])
