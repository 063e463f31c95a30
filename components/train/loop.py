"""The one training loop (`fit`) every objective and fine-tuning share.

Objectives differ only by how a batch is made (masking, NSP pairs) and how its loss is
computed; the loop, optimiser, schedule, precision and logging are shared with
fine-tuning (components.train.finetuning).
"""
from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path
from typing import Callable

import torch

from components.config import OptimConfig
from components.train.checkpoint import Checkpointer
from components.train.distributed import is_main_process
from components.train.models import fast_cpu_attention


def cpu_has_native_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_device_dtype(device: str, dtype: str) -> tuple[torch.device, torch.dtype]:
    """The single place where device and precision are chosen."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dtype == "auto":
        native = dev.type == "cuda" and torch.cuda.is_bf16_supported() or dev.type == "cpu" and cpu_has_native_bf16()
        dtype = "bfloat16" if native else "float32"
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return dev, getattr(torch, dtype)


def autocast(device: torch.device, dtype: torch.dtype):
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def lr_at(step: int, cfg: OptimConfig, total_steps: int) -> float:
    """Linear warmup, then cosine decay to lr * min_lr_ratio."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps)
    cosine = 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return cfg.lr * (cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * cosine)


def make_optimizer(model: torch.nn.Module, cfg: OptimConfig, device: torch.device) -> torch.optim.Optimizer:
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    fused = device.type == "cuda"
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95), fused=fused, foreach=not fused)


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
    caller's JSON-able loop state) with each one. Returns {"steps", "seconds", "tokens",
    "resumed_from"}.
    """
    device = next(model.parameters()).device
    _, dtype = resolve_device_dtype(str(device), cfg.dtype)
    with fast_cpu_attention(model, device, dtype):
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
    model.train()
    start, tokens, step = time.perf_counter(), 0, first_step - 1
    window_t, window_tokens = start, 0
    for step in range(first_step, total_steps):
        # Schedule: set this step's learning rate.
        lr = lr_at(step, cfg, total_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        # Forward and backward over the micro-batches; loss scaled so gradients average.
        loss_sum, n = _backward(model, cfg, step, next_batch, loss_fn, device, dtype, checkpointer)
        tokens += n
        window_tokens += n
        # Update: clip, step, clear.
        grad_norm = torch.nn.utils.clip_grad_norm_(
            model.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
        )
        # A finite loss can still overflow a gradient; stepping on it would poison the weights.
        if not torch.isfinite(grad_norm):
            raise FloatingPointError(f"gradient norm is {float(grad_norm)} at step {step}; lower the learning rate"
                                     + _kept(checkpointer))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        # Log: loss, lr, grad norm and throughput over the last window.
        if on_log and ((step + 1) % log_every == 0 or step + 1 == total_steps):
            now = time.perf_counter()
            on_log(step + 1, {
                "train_loss": loss_sum, "lr": lr, "grad_norm": float(grad_norm),
                "tokens_per_s": window_tokens / max(now - window_t, 1e-9),
            })
            window_t, window_tokens = now, 0
        # Evaluate: periodically and at the end; the callback may stop training early.
        if evaluate and ((eval_every and (step + 1) % eval_every == 0) or step + 1 == total_steps):
            model.eval()
            stop = evaluate(step + 1)
            model.train()
        else:
            stop = False
        # Checkpoint: after evaluation, so the saved state includes it.
        if checkpointer is not None and checkpointer.due(step + 1, total_steps) and is_main_process():
            checkpointer.save(step + 1, model, optimizer, state or {})
        if stop:
            break
    return {"steps": step + 1, "seconds": time.perf_counter() - start, "tokens": tokens, "resumed_from": first_step}


def _backward(model, cfg: OptimConfig, step: int, next_batch, loss_fn, device, dtype,
              checkpointer: Checkpointer | None) -> tuple[float, int]:
    """Forward and backward over one step's micro-batches: (the step's loss, its tokens)."""
    loss_sum, tokens = 0.0, 0
    for micro in range(cfg.grad_accum):
        batch = next_batch(step, micro)
        with autocast(device, dtype):
            loss = loss_fn(model, batch) / cfg.grad_accum
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training loss is {loss.item()} at step {step}; lower the learning rate"
                                     + _kept(checkpointer))
        loss.backward()
        loss_sum += loss.item()
        tokens += int(batch["input_ids"].numel())
    return loss_sum, tokens


def _kept(checkpointer: Checkpointer | None) -> str:
    """What a failed run leaves to resume from (nothing is saved after a bad step)."""
    latest = checkpointer.latest() if checkpointer is not None else None
    return f"; the last good checkpoint {latest} is kept" if latest is not None else ""


