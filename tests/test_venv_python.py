"""`python -m pipelines.<stage>` started by a python without our packages (the system one:
`.venv/bin/dvc repro` from a shell where the venv is not activated) re-executes itself with
the repository's .venv/bin/python, or fails with one line saying what to do."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
VENV = Path(sys.prefix)  # the tests run inside the project's virtualenv
HINT = ("lacks lmforge's packages; run `make install` then `source .venv/bin/activate` "
        "(or call .venv/bin/dvc from an activated shell)")


def _bare_env() -> dict:
    """The environment of a shell that never activated the venv (and no PYTHONPATH)."""
    keep = {k: v for k, v in os.environ.items() if k in ("HOME", "LANG", "TMPDIR")}
    return {**keep, "PATH": "/usr/bin:/bin"}


def _python_without_packages() -> str:
    """The venv's base interpreter (it sees none of the venv's packages), else the system one."""
    probe = "import importlib.util as u; print(u.find_spec('mlflow') is None)"
    for cand in (os.path.join(sys.base_prefix, "bin", "python3"), "/usr/bin/python3"):
        if os.access(cand, os.X_OK) and subprocess.run(
                [cand, "-c", probe], capture_output=True, text=True, env=_bare_env()).stdout.strip() == "True":
            return cand
    pytest.skip("every python on this machine has mlflow")


def _checkout(tmp_path: Path, with_venv: bool) -> Path:
    """A repository root: the code (symlinked, so the package finds its root here), a probe
    stage that reports which python runs it, and optionally .venv -> our virtualenv."""
    (tmp_path / "pipelines").mkdir()
    for f in (ROOT / "pipelines").glob("*.py"):
        (tmp_path / "pipelines" / f.name).symlink_to(f)
    (tmp_path / "pipelines" / "probe.py").write_text(
        "import sys\nprint(sys.executable, sys.flags.utf8_mode, sys.argv[1:])\n")
    for name in ("components", "params.yaml"):
        (tmp_path / name).symlink_to(ROOT / name)
    if with_venv:
        (tmp_path / ".venv").symlink_to(VENV)
    return tmp_path


def _run(python: str, repo: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([python, *args], cwd=repo, env=_bare_env(), capture_output=True, text=True, timeout=300)


def test_a_python_without_our_packages_reexecs_with_the_repo_venv(tmp_path):
    python = _python_without_packages()
    repo = _checkout(tmp_path, with_venv=True)
    proc = _run(python, repo, "-m", "pipelines.ingest", "--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: python -m pipelines.ingest"), proc.stdout
    # The same command line, run by the repo's venv python: interpreter flags and argv survive.
    probe = _run(python, repo, "-X", "utf8", "-m", "pipelines.probe", "--objective", "clm")
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.split(" ", 2) == [str(repo / ".venv" / "bin" / "python"), "1", "['--objective', 'clm']\n"]


def test_without_a_venv_it_is_one_line_and_exit_2(tmp_path):
    python = _python_without_packages()
    repo = _checkout(tmp_path, with_venv=False)
    proc = _run(python, repo, "-m", "pipelines.ingest")
    assert (proc.returncode, proc.stdout) == (2, "")
    assert proc.stderr == f"error: python at {python} {HINT}\n"


def test_a_plain_import_is_never_replaced_by_a_new_process(tmp_path):
    python = _python_without_packages()
    repo = _checkout(tmp_path, with_venv=True)
    proc = _run(python, repo, "-c", "import pipelines")
    assert (proc.returncode, proc.stderr) == (2, f"error: python at {python} {HINT}\n")


def test_the_project_python_passes_straight_through(tmp_path):
    repo = _checkout(tmp_path, with_venv=False)
    proc = _run(sys.executable, repo, "-m", "pipelines.probe", "x")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split(" ", 1)[0] == sys.executable
