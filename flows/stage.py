"""One DVC stage on a worker: the flow that the `lmforge-stage/cpu` and `lmforge-stage/gpu`
deployments run (prefect.yaml), one flow run per stage of a `lmforge run --pools` run.

The worker's own clone directory (LMFORGE_WORKER_DIR) is brought to the controller's git
revision, params.yaml and dvc.lock; the stage's upstream outs come from the shared DVC
remote (`dvc pull <upstream stages>`), the stage runs as `dvc repro --single-item`, its outs
go back with `dvc push <stage>`, and the flow returns the stage's dvc.lock entry with its
uncached outs (small reports), which the controller merges (flows/pipeline.py). DVC moves
the data, Prefect the control; nothing else crosses machines. Pretraining checkpoints go to
LMFORGE_CHECKPOINT_STORE (components/train/checkpoint.py), so a retried stage resumes.
"""
from __future__ import annotations

import base64
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from prefect import flow, get_run_logger

from components.registry.lineage import redact
from components.io import load_yaml

STAGE_FLOW = "lmforge-stage"
WORKER_DIR_ENV = "LMFORGE_WORKER_DIR"
# Kept across stages in a worker's clone: DVC's cache (fewer downloads) and pretraining checkpoints.
KEEP = (".dvc/cache", ".dvc/tmp", "checkpoints")


class WorkerStageFailed(RuntimeError):
    pass


def run(cmd: list[str], cwd: Path, logger=None, what: str | None = None) -> str:
    """`cmd` in `cwd`, its output logged line by line; raises with the last lines on failure.

    `cmd` gets its own process group, stopped with it if this flow run ends first (cancelled,
    or its worker gone): no orphaned stage keeps writing while a retry runs elsewhere."""
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    lines: list[str] = []
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            if line := line.rstrip():
                lines.append(redact(line))
                if logger:
                    logger.info(lines[-1])
        proc.wait()
    finally:
        if proc.poll() is None:
            _stop_group(proc)
    if proc.returncode != 0:
        raise WorkerStageFailed(f"{what or ' '.join(cmd[:4])} exited with {proc.returncode}: "
                                + " | ".join(lines[-5:]))
    return "\n".join(lines)


def _stop_group(proc: subprocess.Popen) -> None:
    for sig, wait_s in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def checkout(workdir: Path, repo_url: str, revision: str) -> None:
    """`workdir` at `revision` of `repo_url`, tracked files exactly as committed, untracked
    files gone (except KEEP)."""
    git = ["git", "-c", "advice.detachedHead=false"]
    if not (workdir / ".git").exists():
        workdir.mkdir(parents=True, exist_ok=True)
        run(git + ["init", "-q"], workdir)
    run(git + ["fetch", "-q", repo_url, revision], workdir, what=f"git fetch {redact(repo_url)} {revision}")
    run(git + ["checkout", "-q", "--force", revision], workdir)
    run(git + ["clean", "-q", "-ffdx", *(f"-e{p}" for p in KEEP)], workdir)


def dvc(args: list[str], workdir: Path, logger=None) -> str:
    return run([sys.executable, "-m", "dvc", *args], workdir, logger, what=f"dvc {' '.join(args[:3])}")


def _dvc_api(workdir: Path, action: str, targets: list[str]) -> None:
    """`dvc pull|push <stages>` through DVC's Python API (no process start per call). Stages
    are addressed as `<abs>/dvc.yaml:<stage>`: DVC resolves a bare name against the cwd."""
    from dvc.repo import Repo

    with Repo(str(workdir)) as repo:
        getattr(repo, action)(targets=[f"{workdir / 'dvc.yaml'}:{t}" for t in targets])


def write_files(workdir: Path, files: dict[str, str]) -> None:
    for rel, data in files.items():
        path = workdir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))


def read_files(root: Path, rels: list[str]) -> dict[str, str]:
    """{relative file path: base64 content} for every file under each of `rels` (files or directories)."""
    files: dict[str, str] = {}
    for rel in rels:
        path = root / rel
        found = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else []
        for p in found:
            files[p.relative_to(root).as_posix()] = base64.b64encode(p.read_bytes()).decode()
    return files


@flow(name=STAGE_FLOW, persist_result=True, log_prints=True)
def stage(stage: str, repo_url: str, revision: str, params_yaml: str, dvc_lock: str, remote_url: str,
          pulls: list[str] | None = None, files: dict[str, str] | None = None,
          returns: list[str] | None = None) -> dict:
    """Run one dvc.yaml stage in this worker's clone; returns its dvc.lock entry and uncached outs.

    `params_yaml` / `dvc_lock`: the controller's files; `pulls`: the upstream stages whose
    cached outs it needs; `files`: upstream uncached outs it reads (base64 by path); `returns`:
    the stage's own uncached outs (reports), sent back with the lock entry."""
    logger = get_run_logger()
    start = time.monotonic()
    workdir = Path(os.environ.get(WORKER_DIR_ENV) or Path.home() / ".cache" / "lmforge" / "worker").resolve()
    where = f"{socket.gethostname()}:{workdir}"
    logger.info(f"{stage}: worker clone {where} at {revision[:12]}")
    checkout(workdir, repo_url, revision)
    (workdir / "params.yaml").write_text(params_yaml)
    if dvc_lock:
        (workdir / "dvc.lock").write_text(dvc_lock)
    else:
        (workdir / "dvc.lock").unlink(missing_ok=True)
    # The shared remote, in the clone's untracked config.local (git clean removes it with the rest).
    (workdir / ".dvc" / "config.local").write_text(
        f"[core]\n    remote = lmforge-shared\n['remote \"lmforge-shared\"']\n    url = {remote_url}\n")
    write_files(workdir, files or {})
    if pulls:
        _dvc_api(workdir, "pull", pulls)
    dvc(["repro", "--single-item", stage], workdir, logger)
    _dvc_api(workdir, "push", [stage])
    entry = (load_yaml((workdir / "dvc.lock").read_text()) or {}).get("stages", {}).get(stage)
    if entry is None:
        raise WorkerStageFailed(f"{stage}: no dvc.lock entry after dvc repro in {where}")
    seconds = round(time.monotonic() - start, 1)
    logger.info(f"{stage}: done on {where} in {seconds} s; outs pushed to the DVC remote")
    return {"stage": stage, "lock": entry, "files": read_files(workdir, returns or []),
            "worker": where, "seconds": seconds}
