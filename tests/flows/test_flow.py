"""The flow's graph is dvc.yaml's, the stage-selection and retry rules, the workspace lock,
and the deployment files (prefect.yaml, deploy/*.json).

The flow against a real Prefect server (deploy, worker, retries, two runs at once) is in
tests/flows/test_prefect_server.py.
"""
from __future__ import annotations

import importlib
import re
import subprocess
import sys
import time

import pytest
import yaml

from components.objectives import OBJECTIVE_NAMES
from flows.graph import ancestors, dvc_graph, graph_objectives, objective_targets, plan_stages
from flows.pipeline import set_params, transient_reason
from flows.workspace import WorkspaceBusy, workspace_lock


def graph_from_dvc_yaml(repo_root) -> dict[str, set[str]]:
    """dvc.yaml read without DVC: foreach expanded (`${objectives}` from params.yaml), a stage
    upstream of another when one of its outs (outs, metrics, plots) is, contains or sits in a
    dep of the other (evaluate depends on the folders the fine-tuning runs write into)."""
    def subst(text: str, key, item) -> str:
        text = text.replace("${key}", str(key))
        if isinstance(item, dict):
            return re.sub(r"\$\{item\.(\w+)\}", lambda m: str(item[m.group(1)]), text)
        return text.replace("${item}", str(item))

    def names(entries) -> list[str]:
        return [next(iter(e)) if isinstance(e, dict) else e for e in entries or []]

    stages = {}
    objectives = yaml.safe_load((repo_root / "params.yaml").read_text())["objectives"]
    for name, stage in yaml.safe_load((repo_root / "dvc.yaml").read_text())["stages"].items():
        items = stage.get("foreach")
        items = objectives if items == "${objectives}" else items
        body = stage.get("do", stage)
        expanded = ({k: v for k, v in items.items()} if isinstance(items, dict) else {i: i for i in items}) \
            if items else {None: None}
        for key, item in expanded.items():
            outs = [subst(p, key, item) for f in ("outs", "metrics", "plots") for p in names(body.get(f))]
            deps = [subst(p, key, item) for p in body.get("deps", [])]
            stages[f"{name}@{key}" if key is not None else name] = (deps, outs)
    return {s: {u for u, (_, outs) in stages.items() if u != s
                and any(d == o or d.startswith(o.rstrip("/") + "/") or o.startswith(d.rstrip("/") + "/")
                        for d in deps for o in outs)}
            for s, (deps, _) in stages.items()}


def test_the_flow_graph_is_dvc_yaml(repo_root):
    """The one source of truth: the flow's tasks and their upstream edges are dvc.yaml's."""
    upstream, _ = dvc_graph(repo_root)
    expected = graph_from_dvc_yaml(repo_root)
    assert {s: set(u) for s, u in upstream.items()} == expected
    # The graph follows params.yaml's `objectives` (no flow code names them): the listed ones only.
    assert graph_objectives(upstream) == list(yaml.safe_load((repo_root / "params.yaml").read_text())["objectives"])
    assert set(upstream["pretrain@mlm_nsp"]) == {"tokenize@mlm_nsp", "train_tokenizer@gpt2", "train_tokenizer@bert"}
    assert set(upstream["finetune@mlm_nsp"]) == {"ingest", "pretrain@mlm_nsp"}
    assert set(upstream["finetune_scratch@bert"]) == {"ingest", "train_tokenizer@bert"}
    assert {"finetune@mlm_nsp", "finetune_scratch@gpt2", "pretrain@clm"} <= set(upstream["evaluate"])
    order = list(upstream)
    for stage, ups in upstream.items():  # dependencies come first
        assert all(order.index(u) < order.index(stage) for u in ups), stage
    plan = plan_stages(upstream, set())
    assert plan.upstream == upstream and not plan.left_out and plan.up_to_date == set(upstream)
    # A stale stage reruns what descends from it; the rest is skipped without starting DVC.
    plan = plan_stages(upstream, {"tokenize@clm"})
    downstream = {s for s in upstream if "tokenize@clm" in ancestors(upstream, {s})}
    assert downstream == {"tokenize@clm", "pretrain@clm", "finetune@clm", "evaluate", "register"}
    assert plan.up_to_date == set(upstream) - downstream


@pytest.mark.parametrize("objectives", [["clm"], ["mlm"], ["mlm_nsp"], ["mlm", "mlm_nsp"]])
def test_objectives_run_what_their_finetuning_descends_from(repo_root, objectives):
    expected = graph_from_dvc_yaml(repo_root)
    upstream, _ = dvc_graph(repo_root)
    need = ancestors({s: sorted(u) for s, u in expected.items()}, objective_targets(objectives))
    assert all(f"pretrain@{o}" in need for o in objectives)
    others = [o for o in graph_objectives(upstream) if o not in objectives]
    assert not any(f"pretrain@{o}" in need for o in others)

    # The other objectives up to date: evaluate and register join, with every edge kept.
    plan = plan_stages(upstream, stale={f"pretrain@{o}" for o in objectives}, objectives=objectives)
    assert set(plan.stages) == need | {"evaluate", "register"}
    assert {s: set(u) for s, u in plan.upstream.items()} == {s: expected[s] & set(plan.stages) for s in plan.stages}
    # Another objective out of date: the comparison would mix old and new, so it is left out.
    plan = plan_stages(upstream, stale={f"pretrain@{others[0]}"}, objectives=objectives)
    assert set(plan.stages) == need
    assert f"pretrain@{others[0]}" in plan.left_out["evaluate"] and "register" in plan.left_out
    with pytest.raises(ValueError, match="unknown objective"):
        plan_stages(upstream, set(), ["gpt"])
    with pytest.raises(ValueError, match=r"objective\(s\) rtd not in params.yaml objectives \[clm, mlm, mlm_nsp\]"):
        plan_stages(upstream, set(), ["rtd"])


@pytest.mark.parametrize("output, code, transient", [
    (["ERROR: failed to reproduce 'ingest': failed to run: python -m pipelines.ingest, exited with 1"], 1, False),
    (["error: tokenize: bad params", "ERROR: failed to reproduce 'x': failed to run: y, exited with 2"], 2, False),
    (["ERROR: failed to reproduce 'x': failed to run: y, exited with 75"], 75, True),
    (["ERROR: failed to reproduce 'pretrain@clm': failed to run: y, exited with -15"], -15, True),
    (["ERROR: failed to reproduce 'pretrain@clm': failed to run: y, exited with 137"], 137, True),
    (["ERROR: Unable to acquire lock. Most likely another DVC process is running"], None, True),
    (["error: register: MLflow tracking server http://10.0.0.5:5000 unreachable after 7 retries (Connection refused)",
      "ERROR: failed to reproduce 'register': failed to run: python -m pipelines.register, exited with 1"], 1, True),
    (["mlflow.exceptions.MlflowException: API request to http://mlflow:5000/api/2.0/mlflow/runs/create failed with "
      "exception HTTPConnectionPool(host='mlflow', port=5000): Max retries exceeded with url: /api/2.0/mlflow/runs/create",
      "ERROR: failed to reproduce 'pretrain@mlm': failed to run: python -m pipelines.pretrain, exited with 1"], 1, True),
    (["error: ingest: data.source: 'x.jsonl' does not exist", "ERROR: failed to reproduce 'ingest': failed to run: "
      "python -m pipelines.ingest, exited with 1"], 1, False),
])
def test_only_transient_failures_are_retried(output, code, transient):
    got_code, why = transient_reason(output)
    assert got_code == code and (why is not None) == transient


def test_set_params_keeps_comments_and_only_writes_changes(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("# keep me\nprofile: demo\ndata:\n  source: builtin:stdlib-docs  # inline\n")
    assert set_params(tmp_path, {"profile": "tiny", "data.source": None}) is True
    text = p.read_text()
    assert "# keep me" in text and "# inline" in text and "profile: tiny" in text
    assert set_params(tmp_path, {"profile": "tiny"}) is False


HOLD = """
import sys, time
from flows.workspace import workspace_lock
with workspace_lock(sys.argv[1], "run-A (1234)", timeout_s=0):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def test_a_second_run_on_the_workspace_waits_then_fails_naming_the_holder(tmp_path, repo_root):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path), "30"], cwd=repo_root,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        waits = []
        start = time.monotonic()
        with pytest.raises(WorkspaceBusy) as busy:
            with workspace_lock(tmp_path, "run-B", timeout_s=1.5, on_wait=waits.append, poll_s=0.2):
                pass
        assert 1.5 <= time.monotonic() - start < 10
        assert "run-A (1234)" in str(busy.value) and f"pid {holder.pid}" in str(busy.value)
        assert "wait_for_workspace_s" in str(busy.value) and "run-A" in waits[0]
    finally:
        holder.kill()
        holder.wait()
    # The kernel dropped the dead holder's lock: the workspace is free at once.
    with workspace_lock(tmp_path, "run-C", timeout_s=0):
        pass


def test_a_waiting_run_proceeds_when_the_workspace_is_released(tmp_path, repo_root):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path), "1"], cwd=repo_root,
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    waits = []
    with workspace_lock(tmp_path, "run-B", timeout_s=60, on_wait=waits.append, poll_s=0.2) as lock:
        assert "run-B" in lock.read_text()
    assert len(waits) == 1
    holder.wait()


def test_prefect_yaml_deployments(repo_root):
    config = yaml.safe_load((repo_root / "prefect.yaml").read_text())
    deployments = {d["name"]: d for d in config["deployments"]}
    assert {"default", "tiny", "gpu-small"} <= set(deployments)
    assert deployments["tiny"]["parameters"]["profile"] == "tiny"
    assert deployments["tiny"]["work_pool"]["name"] == deployments["default"]["work_pool"]["name"] == "lmforge-local"
    cron = deployments["default"]["schedules"][0]["cron"]
    assert cron.count(" ") == 4
    # The stage deployments `lmforge run --pools` sends stages to: one per pool dvc.yaml names.
    assert {deployments[p]["work_pool"]["name"] for p in ("cpu", "gpu")} == {"lmforge-cpu", "lmforge-gpu"}
    for d in deployments.values():
        path, func = d["entrypoint"].split(":")
        flow = getattr(importlib.import_module(path.removesuffix(".py").replace("/", ".")), func)
        assert flow.name == ("lmforge-stage" if d["name"] in ("cpu", "gpu") else "lmforge-pipeline")
        params = d.get("parameters", {})
        assert set(params) <= set(flow.parameters.properties)
        if not params and d["name"] in ("cpu", "gpu"):
            continue  # every parameter comes with the flow run the controller creates
        flow.validate_parameters(params)  # types and choices, as the server would check them
