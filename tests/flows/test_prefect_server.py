"""The flow on a real Prefect server, the way a user runs it.

`prefect server start` on 127.0.0.1, a process work pool, `prefect deploy -n tiny` from a
tiny-profile copy of this working tree, `prefect worker start`, runs created through the
API. Two runs start at once (one runs the pipeline, the other waits for the workspace and
then finds nothing to do), a third measures the no-op rerun, and two failing runs check
that a transient failure is retried and bad data is not. Everything is killed at the end.
"""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from components.objectives import ARCHITECTURE_NAMES, FINETUNE_RUN_NAMES, OBJECTIVE_NAMES
from pipeline_repo import comparable_metrics, dvc, free_port, make_repo, stop_group as stop, wait_until_up
from test_flow import graph_from_dvc_yaml

# ingest, validate, evaluate, register; a tokenizer per architecture; tokenize and pretrain per
# objective; a fine-tune per run: what dvc.yaml declares.
STAGES = 4 + len(ARCHITECTURE_NAMES) + 2 * len(OBJECTIVE_NAMES) + len(FINETUNE_RUN_NAMES)

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
NOOP_LIMIT_S = 30.0


def prefect_cli(env: dict, *args: str, cwd: Path | None = None) -> str:
    proc = subprocess.run([str(BIN / "prefect"), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"prefect {' '.join(args)}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """(API URL, env for clients) of a `prefect server start` on a free 127.0.0.1 port."""
    home = tmp_path_factory.mktemp("prefect-server")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API_", "MLFLOW_TRACKING_URI"))}
    env.update(PREFECT_HOME=str(home / "home"), PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_UI_ENABLED="false",
               DO_NOT_TRACK="1", PATH=f"{BIN}{os.pathsep}{env['PATH']}")
    log = open(home / "server.log", "w")
    proc = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/api"
    try:
        wait_until_up(f"{url}/health", proc, "prefect server", lambda: (home / "server.log").read_text()[-3000:])
        yield url, {**env, "PREFECT_API_URL": url}
    finally:
        stop(proc)
        log.close()


@contextlib.contextmanager
def api(url: str):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: url}), get_client(sync_client=True) as client:
        yield client


def wait_final(client, run_ids, timeout_s: float) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        runs = {i: client.read_flow_run(i) for i in run_ids}
        if all(r.state and r.state.is_final() for r in runs.values()):
            return runs
        assert time.monotonic() < deadline, {i: r.state for i, r in runs.items()}
        time.sleep(1)


def read_logs(client, run_id) -> str:
    """The run's log, once its last line ("Finished in state ...") has reached the server."""
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    deadline = time.monotonic() + 30
    while True:
        logs, page = [], None
        while page is None or len(page) == 200:  # the API's page size
            page = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])), limit=200, offset=len(logs))
            logs += page
        text = "\n".join(entry.message for entry in logs)
        if any(e.task_run_id is None and e.message.startswith("Finished in state") for e in logs) \
                or time.monotonic() > deadline:
            return text
        time.sleep(1)


def run_record(client, run) -> dict:
    """A flow run as the server saw it: state, timings, its tasks (with upstream edges), artifacts, logs."""
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, FlowRunFilter, FlowRunFilterId

    tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))
    names = {t.id: t.name for t in tasks}
    artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run.id])))
    return {
        "state": run.state.type.value, "message": run.state.message or "",
        "seconds": (run.end_time - run.start_time).total_seconds() if run.start_time and run.end_time else None,
        "tasks": {t.name: {"state": t.state.type.value, "state_name": t.state.name, "message": t.state.message or "",
                           "run_count": t.run_count,
                           "upstream": {names.get(i.id) for i in t.task_inputs.get("wait_for", []) if hasattr(i, "id")}}
                  for t in tasks},
        "artifacts": {a.key: a for a in artifacts if a.key},
        "logs": read_logs(client, run.id),
    }


@pytest.fixture(scope="module")
def workspace(server, tmp_path_factory):
    """A tiny-profile repo with the `tiny` deployment deployed from it and a worker on its pool."""
    url, env = server
    repo = make_repo(tmp_path_factory.mktemp("workspace"))
    prefect_cli(env, "work-pool", "create", "lmforge-local", "--type", "process")
    prefect_cli(env, "--no-prompt", "deploy", "-n", "tiny", cwd=repo)
    log_path = repo.parent / "worker.log"
    log = open(log_path, "w")
    worker = subprocess.Popen([str(BIN / "prefect"), "worker", "start", "--pool", "lmforge-local", "--name", "test-worker"],
                              env={**env, "PREFECT_WORKER_QUERY_SECONDS": "1"}, cwd=repo, stdout=log,
                              stderr=subprocess.STDOUT, start_new_session=True)
    try:
        with api(url) as client:
            yield repo, client, client.read_deployment_by_name("lmforge-pipeline/tiny"), log_path
    finally:
        stop(worker)
        log.close()


@pytest.fixture(scope="module")
def tiny_runs(workspace):
    """Two runs of `tiny` created at once, then, once both ended, a third: the no-op rerun."""
    repo, client, deployment, log_path = workspace
    start = time.monotonic()
    both = [client.create_flow_run_from_deployment(deployment.id).id for _ in range(2)]
    runs = wait_final(client, both, timeout_s=1800)
    first_s = time.monotonic() - start
    start = time.monotonic()
    rerun = client.create_flow_run_from_deployment(deployment.id).id
    runs |= wait_final(client, [rerun], timeout_s=300)
    noop_s = time.monotonic() - start
    clm = client.create_flow_run_from_deployment(deployment.id, parameters={"objectives": ["clm"]}).id
    runs |= wait_final(client, [clm], timeout_s=300)
    records = [run_record(client, runs[i]) for i in [*both, rerun, clm]]
    print(f"\nprefect-server: two runs at once {first_s:.0f} s; no-op rerun {noop_s:.1f} s "
          f"(flow run {records[2]['seconds']:.1f} s)")
    worker_log = log_path.read_text()[-4000:]
    return {"both": records[:2], "rerun": records[2], "clm": records[3], "noop_s": noop_s, "worker_log": worker_log,
            "repo": repo}


def test_tiny_deployment_completes_with_its_artifacts(tiny_runs):
    for record in [*tiny_runs["both"], tiny_runs["rerun"]]:
        assert record["state"] == "COMPLETED", (record["message"], tiny_runs["worker_log"])
        assert {"lmforge-report", "lmforge-registry", "lmforge-progress"} <= set(record["artifacts"])
    full = next(r for r in tiny_runs["both"] if any(t["state_name"] != "Skipped" for t in r["tasks"].values()))
    report = full["artifacts"]["lmforge-report"].data
    assert "| `pretrain@clm` | ran |" in report and "#/experiments/" in report  # links to the MLflow runs
    assert "test macro-F1" in report  # the comparison table
    registry = full["artifacts"]["lmforge-registry"]
    rows = json.loads(registry.data) if isinstance(registry.data, str) else registry.data
    assert set(OBJECTIVE_NAMES) <= {r["objective"] for r in rows} and all(r["model"] for r in rows)
    assert f"[{STAGES}/{STAGES}] register: ran" in full["logs"]  # stage progress in the Prefect logs


def test_the_tasks_prefect_ran_are_the_dvc_yaml_graph(tiny_runs):
    expected = graph_from_dvc_yaml(tiny_runs["repo"])  # its params.yaml lists every objective
    for record in [*tiny_runs["both"], tiny_runs["rerun"]]:
        assert {name: task["upstream"] for name, task in record["tasks"].items()} == expected


def test_the_flow_gives_the_same_metrics_as_dvc_repro(tiny_runs, dvc_run):
    repo = tiny_runs["repo"]
    assert comparable_metrics(repo) == dvc_run[1]
    # dvc.lock is the shared record: after the flow, `dvc repro` has nothing left to do.
    assert "Running stage" not in dvc(repo, "repro").stdout


def test_two_runs_at_once_take_turns_on_the_workspace(tiny_runs):
    first, second = sorted(tiny_runs["both"], key=lambda r: "waiting up to" in r["logs"])
    assert "waiting up to" in second["logs"] and "in use by flow run" in second["logs"]
    assert {t["state_name"] for t in first["tasks"].values()} == {"Completed"}
    assert {t["state_name"] for t in second["tasks"].values()} == {"Skipped"}


def test_a_rerun_with_nothing_changed_skips_every_stage_quickly(tiny_runs):
    rerun = tiny_runs["rerun"]
    assert len(rerun["tasks"]) == STAGES and {t["state_name"] for t in rerun["tasks"].values()} == {"Skipped"}
    assert f"done: 0 stage(s) ran, {STAGES} up to date" in rerun["logs"]
    assert tiny_runs["noop_s"] < NOOP_LIMIT_S, tiny_runs["noop_s"]


def test_objectives_run_only_what_they_need(tiny_runs):
    clm = tiny_runs["clm"]
    assert clm["state"] == "COMPLETED", clm["message"]
    assert set(clm["tasks"]) == {"ingest", "validate", "train_tokenizer@gpt2", "train_tokenizer@bert", "tokenize@clm",
                                 "pretrain@clm", "finetune@clm", "finetune_scratch@gpt2", "evaluate", "register"}
    assert "pretrain@mlm: left out (not needed by objectives clm)" in clm["logs"]


def test_the_gpu_job_templates_make_work_pools_and_take_the_gpu_deployment(server, workspace, repo_root):
    from prefect.client.schemas.actions import WorkPoolCreate

    _, env = server
    repo, client, _, _ = workspace
    for name, worker_type, path in (("lmforge-gpu", "kubernetes", "deploy/kubernetes-gpu.json"),
                                    ("lmforge-gpu-docker", "docker", "deploy/docker-gpu.json")):
        template = json.loads((repo_root / path).read_text())
        pool = client.create_work_pool(WorkPoolCreate(name=name, type=worker_type, base_job_template=template))
        assert pool.base_job_template["variables"]["properties"]["gpu_count"]["default"] == 1
    prefect_cli(env, "--no-prompt", "deploy", "-n", "gpu-small", cwd=repo)
    gpu = client.read_deployment_by_name("lmforge-pipeline/gpu-small")
    assert gpu.work_pool_name == "lmforge-gpu" and gpu.job_variables == {"gpu_count": 1}
    assert gpu.pull_steps == [{"prefect.deployments.steps.set_working_directory": {"directory": "/opt/lmforge"}}]


def test_lmforge_serve_registers_a_scheduled_deployment(server, tiny_runs):
    url, env = server
    log = tiny_runs["repo"].parent / "serve.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([str(BIN / "lmforge"), "--repo", str(tiny_runs["repo"]), "serve", "--profile", "tiny",
                                 "--cron", "0 4 * * *", "--name", "served"],
                                env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        with api(url) as client:
            deadline = time.monotonic() + 120
            while True:
                with contextlib.suppress(Exception):
                    deployment = client.read_deployment_by_name("lmforge-pipeline/served")
                    break
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(1)
        assert deployment.work_pool_name is None  # served by the process itself
        assert [s.schedule.cron for s in deployment.schedules] == ["0 4 * * *"]
        assert deployment.parameters["profile"] == "tiny"
    finally:
        stop(proc)


@pytest.fixture(scope="module")
def failing_runs(workspace, tiny_runs):
    """After the tests above: a run whose data source is missing (bad data) and one whose MLflow
    server is down (transient), each allowed 2 retries without backoff."""
    repo, client, deployment, _ = workspace
    quick = {"stage_retries": 2, "retry_backoff_s": 0}
    bad_data = client.create_flow_run_from_deployment(
        deployment.id, parameters={**quick, "profile": "tiny", "data_source": str(repo / "no-such-corpus.jsonl")}).id
    down = f"http://127.0.0.1:{free_port()}"
    transient = client.create_flow_run_from_deployment(
        deployment.id, parameters={**quick, "profile": "demo", "data_source": "builtin:stdlib-docs"},
        job_variables={"env": {"MLFLOW_TRACKING_URI": down, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}}).id
    runs = wait_final(client, [bad_data, transient], timeout_s=600)
    return run_record(client, runs[bad_data]), run_record(client, runs[transient])


def test_bad_data_fails_once_and_is_not_retried(failing_runs):
    bad_data, _ = failing_runs
    assert bad_data["state"] == "FAILED" and "ingest" in bad_data["message"]
    ingest = bad_data["tasks"]["ingest"]
    assert ingest["state"] == "FAILED" and ingest["run_count"] == 1
    assert "exit 1; not transient" in ingest["message"] and "no-such-corpus.jsonl" in ingest["message"]
    assert bad_data["tasks"]["validate"]["state_name"] == "NotReady"


def test_a_lost_mlflow_server_is_retried(failing_runs):
    _, transient = failing_runs
    ingest = transient["tasks"]["ingest"]
    assert ingest["state"] == "FAILED" and ingest["run_count"] == 3, ingest
    assert "transient: the MLflow tracking server was unreachable" in ingest["message"]
    assert transient["logs"].count(f"[1/{STAGES}] ingest: dvc repro --single-item ingest") == 3
