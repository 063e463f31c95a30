"""A tiny-profile copy of this working tree as its own git + DVC repo, for end-to-end tests.

Tests import these helpers; the session fixtures `dvc_run` / `dvc_repo` (tests/conftest.py)
build one such repo with `dvc repro` once per test session.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Callable, Sequence

from components import paths
from components.objectives import OBJECTIVE_NAMES

ROOT = Path(__file__).resolve().parents[1]


def make_repo(dest: Path, objectives: Sequence[str] = OBJECTIVE_NAMES) -> Path:
    """Copy the tracked and untracked-but-not-ignored files into a fresh git repo, profile tiny,
    running `objectives` (default: every objective, rtd included, so the tests cover them all).

    A developer's own run results (reports/, dvc.lock: git-tracked by design, see .gitignore)
    stay behind, so every test repo starts from the code alone."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
                           cwd=ROOT, capture_output=True, text=True, check=True).stdout.split("\0")
    for rel in filter(None, files):
        src = ROOT / rel
        if src.is_file() and rel != "dvc.lock" and not rel.startswith("reports/"):
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    params = dest / "params.yaml"
    text = params.read_text().replace("profile: demo", "profile: tiny", 1)
    text, n = re.subn(r"(?m)^objectives: .*$", f"objectives: [{', '.join(objectives)}]", text, count=1)
    assert n == 1, "params.yaml: no top-level `objectives:` line"
    params.write_text(text)
    git = ["git", "-c", "user.name=lmforge-test", "-c", "user.email=test@lmforge.invalid"]
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    subprocess.run(git + ["add", "-A"], cwd=dest, check=True)
    subprocess.run(git + ["commit", "-qm", "test repo"], cwd=dest, check=True)
    return dest


def commit_results(repo: Path) -> None:
    """Commit dvc.lock, the uncached reports and every tracked file a run changed, as a user
    does after `dvc repro` and as `lmforge sweep` asks: a DVC experiment starts from the commit,
    so a stage whose results are only in the workspace runs again in it. Leaves the tree clean
    of tracked changes (a lineage then reads `dirty: false`); a no-op when nothing changed."""
    git = ["git", "-c", "user.name=lmforge-test", "-c", "user.email=test@lmforge.invalid"]
    subprocess.run(git + ["add", "-u"], cwd=repo, check=True, capture_output=True)
    subprocess.run(git + ["add", "dvc.lock", "reports", *[str(p.relative_to(repo)) for p in repo.rglob(".gitignore")
                                                          if ".dvc" not in p.relative_to(repo).parts]],
                   cwd=repo, check=True, capture_output=True)
    if subprocess.run(["git", "diff", "--cached", "--quiet"], cwd=repo).returncode:
        subprocess.run(git + ["commit", "-qm", "pipeline results"], cwd=repo, check=True)


def env_for(repo: Path) -> dict:
    env = os.environ.copy()
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{repo / 'mlflow.db'}"
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    # `dvc exp run` commits experiments: give git an identity on machines without one.
    for role in ("AUTHOR", "COMMITTER"):
        env.setdefault(f"GIT_{role}_NAME", "lmforge-test")
        env.setdefault(f"GIT_{role}_EMAIL", "test@lmforge.invalid")
    return env


def dvc(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, env=env_for(repo),
                          capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"dvc {' '.join(args)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


COMPARED = [paths.COMPARISON_METRICS, *(f"{paths.PRETRAIN_REPORTS}/{o}/metrics.json" for o in OBJECTIVE_NAMES)]


def comparable_metrics(repo: Path) -> dict:
    """Metrics that must match between runs with the same seed (no wall-clock fields)."""
    out = {}
    for rel in COMPARED:
        data = json.loads((repo / rel).read_text())
        out[rel] = {k: v for k, v in data.items() if k.startswith("val_")} if "val_loss" in data else data
    return out




def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_group(proc: subprocess.Popen) -> None:
    """Stop a process started with `start_new_session=True` and everything in its group (a
    server's workers, a Prefect worker's flow runs and their stages): SIGTERM, then SIGKILL
    after 20 s."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def wait_until_up(url: str, proc: subprocess.Popen, what: str, log_tail: Callable[[], str],
                  seconds: float = 180.0) -> None:
    """Poll `url` until it answers 200; fail with the server's log tail if `proc` exits first."""
    deadline = time.monotonic() + seconds
    while True:
        assert proc.poll() is None, log_tail()
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        assert time.monotonic() < deadline, f"{what} did not answer {url} in {seconds:.0f} s"
        time.sleep(0.5)
