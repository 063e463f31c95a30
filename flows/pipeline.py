"""The lmforge pipeline as a Prefect flow.

dvc.yaml stays the single graph: the flow asks DVC for the stages and their dependencies
(flows/graph.py), makes one Prefect task per stage wired to its upstream stages, and runs
each through `dvc repro --single-item`. So dvc.lock remains the cache and the lineage
record however a run was started, a stage whose inputs are unchanged is skipped by content
hash, and Prefect adds schedules, retries, the UI, artifacts and work pools on top.

Branches (one per objective) fan out in the graph: a failed stage stops only what depends
on it. In one checkout they run one at a time, because DVC allows one `dvc` process per
checkout. With `pools=True` each stage instead runs as a flow run of the `lmforge-stage`
deployment for its work pool (dvc.yaml `meta: {pool: gpu}`, default cpu) on a worker with its
own clone, so independent branches run at once on different workers (flows/stage.py,
flows/pools.py); the data moves through the DVC remote and this checkout keeps the dvc.lock.
"""
from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Literal

from prefect import flow, get_run_logger, runtime, task
from prefect.deployments import run_deployment
from prefect.artifacts import (create_markdown_artifact, create_progress_artifact, create_table_artifact,
                               update_progress_artifact)
from prefect.cache_policies import NO_CACHE
from prefect.futures import wait
from prefect.states import Completed
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.tasks import exponential_backoff

from components.objectives import OBJECTIVE_NAMES
from components.exit_codes import EXIT_TRANSIENT
from flows import pools as pool_io
from flows import report
from flows.graph import dvc_graph, plan_stages
from flows.stage import STAGE_FLOW, read_files, write_files
from flows.workspace import workspace_lock

FLOW_NAME = "lmforge-pipeline"
Objective = Literal[OBJECTIVE_NAMES]  # type: ignore[valid-type]  # the names from the specs
Profile = Literal["tiny", "demo", "gpu-small"]

# A stage's exit code (components/exit_codes.py) says whether its failure may pass on its own.
# Only transient failures are retried; see transient_reason for the others that count.
_TRANSIENT_OUTPUT = {  # regex over the stage's output -> why it is transient
    r"Unable to acquire lock": "another DVC process held the repository lock",
    # pipelines/_stage.py's one line for it, or MLflow's own error when that line is absent
    r"MLflow tracking server \S+ unreachable|API request to \S+ failed with exception .*"
    r"(Max retries exceeded|Failed to establish a new connection|Read timed out)":
        "the MLflow tracking server was unreachable",
}


class StageFailed(RuntimeError):
    def __init__(self, stage: str, returncode: int | None, tail: list[str], transient: str | None):
        self.stage, self.returncode, self.transient = stage, returncode, transient
        kind = f"transient: {transient}" if transient else "not transient: not retried"
        super().__init__(f"stage {stage} failed (exit {returncode}; {kind}): {' | '.join(tail)}")


def transient_reason(output: list[str]) -> tuple[int | None, str | None]:
    """(the stage command's exit code, why the failure is transient or None) from DVC's output."""
    text = "\n".join(output)
    found = re.findall(r"exited with (-?\d+)", text)
    code = int(found[-1]) if found else None
    if code == EXIT_TRANSIENT:  # the stage says transient; its output may say why
        known = next((why for pattern, why in _TRANSIENT_OUTPUT.items() if re.search(pattern, text)), None)
        return code, known or f"the stage exited {EXIT_TRANSIENT} (EX_TEMPFAIL)"
    # -N: killed by signal N; 128+N: the same, reported by a shell in between
    signal = -code if code is not None and code < 0 else code - 128 if code in (129, 130, 137, 143) else None
    if signal:
        return code, f"the stage was stopped by signal {signal} (worker restart, preemption)"
    for pattern, why in _TRANSIENT_OUTPUT.items():
        if re.search(pattern, text):
            return code, why
    return code, None


# One `dvc` process per checkout: the flow's stage tasks take turns on this one.
_CHECKOUT = threading.Lock()


def retry_if_transient(task, task_run, state) -> bool:
    """Prefect's retry_condition_fn: retry lost connections and restarts, never bad data."""
    exc = state.result(raise_on_failure=False)
    return isinstance(exc, StageFailed) and exc.transient is not None


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


@task(task_run_name="{stage}", cache_policy=NO_CACHE, persist_result=False,
      retries=3, retry_delay_seconds=exponential_backoff(10), retry_jitter_factor=0.5,
      retry_condition_fn=retry_if_transient)
def run_stage(stage: str, repo_dir: str, up_to_date: bool, position: str, progress_id: str | None = None,
              route: dict | None = None) -> dict:
    """One DVC stage: skipped when DVC found it and every stage upstream up to date, else
    `dvc repro --single-item` (which skips it too if its hashes still match once upstream ran),
    here or, given a `route` (pools mode), on a worker of the route's pool."""
    logger = get_run_logger()
    start = time.monotonic()
    if up_to_date:
        logger.info(f"[{position}] {stage}: up to date (deps, params and outs match dvc.lock), skipped")
        outcome = {"result": "skipped", "seconds": 0.0}
    else:
        outcome = (_repro_here(stage, repo_dir, position) if route is None
                   else _repro_on_pool(stage, Path(repo_dir), position, route))
        outcome["seconds"] = round(time.monotonic() - start, 1)
        logger.info(f"[{position}] {stage}: {outcome['result']} in {outcome['seconds']} s"
                    + (f" on {outcome['worker']}" if "worker" in outcome else ""))
    if progress_id:
        done, total = map(int, position.split("/"))
        update_progress_artifact(progress_id, 100.0 * done / total)
    # A state named "Skipped" shows in the UI which stages DVC found up to date.
    return Completed(name="Skipped", message="up to date against dvc.lock", data=outcome) \
        if outcome["result"] == "skipped" else outcome


def _repro_here(stage: str, repo_dir: str, position: str) -> dict:
    logger = get_run_logger()
    logger.info(f"[{position}] {stage}: dvc repro --single-item {stage}")
    with _CHECKOUT:
        proc = subprocess.Popen([sys.executable, "-m", "dvc", "repro", "--single-item", stage], cwd=repo_dir,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        skipped, output = False, []
        assert proc.stdout is not None
        for line in proc.stdout:
            if line := line.rstrip():
                logger.info(report.redact(line))
                output = (output + [report.redact(line)])[-20:]
                skipped |= "didn't change, skipping" in line
        returncode = proc.wait()
    if returncode != 0:
        code, transient = transient_reason(output)
        raise StageFailed(stage, code if code is not None else returncode,
                          [o for o in output if "error" in o.lower()][-3:] or output[-3:], transient)
    return {"result": "skipped" if skipped else "ran"}


def _repro_on_pool(stage: str, repo: Path, position: str, route: dict) -> dict:
    """The stage as a flow run of `lmforge-stage/<pool>`, then its dvc.lock entry merged here,
    its cached outs pulled from the DVC remote and its uncached ones written."""
    logger = get_run_logger()
    deployment = f"{STAGE_FLOW}/{route['pool']}"
    with _CHECKOUT:
        parameters = {"stage": stage, **route["source"], "params_yaml": (repo / "params.yaml").read_text(),
                      "dvc_lock": pool_io.read_lock(repo), "pulls": route["pulls"],
                      "files": read_files(repo, route["reads"]), "returns": route["returns"]}
    logger.info(f"[{position}] {stage}: flow run of {deployment} (work pool {route['pool']})")
    flow_run = run_deployment(deployment, parameters=parameters, timeout=None, as_subflow=True, poll_interval=1)
    state = flow_run.state
    if state is None or not state.is_completed():
        message = (state.message if state else None) or "no state"
        # A crashed flow run lost its worker (killed, preempted, zombie): another may take it.
        transient = ("its worker crashed (flow run Crashed)" if state is not None and state.is_crashed()
                     else transient_reason([message])[1])
        raise StageFailed(stage, None, [f"flow run {flow_run.name}: {state.name if state else '?'}: {message}"],
                          transient)
    result = state.result()
    with _CHECKOUT:
        pool_io.merge_lock_entry(repo, stage, result["lock"])
        write_files(repo, result["files"])
        pool_io.pull(repo, stage)
    return {"result": "ran", "worker": result["worker"], "flow_run": flow_run.name}


# Stage tasks run in threads: in one checkout they take turns (_CHECKOUT); with pools, the
# independent branches' flow runs wait on their workers at once.
@flow(name=FLOW_NAME, log_prints=True, task_runner=ThreadPoolTaskRunner(max_workers=8))
def pipeline(profile: Profile | None = None, objectives: list[Objective] | None = None,
             data_source: str | None = None, repo_dir: str = ".", wait_for_workspace_s: float = 3600.0,
             stage_retries: int = 3, retry_backoff_s: float = 10.0, pools: bool = False,
             repo_url: str | None = None, dvc_remote_url: str | None = None) -> dict[str, str]:
    """Run the dvc.yaml stages that `objectives` need (by default all of params.yaml's `objectives`,
    which dvc.yaml's per-objective stages iterate over); returns {stage: 'ran' | 'skipped'}.

    profile / data_source are written into params.yaml first (like `dvc exp run -S`), so
    dvc.lock records what ran. A second run on the same checkout waits up to
    wait_for_workspace_s for the first, then fails saying which run holds it. A stage that
    fails transiently is retried stage_retries times, after retry_backoff_s, 2x, 4x... seconds.
    With `pools`, each stage runs on a worker of its work pool (module docstring); workers
    fetch the committed code from `repo_url` (default: this checkout) and exchange data
    through `dvc_remote_url` (default: the checkout's default DVC remote).
    """
    logger = get_run_logger()
    repo = Path(repo_dir).resolve()
    holder = f"{runtime.flow_run.name} ({runtime.flow_run.id})"
    with workspace_lock(repo, holder, wait_for_workspace_s, on_wait=logger.warning):
        if set_params(repo, {"profile": profile, "data.source": data_source}):
            logger.info(f"params.yaml updated: profile={profile} data.source={report.redact(str(data_source))}")
        upstream, stale = dvc_graph(repo, with_status=True)
        plan = plan_stages(upstream, stale, objectives=list(objectives) if objectives else None)
        routes = _routes(repo, upstream, repo_url, dvc_remote_url) if pools else {}
        n = len(plan.stages)
        logger.info(f"{n} stages, {len(plan.stale)} out of date against dvc.lock: {', '.join(sorted(plan.stale)) or 'none'}")
        for stage, why in plan.left_out.items():
            logger.info(f"{stage}: left out ({why})")
        progress_id = create_progress_artifact(0.0, key="lmforge-progress", description="Stages finished")
        delays = exponential_backoff(retry_backoff_s)(stage_retries) if stage_retries else 0
        stage_task = run_stage.with_options(retries=stage_retries, retry_delay_seconds=delays)
        futures = {}
        for i, (stage, ups) in enumerate(plan.upstream.items(), 1):
            futures[stage] = stage_task.with_options(name=f"dvc:{stage.split('@')[0]}").submit(
                stage, str(repo), stage in plan.up_to_date, f"{i}/{n}", str(progress_id), routes.get(stage),
                wait_for=[futures[u] for u in ups])
        wait(list(futures.values()))
        outcomes = {}
        for stage, future in futures.items():
            state = future.state
            outcomes[stage] = (future.result() if state.is_completed()
                               else {"result": "failed" if state.is_failed() else "not run", "seconds": None})
        publish(repo, profile, objectives, data_source, outcomes, plan.left_out)
    failed = [s for s, o in outcomes.items() if o["result"] == "failed"]
    if failed:
        blocked = [s for s, o in outcomes.items() if o["result"] == "not run"]
        raise RuntimeError(f"{len(failed)} stage(s) failed: {', '.join(failed)}"
                           + (f"; not run because of them: {', '.join(blocked)}" if blocked else ""))
    ran = [s for s, o in outcomes.items() if o["result"] == "ran"]
    logger.info(f"done: {len(ran)} stage(s) ran, {n - len(ran)} up to date")
    return {s: o["result"] for s, o in outcomes.items()}


def _routes(repo: Path, upstream: dict[str, list[str]], repo_url: str | None, remote_url: str | None) -> dict:
    """{stage: what its flow run on a pool needs}: the pool (dvc.yaml meta), the upstream stages
    to `dvc pull`, the upstream uncached outs to send, its own to get back, and the code and data source."""
    src = pool_io.source(repo, repo_url, remote_url)
    pools, uncached, deps = pool_io.stage_layout(repo)
    get_run_logger().info(f"pools: workers check out {report.redact(src.repo_url)} at {src.revision[:12]}, "
                          f"data through DVC remote {report.redact(src.remote_url)}")
    return {stage: {"pool": pools[stage], "pulls": ups,
                    "reads": pool_io.needed_files([p for u in ups for p in uncached[u]], deps[stage]),
                    "returns": uncached[stage],
                    "source": {"repo_url": src.repo_url, "revision": src.revision, "remote_url": src.remote_url}}
            for stage, ups in upstream.items()}


def publish(repo: Path, profile, objectives, data_source, outcomes: dict[str, dict], left_out: dict[str, str]) -> None:
    """The run's markdown report (stages, MLflow links, metrics) and the registry decisions."""
    logger = get_run_logger()
    try:
        links = report.mlflow_run_links(repo, list(outcomes))
    except Exception as e:  # a report without links beats a failed run
        logger.warning(f"no MLflow links in the report: {report.redact(str(e))[:300]}")
        links = {}
    settings = {"profile": profile or "(params.yaml)", "objectives": ", ".join(objectives or ["all"]),
                "data.source": data_source or "(params.yaml)", "workspace": str(repo)}
    create_markdown_artifact(
        key="lmforge-report",
        markdown=report.markdown_report(repo, f"lmforge run {runtime.flow_run.name}", settings, outcomes, left_out, links),
        description="Stages, MLflow runs and metrics of this flow run",
    )
    rows = report.registry_table(repo) if "register" in outcomes else None
    if rows:
        create_table_artifact(key="lmforge-registry", table=rows,
                              description="Registry decisions: version, aliases and why (promotion gate)")
