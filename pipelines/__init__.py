"""One thin module per DVC stage: resolve config and paths, call components, write outs.

dvc.yaml runs `python -m pipelines.<stage>`, and `python` is whatever comes first on PATH:
`.venv/bin/dvc repro` from a shell without the venv activated starts the stages with the
system python, which lacks our packages. This package runs before every stage, so it
re-executes such a command with the repository's `.venv/bin/python`, or says in one line
what to do. The check is a few `find_spec` lookups: nothing is imported.
"""
from __future__ import annotations

import importlib.util
import os
import sys

# Packages every stage needs that a bare system python lacks (it may well have yaml).
_NEEDED = ("yaml", "mlflow", "torch")


def _ensure_project_python() -> None:
    if all(importlib.util.find_spec(name) is not None for name in _NEEDED):
        return
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    venv = os.path.join(root, ".venv")
    venv_python = os.path.join(venv, "bin", "python")
    # sys.prefix, not the executable's real path: a venv's python is a symlink to the base one.
    in_venv = os.path.realpath(sys.prefix) == os.path.realpath(venv)
    # sys.argv[0] is "-m" only while runpy imports this package for `python -m pipelines.X`;
    # an interactive `import pipelines` is never replaced by a new process.
    if os.access(venv_python, os.X_OK) and not in_venv and sys.argv[:1] == ["-m"]:
        os.execv(venv_python, [venv_python, *sys.orig_argv[1:]])
    print(f"error: python at {sys.executable} lacks lmforge's packages; run `make install` then "
          "`source .venv/bin/activate` (or call .venv/bin/dvc from an activated shell)", file=sys.stderr)
    raise SystemExit(2)


_ensure_project_python()
