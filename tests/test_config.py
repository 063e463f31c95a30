from __future__ import annotations

import pytest

from components.config import SECTIONS
from components.params import ConfigError, load_params, load_stage


def write(tmp_path, text):
    p = tmp_path / "params.yaml"
    p.write_text(text)
    return p


def test_profile_values_then_explicit_keys_win(tmp_path):
    p = write(tmp_path, "profile: tiny\npretrain:\n  max_steps: 3\n")
    cfg = load_stage("pretrain", p)
    assert cfg["pretrain"].max_steps == 3          # explicit
    assert cfg["pretrain"].batch_size == 8          # from the tiny profile
    assert cfg["model"].d_model == 32
    assert cfg["profile"] == "tiny" and cfg["seed"] == 1337


def test_demo_profile_is_the_default(tmp_path):
    cfg = load_stage("pretrain", write(tmp_path, "seed: 3\n"))
    assert cfg["model"].d_model == 256 and cfg["seed"] == 3


def test_the_repository_params_are_valid(repo_root):
    load_params(repo_root / "params.yaml")


@pytest.mark.parametrize("text, fragment", [
    ("pretrain:\n  max_stepz: 3\n", "unknown key 'pretrain.max_stepz'"),
    ("pretrian:\n  max_steps: 3\n", "unknown section 'pretrian'"),
    ("pretrain:\n  lr: fast\n", "'pretrain.lr' must be a number"),
    ("pretrain:\n  lr: -1.0\n", "pretrain.lr must be > 0"),
    ("pretrain:\n  max_steps: 2.5\n", "'pretrain.max_steps' must be an integer"),
    ("profile: huge\n", "'profile' must be one of"),
    ("model:\n  d_model: 30\n  n_heads: 4\n", "divisible"),
    ("tokenizer:\n  vocab_size: 10\n", "tokenizer.vocab_size must be >= 300"),
    ("finetune:\n  class_weighting: 1\n", "'finetune.class_weighting' must be true or false"),
    ("pretrain: [1, 2]\n", "section 'pretrain' must be a mapping"),
])
def test_bad_params_give_one_line_errors(tmp_path, text, fragment):
    with pytest.raises(ConfigError) as err:
        load_params(write(tmp_path, text))
    assert fragment in str(err.value)
    assert "\n" not in str(err.value)


def test_bad_params_exit_2_before_any_work(tmp_path, repo_root):
    import subprocess
    import sys

    p = write(tmp_path, "pretrain:\n  max_stepz: 3\n")
    proc = subprocess.run([sys.executable, "-m", "pipelines.pretrain", "--objective", "clm", "--params", str(p)],
                          cwd=repo_root, capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: params.yaml: unknown key 'pretrain.max_stepz'; known keys: ")
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "models").exists()


def test_params_yaml_lists_every_key_so_dvc_exp_set_param_can_address_it(repo_root):
    import dataclasses

    import yaml

    params = yaml.safe_load((repo_root / "params.yaml").read_text())
    for section in SECTIONS:
        fields = {f.name for f in dataclasses.fields(SECTIONS[section])}
        assert set(params[section]) == fields, section
