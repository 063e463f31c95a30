"""Params are checked before any work: every section and the ranges across sections, by
`lmforge check-params`, `lmforge run` and every stage entry point (so the first stage
`dvc repro` runs refuses a bad value meant for a later one). One line, exit 2, nothing written."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from components.params import ConfigError, load_params

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("text, message", [
    ("profile: tiny\ntokenize:\n  block_size: 128\n",
     "params.yaml: tokenize.block_size (128) exceeds model.max_positions (64); lower one or raise the other"),
    ("finetune:\n  max_length: 256\n",
     "params.yaml: finetune.max_length (256) exceeds model.max_positions (128); lower one or raise the other"),
    ("tokenizer:\n  model_max_length: 64\n",
     "params.yaml: tokenize.block_size (128) exceeds tokenizer.model_max_length (64); lower one or raise the other"),
    ("pretrain:\n  nproc_per_node: 3\n",
     "params.yaml: pretrain.batch_size (16) must be divisible by pretrain.nproc_per_node (3)"),
    ("tokenizer:\n  pretrained_bert: no/such/tokenizer\n",
     "params.yaml: tokenizer.pretrained_bert: no directory 'no/such/tokenizer'; give a local tokenizer "
     "directory or '' to train one"),
    ("tokenizer:\n  vocab_size: 299\n",
     "params.yaml: section 'tokenizer': tokenizer.vocab_size must be >= 300 (256 bytes + special tokens), got 299"),
    ("finetune:\n  lr: 0\n", "params.yaml: section 'finetune': finetune.lr must be > 0, got 0.0"),
    ("pretrain:\n  lr: -0.001\n", "params.yaml: section 'pretrain': pretrain.lr must be > 0, got -0.001"),
    ("model:\n  n_head: 4\n", "params.yaml: unknown key 'model.n_head'; known keys: d_ff, d_model, dropout, "
                              "max_positions, n_heads, n_layers"),
    ("evaluate:\n  batch_size: '64'\n", "params.yaml: 'evaluate.batch_size' must be an integer, got '64'"),
    ("seed: 1.5\n", "params.yaml: 'seed' must be an integer, got 1.5"),
])
def test_cross_section_and_range_errors_name_the_keys(tmp_path, text, message):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_params(path)
    assert str(err.value) == message


def test_every_profile_passes_the_cross_section_checks(tmp_path):
    for profile in ("tiny", "demo", "gpu-small"):
        (tmp_path / "params.yaml").write_text(f"profile: {profile}\n")
        load_params(tmp_path / "params.yaml")


def _env(cwd: Path) -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "LMFORGE_DEBUG": "",
            "MLFLOW_TRACKING_URI": f"sqlite:///{cwd / 'mlflow.db'}"}


# case -> (params.yaml text, command, stderr's one line starts with)
CASES = {
    # ingest reads neither tokenize nor model: it still refuses, before reading any data.
    "ingest_refuses_a_later_stage_value": (
        "profile: tiny\ntokenize:\n  block_size: 128\n", ["-m", "pipelines.ingest"],
        "error: params.yaml: tokenize.block_size (128) exceeds model.max_positions (64)"),
    "unknown_objective": ("profile: tiny\n", ["-m", "pipelines.pretrain", "--objective", "gpt5"],
                          "error: --objective: unknown objective 'gpt5'; valid: "),
    "missing_tokenizer_directory": (
        "profile: tiny\ntokenizer:\n  pretrained_gpt2: tokenizers/missing\n",
        ["-m", "pipelines.train_tokenizer", "--architecture", "gpt2"],
        "error: params.yaml: tokenizer.pretrained_gpt2: no directory 'tokenizers/missing'"),
    "lmforge_run": ("profile: tiny\npretrain:\n  lr: -1\n", ["-m", "cli.main", "run"],
                    "error: params.yaml: section 'pretrain': pretrain.lr must be > 0, got -1.0"),
    "lmforge_run_override": ("profile: demo\n", ["-m", "cli.main", "run", "--data-source", "builtin:nope"],
                             "error: params.yaml: section 'data': data.source: unknown built-in 'builtin:nope'"),
    "lmforge_check_params": ("pretrain:\n  max_stepz: 3\n", ["-m", "cli.main", "check-params"],
                             "error: params.yaml: unknown key 'pretrain.max_stepz'"),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    started = {}
    for case, (text, args, _expected) in CASES.items():
        cwd = tmp_path_factory.mktemp(case)
        (cwd / "params.yaml").write_text(text)
        started[case] = (cwd, subprocess.Popen([sys.executable, *args], cwd=cwd, env=_env(cwd),
                                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    out = {}
    for case, (cwd, proc) in started.items():
        stdout, stderr = proc.communicate(timeout=180)
        out[case] = (cwd, proc.returncode, stdout, stderr)
    return out


@pytest.mark.parametrize("case", CASES)
def test_bad_params_stop_every_entry_point_before_work(case, runs):
    cwd, returncode, stdout, stderr = runs[case]
    assert returncode == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(CASES[case][2]), stderr
    assert sorted(p.name for p in cwd.iterdir()) == ["params.yaml"]  # no data, models, mlflow.db, prefect
    assert (cwd / "params.yaml").read_text() == CASES[case][0]  # `run` wrote no override either
