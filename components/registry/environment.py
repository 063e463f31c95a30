"""The locked environment: requirements.lock against pyproject.toml, and what a model records of it.

`make lock` writes requirements.lock with pip-compile (exact pins and sha256 hashes of
every package but torch) and stamps it with a digest of pyproject's dependency lists; `make
install` installs it with `--require-hashes --no-deps`. torch stays out of the lock: the
Makefile installs it first at TORCH_VERSION, the CUDA build (and its nvidia-* wheels) where a
GPU answers and the CPU build elsewhere, and one hash list cannot hold both.

Standard library only: `make lock` runs `python -m components.registry.environment --stamp`
before (or without) any venv. What a model records of the environment (the lock's hash, torch,
transformers and tokenizers versions) is in lineage.py: no stage imports this module, so
editing it re-runs no stage.
"""
from __future__ import annotations

import hashlib
import json
import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path

LOCK_FILE = "requirements.lock"
PYPROJECT = "pyproject.toml"
LOCKED_EXTRAS = ("test",)  # the extras `make install` installs: the lock holds them too
STAMP_PREFIX = "# pyproject-sha256: "
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")


def canonical(name: str) -> str:
    """A distribution name as pip compares them (PEP 503): `ruamel.yaml` == `ruamel-yaml`."""
    return re.sub(r"[-_.]+", "-", name).lower()


def pyproject_digest(pyproject: str | Path = PYPROJECT) -> str:
    """sha256 of what the lock is compiled from: requires-python, the dependencies and the
    locked extras. Comments, formatting and other tables do not change it."""
    path = Path(pyproject)
    try:
        project = tomllib.loads(path.read_text())["project"]
    except (OSError, tomllib.TOMLDecodeError, KeyError) as e:
        raise ValueError(f"{path}: cannot read [project] ({e}); fix the file") from None
    extras = project.get("optional-dependencies") or {}
    wanted = {"requires-python": project.get("requires-python", ""),
              "dependencies": sorted(project.get("dependencies") or []),
              **{f"extra:{x}": sorted(extras.get(x) or []) for x in LOCKED_EXTRAS}}
    return hashlib.sha256(json.dumps(wanted, sort_keys=True).encode()).hexdigest()


def stamped_digest(lock_text: str) -> str | None:
    for line in lock_text.splitlines():
        if line.startswith(STAMP_PREFIX):
            return line[len(STAMP_PREFIX):].strip()
    return None


def stamp(lock: str | Path = LOCK_FILE, pyproject: str | Path = PYPROJECT) -> None:
    """Put (or replace) the pyproject digest line at the top of the lock."""
    lock = Path(lock)
    lines = [ln for ln in lock.read_text().splitlines() if not ln.startswith(STAMP_PREFIX)]
    lock.write_text("\n".join([STAMP_PREFIX + pyproject_digest(pyproject), *lines]) + "\n")


def staleness(lock: str | Path = LOCK_FILE, pyproject: str | Path = PYPROJECT) -> str | None:
    """None when the lock was compiled from this pyproject, else the one-line reason and fix."""
    lock = Path(lock)
    if not lock.is_file():
        return f"{lock} is missing: run `make lock`"
    if stamped_digest(lock.read_text()) != pyproject_digest(pyproject):
        return f"{lock.name} is stale for {Path(pyproject).name}: run `make lock`"
    return None


def locked_pins(lock: str | Path = LOCK_FILE) -> dict[str, str]:
    """Canonical name -> pinned version, for every requirement line of the lock."""
    pins = {}
    for line in Path(lock).read_text().splitlines():
        match = _PIN.match(line)
        if match:
            pins[canonical(match.group(1))] = match.group(2)
    return pins


def installed_mismatches(lock: str | Path = LOCK_FILE) -> list[str]:
    """`name: locked X, installed Y` for each locked package this python has at another version
    (or lacks): empty when the environment is exactly the lock."""
    out = []
    for name, version in sorted(locked_pins(lock).items()):
        try:
            have = metadata.version(name)
        except metadata.PackageNotFoundError:
            have = "not installed"
        if have != version:
            out.append(f"{name}: locked {version}, installed {have}")
    return out


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args == ["--stamp"]:
        stamp()
        return 0
    if args == ["--check"]:
        problem = staleness() or "; ".join(installed_mismatches())
        if problem:
            print(f"error: {problem}", file=sys.stderr)
            return 1
        return 0
    print("usage: python -m components.registry.environment --stamp | --check", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
