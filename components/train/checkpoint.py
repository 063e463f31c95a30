"""Atomic training checkpoints: weights as safetensors, optimiser and every device's RNG state, loop state.

A checkpoint is a directory `step-XXXXXXXX` that appears in one rename, so a kill -9 at any
moment leaves either the previous checkpoint or the new one, never half of one. Resuming is
O(1): batches are a pure function of the step (components.train.loop), so nothing is replayed.

With a `store` (shared storage every worker mounts: NFS, EFS, a ReadWriteMany volume; set by
LMFORGE_CHECKPOINT_STORE), each checkpoint is also copied there, under the run's fingerprint,
and resuming takes the newest of the local and the stored ones: a stage that a crashed
worker left half done resumes on another worker.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

from components.io import disk_full_error, is_disk_full, remove_stale_temporaries

PREFIX = "step-"
CHECKPOINT_STORE_ENV = "LMFORGE_CHECKPOINT_STORE"  # shared storage for checkpoints (machine config, not a param)


class Checkpointer:
    """Saves every `every` steps into `directory`, keeps the last `keep`, resumes the newest.

    `fingerprint` identifies the run (config, seed, data hash): a checkpoint written under
    another fingerprint is never resumed, so changing a param restarts training cleanly.
    """

    def __init__(self, directory: str | os.PathLike, every: int, keep: int, fingerprint: str,
                 store: str | os.PathLike | None = None):
        self.directory = Path(directory)
        self.every = every
        self.keep = keep
        self.fingerprint = fingerprint
        # <store>/<objective>-<fingerprint>: runs with other params never meet
        self.stored = Path(store) / f"{self.directory.name}-{fingerprint[:16]}" if store else None

    def _existing(self, directory: Path | None = None) -> list[Path]:
        directory = directory or self.directory
        if not directory.exists():
            return []
        return sorted(p for p in directory.iterdir() if p.is_dir() and p.name.startswith(PREFIX))

    def _mine(self, path: Path) -> bool:
        meta = path / "state.json"
        return meta.exists() and json.loads(meta.read_text()).get("fingerprint") == self.fingerprint

    def _matching(self, directory: Path) -> Path | None:
        return next((path for path in reversed(self._existing(directory)) if self._mine(path)), None)

    def _prune(self, directory: Path) -> None:
        """Keep this run's newest `keep`; drop other runs' checkpoints, which it never resumes
        (by step alone, an older run's higher steps would push out this run's newest)."""
        existing = self._existing(directory)
        mine = [p for p in existing if self._mine(p)]
        for old in [p for p in existing if p not in mine] + mine[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)

    def latest(self) -> Path | None:
        """The newest checkpoint of this run; one in the store that is newer than every local
        one is copied here first."""
        local = self._matching(self.directory)
        stored = self._matching(self.stored) if self.stored else None
        if stored is not None and (local is None or stored.name > local.name):
            local = _copy_atomic(stored, self.directory)
        return local

    def due(self, step: int, total_steps: int) -> bool:
        return self.every > 0 and (step % self.every == 0 or step == total_steps)

    def save(self, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any],
             rank_rngs: list[dict[str, Any]] | None = None) -> Path:
        """`rank_rngs`: every rank's `rng_states()` in rank order, under torchrun (rank 0,
        the caller, is also kept at the top level, which is all a plain run has)."""
        from safetensors.torch import save_model

        self.directory.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(self.directory, ".tmp-")  # left by a killed run
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{os.getpid()}-", dir=self.directory))
        final = self.directory / f"{PREFIX}{step:08d}"
        try:
            save_model(_unwrap(model), str(tmp / "model.safetensors"))  # handles tied embeddings
            ranks = {"rank_rng": rank_rngs} if rank_rngs and len(rank_rngs) > 1 else {}
            own = rank_rngs[0] if rank_rngs else rng_states()
            torch.save({"optimizer": optimizer.state_dict(), **own, **ranks}, tmp / "trainer.pt")
            (tmp / "state.json").write_text(json.dumps({"step": step, "fingerprint": self.fingerprint, **state}))
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        except BaseException as e:
            full = isinstance(e, Exception) and is_disk_full(e, self.directory)
            shutil.rmtree(tmp, ignore_errors=True)
            if full:
                previous = self.latest()
                kept = (f"the previous checkpoint {previous} is intact and a rerun resumes from it"
                        if previous is not None else "no earlier checkpoint exists")
                raise disk_full_error(final, kept) from e
            raise
        self._prune(self.directory)
        if self.stored is not None:
            _copy_atomic(final, self.stored)
            self._prune(self.stored)
        return final

    def restore(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[int, dict[str, Any]]:
        """Load the newest matching checkpoint in place; (0, {}) when there is none."""
        from safetensors.torch import load_model

        path = self.latest()
        if path is None:
            return 0, {}
        load_model(_unwrap(model), str(path / "model.safetensors"))
        trainer = torch.load(path / "trainer.pt", weights_only=True)
        optimizer.load_state_dict(trainer["optimizer"])
        set_rng_states(_this_rank(trainer))
        state = json.loads((path / "state.json").read_text())
        return int(state.pop("step")), {k: v for k, v in state.items() if k != "fingerprint"}


def _copy_atomic(checkpoint: Path, directory: Path) -> Path:
    """`checkpoint` copied into `directory` under its own name, appearing in one rename."""
    directory.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(directory, ".tmp-")
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{os.getpid()}-", dir=directory))
    try:
        shutil.copytree(checkpoint, tmp, dirs_exist_ok=True)
        final = directory / checkpoint.name
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def rng_states() -> dict[str, Any]:
    """Every generator a training step draws from: the CPU one and, once CUDA is in use, each
    CUDA device's (dropout on a GPU draws there). Nothing in the loop draws from numpy's or
    Python's global generators: batch order and masks use generators seeded per epoch and step.
    While CUDA is uninitialised its generators are still at the seed a rerun sets again."""
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    return {"torch_rng": torch.get_rng_state(), "cuda_rng": cuda}


def set_rng_states(saved: dict[str, Any]) -> None:
    """Restore what `rng_states` saved (checkpoints from before CUDA states were kept have none)."""
    torch.set_rng_state(saved["torch_rng"])
    cuda = saved.get("cuda_rng", [])
    here = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if len(cuda) > here:
        warnings.warn(f"checkpoint holds the RNG state of {len(cuda)} CUDA devices, this machine has {here}: "
                      "the resumed run is not bit-exact", stacklevel=2)
    for device, state in enumerate(cuda[:here]):
        torch.cuda.set_rng_state(state, device)


def _this_rank(trainer: dict[str, Any]) -> dict[str, Any]:
    """This process's saved RNG states; rank 0's (with a warning) when the checkpoint was
    written by another number of processes."""
    from components.train.distributed import world

    rank, size = world()
    ranks = trainer.get("rank_rng", [trainer])
    if len(ranks) == size:
        return ranks[rank]
    warnings.warn(f"checkpoint was written by {len(ranks)} process(es), this run has {size}: every rank resumes "
                  "rank 0's RNG state, so dropout is not bit-exact with an uninterrupted run", stacklevel=3)
    return trainer


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    model = getattr(model, "_orig_mod", model)  # torch.compile wraps the module
    return getattr(model, "module", model)  # and DDP wraps the model
