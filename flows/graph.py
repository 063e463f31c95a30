"""The stage graph, read from DVC: dvc.yaml is its only definition.

The flow never lists stages itself. It asks DVC for the stages, their upstream stages
(a dep of one stage that is an out of another) and which are out of date against
dvc.lock, then picks the ones the requested objectives need. The objectives in the graph
are params.yaml's `objectives` (dvc.yaml's per-objective stages iterate over it); a requested
objective must be one of them.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

from components.objectives import FINETUNE_RUNS, OBJECTIVE_NAMES, OBJECTIVES


@dataclass
class StagePlan:
    """What one flow run will do: stages in dependency order and each one's upstream stages."""

    upstream: dict[str, list[str]]  # stage -> the stages it depends on, in order; keys in run order
    stale: set[str]                  # stages DVC reports as changed against dvc.lock (by content hash)
    up_to_date: set[str] = field(default_factory=set)  # neither they nor any stage upstream is stale
    left_out: dict[str, str] = field(default_factory=dict)  # stage -> why this run does not run it

    @property
    def stages(self) -> list[str]:
        return list(self.upstream)


def dvc_graph(repo_dir: str | Path, with_status: bool = False) -> tuple[dict[str, list[str]], set[str]]:
    """({stage: upstream stages}, dependencies first, ties by name; stale stages if asked)."""
    import networkx as nx
    from dvc.repo import Repo, lock_repo

    with Repo(str(repo_dir)) as repo, (lock_repo(repo) if with_status else contextlib.nullcontext()):
        graph = repo.index.graph  # edges point from a stage to the stages it depends on
        # `name` ("pretrain@clm"), not `addressing`, which is relative to the caller's cwd.
        order = nx.lexicographical_topological_sort(graph.reverse(copy=True), key=lambda s: s.name)
        upstream = {s.name: sorted(u.name for u in graph.successors(s)) for s in order}
        # What `dvc status` computes: deps, params and outs hashed against dvc.lock.
        stale = {s.name for s in graph if s.changed()} if with_status else set()
    return upstream, stale


def ancestors(upstream: dict[str, list[str]], targets: set[str]) -> set[str]:
    seen: set[str] = set()
    todo = list(targets)
    while todo:
        stage = todo.pop()
        if stage not in seen:
            seen.add(stage)
            todo.extend(upstream[stage])
    return seen


def objective_targets(objectives: list[str]) -> set[str]:
    """The fine-tuning runs an objective needs: its own and its architecture's scratch twin."""
    return {FINETUNE_RUNS[r].stage for o in objectives for r in (o, OBJECTIVES[o].architecture.scratch_run)}


def graph_objectives(upstream: dict[str, list[str]]) -> list[str]:
    """The objectives in the graph (params.yaml's `objectives`), in spec order."""
    return [o for o in OBJECTIVE_NAMES if FINETUNE_RUNS[o].stage in upstream]


def plan_stages(upstream: dict[str, list[str]], stale: set[str], objectives: list[str] | None = None) -> StagePlan:
    """The stages a flow run for `objectives` runs (all of params.yaml's `objectives` when None).

    A subset runs everything its fine-tuning runs descend from. The stages after
    fine-tuning (evaluate, register) compare every objective, so they join only when the
    objectives left out are already up to date against dvc.lock; otherwise they are left
    out, and the plan says why.
    """
    up_to_date = {s for s in upstream if not ancestors(upstream, {s}) & stale}
    listed = graph_objectives(upstream)
    if not objectives or set(objectives) >= set(listed):
        return StagePlan(upstream, stale, up_to_date)
    unknown = set(objectives) - set(OBJECTIVE_NAMES)
    if unknown:
        raise ValueError(f"unknown objective(s) {sorted(unknown)}; choose from {list(OBJECTIVE_NAMES)}")
    unlisted = [o for o in objectives if o not in listed]
    if unlisted:
        raise ValueError(f"objective(s) {', '.join(unlisted)} not in params.yaml objectives [{', '.join(listed)}]; "
                         f"add them there to run them")
    selected = ancestors(upstream, objective_targets(objectives))
    fan_in = set(upstream) - selected - ancestors(upstream, objective_targets(listed))
    left_out: dict[str, str] = {}
    dropped: set[str] = set()
    for stage in upstream:
        if stage in selected:
            continue
        if stage in fan_in:
            before = ancestors(upstream, {stage}) - selected - {stage}
            blocking = sorted(before & (stale | dropped))
            if not blocking:
                selected.add(stage)
                continue
            left_out[stage] = f"needs {', '.join(blocking)}, out of date and not in objectives"
            dropped.add(stage)
        else:
            left_out[stage] = "not needed by objectives " + ", ".join(objectives)
    plan = {s: u for s, u in upstream.items() if s in selected}
    return StagePlan({s: [u for u in ups if u in plan] for s, ups in plan.items()}, stale & selected,
                     up_to_date & selected, left_out)
