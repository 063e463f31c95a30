"""dvc.yaml and the code agree: declared params, paths, and the stage list."""
from __future__ import annotations

import yaml

from components import paths
from components.objectives import ARCHITECTURE_NAMES, FINETUNE_RUN_NAMES, FINETUNE_RUNS, OBJECTIVE_NAMES, OBJECTIVES
from components.params import STAGE_PARAMS


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
        assert body["cmd"].startswith(f"python -m pipelines.{name}"), name
        assert f"pipelines/{name}.py" in body["deps"], name
        assert (repo_root / "pipelines" / f"{name}.py").exists()


def test_foreach_lists_match_the_code(repo_root):
    stages = load_dvc(repo_root)
    assert stages["train_tokenizer"]["foreach"] == list(ARCHITECTURE_NAMES)
    for name in ("tokenize", "pretrain"):
        assert list(stages[name]["foreach"]) == list(OBJECTIVE_NAMES)
        for objective, item in stages[name]["foreach"].items():
            assert item["arch"] == OBJECTIVES[objective].architecture.name
    assert list(stages["finetune"]["foreach"]) == list(FINETUNE_RUN_NAMES)


def test_outs_use_the_paths_module(repo_root):
    stages = load_dvc(repo_root)

    def outs(stage):
        body = stage.get("do", stage)
        return [next(iter(o)) if isinstance(o, dict) else o for o in body.get("outs", [])]

    assert outs(stages["ingest"]) == [paths.CORPUS_DIR, paths.DOWNSTREAM_DIR, paths.DECONTAMINATION,
                                      paths.CORPUS_MANIFEST]
    assert outs(stages["validate"]) == [paths.VALIDATION_DIR]
    assert outs(stages["train_tokenizer"]) == [paths.tokenizer_dir("${item}")]
    assert outs(stages["tokenize"]) == [paths.tokenized_dir("${key}")]
    # Checkpoints are no out: DVC would delete them before a rerun (unless persist) and hash them.
    assert outs(stages["pretrain"]) == [paths.pretrained_dir("${key}"), f"{paths.PRETRAIN_REPORTS}/${{key}}/validation.json"]
    assert outs(stages["finetune"])[0] == paths.finetuned_dir("${key}")
    assert outs(stages["evaluate"]) == [paths.COMPARISON_JSON, paths.COMPARISON_MD]
    assert outs(stages["register"]) == [paths.REGISTRY_JSON]
    metrics = [next(iter(m)) for m in stages["evaluate"]["metrics"]]
    assert metrics == [paths.COMPARISON_METRICS]
    for run, item in stages["finetune"]["foreach"].items():
        assert item["arch"] == FINETUNE_RUNS[run].architecture.name
        assert item["base"] == FINETUNE_RUNS[run].tokenizer_dir().as_posix()  # the pretrained model's, or the tokenizer
