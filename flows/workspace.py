"""One flow run per workspace at a time: an exclusive file lock held for the whole run.

DVC's own lock covers one `dvc` process, not the gaps between the stages of a flow run, so
two flow runs on one checkout could interleave stages and params.yaml edits. The lock file
lives in `.dvc/tmp/` (ignored by git) and names its holder, so a second run that waits
or gives up can say who holds the workspace. It is a POSIX `flock`: released by the kernel
when the holder exits, however it exits, so a crashed run never leaves a stale lock.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import Callable, Iterator

LOCK_FILE = ".dvc/tmp/lmforge-flow.lock"


class WorkspaceBusy(RuntimeError):
    """Another flow run holds the workspace lock."""


def describe_holder(path: Path) -> str:
    try:
        holder = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        holder = {}
    if not holder:
        return "another process"
    return (f"flow run {holder.get('flow_run', '?')!r} (pid {holder.get('pid', '?')} on {holder.get('host', '?')}, "
            f"since {holder.get('since', '?')})")


@contextlib.contextmanager
def workspace_lock(repo_dir: str | Path, holder: str, timeout_s: float,
                   on_wait: Callable[[str], None] = lambda msg: None, poll_s: float = 1.0) -> Iterator[Path]:
    """Hold the workspace's lock; wait up to `timeout_s` for it, then raise WorkspaceBusy."""
    path = Path(repo_dir) / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout_s
        waited = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise WorkspaceBusy(
                        f"workspace {Path(repo_dir).resolve()} is in use by {describe_holder(path)}; "
                        f"gave up after {timeout_s:.0f} s (flow parameter wait_for_workspace_s)") from None
                if not waited:
                    on_wait(f"waiting up to {timeout_s:.0f} s for workspace {Path(repo_dir).resolve()}, "
                            f"in use by {describe_holder(path)}")
                    waited = True
                time.sleep(poll_s)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"flow_run": holder, "pid": os.getpid(), "host": socket.gethostname(),
                                  "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}).encode(), 0)
        try:
            yield path
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
