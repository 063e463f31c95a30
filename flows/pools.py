"""The controller's side of `lmforge run --pools`: what it sends each stage's flow run on a
work pool (flows/stage.py) and how it takes the result back into its own checkout.

The controller keeps the one dvc.lock: each stage's entry, returned by the worker that ran
it, is merged in, its cached outs are pulled from the shared DVC remote and its uncached
outs (reports) written, so a later `dvc repro` in the controller finds everything up to date.
"""
from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import yaml
from components.io import load_yaml

DEFAULT_POOL = "cpu"


class SourceNotShareable(ValueError):
    """Workers could not reproduce what the controller would run."""


@dataclass(frozen=True)
class Source:
    """Where workers get the code and the data: a git URL and commit, a DVC remote URL."""

    repo_url: str
    revision: str
    remote_url: str


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True).stdout.strip()


def source(repo: Path, repo_url: str | None = None, remote_url: str | None = None) -> Source:
    """The controller's commit (its tracked code must be committed: workers check it out), the
    git URL workers fetch it from (default: this checkout's path) and the DVC remote (default:
    this checkout's default remote)."""
    from dvc.repo import Repo

    try:
        revision = _git(repo, "rev-parse", "HEAD")
    except subprocess.CalledProcessError:
        raise SourceNotShareable(f"{repo}: not a git repository with a commit; workers check out a commit") from None
    changed = _git(repo, "diff", "--name-only", "HEAD").splitlines()
    # params.yaml and dvc.lock travel with each stage; reports/ are outs the run rewrites.
    changed = [p for p in changed if p not in ("params.yaml", "dvc.lock") and not p.startswith("reports/")]
    if changed:
        raise SourceNotShareable(f"{repo}: {', '.join(changed[:5])} differ from commit {revision[:12]}; workers run "
                                 "the committed code, so commit (and push, for remote workers) first")
    if remote_url is None:
        with Repo(str(repo)) as dvc_repo:
            name = dvc_repo.config["core"].get("remote")
            if not name:
                raise SourceNotShareable(f"{repo}/.dvc/config: no default DVC remote; workers exchange data "
                                         "through one (`dvc remote add -d <name> <url>`)")
            remote_url = str(dvc_repo.config["remote"][name]["url"])
    return Source(repo_url or str(repo), revision, remote_url)


def stage_layout(repo: Path) -> tuple[dict[str, str], dict[str, list[str]], dict[str, list[str]]]:
    """({stage: work pool, from dvc.yaml's `meta: {pool: ...}`, default cpu}, {stage: its uncached
    outs}, {stage: its deps})."""
    from dvc.repo import Repo

    with Repo(str(repo)) as dvc_repo:
        stages = list(dvc_repo.index.stages)
        pools = {s.name: str((s.meta or {}).get("pool", DEFAULT_POOL)) for s in stages}
        uncached = {s.name: [str(o.def_path) for o in s.outs if not o.use_cache] for s in stages}
        deps = {s.name: [str(d.def_path) for d in s.deps] for s in stages}
    return pools, uncached, deps


def needed_files(outs: list[str], deps: list[str]) -> list[str]:
    """Of upstream uncached `outs`, what a stage with `deps` is sent: each out whole, except an
    out folder the stage names files inside, of which it gets just those files (validate's
    folder holds GX's Data Docs, a megabyte a flow run's parameters cannot carry, while
    train_tokenizer and register depend on its result.json alone)."""
    found = []
    for out in outs:
        inside = [d for d in deps if d.startswith(out.rstrip("/") + "/")]
        found += inside or [out]
    return list(dict.fromkeys(found))


def read_lock(repo: Path) -> str:
    path = repo / "dvc.lock"
    return path.read_text() if path.exists() else ""


def merge_lock_entry(repo: Path, stage: str, entry: dict) -> None:
    """Set `stage`'s entry in the controller's dvc.lock (written atomically)."""
    path = repo / "dvc.lock"
    lock = (load_yaml(path.read_text()) if path.exists() else None) or {"schema": "2.0", "stages": {}}
    lock.setdefault("stages", {})[stage] = entry
    tmp = path.with_suffix(".lock.tmp")
    tmp.write_text(yaml.safe_dump(lock, sort_keys=False))
    tmp.replace(path)


def pull(repo: Path, stage: str) -> None:
    """The stage's cached outs from the DVC remote into the controller's workspace (`dvc pull <stage>`)."""
    from dvc.repo import Repo

    with Repo(str(repo)) as dvc_repo:  # by absolute address: DVC resolves a bare name against the cwd
        dvc_repo.pull(targets=[f"{repo / 'dvc.yaml'}:{stage}"])
