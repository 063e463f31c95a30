"""The flow's view of the graph comes from DVC, and prefect.yaml points at the real flow."""
from __future__ import annotations

import importlib

import yaml

from components import paths
from flows.pipeline import dvc_stage_order, set_params


def test_flow_runs_exactly_the_dvc_stages_in_dependency_order(repo_root):
    order = dvc_stage_order(repo_root)
    dvc_yaml = yaml.safe_load((repo_root / "dvc.yaml").read_text())["stages"]
    expected = set()
    for name, stage in dvc_yaml.items():
        items = stage.get("foreach")
        expected |= {f"{name}@{k}" for k in items} if items else {name}
    assert set(order) == expected and len(order) == len(expected)
    pos = {s: i for i, s in enumerate(order)}
    assert pos["ingest"] < pos["validate"] < min(pos[f"train_tokenizer@{a}"] for a in paths.ARCHITECTURES)
    for o in paths.OBJECTIVES:
        assert pos[f"tokenize@{o}"] < pos[f"pretrain@{o}"] < pos[f"finetune@{o}"] < pos["evaluate"] < pos["register"]


def test_set_params_keeps_comments_and_only_writes_changes(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("# keep me\nprofile: demo\ndata:\n  source: builtin:stdlib-docs  # inline\n")
    assert set_params(tmp_path, {"profile": "tiny", "data.source": None}) is True
    text = p.read_text()
    assert "# keep me" in text and "# inline" in text and "profile: tiny" in text
    assert set_params(tmp_path, {"profile": "tiny"}) is False


def test_prefect_yaml_deployments(repo_root):
    config = yaml.safe_load((repo_root / "prefect.yaml").read_text())
    deployments = {d["name"]: d for d in config["deployments"]}
    assert {"default", "tiny"} <= set(deployments)
    assert deployments["tiny"]["parameters"] == {"profile": "tiny"}
    assert deployments["default"]["schedules"][0]["cron"].count(" ") == 4
    for d in deployments.values():
        path, func = d["entrypoint"].split(":")
        flow = getattr(importlib.import_module(path.removesuffix(".py").replace("/", ".")), func)
        assert flow.name == "lmforge-pipeline"
        assert set(d.get("parameters", {})) <= set(flow.parameters.properties)
