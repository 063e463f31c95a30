"""One home per default (components/config.py), profiles as differences, one sequence-length
knob, `check-params --show`, and light stages that never import torch.

tests/golden/resolved_params.json holds every resolved value of every profile, with the
repository's params.yaml and with an empty one. A change to a default, a profile or
params.yaml that moves any of them fails here; if it is meant, rewrite the file with
`PYTHONPATH=. python tests/test_params.py` and review its diff.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from cli.main import main as lmforge
from components.config import SECTIONS
from components.params import (FOLLOWS, PROFILES, SEQUENCE_LENGTH, STAGE_PARAMS, TOP_LEVEL, ConfigError, load_params,
                               read_params, resolve)

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden" / "resolved_params.json"


def resolved_table(params_file: Path) -> dict:
    """{"params.yaml" | "profile only": {profile: {section: {key: value}, "seed": n}}}."""
    table: dict = {}
    for label, base in (("params.yaml", read_params(params_file)), ("profile only", {})):
        for profile in PROFILES:
            resolved = resolve({**base, "profile": profile})
            values = {section: dataclasses.asdict(cfg) for section, cfg in resolved.configs.items()}
            table.setdefault(label, {})[profile] = {**values, "seed": resolved.seed}
    return table


def test_every_resolved_value_of_every_profile_matches_the_golden_file():
    assert resolved_table(ROOT / "params.yaml") == json.loads(GOLDEN.read_text())


def test_the_dataclass_defaults_are_the_demo_profile():
    demo = resolve({}).configs
    for section, cls in SECTIONS.items():
        default = dataclasses.asdict(cls())
        changed = {k for k, v in dataclasses.asdict(demo[section]).items() if v != default[k]}
        assert changed == set(PROFILES["demo"].get(section, {})), section
    # A config built directly agrees with a resolved one: the followers' defaults are the knob's.
    knob_section, _, knob = SEQUENCE_LENGTH.partition(".")
    for key in FOLLOWS:
        section, _, name = key.partition(".")
        assert getattr(SECTIONS[section](), name) == getattr(SECTIONS[knob_section](), knob), key


def test_profiles_hold_only_their_differences_from_demo():
    for profile, sections in PROFILES.items():
        for section, values in sections.items():
            assert set(values) <= {f.name for f in dataclasses.fields(SECTIONS[section])}, (profile, section)
            for key, value in values.items():
                assert value != getattr(SECTIONS[section](), key), f"{profile}: {section}.{key} is the default"


def test_sequence_length_is_one_knob_the_others_follow_unless_set():
    tiny = resolve({"profile": "tiny"})
    assert tiny.configs["model"].max_positions == 64 and tiny.sources["model.max_positions"] == "profile tiny"
    for key in FOLLOWS:
        section, _, name = key.partition(".")
        assert getattr(tiny.configs[section], name) == 64
        assert tiny.sources[key] == "follows model.max_positions"

    longer = resolve({"model": {"max_positions": 256}})
    assert (longer.configs["tokenize"].block_size, longer.configs["tokenizer"].model_max_length) == (256, 256)
    assert longer.configs["finetune"].max_length == 48  # demo sets it: a speed choice, not a limit
    assert longer.sources["finetune.max_length"] == "profile demo"

    explicit = resolve({"model": {"max_positions": 256}, "tokenize": {"block_size": 64}})
    assert explicit.configs["tokenize"].block_size == 64 and explicit.sources["tokenize.block_size"] == "params.yaml"


def test_a_follower_out_of_range_names_the_knob():
    with pytest.raises(ConfigError) as err:
        resolve({"model": {"max_positions": 12}})
    assert str(err.value) == ("params.yaml: section 'tokenize': tokenize.block_size must be >= 16, got 12 "
                              "(tokenize.block_size follows model.max_positions: raise that or set tokenize.block_size)")


def test_a_stage_gets_only_what_it_declares(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("profile: tiny\nseed: 5\n")
    params = load_params(path)
    for stage, declared in STAGE_PARAMS.items():
        config = params.for_stage(stage)
        assert list(config) == [name for name in declared if "." not in name], stage
        for name, value in config.items():
            expected = {"profile": "tiny", "seed": 5, "objectives": TOP_LEVEL["objectives"]}
            assert value == expected.get(name, params.configs.get(name)), (stage, name)


def test_check_params_show_prints_every_value_and_its_source(tmp_path, capsys):
    (tmp_path / "params.yaml").write_text("profile: tiny\npretrain:\n  max_steps: 3\n  lr: null\n")
    assert lmforge(["--repo", str(tmp_path), "check-params", "--show"]) == 0
    lines = capsys.readouterr().out.splitlines()
    expected = load_params(tmp_path / "params.yaml")
    assert len(lines) == len(expected.values()) == len(TOP_LEVEL) + sum(len(dataclasses.fields(c)) for c in SECTIONS.values())
    shown = {line.split(" = ")[0]: " ".join(line.split(" = ", 1)[1].split()) for line in lines}
    assert shown["profile"] == "tiny (params.yaml)"
    assert shown["seed"] == "1337 (default)"
    assert shown["objectives"] == f"[{', '.join(TOP_LEVEL['objectives'])}] (default)"
    assert shown["pretrain.max_steps"] == "3 (params.yaml)"
    assert shown["pretrain.batch_size"] == "8 (profile tiny)"
    assert shown["pretrain.lr"] == "0.001 (default)"  # null: not set here
    assert shown["tokenize.block_size"] == "64 (follows model.max_positions)"
    assert shown["tokenizer.pretrained_gpt2"] == "'' (default)"
    assert shown["pretrain.compile"] == "false (default)"
    assert len({line.index("(") for line in lines}) == 1  # sources in one column


def test_check_params_show_refuses_bad_params_in_one_line(tmp_path, capsys):
    (tmp_path / "params.yaml").write_text("model:\n  n_head: 4\n")
    assert lmforge(["--repo", str(tmp_path), "check-params", "--show"]) == 2
    out = capsys.readouterr()
    assert out.out == "" and out.err.startswith("error: params.yaml: unknown key 'model.n_head'")


HEAVY = ("torch", "transformers")


def _run(code: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": f"sqlite:///{cwd / 'mlflow.db'}"}
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.parametrize("stage", ["ingest", "validate"])
def test_light_stages_check_all_params_without_importing_torch(stage, tmp_path):
    """The stage module, then its params read and every section resolved and checked."""
    (tmp_path / "params.yaml").write_text("profile: tiny\n")
    proc = _run(f"import sys, pipelines.{stage}; from pipelines._stage import run_stage; "
                f"run_stage({stage!r}, lambda cfg, item: print(sorted(cfg)), argv=[]); "
                f"print([m for m in {HEAVY!r} if m in sys.modules])", tmp_path)
    assert proc.returncode == 0, proc.stderr
    sections = sorted(STAGE_PARAMS[stage])
    assert proc.stdout.splitlines() == [str(sections), "[]"]


def test_params_resolution_imports_nothing_heavy(tmp_path):
    proc = _run("import sys; from components.params import PROFILES, resolve; "
                "[resolve({'profile': p}) for p in PROFILES]; "
                "print([m for m in ('torch', 'transformers', 'pandas', 'pyarrow', 'numpy') if m in sys.modules])",
                tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


@pytest.mark.slow  # about 17 s of CPU, mostly MLflow's database set-up and Great Expectations
def test_ingest_and_validate_run_without_importing_torch(tmp_path):
    """The two stages for real, on a small corpus and task (MLflow runs included)."""
    words = "the model reads a corpus of plain text and learns which word comes next".split()
    with open(tmp_path / "corpus.jsonl", "w") as f:
        for i in range(60):
            f.write(json.dumps({"text": f"Document {i}. " + " ".join(words[(i + j) % len(words)] for j in range(60))})
                    + "\n")
    with open(tmp_path / "task.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        # Distinct beyond their numbers: ingest keeps near-duplicates (digits ignored) in one split.
        writer.writerows([f"Example {i}: " + " ".join(random.Random(i).sample(words, 12)), "abc"[i % 3]]
                         for i in range(90))
    (tmp_path / "params.yaml").write_text("profile: tiny\ndata:\n  source: corpus.jsonl\n"
                                          "downstream:\n  task: task.csv\n")
    for stage in ("ingest", "validate"):
        proc = _run(f"import runpy, sys; sys.argv = [{stage!r}]; runpy.run_module('pipelines.{stage}', "
                    f"run_name='__main__', alter_sys=True)\nprint([m for m in {HEAVY!r} if m in sys.modules])",
                    tmp_path)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert proc.stdout.splitlines()[-1] == "[]", stage
    assert (tmp_path / "reports" / "validation" / "result.json").exists()


if __name__ == "__main__":
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_text(json.dumps(resolved_table(ROOT / "params.yaml"), indent=1, sort_keys=True) + "\n")
    print(f"wrote {GOLDEN}")


@pytest.mark.parametrize("value, message", [
    ("[clm, gpt]", "params.yaml: 'objectives': unknown objective 'gpt'; valid: clm, mlm, mlm_nsp, rtd"),
    ("[]", "params.yaml: 'objectives' must be a non-empty list of objective names, e.g. [clm, mlm], got []"),
    ("clm", "params.yaml: 'objectives' must be a non-empty list of objective names, e.g. [clm, mlm], got 'clm'"),
    ("[mlm, mlm]", "params.yaml: 'objectives' lists 'mlm' twice"),
])
def test_a_bad_objectives_list_is_one_line_naming_the_valid_ones(tmp_path, capsys, value, message):
    (tmp_path / "params.yaml").write_text(f"profile: tiny\nobjectives: {value}\n")
    assert lmforge(["--repo", str(tmp_path), "check-params"]) == 2
    assert capsys.readouterr().err == f"error: {message}\n"


@pytest.mark.parametrize("params, module, item, message", [
    # a stage that reads the list refuses an unknown name in it the same way, before it writes anything
    ("[clm, gpt]", "evaluate", None, "params.yaml: 'objectives': unknown objective 'gpt'; valid: clm, mlm, mlm_nsp, rtd"),
    # dvc.yaml starts only the listed objectives' stages; started by hand, another one says why
    ("[clm, mlm]", "finetune", "--run=rtd", "params.yaml: 'rtd' is not in 'objectives' (clm, mlm); add it there "
                                           "to run this stage"),
])
def test_a_stage_refuses_a_bad_list_or_an_objective_outside_it(tmp_path, params, module, item, message):
    (tmp_path / "params.yaml").write_text(f"profile: tiny\nobjectives: {params}\n")
    proc = subprocess.run([sys.executable, "-m", f"pipelines.{module}", *filter(None, [item])],
                          cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert (proc.returncode, proc.stderr) == (2, f"error: {message}\n")


def test_lmforge_run_refuses_an_objective_not_in_the_list_before_starting_anything(tmp_path, capsys):
    (tmp_path / "params.yaml").write_text("profile: tiny\nobjectives: [clm, mlm]\n")
    assert lmforge(["--repo", str(tmp_path), "run", "--objective", "rtd"]) == 2
    assert capsys.readouterr().err == ("error: lmforge run --objective rtd: not in params.yaml objectives [clm, mlm]; "
                                       "add it there to run it\n")
