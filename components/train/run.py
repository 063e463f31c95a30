"""The pretrain stage's work: one objective's model trained on its tokenized data and saved,
with its tokenizer and reports, where dvc.yaml expects them.

Checkpoints go to checkpoints/pretrain/<objective> (outside DVC's outs, so `dvc repro` leaves
them alone), so rerunning after a crash resumes from the newest one whose fingerprint matches;
with LMFORGE_CHECKPOINT_STORE (shared storage), a rerun on another worker does too.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable, ContextManager

import torch

from components import paths
from components.io import atomic_dir, write_json_atomic, write_text_atomic
from components.tokens.tokenization import load_tokenizer
from components.train.checkpoint import CHECKPOINT_STORE_ENV, Checkpointer
from components.train.distributed import is_main_process
from components.train.flops import device_peak_flops, flops_per_token, mfu, pretraining_compute
from components.config import ModelConfig, PretrainConfig
from components.train.models import count_parameters
from components.train.pretraining import PretrainData, pretrain


SOURCE_ROOT = Path(__file__).resolve().parents[2]
"""The project's checkout: components/ and pipelines/ hold the code a stage runs."""


def code_fingerprint(root: Path = SOURCE_ROOT) -> str:
    """The project's own code, every .py under components/ and pipelines/ (path and bytes)."""
    digest = hashlib.sha256()
    for path in sorted(p for folder in ("components", "pipelines") for p in (root / folder).rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def run_fingerprint(objective: str, model_cfg: ModelConfig, train_cfg: PretrainConfig, seed: int,
                    data_dir: Path, code: str | None = None) -> str:
    """What a checkpoint must match to be resumed: objective, configs, seed, data and code
    (`code_fingerprint`). Without the code, `dvc repro` after a code change resumed the old
    code's final checkpoint and saved its weights as the new code's model."""
    data = (data_dir / "meta.json").read_text()
    sizes = sorted((p.name, p.stat().st_size) for p in data_dir.glob("*.npy"))
    keyed = {"objective": objective, "model": asdict(model_cfg), "seed": seed, "data": data, "sizes": sizes,
             "code": code or code_fingerprint(),
             "pretrain": {k: v for k, v in asdict(train_cfg).items()
                          if k not in ("log_every", "keep_checkpoints", "device", "nproc_per_node")}}
    return hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()[:16]


def pretrain_objective(objective, model_cfg: ModelConfig, train_cfg: PretrainConfig, seed: int,
                       track: Callable[..., ContextManager],
                       log_metrics: Callable[..., None]) -> dict | None:
    """The pretrain stage: `objective` (a spec from components.objectives) trained from its
    tokenized data into models/pretrained/<objective>, with reports/pretrain/<objective>/.

    Inputs are checked and the model built before `track(parameters=n)` opens the run that
    `log_metrics(metrics, step=None)` reports to (the stage's MLflow run; rank 0 only).
    Returns the final metrics on rank 0, None on the other ranks of a torchrun launch.
    """
    data_dir = Path(paths.tokenized_dir(objective.name))
    meta = PretrainData(data_dir, "train").meta
    block_size, real_fraction = meta["block_size"], meta["splits"]["train"]["packing_efficiency"]
    if block_size > model_cfg.max_positions:
        raise ValueError(f"tokenize.block_size ({block_size}) exceeds model.max_positions "
                         f"({model_cfg.max_positions}); lower one or raise the other")
    tokenizer = load_tokenizer(paths.tokenizer_dir(objective.architecture.name))
    steps = objective.max_steps(model_cfg, tokenizer, train_cfg, block_size, real_fraction)
    if steps != train_cfg.max_steps:
        print(f"pretrain: {objective.name}: {steps} steps, the FLOPs of {objective.rival} at pretrain.max_steps "
              f"{train_cfg.max_steps} (pretrain.rtd_equal_flops)", file=sys.stderr, flush=True)
        train_cfg = replace(train_cfg, max_steps=steps)
    torch.manual_seed(seed)
    # Pretraining's dropout; the saved config gets fine-tuning's (model.dropout) back.
    model = objective.build_model(replace(model_cfg, dropout=train_cfg.dropout), tokenizer, train_cfg)
    checkpointer = Checkpointer(paths.checkpoint_dir(objective.name), train_cfg.checkpoint_every,
                                train_cfg.keep_checkpoints, run_fingerprint(objective.name, model_cfg, train_cfg,
                                                                            seed, data_dir),
                                store=os.environ.get(CHECKPOINT_STORE_ENV) or None)
    main_process = is_main_process()
    n_params = count_parameters(objective.saved_model(model))
    per_position_flops = flops_per_token(model, block_size, objective.masked_fraction(train_cfg), real_fraction)
    on_log = progress_log(objective.name, train_cfg.max_steps, per_position_flops, log_metrics,
                          describe=objective.summary_line)
    with track(parameters=n_params) if main_process else contextlib.nullcontext():
        resume = checkpointer.latest() if main_process else None
        if resume is not None:
            print(f"pretrain: {objective.name}: resuming from {resume}", file=sys.stderr, flush=True)
        training = objective.training(tokenizer, train_cfg)
        metrics = pretrain(training, model, data_dir, train_cfg, seed, on_log=on_log, checkpointer=checkpointer)
        if not main_process:
            return None
        saved = objective.saved_model(model)
        set_finetuning_dropout(saved, objective.architecture, model_cfg, tokenizer)
        rows = train_cfg.max_steps * train_cfg.batch_size * train_cfg.grad_accum
        metrics["compute"] = pretraining_compute(per_position_flops, rows, block_size, real_fraction,
                                                 training.supervised_targets(rows, block_size,
                                                                             round(rows * block_size * real_fraction)))
        if saved is not model:
            metrics["trained_parameters"] = count_parameters(model)
        save_pretrained(objective.name, saved, tokenizer, metrics, n_params)
        log_metrics({f"final_{k}": v for k, v in metrics.items()})
    return metrics


def set_finetuning_dropout(model, architecture, model_cfg: ModelConfig, tokenizer) -> None:
    """Write fine-tuning's dropout (model.dropout) into the pretrained model's config before it
    is saved: pretraining ran with pretrain.dropout, and a classifier loaded from the saved
    model must fine-tune with the same dropout as its scratch twin. The modules already
    built keep theirs; only the saved config changes."""
    finetuning = architecture.model_config(model_cfg, tokenizer).to_dict()
    model.config.update({k: v for k, v in finetuning.items() if "dropout" in k or "pdrop" in k})


def progress_log(name: str, max_steps: int, per_token_flops: float, log_metrics: Callable[..., None],
                 describe: Callable[[dict], str] | None = None) -> Callable[[int, dict], None]:
    """The loop's `on_log`: MFU added where the device's peak is known (GPUs), then the
    metrics logged and a progress line (with an ETA) printed to stderr; a validation line
    ends with `describe(metrics)` (the objective's summary: each metric by its baseline)."""
    peak = device_peak_flops(torch.cuda.get_device_name()) if torch.cuda.is_available() else None
    clock: dict = {}

    def on_log(step: int, metrics: dict) -> None:
        if "train_loss" in metrics:
            # Throughput is per process.
            utilisation = mfu(metrics["tokens_per_s"], per_token_flops, peak)
            if utilisation is not None:
                metrics = {**metrics, "mfu": utilisation}
            t0, s0 = clock.setdefault("start", (time.perf_counter(), step))
            eta = (time.perf_counter() - t0) / max(step - s0, 1) * (max_steps - step)
            print(f"pretrain {name} step {step}/{max_steps} loss {metrics['train_loss']:.4f} "
                  f"lr {metrics['lr']:.2e} {metrics['tokens_per_s']:,.0f} tok/s"
                  + (f" mfu {utilisation:.1%}" if utilisation is not None else "")
                  + f" eta {eta:.0f}s", file=sys.stderr, flush=True)
        log_metrics(metrics, step=step)
        if "train_loss" not in metrics:
            shown = (f"loss {metrics['val_loss']:.4f}, {describe(metrics)}" if describe
                     else " ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
            print(f"pretrain {name} step {step} validation {shown}", file=sys.stderr, flush=True)

    return on_log


def save_pretrained(name: str, model, tokenizer, metrics: dict, n_params: int) -> None:
    """The model (safetensors) with its tokenizer, and the reports: metrics.json (DVC metrics),
    train_loss.csv (DVC plots), validation.json (every evaluation). Takes the curve and the
    history out of `metrics`."""
    with atomic_dir(paths.pretrained_dir(name)) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    curve, history = metrics.pop("curve"), metrics.pop("history")
    report = Path(paths.PRETRAIN_REPORTS) / name
    write_json_atomic(report / "metrics.json", {"objective": name, "parameters": n_params, **metrics})
    write_text_atomic(report / "train_loss.csv",
                      "step,loss\n" + "".join(f"{step},{loss:.6f}\n" for step, loss in curve))
    write_json_atomic(report / "validation.json", history)
