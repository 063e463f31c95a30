"""dvc.yaml and the code agree: declared params, paths, and the stage list."""
from __future__ import annotations

import yaml

from components import paths
from components.objectives import ARCHITECTURE_NAMES, FINETUNE_RUNS, OBJECTIVE_NAMES, OBJECTIVES
from components.params import STAGE_PARAMS, TOP_LEVEL, load_params

# A stage named <module>_<variant> runs pipelines.<module>: the scratch twins are fine-tuning runs.
MODULE = {"finetune_scratch": "finetune"}


def load_dvc(repo_root):
    return yaml.safe_load((repo_root / "dvc.yaml").read_text())["stages"]


def test_every_stage_declares_exactly_the_params_it_reads(repo_root):
    stages = load_dvc(repo_root)
    assert set(stages) == set(STAGE_PARAMS)
    for name, stage in stages.items():
        body = stage.get("do", stage)
        assert tuple(body["params"]) == STAGE_PARAMS[name], name


def test_every_stage_runs_its_pipeline_module(repo_root):
    for name, stage in load_dvc(repo_root).items():
        body = stage.get("do", stage)
        module = MODULE.get(name, name)
        assert body["cmd"].startswith(f"python -m pipelines.{module}"), name
        assert f"pipelines/{module}.py" in body["deps"], name
        assert (repo_root / "pipelines" / f"{module}.py").exists()


def test_foreach_lists_match_the_code(repo_root):
    """The per-objective stages iterate over params.yaml's `objectives`; the per-architecture
    ones over the architectures. The default list names known objectives only."""
    stages = load_dvc(repo_root)
    assert stages["train_tokenizer"]["foreach"] == list(ARCHITECTURE_NAMES)
    assert stages["finetune_scratch"]["foreach"] == list(ARCHITECTURE_NAMES)
    for name in ("tokenize", "pretrain", "finetune"):
        assert stages[name]["foreach"] == "${objectives}", name
    assert set(load_params(repo_root / "params.yaml").objectives) <= set(OBJECTIVE_NAMES)
    assert set(TOP_LEVEL["objectives"]) <= set(OBJECTIVE_NAMES)
    # evaluate and register take whatever ran: the parent folders, and `objectives` says which
    for name in ("evaluate", "register"):
        assert {paths.FINETUNED_DIR, paths.PRETRAINED_DIR} <= set(stages[name]["deps"]), name
        assert not [d for d in stages[name]["deps"] if d.startswith((paths.FINETUNED_DIR + "/",
                                                                      paths.PRETRAINED_DIR + "/"))], name


ARCHITECTURES_SCRATCH = "scratch-${item}"
FINETUNE_RUNS_BASES = {"finetune": paths.pretrained_dir("${item}"), "finetune_scratch": paths.tokenizer_dir("${item}")}


def test_outs_use_the_paths_module(repo_root):
    stages = load_dvc(repo_root)

    def outs(stage):
        body = stage.get("do", stage)
        return [next(iter(o)) if isinstance(o, dict) else o for o in body.get("outs", [])]

    assert outs(stages["ingest"]) == [paths.CORPUS_DIR, paths.DOWNSTREAM_DIR, paths.DECONTAMINATION,
                                      paths.CORPUS_MANIFEST]
    assert outs(stages["validate"]) == [paths.VALIDATION_DIR]
    assert outs(stages["train_tokenizer"]) == [paths.tokenizer_dir("${item}")]
    assert outs(stages["tokenize"]) == [paths.tokenized_dir("${item}")]
    # Checkpoints are no out: DVC would delete them before a rerun (unless persist) and hash them.
    assert outs(stages["pretrain"]) == [paths.pretrained_dir("${item}"), f"{paths.PRETRAIN_REPORTS}/${{item}}/validation.json"]
    assert outs(stages["finetune"])[0] == paths.finetuned_dir("${item}")
    assert outs(stages["finetune_scratch"])[0] == paths.finetuned_dir(ARCHITECTURES_SCRATCH)
    assert outs(stages["evaluate"]) == [paths.COMPARISON_JSON, paths.COMPARISON_MD]
    assert outs(stages["register"]) == [paths.REGISTRY_JSON]
    metrics = [next(iter(m)) for m in stages["evaluate"]["metrics"]]
    assert metrics == [paths.COMPARISON_METRICS]
    # the pretrained model's folder, or (a scratch twin) the tokenizer's
    for name, run in (("finetune", "${item}"), ("finetune_scratch", "scratch-${item}")):
        body = stages[name]["do"]
        assert FINETUNE_RUNS_BASES[name] in body["deps"] and f"--run {run}" in body["cmd"], name
    for arch in ARCHITECTURE_NAMES:
        assert FINETUNE_RUNS[f"scratch-{arch}"].tokenizer_dir().as_posix() == paths.tokenizer_dir(arch)
