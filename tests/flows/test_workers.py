"""`lmforge run --pools` on a real Prefect server with real workers, the way a team scales out.

Two process work pools (`cpu`, and `gpu` standing in for GPU machines), one CPU worker and
two GPU workers, each in its own clone directory, a local-directory DVC remote between them
and a real `mlflow server` they all log to. The controller is a tiny-profile repo; its one
dvc.lock is compared with the session's single-checkout `dvc repro` of the same pipeline.
Then a GPU worker is killed while it pretrains; a new one replaces it and the stage resumes
from the checkpoint the dead worker left on shared storage.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
import yaml

from components.registry.lineage import dvc_out_hashes
from flows.pipeline import set_params
from pipeline_repo import dvc, free_port, make_repo, wait_until_up
from test_prefect_server import api, server, stop  # noqa: F401  (server: the module's Prefect server)

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


def lmforge(env: dict, repo: Path, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "lmforge"), "--repo", str(repo), *args], env=env, cwd=repo,
                          capture_output=True, text=True, timeout=timeout)


def start_worker(env: dict, repo: Path, root: Path, pool: str, name: str) -> subprocess.Popen:
    log = open(root / f"{name}.log", "w")
    return subprocess.Popen([str(BIN / "lmforge"), "--repo", str(repo), "workers", "start", "--pool", pool,
                             "--dir", str(root / name), "--name", name],
                            env=env, cwd=repo, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def stage_runs(client) -> list[dict]:
    """The `lmforge-stage` flow runs: stage, state, worker clone, start and end."""
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["lmforge-stage"])), limit=200)
    found = [{"stage": r.parameters["stage"], "state": r.state.type.value if r.state else None, "id": r.id,
              "name": r.name, "start": r.start_time, "end": r.end_time, "created": r.created} for r in runs]
    return sorted(found, key=lambda r: r["created"])


@pytest.fixture(scope="module")
def cluster(server, tmp_path_factory):  # noqa: F811
    url, env = server
    root = tmp_path_factory.mktemp("pools")
    port = free_port()
    log = open(root / "mlflow.log", "w")
    mlflow = subprocess.Popen([str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
                               "--artifacts-destination", str(root / "mlartifacts"), "--host", "127.0.0.1",
                               "--port", str(port), "--workers", "1"],
                              env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    repo = make_repo(root / "controller")  # its .dvc/config remote: ../.dvcstore, a local directory
    env = {**env, "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}", "PREFECT_WORKER_QUERY_SECONDS": "1",
           "LMFORGE_CHECKPOINT_STORE": str(root / "checkpoint-store"), "MLFLOW_DISABLE_TELEMETRY": "true"}
    workers: dict[str, subprocess.Popen] = {}
    try:
        wait_until_up(f"http://127.0.0.1:{port}/health", mlflow, "mlflow server", lambda: (root / "mlflow.log").read_text()[-3000:])
        setup = lmforge(env, repo, "workers", "setup", timeout=300)
        assert setup.returncode == 0, setup.stdout + setup.stderr
        for pool, name in (("cpu", "cpu-1"), ("gpu", "gpu-1"), ("gpu", "gpu-2")):
            workers[name] = start_worker(env, repo, root, pool, name)
        with api(url) as client:
            yield {"repo": repo, "root": root, "env": env, "client": client, "workers": workers,
                   "mlflow": env["MLFLOW_TRACKING_URI"], "setup": setup.stdout}
    finally:
        for proc in [*workers.values(), mlflow]:
            stop(proc)
        log.close()


@pytest.fixture(scope="module")
def pools_run(cluster):
    """The clm branch (7 stages) at the tiny profile's params: the same work as the session's
    single-checkout `dvc repro`, so outputs and lineage must match it."""
    start = time.monotonic()
    proc = lmforge(cluster["env"], cluster["repo"], "run", "--pools", "--objective", "clm")
    seconds = time.monotonic() - start
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-6000:]
    runs = stage_runs(cluster["client"])
    print(f"\npools: the clm branch on 1 cpu + 2 gpu workers in {seconds:.0f} s; "
          + ", ".join(f"{r['stage']} {(r['end'] - r['start']).total_seconds():.0f} s" for r in runs if r["start"]))
    return {"runs": runs, "output": proc.stdout + proc.stderr, "seconds": seconds}


@pytest.fixture(scope="module")
def killed_run(pools_run, cluster):
    """Two objectives (clm and mlm: two pretrainings for the two GPU workers), with longer
    pretraining (params changed in the controller, as `dvc exp run -S` would); the GPU worker that pretrains is SIGKILLed at its first stored
    checkpoint and a new worker started."""
    repo, root, env, client = cluster["repo"], cluster["root"], cluster["env"], cluster["client"]
    store = root / "checkpoint-store"
    before = set(os.listdir(store)) if store.exists() else set()
    known = {r["id"] for r in stage_runs(client)}
    set_params(repo, {"objectives": ["clm", "mlm"], "pretrain.max_steps": 250, "pretrain.checkpoint_every": 10,
                      "pretrain.eval_every": 200, "pretrain.log_every": 100})
    start = time.monotonic()
    controller = subprocess.Popen([str(BIN / "lmforge"), "--repo", str(repo), "run", "--pools"],
                                  env=env, cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 400
    while not (store.exists() and [d for d in set(os.listdir(store)) - before if any((store / d).glob("step-*"))]):
        assert time.monotonic() < deadline and controller.poll() is None, "no checkpoint reached the store"
        time.sleep(0.2)
    newest = {n: max(((p.stat().st_mtime, p.parent.name) for p in (root / n).glob("checkpoints/pretrain/*/step-*")),
                     default=(0.0, "")) for n in ("gpu-1", "gpu-2")}
    victim = max(newest, key=newest.get)
    os.kill(cluster["workers"][victim].pid, signal.SIGKILL)
    killed_at = datetime.now(timezone.utc)
    cluster["workers"]["gpu-3"] = start_worker(env, repo, root, "gpu", "gpu-3")
    output, _ = controller.communicate(timeout=900)
    seconds = time.monotonic() - start
    assert controller.returncode == 0, output[-6000:]
    runs = [r for r in stage_runs(client) if r["id"] not in known]
    print(f"\npools: clm and mlm at 250 pretraining steps, {victim} killed while pretraining "
          f"{newest[victim][1]}, in {seconds:.0f} s")
    return {"runs": runs, "output": output, "victim": victim, "objective": newest[victim][1], "killed_at": killed_at}


def test_setup_makes_the_pools_deployments_and_zombie_automation(cluster):
    from prefect.automations import Automation

    client = cluster["client"]
    assert {"lmforge-cpu", "lmforge-gpu"} <= {p.name for p in client.read_work_pools()}
    for pool in ("cpu", "gpu"):
        assert client.read_deployment_by_name(f"lmforge-stage/{pool}").work_pool_name == f"lmforge-{pool}"
    automation = Automation.read(name="lmforge: crash flow runs whose heartbeats stopped")
    assert automation.trigger.posture.value == "Proactive" and automation.actions[0].state.value == "CRASHED"


def test_stages_run_on_the_pool_dvc_yaml_names(pools_run, cluster):
    routed = {r["stage"]: r for r in pools_run["runs"]}
    # tokenize and pretrain depend on data/tokenizers, both architectures' (dvc.yaml cannot look one up)
    assert set(routed) == {"ingest", "validate", "train_tokenizer@gpt2", "train_tokenizer@bert", "tokenize@clm",
                           "pretrain@clm", "finetune@clm", "finetune_scratch@gpt2"}
    assert all(r["state"] == "COMPLETED" for r in pools_run["runs"])
    out = pools_run["output"]
    gpu_dirs = {str(cluster["root"] / n) for n in ("gpu-1", "gpu-2")}
    for stage in routed:
        pool = "gpu" if stage.startswith(("pretrain@", "finetune@", "finetune_scratch@")) else "cpu"
        assert f"{stage}: flow run of lmforge-stage/{pool}" in out, stage
        line = next(line for line in out.splitlines() if f"{stage}: ran in" in line)
        assert (line.split(" on ")[-1].split(":", 1)[1] in gpu_dirs) == (pool == "gpu"), line


def test_the_one_dvc_lock_matches_a_single_checkout(pools_run, cluster, dvc_run):
    repo = cluster["repo"]
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    assert set(lock) == {r["stage"] for r in pools_run["runs"]}
    ours, theirs = dvc_out_hashes(repo / "dvc.lock"), dvc_out_hashes(dvc_run[0] / "dvc.lock")
    # Data and models byte for byte (reports/ hold wall times, so no two runs match there).
    cached = [o["path"] for s in lock.values() for o in s.get("outs", []) if not o["path"].startswith("reports/")]
    # corpus, downstream, both tokenizers (tokenize depends on data/tokenizers), tokenized clm, clm, two fine-tunes
    assert len(cached) == 8 and {p: ours[p] for p in cached} == {p: theirs[p] for p in cached}


def _lineage(uri: str) -> tuple[dict, dict]:
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    runs = {}
    for experiment in client.search_experiments():
        for run in client.search_runs([experiment.experiment_id], max_results=500, order_by=["attributes.start_time ASC"]):
            runs[run.info.run_name] = {k: v for k, v in run.data.tags.items() if k.startswith("lmforge.")}
    versions = {(m.name, str(v.version)): {k: x for k, x in v.tags.items() if k.startswith("lmforge.")}
                for m in client.search_registered_models() for v in client.search_model_versions(f"name='{m.name}'")}
    return runs, versions


HASH_TAGS = ("_md5", "weights_sha256", "params_sha256", "test_split_sha256")


def test_mlflow_runs_carry_the_same_lineage_as_one_checkout(pools_run, cluster, dvc_run):
    runs, _ = _lineage(cluster["mlflow"])
    one_runs, _ = _lineage(f"sqlite:///{dvc_run[0] / 'mlflow.db'}")
    # a scratch twin's MLflow run is named for its finetune run (finetune@scratch-gpt2), its stage finetune_scratch@gpt2
    assert set(runs) == {r["stage"].replace("finetune_scratch@", "finetune@scratch-") for r in pools_run["runs"]}
    for name, tags in runs.items():
        assert set(tags) == set(one_runs[name]), name
        assert {k: v for k, v in tags.items() if k.endswith(HASH_TAGS)} == \
            {k: v for k, v in one_runs[name].items() if k.endswith(HASH_TAGS)}, name


GPU_STAGES = ("pretrain@", "finetune@", "finetune_scratch@")
OBJECTIVE_OF = {"clm": "clm", "gpt2": "clm", "mlm": "mlm", "bert": "mlm"}
"""The objective whose branch a stage belongs to, by its foreach key (architecture or objective)."""


def test_gpu_stages_of_different_objectives_overlap(killed_run):
    """The GPU workers run the two objectives' branches at once: some GPU-pool stage of one
    (pretraining, fine-tuning, a scratch twin) overlaps some of the other's. Every attempt counts,
    the killed one up to the kill (Prefect dates its end later, when it marks it crashed). Not
    pretraining against pretraining alone: on a fast CPU (Intel Xeon with AMX) one objective's 250
    steps were done before the other's started, one CPU worker tokenizing in between."""
    spans = [(OBJECTIVE_OF[r["stage"].split("@")[1]], r["stage"], r["start"],
              killed_run["killed_at"] if r["state"] == "CRASHED" else r["end"])
             for r in killed_run["runs"] if r["stage"].startswith(GPU_STAGES) and r["start"] is not None]
    overlaps = [(a[1], b[1], (min(a[3], b[3]) - max(a[2], b[2])).total_seconds())
                for i, a in enumerate(spans) for b in spans[i + 1:] if a[0] != b[0]]
    print(f"\nGPU-pool overlaps between the objectives (s): {overlaps}")
    assert any(seconds > 0 for *_, seconds in overlaps), overlaps


def test_a_killed_gpu_worker_is_replaced_and_its_pretraining_resumes(killed_run, cluster):
    stage = f"pretrain@{killed_run['objective']}"
    assert "its worker crashed (flow run Crashed)" in killed_run["output"], killed_run["output"][-4000:]
    attempts = [r for r in killed_run["runs"] if r["stage"] == stage]
    assert [r["state"] for r in attempts] == ["CRASHED", "COMPLETED"], attempts
    logs = "\n".join(e.message for e in _logs(cluster["client"], attempts[1]["id"]))
    resumed = [line for line in logs.splitlines() if f"resuming from checkpoints/pretrain/{killed_run['objective']}/step-" in line]
    print(f"\nkilled {killed_run['victim']} in {stage}; the retry: {resumed}")
    assert resumed and int(resumed[0].rsplit("step-", 1)[1][:8]) > 0, logs[-3000:]


def test_after_it_the_controller_is_up_to_date_and_versions_carry_full_lineage(killed_run, cluster, dvc_run):
    repo = cluster["repo"]
    assert dvc(repo, "status").stdout.strip() == "Data and pipelines are up to date."
    assert "didn't change, skipping" in dvc(repo, "repro").stdout
    # The bert branch's data and its scratch twin (params unchanged for them) equal the single
    # checkout's too: with the clm branch, every cached out not downstream of pretraining.
    ours, theirs = dvc_out_hashes(repo / "dvc.lock"), dvc_out_hashes(dvc_run[0] / "dvc.lock")
    same = ["data/tokenizers/bert", "data/tokenized/mlm", "models/finetuned/scratch-bert"]
    assert {p: ours[p] for p in same} == {p: theirs[p] for p in same}
    _, versions = _lineage(cluster["mlflow"])
    _, one_versions = _lineage(f"sqlite:///{dvc_run[0] / 'mlflow.db'}")
    hashes = dvc_out_hashes(repo / "dvc.lock")
    assert versions and set(versions) <= set(one_versions)
    for key, tags in versions.items():
        assert set(tags) == set(one_versions[key]), key
        # every data and model hash a version names is the controller's dvc.lock's
        assert {v for k, v in tags.items() if k.endswith("_md5")} <= set(hashes.values()), key


def _logs(client, run_id):
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    return client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])), limit=200)
