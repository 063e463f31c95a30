"""The one training loop (`fit`) every objective and fine-tuning share.

Objectives differ only by how a batch is made (masking, NSP pairs) and how its loss is
computed; the loop, optimiser, schedule, precision and logging are shared with
fine-tuning (components.train.finetuning).
"""
from __future__ import annotations

import math
import time
from contextlib import nullcontext
from typing import Callable

import torch

from components.config import OptimConfig
from components.train import distributed
from components.train.checkpoint import Checkpointer, rng_states
from components.train import precision
from components.train.models import fast_cpu_attention, fast_cpu_dropout
from components.train.precision import Probe, autocast  # noqa: F401  (autocast: re-exported for the stages)


def resolve_device(device: str) -> torch.device:
    """`auto`: CUDA when there is one, else the CPU."""
    return torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)


def resolve_device_dtype(device: str, dtype: str, probe: Probe | None = None) -> tuple[torch.device, torch.dtype]:
    """The single place where device and precision are chosen.

    `dtype: auto`: bf16 on CUDA where supported. On CPU, with a `probe` (a training
    stage's own step, components.train.precision), the faster of fp32 and bf16 autocast as
    measured on this machine (cached per CPU, torch version and shape; `probe.record` says
    which and why); without one (prediction outside training), fp32: the exact reference,
    and a flag saying bf16 is supported does not say it is faster.
    """
    dev = resolve_device(device)
    if dtype == "auto":
        if dev.type == "cuda":
            dtype = "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
        elif dev.type == "cpu" and probe is not None:
            dtype = precision.choose(probe)
        else:
            dtype = "float32"
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return dev, getattr(torch, dtype)


def warmup_steps(cfg: OptimConfig, total_steps: int) -> int:
    """The longer of warmup_steps and warmup_fraction of the run."""
    return max(cfg.warmup_steps, round(cfg.warmup_fraction * total_steps))


def lr_at(step: int, cfg: OptimConfig, total_steps: int) -> float:
    """Linear warmup, then `cfg.schedule` down to lr * min_lr_ratio at the last step:
    cosine, one_cycle (linear) or trapezoid (hold, then linear over the last decay_fraction)."""
    warmup = warmup_steps(cfg, total_steps)
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    if cfg.schedule == "trapezoid":
        decay_start = max(warmup, total_steps - round(cfg.decay_fraction * total_steps))
        progress = (step - decay_start) / max(1, total_steps - decay_start) if step >= decay_start else 0.0
        remaining = 1.0 - min(1.0, progress)
    else:
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        remaining = 0.5 * (1.0 + math.cos(math.pi * progress)) if cfg.schedule == "cosine" else 1.0 - progress
    return cfg.lr * (cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * remaining)


def make_optimizer(model: torch.nn.Module, cfg: OptimConfig, device: torch.device) -> torch.optim.Optimizer:
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # Fused everywhere: one pass over each tensor instead of foreach's eight, which on the CPU
    # fall back to a loop of per-tensor ops: the demo model's update took 2.2x less time fused
    # (benchmarks/README.md, issue 26). Same update, rounded differently.
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_eps,
                             fused=True)


def fit(
    model: torch.nn.Module,
    cfg: OptimConfig,
    total_steps: int,
    next_batch: Callable[[int, int], dict],
    loss_fn: Callable[[torch.nn.Module, dict], torch.Tensor],
    evaluate: Callable[[int], bool] | None = None,
    eval_every: int = 0,
    on_log: Callable[[int, dict], None] | None = None,
    log_every: int = 10,
    checkpointer: Checkpointer | None = None,
    state: dict | None = None,
) -> dict:
    """Train `model` for `total_steps` optimiser steps; the loop every objective shares.

    `next_batch(step, micro)` returns a dict of tensors on the model's device (a pure
    function of the step, which is what makes resuming O(1)); `evaluate(step)` runs every
    `eval_every` steps and at the end, and returns True to stop early. With a
    `checkpointer`, training resumes from its newest checkpoint and saves `state` (the
    caller's JSON-able loop state) with each one. A NaN or inf loss or gradient norm raises
    FloatingPointError naming its step, and never reaches the weights or a checkpoint (on
    CUDA it is read back at the next log, evaluation or checkpoint step: _FiniteGuard).
    Returns {"steps", "seconds", "tokens", "resumed_from"}.
    """
    device = next(model.parameters()).device
    _, dtype = resolve_device_dtype(str(device), cfg.dtype)
    cheap_dropout = fast_cpu_dropout(model, device) if getattr(cfg, "fast_cpu_dropout", False) else nullcontext()
    with fast_cpu_attention(model, device, dtype), cheap_dropout:
        return _fit_loop(model, cfg, total_steps, next_batch, loss_fn, evaluate, eval_every, on_log, log_every,
                         checkpointer, state, device, dtype)


def _fit_loop(model, cfg, total_steps, next_batch, loss_fn, evaluate, eval_every, on_log, log_every,
              checkpointer, state, device, dtype) -> dict:
    optimizer = make_optimizer(model, cfg, device)
    first_step = 0
    if checkpointer is not None:
        first_step, saved = checkpointer.restore(model, optimizer)
        if state is not None:
            state.update(saved)
    guard = _FiniteGuard(optimizer, checkpointer)
    model.train()
    start, tokens, step = time.perf_counter(), 0, first_step - 1
    window_t, window_tokens = start, 0
    for step in range(first_step, total_steps):
        # Schedule: set this step's learning rate.
        lr = lr_at(step, cfg, total_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        # Forward and backward over the micro-batches; loss scaled so gradients average.
        loss_sum, n = _backward(model, cfg, step, next_batch, loss_fn, device, dtype, guard)
        tokens += n
        window_tokens += n
        # Update: clip, step (skipped on the device if anything was not finite), clear.
        grad_norm = torch.nn.utils.clip_grad_norm_(
            model.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
        )
        guard.grad_norm(step, grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        log_now = on_log is not None and ((step + 1) % log_every == 0 or step + 1 == total_steps)
        eval_now = evaluate is not None and ((eval_every and (step + 1) % eval_every == 0) or step + 1 == total_steps)
        due = checkpointer is not None and checkpointer.due(step + 1, total_steps)
        if log_now or eval_now or due or step + 1 == total_steps:
            guard.check()  # the one host sync, so the window's clock reads finished work
        # Log: loss, lr, grad norm and throughput over the last window.
        if log_now:
            now = time.perf_counter()
            on_log(step + 1, {
                "train_loss": float(distributed.mean_across_ranks(loss_sum)), "lr": lr, "grad_norm": float(grad_norm),
                "tokens_per_s": window_tokens / max(now - window_t, 1e-9),
            })
            window_t, window_tokens = now, 0
        # Evaluate: periodically and at the end; the callback may stop training early.
        stop = False
        if eval_now:
            model.eval()
            stop = evaluate(step + 1)
            model.train()
        # Checkpoint: after evaluation, so the saved state includes it; every rank's RNG
        # state goes in (a collective), so each resumes its own dropout stream.
        if due:
            rank_rngs = distributed.gather_objects(rng_states())
            if distributed.is_main_process():
                checkpointer.save(step + 1, model, optimizer, state or {}, rank_rngs)
        if stop:
            break
    return {"steps": step + 1, "seconds": time.perf_counter() - start, "tokens": tokens, "resumed_from": first_step}


def _backward(model, cfg: OptimConfig, step: int, next_batch, loss_fn, device, dtype,
              guard: _FiniteGuard) -> tuple[torch.Tensor, int]:
    """Forward and backward over one step's micro-batches: (the step's loss, its tokens).

    The loss is summed on the device in float64: the sum a Python float gave, with no sync."""
    loss_sum, tokens = torch.zeros((), dtype=torch.float64, device=device), 0
    for micro in range(cfg.grad_accum):
        batch = next_batch(step, micro)
        with autocast(device, dtype):
            loss = loss_fn(model, batch) / cfg.grad_accum
        guard.loss(step, loss)
        loss.backward()
        loss_sum += loss.detach().double()
        tokens += int(batch["input_ids"].numel())
    return loss_sum, tokens


class _FiniteGuard:
    """Stops training on a NaN/inf loss or gradient norm before it reaches the weights.

    On CUDA nothing is read back inside the step: a device flag, the
    `found_inf` GradScaler hands the same optimiser, makes it skip the update (weights and
    moments untouched) once any loss or norm was not finite, and stays set, so every later
    step is skipped too; `check` (log, evaluation, checkpoint and last steps) reads the
    values back and raises for the first bad step, before anything is saved. A CPU "sync"
    costs nothing, so there each value is checked at once, as soon as it exists.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, checkpointer: Checkpointer | None):
        self.checkpointer = checkpointer
        self.deferred = _reads_back_late(optimizer)
        self.pending: list[tuple[int, int, torch.Tensor]] = []  # (step, micro-batches, values)
        self.losses: list[torch.Tensor] = []
        if self.deferred:
            device = _device(optimizer)
            self.found_inf = torch.zeros((), dtype=torch.float32, device=device)
            optimizer.found_inf = self.found_inf

    def loss(self, step: int, loss: torch.Tensor) -> None:
        if self.deferred:
            self.losses.append(loss.detach().double())
        elif not torch.isfinite(loss):
            self._raise("training loss", loss.item(), step)

    def grad_norm(self, step: int, norm: torch.Tensor) -> None:
        if not self.deferred:
            if not torch.isfinite(norm):
                self._raise("gradient norm", float(norm), step)
            return
        values = torch.stack([*self.losses, norm.detach().double()])
        bad = (~torch.isfinite(values).all()).float()
        torch.maximum(self.found_inf, bad, out=self.found_inf)
        self.pending.append((step, len(self.losses), values))
        self.losses = []
        if len(self.pending) >= 1000:  # a loop that never logs still reads back now and then
            self.check()

    def check(self) -> None:
        if not self.deferred:
            return
        pending, self.pending = self.pending, []
        if not self.found_inf.item():
            return
        for step, n_losses, values in pending:
            values = values.tolist()
            for value in values[:n_losses]:
                if not math.isfinite(value):
                    self._raise("training loss", value, step)
            if not math.isfinite(values[-1]):
                self._raise("gradient norm", values[-1], step)
        raise FloatingPointError("the optimiser skipped a step for a non-finite value that was not recorded")

    def _raise(self, what: str, value: float, step: int):
        kept = _kept(self.checkpointer)
        raise FloatingPointError(f"{what} is {value} at step {step}; lower the learning rate{kept}")


def _device(optimizer: torch.optim.Optimizer) -> torch.device:
    return optimizer.param_groups[0]["params"][0].device


def _reads_back_late(optimizer: torch.optim.Optimizer) -> bool:
    """Whether _FiniteGuard defers its checks to the device: with fused AdamW off the CPU (its
    `found_inf` flag skips the update there); on the CPU a check costs nothing, so it is immediate."""
    return bool(optimizer.defaults.get("fused")) and _device(optimizer).type != "cpu"


def _kept(checkpointer: Checkpointer | None) -> str:
    """What a failed run leaves to resume from (nothing is saved after a bad step)."""
    latest = checkpointer.latest() if checkpointer is not None else None
    return f"; the last good checkpoint {latest} is kept" if latest is not None else ""


