"""`lmforge workers setup|start`: the Prefect side of `lmforge run --pools`.

`setup` (once per Prefect server) creates the two work pools, deploys the stage flow to each
(prefect.yaml: `lmforge-stage/cpu`, `lmforge-stage/gpu`) and adds the automation that marks a
flow run Crashed when its heartbeats stop (a worker killed with its machine): the controller
then retries the stage on another worker. `start` runs a worker with what a stage needs: its
own clone directory, heartbeats on, and one flow run at a time (its stages share the clone and the GPU).
"""
from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import NoReturn

POOLS = {"cpu": "lmforge-cpu", "gpu": "lmforge-gpu"}
ZOMBIE_AUTOMATION = "lmforge: crash flow runs whose heartbeats stopped"
HEARTBEAT_S = 30  # Prefect's floor for PREFECT_FLOWS_HEARTBEAT_FREQUENCY


def _prefect(*args: str, cwd: Path | None = None) -> None:
    proc = subprocess.run([sys.executable, "-m", "prefect", *args], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"prefect {' '.join(args)} failed: {(proc.stdout + proc.stderr)[-2000:]}")


def ensure_zombie_automation(grace_s: int) -> bool:
    """Prefect's documented zombie detection: no heartbeat (nor final state) for `grace_s`
    after a heartbeat -> the flow run becomes Crashed. False if it already existed."""
    from prefect.automations import Automation
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import EventTrigger, Posture
    from prefect.events.schemas.events import ResourceSpecification

    try:
        Automation.read(name=ZOMBIE_AUTOMATION)
        return False
    except ValueError:
        pass
    Automation(
        name=ZOMBIE_AUTOMATION,
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect={"prefect.flow-run.heartbeat", "prefect.flow-run.Completed", "prefect.flow-run.Failed",
                    "prefect.flow-run.Cancelled", "prefect.flow-run.Crashed"},
            match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
            for_each={"prefect.resource.id"}, posture=Posture.Proactive, threshold=1,
            within=timedelta(seconds=grace_s)),
        actions=[ChangeFlowRunState(state=StateType.CRASHED,
                                    message=f"no heartbeat for {grace_s} s: its worker is gone")],
    ).create()
    return True


def setup(repo: Path, pool_type: str = "process", grace_s: int = 3 * HEARTBEAT_S) -> list[str]:
    """Pools, the two stage deployments (from `repo`) and the zombie automation; what was done."""
    from prefect.client.orchestration import get_client

    done = []
    with get_client(sync_client=True) as client:
        existing = {p.name for p in client.read_work_pools()}
    for pool in POOLS.values():
        if pool not in existing:
            _prefect("work-pool", "create", pool, "--type", pool_type)
            done.append(f"work pool {pool} ({pool_type})")
    _prefect("--no-prompt", "deploy", *(a for name in POOLS for a in ("-n", name)), cwd=repo)
    done.append("deployments " + ", ".join(f"lmforge-stage/{name}" for name in POOLS))
    if ensure_zombie_automation(grace_s):
        done.append(f"automation '{ZOMBIE_AUTOMATION}' ({grace_s} s)")
    return done


def start_worker(pool: str, workdir: Path, name: str | None = None, limit: int | None = None) -> NoReturn:
    """`prefect worker start` on `pool` with this worker's clone directory and heartbeats on (exec)."""
    env = {**os.environ, "LMFORGE_WORKER_DIR": str(workdir.resolve()),
           "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": os.environ.get("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", str(HEARTBEAT_S))}
    # One flow run at a time: a worker's stages share its clone (and, on gpu, its GPU).
    limit = limit if limit is not None else 1
    args = [sys.executable, "-m", "prefect", "worker", "start", "--pool", POOLS[pool],
            *(["--name", name] if name else []), *(["--limit", str(limit)] if limit else [])]
    os.execve(sys.executable, args, env)
