"""torch.distributed set-up for `torchrun`: one process per device, DDP, rank-0 side effects.

Nothing here is home-made distribution: torchrun starts the processes and sets RANK,
WORLD_SIZE and LOCAL_RANK; we join the process group (NCCL on GPUs, gloo on CPU) and let
DistributedDataParallel average gradients.
"""
from __future__ import annotations

import os

import torch


def world() -> tuple[int, int]:
    """(rank, world size) from the environment torchrun sets; (0, 1) for a plain run."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def is_main_process() -> bool:
    return world()[0] == 0


def setup(device: torch.device) -> tuple[int, int, torch.device]:
    """Join the process group when launched by torchrun; returns (rank, world, device)."""
    rank, size = world()
    if size == 1:
        return 0, 1, device
    import torch.distributed as dist

    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return rank, size, device


def wrap(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """DDP when there is more than one process, else the model itself."""
    if world()[1] == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def seed_rank(seed: int, rank: int) -> None:
    """Seed this process's generators (CPU and CUDA) for dropout: rank 0 gets `seed` itself,
    so a single process draws what it always drew, and every other rank its own stream."""
    torch.manual_seed(seed + rank)


def mean_across_ranks(value: torch.Tensor) -> torch.Tensor:
    """The mean of `value` over all processes (a collective: every rank must call it); the
    value itself in a plain run."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return value
    total = value.detach().clone()
    dist.all_reduce(total)
    return total / dist.get_world_size()


def gather_objects(obj) -> list:
    """`obj` from every rank, in rank order (a collective); [obj] in a plain run."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def teardown() -> None:
    """Leave the process group. Drop every DDP wrapper before calling it: DDP holds the group,
    and the group's last reference must go here, in destroy_process_group, not in DDP's
    destructor later. That destructor joins gloo's worker threads holding the GIL, and a
    worker freeing a Python-owned tensor waits for the GIL: a rare hang at the end of a
    torchrun run (pytorch/pytorch#56297). Garbage in a reference cycle is collected first."""
    import gc

    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()


def relaunch_under_torchrun(nproc: int, module: str, argv: list[str]) -> None:
    """Replace this process with torchrun running `python -m module argv` on `nproc` processes."""
    import sys

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", module, *argv]
    print(f"{module.rsplit('.', 1)[-1]}: relaunching under torchrun: {' '.join(cmd[2:])}", file=sys.stderr, flush=True)
    os.execv(sys.executable, cmd)
