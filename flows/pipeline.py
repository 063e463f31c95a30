"""The lmforge pipeline as a Prefect flow.

dvc.yaml stays the single graph: the flow asks DVC for the stages in dependency order and
runs each through `dvc repro --single-item`, one at a time (DVC holds a repo lock). So
dvc.lock remains the cache and the lineage record however a run was started, a stage whose
inputs are unchanged is skipped by content hash, and Prefect adds schedules, retries, the
UI and artifacts on top.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from components import paths

FLOW_NAME = "lmforge-pipeline"


def dvc_stage_order(repo_dir: str | Path) -> list[str]:
    """Stage addresses (`pretrain@clm`) from dvc.yaml, dependencies first, ties by name."""
    import networkx as nx
    from dvc.repo import Repo

    with Repo(str(repo_dir)) as repo:
        graph = repo.index.graph.reverse(copy=True)  # DVC's edges point from a stage to its deps
        # `name` ("pretrain@clm"), not `addressing`, which is relative to the caller's cwd.
        order = nx.lexicographical_topological_sort(graph, key=lambda s: s.name)
        return [stage.name for stage in order]


def set_params(repo_dir: str | Path, overrides: dict[str, object]) -> bool:
    """Write overrides (dotted keys) into params.yaml like `dvc exp run -S`; keeps comments."""
    from ruamel.yaml import YAML

    overrides = {k: v for k, v in overrides.items() if v is not None}
    if not overrides:
        return False
    yaml = YAML()
    path = Path(repo_dir) / "params.yaml"
    data = yaml.load(path.read_text())
    changed = False
    for dotted, value in overrides.items():
        node = data
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        if node.get(leaf) != value:
            node[leaf] = value
            changed = True
    if changed:
        tmp = path.with_suffix(".yaml.tmp")
        with open(tmp, "w") as f:
            yaml.dump(data, f)
        tmp.replace(path)
    return changed


@task(task_run_name="{stage}")
def run_dvc_stage(stage: str, repo_dir: str) -> str:
    """`dvc repro --single-item <stage>`, streaming its output to the Prefect log."""
    logger = get_run_logger()
    proc = subprocess.Popen(
        [sys.executable, "-m", "dvc", "repro", "--single-item", stage],
        cwd=repo_dir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=os.environ.copy(),
    )
    skipped = False
    tail: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.rstrip()
        if line:
            logger.info(line)
            tail = (tail + [line])[-5:]
            skipped |= "didn't change, skipping" in line
    if proc.wait() != 0:
        raise RuntimeError(f"stage {stage} failed (exit {proc.returncode}): {' | '.join(tail)}")
    return "skipped" if skipped else "ran"


@flow(name=FLOW_NAME, log_prints=True)
def pipeline(profile: str | None = None, data_source: str | None = None, repo_dir: str = ".") -> dict[str, str]:
    """Run every dvc.yaml stage in order; returns {stage: 'ran' | 'skipped'}."""
    logger = get_run_logger()
    repo_dir = str(Path(repo_dir).resolve())
    if set_params(repo_dir, {"profile": profile, "data.source": data_source}):
        logger.info(f"params.yaml updated: profile={profile} data.source={data_source}")
    results = {}
    for stage in dvc_stage_order(repo_dir):
        results[stage] = run_dvc_stage.with_options(name=f"dvc:{stage.split('@')[0]}")(stage, repo_dir)
    report = Path(repo_dir) / paths.COMPARISON_MD
    if report.exists():
        ran = ", ".join(s for s, r in results.items() if r == "ran") or "none (all up to date)"
        create_markdown_artifact(
            key="lmforge-comparison",
            markdown=report.read_text() + f"\n\nStages run: {ran}\n",
            description="Downstream results by pretraining objective",
        )
    return results
