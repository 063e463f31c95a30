"""Atomic file and directory writes: a crash never leaves a half-written output.

Temporary names carry the writer's pid (`.<name>.tmp-<pid>-<random>`), so the next writer
of the same output removes what a killed one (kill -9, OOM, power loss) left behind. A
write that fails because the disk is full raises DiskFullError, which names the path and
says the previous version was kept.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

# Below this many free bytes after a failed write, the disk is taken to be full: torch.save
# and safetensors report ENOSPC as a generic RuntimeError / SafetensorError.
FULL_DISK_BYTES = 1 << 20
_TMP_PID = re.compile(r"(\d+)(?:-.*)?")


class DiskFullError(OSError):
    """A write failed for lack of space; the message names the path and what was kept."""

    def __str__(self) -> str:
        return str(self.strerror)


def is_disk_full(exc: BaseException, directory: str | os.PathLike) -> bool:
    """True when `exc` (raised while writing under `directory`) came from a full disk."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if "No space left on device" in str(exc) or "Disk quota exceeded" in str(exc):
        return True
    # torch.save says only "unexpected pos ..."; ask the file system instead.
    if isinstance(exc, RuntimeError) or type(exc).__module__.startswith("safetensors"):
        try:
            return shutil.disk_usage(directory).free < FULL_DISK_BYTES
        except OSError:
            return False
    return False


def disk_full_error(path: str | os.PathLike, kept: str) -> DiskFullError:
    free = _free_bytes(Path(path).parent)
    return DiskFullError(errno.ENOSPC, f"disk full while writing {path} ({free} free); {kept}; "
                                       "free some space and run the stage again")


def _free_bytes(directory: Path) -> str:
    try:
        return f"{shutil.disk_usage(directory).free / 2**20:.1f} MiB"
    except OSError:
        return "unknown space"


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def remove_stale_temporaries(directory: str | os.PathLike, prefix: str) -> list[Path]:
    """Delete entries `<prefix><pid>[-...]` in `directory` whose writer `pid` is dead."""
    directory = Path(directory)
    removed: list[Path] = []
    if not directory.is_dir():
        return removed
    for entry in directory.iterdir():
        match = _TMP_PID.fullmatch(entry.name[len(prefix):]) if entry.name.startswith(prefix) else None
        if match is None or _pid_alive(int(match.group(1))):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
        removed.append(entry)
    return removed


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success it replaces `path` in one rename.

    On an exception the temporary directory is removed and `path` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path.parent, f".{path.name}.tmp-")
    remove_stale_temporaries(path.parent, f".{path.name}.old-")
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-{os.getpid()}-", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; outputs should look like any other dir
    try:
        yield tmp
        if path.exists():
            # Rename the old copy aside first so the swap is two renames, not a copy.
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException as e:
        full = isinstance(e, Exception) and is_disk_full(e, path.parent)
        shutil.rmtree(tmp, ignore_errors=True)
        if full:
            kept = f"the previous {path} is intact" if path.exists() else f"{path} was not created"
            raise disk_full_error(path, kept) from e
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write `text` to `path` through a temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path.parent, f".{path.name}.tmp-")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-{os.getpid()}-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as e:
        full = isinstance(e, Exception) and is_disk_full(e, path.parent)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if full:
            kept = f"the previous {path} is intact" if path.exists() else f"{path} was not created"
            raise disk_full_error(path, kept) from e
        raise
    return path


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    """Write `obj` as indented, key-sorted JSON (stable bytes for DVC) atomically."""
    return write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def load_yaml(text: str) -> Any:
    """yaml.safe_load through libyaml where PyYAML has it (CSafeLoader: the same documents,
    about 5x faster; a stage reads dvc.lock and params.yaml on start, 0.5 s a stage in pure
    Python), else PyYAML's pure-Python SafeLoader."""
    import yaml

    return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # noqa: S506 (a safe loader)
